"""PiT, the pooling-based Vision Transformer (Heo et al., "Rethinking Spatial Dimensions of Vision
Transformers", ICCV 2021), laid out as the Auto-Prox ground truth trains it.

The layout follows lliai/Auto-Prox-AAAI24's ``pycls/models/auto/pit_subnet.py`` (itself modified from
naver-ai/pit), read as the facts of the architecture:

- patch embedding: a convolution with kernel ``patch_size`` and stride ``stride``, no padding, so the
  grid side is g_0 = (img_size - patch_size) // stride + 1 (27 for 224² with 16 and 8); a learned
  positional embedding (1, D_0, g_0, g_0) is added to it, and one class token goes in front;
- S stages; stage s holds ``depth[s]`` pre-norm blocks (``vitcore.model.Block``) of width
  D_s = base_dim · H_s, with H_s = ``num_heads[s]`` heads ``base_dim`` wide (d = base_dim in every
  stage) and an MLP of hidden width max(1, int(mlp_ratio · D_s)), truncated as the source's
  ``common.MLP`` does (vitcore's ViT rounds; the two differ only where mlp_ratio · D_s is not whole,
  never in the "pit" space); LayerNorm epsilon 1e-6;
- between stages, pooling: the grid goes through a depthwise 3×3 convolution with stride 2 and
  padding 1 (D_s groups, D_{s+1} outputs, so D_{s+1} must be a multiple of D_s: H_{s+1} a multiple
  of H_s), the class token through a Linear D_s -> D_{s+1}; the grid side becomes ceil(g / 2);
- a final LayerNorm and a linear head on the class token.

At 224² the stages see N'_s = g_s² + 1 tokens: 730, 197 and 50.

Initialisation is vitcore's for every network (``vitcore.model.init_layers``): the positional embedding,
the class token and every Linear weight from N(0, .02²) truncated to [-2, 2]; the convolutions (patch
embedding and pooling) LeCun normal (std sqrt(1 / fan_in), truncated); LayerNorm at identity; zero
biases. The source code leaves its Linear and convolution weights at PyTorch's defaults; vitcore
initialises ViTs and PiTs one way so that a proxy compares architectures, not initialisations, with
one exception: the class token is drawn as the source draws it (N(0, .02²), truncated), where the
ViT's follows timm (N(0, 1e-6)).
"""
import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import nn

from vitcore.attention_choice import check_attention
from vitcore.model import (Block, VisionTransformer, build_args, conv2d, init_layers, layer_norm, linear,
                           positive_int, trunc_normal_)

LN_EPS = 1e-6  # the source's TRANSFORMER.LN_EPS


def _stages(name: str, value) -> Tuple[int, ...]:
    """A list or tuple of positive ints, one per stage, as a tuple; TypeError / ValueError naming ``name``."""
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"{name}={value!r} must be a non-empty list with one entry per stage")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}={value!r}: entries must be ints")
        if v <= 0:
            raise ValueError(f"{name}={value!r}: entries must be positive")
    return tuple(int(v) for v in value)  # NumPy ints become ints


@dataclass(frozen=True)
class PiTConfig:
    """One PiT. Defaults: PiT-Ti (base_dim 32, depth (2, 6, 4), heads (2, 4, 8), MLP ratio 4) at 224²."""

    img_size: int = 224  # square input, pixels
    patch_size: int = 16  # the patch embedding's kernel
    stride: int = 8  # the patch embedding's stride
    in_chans: int = 3
    num_classes: int = 1000
    base_dim: int = 32  # d, every head's width; stage s is base_dim · num_heads[s] wide
    depth: Tuple[int, ...] = (2, 6, 4)  # blocks per stage
    num_heads: Tuple[int, ...] = (2, 4, 8)  # heads per stage; each a multiple of the one before
    mlp_ratio: float = 4.0  # MLP hidden = int(mlp_ratio · D_s) (the source truncates), one ratio for every block
    qkv_bias: bool = True
    attention: str = "vitcore"  # vitcore | sdpa | eager | auto, see vitcore.attention_choice

    def __post_init__(self):
        for name in ("img_size", "patch_size", "stride", "in_chans", "num_classes", "base_dim"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))  # NumPy ints become ints
        if self.patch_size > self.img_size:
            raise ValueError(f"patch_size={self.patch_size} is larger than img_size={self.img_size}")
        depth, heads = _stages("depth", self.depth), _stages("num_heads", self.num_heads)
        if len(depth) != len(heads):
            raise ValueError(f"depth={self.depth!r} and num_heads={self.num_heads!r} must have one entry per stage")
        for before, after in zip(heads, heads[1:]):
            if after % before:
                raise ValueError(f"num_heads={self.num_heads!r}: {after} heads after {before} (the pooling's depthwise "
                                 "convolution needs each stage's heads to be a multiple of the stage's before)")
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "num_heads", heads)
        r = self.mlp_ratio
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"mlp_ratio={r!r} must be a positive finite number")
        object.__setattr__(self, "mlp_ratio", r if isinstance(r, (int, float)) else float(r))
        if not isinstance(self.qkv_bias, bool):
            raise TypeError(f"qkv_bias={self.qkv_bias!r} must be a bool")
        check_attention(self.attention)

    @property
    def widths(self) -> Tuple[int, ...]:
        """D_s per stage: base_dim · num_heads[s]."""
        return tuple(self.base_dim * h for h in self.num_heads)

    @property
    def grids(self) -> Tuple[int, ...]:
        """The grid side g_s per stage: (img_size - patch_size) // stride + 1, then ceil(g / 2) per pooling."""
        g = [(self.img_size - self.patch_size) // self.stride + 1]
        for _ in self.depth[1:]:
            g.append((g[-1] + 1) // 2)
        return tuple(g)

    @property
    def num_tokens(self) -> Tuple[int, ...]:
        """N'_s per stage: the grid's g_s² tokens plus the class token."""
        return tuple(g * g + 1 for g in self.grids)

    def build(self, *, attention: Optional[str] = None, device: Union[str, torch.device, None] = None,
              seed: Optional[int] = None) -> "PiT":
        """``PiT(self, attention=attention, device=device, seed=seed)``."""
        return PiT(self, attention=attention, device=device, seed=seed)


class Pool(nn.Module):
    """PiT's pooling between stages: grid (B, D_in, g, g) -> (B, D_out, ceil(g/2), ceil(g/2)) by a depthwise
    3×3 convolution with stride 2; class token (B, 1, D_in) -> (B, 1, D_out) by a Linear."""

    def __init__(self, dim_in: int, dim_out: int, device: Union[str, torch.device, None] = None):
        super().__init__()
        self.conv = conv2d(dim_in, dim_out, 3, stride=2, padding=1, groups=dim_in, device=device)
        self.fc = linear(dim_in, dim_out, True, device)

    def forward(self, grid: torch.Tensor, cls: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.conv(grid), self.fc(cls)


class PiT(VisionTransformer):
    """The PiT of ``config``, built and initialised on ``device``; ``attention``, ``device`` and ``seed``
    as for ``vitcore.model.ViT`` (an int seed draws from ``torch.Generator(device).manual_seed(seed)``).

    forward: images (B, in_chans, img_size, img_size) -> logits (B, num_classes); ValueError for
    another shape, TypeError for a non-tensor.
    """

    def __init__(self, config: PiTConfig, *, attention: Optional[str] = None,
                 device: Union[str, torch.device, None] = None, seed: Optional[int] = None):
        if not isinstance(config, PiTConfig):
            raise TypeError(f"config must be a PiTConfig, got {type(config).__name__}")
        config, device, generator = build_args(config, attention, device, seed)
        super().__init__()
        self.config = c = config
        D, g = c.widths, c.grids[0]
        self.patch_embed = conv2d(c.in_chans, D[0], c.patch_size, stride=c.stride, padding=0, device=device)
        self.pos_embed = nn.Parameter(torch.empty(1, D[0], g, g, device=device))
        self.cls_token = nn.Parameter(torch.empty(1, 1, D[0], device=device))
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(width, heads, c.base_dim, c.mlp_ratio, c.qkv_bias, c.attention, device, init=False,
                                eps=LN_EPS, mlp_hidden=max(1, int(c.mlp_ratio * width))) for _ in range(blocks))
            for width, heads, blocks in zip(D, c.num_heads, c.depth)
        )
        self.pools = nn.ModuleList(Pool(a, b, device) for a, b in zip(D, D[1:]))
        self.norm = layer_norm(D[-1], device, LN_EPS)
        self.head = linear(D[-1], c.num_classes, True, device)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None):
        """The module docstring's initialisation, drawn from ``generator`` (default: the device's)."""
        init_layers(self, generator, first=[self.pos_embed, self.cls_token])  # zeroes the convolutions' biases
        for conv in [self.patch_embed] + [p.conv for p in self.pools]:
            fan_in = conv.weight[0].numel()  # in_chans / groups · kernel²
            trunc_normal_(conv.weight, std=math.sqrt(1.0 / fan_in), generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        B = x.shape[0]
        grid = self.patch_embed(x) + self.pos_embed  # (B, D_0, g_0, g_0)
        cls = self.cls_token.expand(B, -1, -1)  # (B, 1, D_0)
        for s, blocks in enumerate(self.stages):
            if s:
                grid, cls = self.pools[s - 1](grid, cls)
            g = grid.shape[-1]
            tokens = torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)  # (B, N'_s, D_s)
            for block in blocks:
                tokens = block(tokens)
            cls, grid = tokens[:, :1], tokens[:, 1:].transpose(1, 2).reshape(B, -1, g, g)
        return self.head(self.norm(cls[:, 0]))  # (B, num_classes)

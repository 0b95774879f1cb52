"""A Vision Transformer whose heads and MLP ratio may differ per block (AutoFormer-style spaces).

Pre-norm blocks: x + MSA(LN(x)), then x + MLP(LN(x)); a class token and learned positional
embedding in front, a final LayerNorm and a linear head on the class token at the end.
The head width ``head_dim`` is independent of ``embed_dim``: a block with H heads attends in
H·head_dim dimensions and projects back to embed_dim with W^O. ``head_dim=None`` makes each block's
heads embed_dim / H wide (AutoFormer's networks trained from scratch, timm's ViT): then embed_dim must
be divisible by every block's H (a ValueError naming both otherwise).
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from vitcore.ops.attention import attention_ref, flash_attention


def positive_int(name: str, value) -> int:
    """``value`` if it is a positive int; a TypeError or ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int")
    if value <= 0:
        raise ValueError(f"{name}={value} must be positive")
    return value


def _per_block(name: str, value, depth: int, kind: type) -> tuple:
    """One value or one per block -> a tuple of ``depth`` values, validated."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * depth
    if len(values) != depth:
        raise ValueError(f"{name}={value!r} has {len(values)} entries, expected depth={depth}")
    allowed = (int,) if kind is int else (int, float)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, allowed):
            raise TypeError(f"{name}={value!r}: entries must be {kind.__name__}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}={value!r}: entries must be positive and finite")
    return values


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224  # square input, pixels
    patch_size: int = 16  # square patches; img_size must be a multiple
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192  # D, the residual stream width
    depth: int = 12  # number of blocks
    num_heads: Union[int, Sequence[int]] = 3  # one value, or one per block
    mlp_ratio: Union[float, Sequence[float]] = 4.0  # MLP hidden = round(ratio * D); one or per block
    qkv_bias: bool = True
    head_dim: Optional[int] = None  # d; None means embed_dim // num_heads (must divide)

    def __post_init__(self):
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth"):
            positive_int(name, getattr(self, name))
        if self.patch_size > self.img_size:
            raise ValueError(f"patch_size={self.patch_size} is larger than img_size={self.img_size}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        heads = _per_block("num_heads", self.num_heads, self.depth, int)
        _per_block("mlp_ratio", self.mlp_ratio, self.depth, float)
        for name in ("num_heads", "mlp_ratio"):  # lists become tuples: configs compare and hash
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.head_dim is None:
            for h in heads:
                if self.embed_dim % h:
                    raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={h}")
        elif isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int):
            raise TypeError(f"head_dim={self.head_dim!r} must be a positive int or None")
        elif self.head_dim <= 0:
            raise ValueError(f"head_dim={self.head_dim!r} must be a positive int or None")
        if not isinstance(self.qkv_bias, bool):
            raise TypeError(f"qkv_bias={self.qkv_bias!r} must be a bool")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """N': patches plus the class token."""
        return self.num_patches + 1

    def block_heads(self) -> Tuple[int, ...]:
        return _per_block("num_heads", self.num_heads, self.depth, int)

    def block_mlp_ratios(self) -> Tuple[float, ...]:
        return _per_block("mlp_ratio", self.mlp_ratio, self.depth, float)

    def block_head_dim(self, heads: int) -> int:
        return self.head_dim if self.head_dim is not None else self.embed_dim // heads


class MSA(nn.Module):
    """Multi-head self-attention with one fused QKV projection and an output projection W^O.

    ``fused=True`` runs ``flash_attention`` (the Triton kernel on CUDA, reading q, k, v in place
    from the packed QKV output), ``fused=False`` the eager ``attention_ref``.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, qkv_bias: bool = True, fused: bool = True):
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, head_dim, fused
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # (B, N', 3, H, d)
        q, k, v = qkv.unbind(2)  # each (B, N', H, d), strided views
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N', d)
        if self.fused:
            out = flash_attention(q, k, v)  # (B, H, N', d), laid out (B, N', H, d) on the Triton path
        else:
            out = attention_ref(q, k, v)  # (B, H, N', d)
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)  # (B, N', H·d)
        return self.proj(out)  # (B, N', D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # a module, so hooks (NASWOT) see the pre-activations
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float, qkv_bias: bool, fused: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MSA(dim, num_heads, head_dim, qkv_bias, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, max(1, round(mlp_ratio * dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """The ViT of ``config``; ``fused`` picks flash attention (default) or eager attention in every MSA."""

    def __init__(self, config: ViTConfig, fused: bool = True):
        if not isinstance(config, ViTConfig):
            hint = ": build one with ViTConfig(**d)" if isinstance(config, dict) else ""
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}{hint}")
        if not isinstance(fused, bool):
            raise TypeError(f"fused={fused!r} must be a bool")
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.in_chans, c.embed_dim, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.embed_dim))
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, h, c.block_head_dim(h), r, c.qkv_bias, fused)
            for h, r in zip(c.block_heads(), c.block_mlp_ratios())
        )
        self.norm = nn.LayerNorm(c.embed_dim)
        self.head = nn.Linear(c.embed_dim, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        """timm's ViT initialisation: truncated normal (std .02) for Linear weights and embeddings."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / fan_in))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1:] != (c.in_chans, c.img_size, c.img_size):
            raise ValueError(
                f"input shape {tuple(x.shape)} does not match (B, {c.in_chans}, {c.img_size}, {c.img_size})"
            )
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N'-1, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N', D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])  # (B, num_classes)


def msa(
    x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention written out for checking hand calculations.

    x (N', D); wq, wk, wv (H, D, d); wo (H·d, D). Per head h: softmax(x Wq_h (x Wk_h)^T / sqrt(d)) x Wv_h.
    Returns ``(heads (H, N', d), out (N', D))`` where out = concat_h(heads) @ wo.
    """
    for name, t in (("x", x), ("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}.dtype={t.dtype}: expected a floating dtype")
    if x.ndim != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (N', D)")
    N, D = x.shape
    for name, w in (("wq", wq), ("wk", wk), ("wv", wv)):
        if w.ndim != 3 or w.shape[1] != D or w.shape != wq.shape:
            raise ValueError(f"{name} has shape {tuple(w.shape)}, expected (H, {D}, d) like wq {tuple(wq.shape)}")
    H, _, d = wq.shape
    if wo.shape != (H * d, D):
        raise ValueError(f"wo has shape {tuple(wo.shape)}, expected ({H * d}, {D})")
    q, k, v = (torch.einsum("nD,hDd->hnd", x, w) for w in (wq, wk, wv))  # (H, N', d)
    heads = attention_ref(q, k, v)  # (H, N', d)
    out = heads.transpose(0, 1).reshape(N, H * d) @ wo  # (N', D)
    return heads, out

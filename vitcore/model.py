"""A Vision Transformer whose heads and MLP ratio may differ per block (AutoFormer-style spaces).

Pre-norm blocks: x + MSA(LN(x)), then x + MLP(LN(x)); a class token and learned positional
embedding in front, a final LayerNorm and a linear head on the class token at the end.
The head width ``head_dim`` is independent of ``embed_dim``: a block with H heads attends in
H·head_dim dimensions and projects back to embed_dim with W^O. ``head_dim=None`` makes each block's
heads embed_dim / H wide (AutoFormer's networks trained from scratch, timm's ViT): then embed_dim must
be divisible by every block's H (a ValueError naming both otherwise).

A model is built directly on its device (parameters allocated there, then initialised there with the
device's random generator; nothing is initialised on the CPU and copied). The same config, seed and
device give bitwise the same weights; the CPU and CUDA generators draw different numbers, so one seed
gives different weights on a CPU and on a GPU.
"""
import math
import numbers
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from vitcore.attention_choice import attend, check_attention
from vitcore.ops.attention import attention_ref


def positive_int(name: str, value) -> int:
    """``value`` as an int if it is a positive integer (a Python or NumPy int, as ``vitcore.space.Arch``
    takes); a TypeError or ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int")
    if value <= 0:
        raise ValueError(f"{name}={value} must be positive")
    return int(value)


def _is_list(value) -> bool:
    """A list, tuple or 1-D NumPy array: one entry per block or stage."""
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def _per_block(name: str, value, depth: int, kind: type) -> tuple:
    """One value or one per block -> a tuple of ``depth`` values, validated; NumPy scalars become Python
    ints (``kind`` int) or floats."""
    values = tuple(value) if _is_list(value) else (value,) * depth
    if len(values) != depth:
        raise ValueError(f"{name}={value!r} has {len(values)} entries, expected depth={depth}")
    allowed = numbers.Integral if kind is int else numbers.Real
    for v in values:
        if isinstance(v, bool) or not isinstance(v, allowed):
            raise TypeError(f"{name}={value!r}: entries must be {kind.__name__}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}={value!r}: entries must be positive and finite")
    return tuple(int(v) if kind is int else v if isinstance(v, (int, float)) else float(v) for v in values)


@torch.no_grad()
def trunc_normal_(t: torch.Tensor, std: float, a: float = -2.0, b: float = 2.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fill ``t`` in place with N(0, std²) truncated to [a, b] (absolute bounds, as timm's init uses).

    Inverse-CDF sampling: x = std·√2·erfinv(w) with w uniform on [erf(a/(std√2)), erf(b/(std√2))),
    so the draw is exact, needs no host sync (torch 2.13's ``nn.init.trunc_normal_`` resamples
    rejected values behind a sync per tensor) and is the same algorithm on every torch version.
    """
    lo, hi = (math.erf(x / (std * math.sqrt(2.0))) for x in (a, b))
    t.uniform_(lo, hi, generator=generator)
    return t.erfinv_().mul_(std * math.sqrt(2.0)).clamp_(a, b)  # clamp: erfinv(-1) = -inf


def linear(in_features: int, out_features: int, bias: bool, device) -> nn.Linear:
    """An ``nn.Linear`` whose weight (out, in) and bias (out,) are allocated on ``device`` and left
    uninitialised (``ViT.reset_parameters`` sets them): nn.Linear's own constructor draws Kaiming
    values first, which here would be thrown away (255 µs against 43 µs for a 64 -> 192 layer, measured on a
    2-core CPU, and still 255 µs on the meta device)."""
    m = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(m)
    m.in_features, m.out_features = in_features, out_features
    m.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
    m.register_parameter("bias", nn.Parameter(torch.empty(out_features, device=device)) if bias else None)
    return m


def conv2d(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, device, groups: int = 1) \
        -> nn.Conv2d:
    """An ``nn.Conv2d`` (square kernel, bias) with uninitialised weight and bias on ``device``: the module is
    built on the meta device for its shape only, so nothing is drawn and thrown away."""
    m = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups, device="meta")
    m.weight = nn.Parameter(torch.empty(m.weight.shape, device=device))
    m.bias = nn.Parameter(torch.empty(out_channels, device=device))
    return m


def layer_norm(dim: int, device, eps: float = 1e-5) -> nn.LayerNorm:
    """An ``nn.LayerNorm(dim)`` (affine, eps 1e-5) with uninitialised weight and bias on ``device``."""
    m = nn.LayerNorm.__new__(nn.LayerNorm)
    nn.Module.__init__(m)
    m.normalized_shape, m.eps, m.elementwise_affine = (dim,), eps, True
    m.weight = nn.Parameter(torch.empty(dim, device=device))
    m.bias = nn.Parameter(torch.empty(dim, device=device))
    return m


@torch.no_grad()
def grouped_draw(tensors: Sequence[torch.Tensor], draw) -> None:
    """Fill ``tensors`` (one device and dtype) with one call of ``draw`` on a flat buffer holding them
    all, in order, then one copy back: the same values as drawing into their concatenation."""
    flat = torch.empty(sum(t.numel() for t in tensors), device=tensors[0].device, dtype=tensors[0].dtype)
    draw(flat)
    parts = flat.split([t.numel() for t in tensors])
    torch._foreach_copy_(list(tensors), [v.view_as(t) for v, t in zip(parts, tensors)])


@torch.no_grad()
def init_layers(module: nn.Module, generator: Optional[torch.Generator] = None,
                first: Sequence[torch.Tensor] = ()) -> None:
    """timm's ViT initialisation of ``module``'s layers: every Linear weight from N(0, .02²) truncated to
    [-2, 2], every LayerNorm at identity (weight 1), every bias of a Linear, Conv2d or LayerNorm 0.
    ``first``: more tensors drawn from the same truncated normal, before the Linear weights (the ViT's
    positional embedding). One draw covers all of them (``grouped_draw``, in this order, the Linear
    weights in module order), so the cost is a few kernel launches whatever the depth."""
    trunc, ones, zeros = list(first), [], []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc.append(m.weight)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:  # None: elementwise_affine=False
            ones.append(m.weight)
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and m.bias is not None:
            zeros.append(m.bias)
    if trunc:
        grouped_draw(trunc, lambda flat: trunc_normal_(flat, std=0.02, generator=generator))
    if ones:
        torch._foreach_zero_(ones)
        torch._foreach_add_(ones, 1.0)
    if zeros:
        torch._foreach_zero_(zeros)


# How a seed becomes weights (ViT.reset_parameters). Changed whenever the same config, seed and device
# would give other weights, so that a resumed run refuses records scored with the old ones.
INIT_SCHEME = "timm, one grouped draw (2026-11-29)"


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
    attention: str = "vitcore"  # vitcore | sdpa | eager | auto, see vitcore.attention_choice

    def __post_init__(self):
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))  # NumPy ints become ints
        if self.patch_size > self.img_size:
            raise ValueError(f"patch_size={self.patch_size} is larger than img_size={self.img_size}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        heads = _per_block("num_heads", self.num_heads, self.depth, int)
        ratios = _per_block("mlp_ratio", self.mlp_ratio, self.depth, float)
        for name, values in (("num_heads", heads), ("mlp_ratio", ratios)):  # lists become tuples: configs hash
            object.__setattr__(self, name, values if _is_list(getattr(self, name)) else values[0])
        if self.head_dim is None:
            for h in heads:
                if self.embed_dim % h:
                    raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={h}")
        elif isinstance(self.head_dim, bool) or not isinstance(self.head_dim, numbers.Integral):
            raise TypeError(f"head_dim={self.head_dim!r} must be a positive int or None")
        elif self.head_dim <= 0:
            raise ValueError(f"head_dim={self.head_dim!r} must be a positive int or None")
        else:
            object.__setattr__(self, "head_dim", int(self.head_dim))
        if not isinstance(self.qkv_bias, bool):
            raise TypeError(f"qkv_bias={self.qkv_bias!r} must be a bool")
        check_attention(self.attention)

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

    def build(self, *, attention: Optional[str] = None, device: Union[str, torch.device, None] = None,
              seed: Optional[int] = None) -> "ViT":
        """``ViT(self, attention=attention, device=device, seed=seed)``: every config builds its model so."""
        return ViT(self, attention=attention, device=device, seed=seed)


class MSA(nn.Module):
    """Multi-head self-attention with one fused QKV projection and an output projection W^O.

    ``attention`` picks the attention (``vitcore.attention_choice``): "vitcore" runs ``flash_attention``
    (the Triton kernel on CUDA, reading q, k, v in place from the packed QKV output), "sdpa" PyTorch's
    ``scaled_dot_product_attention``, "eager" ``attention_ref``, "auto" the faster of vitcore and SDPA.
    ``fused=False`` is ``attention="eager"``. ``init``: initialise the layers (``init_layers``); a ViT
    builds its blocks with ``init=False`` and initialises the whole model at once.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, qkv_bias: bool = True, fused: bool = True,
                 attention: str = "vitcore", device: Union[str, torch.device, None] = None, init: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attention = check_attention(attention) if fused else "eager"
        self.qkv = linear(dim, 3 * num_heads * head_dim, qkv_bias, device)
        self.proj = linear(num_heads * head_dim, dim, True, device)
        if init:
            init_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # (B, N', 3, H, d)
        q, k, v = qkv.unbind(2)  # each (B, N', H, d), strided views
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N', d)
        out = attend(q, k, v, self.attention)  # (B, H, N', d); vitcore's kernel lays it out (B, N', H, d)
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)  # (B, N', H·d)
        return self.proj(out)  # (B, N', D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, device: Union[str, torch.device, None] = None, init: bool = True):
        super().__init__()
        self.fc1 = linear(dim, hidden, True, device)
        self.act = nn.GELU()  # a module, so hooks (NASWOT) see the pre-activations
        self.fc2 = linear(hidden, dim, True, device)
        if init:
            init_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + MSA(LN(x)), then x + MLP(LN(x)); x (B, N', dim). ``eps``: the LayerNorms' epsilon; ``mlp_hidden``:
    the MLP's hidden width (default max(1, round(mlp_ratio · dim)))."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float, qkv_bias: bool, attention: str,
                 device: Union[str, torch.device, None] = None, init: bool = True, eps: float = 1e-5,
                 mlp_hidden: Optional[int] = None):
        super().__init__()
        self.norm1 = layer_norm(dim, device, eps)
        self.attn = MSA(dim, num_heads, head_dim, qkv_bias, attention=attention, device=device, init=False)
        self.norm2 = layer_norm(dim, device, eps)
        self.mlp = MLP(dim, max(1, round(mlp_ratio * dim)) if mlp_hidden is None else mlp_hidden, device, init=False)
        if init:
            init_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


def check_device(device: Union[str, torch.device, None]) -> torch.device:
    """``device`` as a ``torch.device`` (None: torch's default device), checked to exist here: TypeError
    for a value that is not a str or torch.device, ValueError for a name torch does not parse, for a
    CUDA device on a machine without one, or for a GPU index beyond the machine's GPUs."""
    if device is None:
        return torch.get_default_device()
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device={device!r} must be a str, a torch.device or None")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a device torch knows (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: no CUDA GPU is available here (torch.cuda.is_available() is "
                             "False); build the model on 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return parsed


def build_args(config, attention: Optional[str], device: Union[str, torch.device, None], seed: Optional[int]):
    """What every family's constructor starts from: (the config with ``attention`` when given, the
    device (default: torch's default device, checked by ``check_device``),
    ``torch.Generator(device).manual_seed(seed)`` or None for the device's default generator).
    ValueError for a seed that is not a non-negative int below 2^64 or None, and for a device that is not here."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed={seed!r} must be a non-negative int below 2**64, or None")
    config = config if attention is None else replace(config, attention=check_attention(attention))
    device = check_device(device)
    return config, device, None if seed is None else torch.Generator(device).manual_seed(seed)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (torch >= 2.4 takes the device; 2.3 has one call per device)."""
    if _TORCH_RELEASE >= (2, 4):
        return torch.is_autocast_enabled(device_type)
    return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


_TORCH_RELEASE = tuple(int(part) for part in torch.__version__.split(".")[:2])
_AUTOCAST_CASTS = (torch.float16, torch.bfloat16, torch.float32)  # what autocast casts (never float64)


class VisionTransformer(nn.Module):
    """A vitcore network made of ``Block``s (MSA, then MLP) with a linear classifier ``head``: ``ViT`` and
    ``vitcore.pit.PiT``. The proxies that tell attention from MLP layers (dss, meco, lswag) take any of
    them."""

    def check_input(self, x) -> None:
        """TypeError unless ``x`` is a dense floating tensor of the parameters' dtype (under autocast also
        fp16, bf16 or fp32, which autocast casts), ValueError unless it is (B, in_chans, img_size, img_size)."""
        c = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.layout != torch.strided:
            raise TypeError(f"input.layout={x.layout}: expected a dense (torch.strided) tensor")
        weight = self.head.weight
        cast = autocast_enabled(x.device.type) and x.dtype in _AUTOCAST_CASTS
        if not x.is_floating_point() or (x.dtype != weight.dtype and not cast):
            raise TypeError(f"input dtype {x.dtype} does not match the model's {weight.dtype}: convert one "
                            "(x.to(dtype) or model.to(dtype)), or run under torch.autocast (which casts fp16, "
                            "bf16 and fp32 inputs, not float64)")
        if x.ndim != 4 or x.shape[1:] != (c.in_chans, c.img_size, c.img_size):
            raise ValueError(
                f"input shape {tuple(x.shape)} does not match (B, {c.in_chans}, {c.img_size}, {c.img_size})"
            )


class ViT(VisionTransformer):
    """The ViT of ``config``, built and initialised on ``device``.

    attention: overrides ``config.attention`` ("vitcore", "sdpa", "eager", "auto"; see
    ``vitcore.attention_choice``); ``fused=False`` is ``attention="eager"``. The model's ``config``
    holds the attention it runs. device: where the parameters live (default: torch's default device).
    seed: an int initialises from ``torch.Generator(device).manual_seed(seed)`` (the global RNG is
    neither read nor advanced); None draws from the device's default generator. Weights depend on the
    device's generator: one seed gives different weights on a CPU and on a GPU.
    """

    def __init__(self, config: ViTConfig, fused: bool = True, *, attention: Optional[str] = None,
                 device: Union[str, torch.device, None] = None, seed: Optional[int] = None):
        if not isinstance(config, ViTConfig):
            hint = ": build one with ViTConfig(**d)" if isinstance(config, dict) else ""
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}{hint}")
        if not isinstance(fused, bool):
            raise TypeError(f"fused={fused!r} must be a bool")
        config, device, generator = build_args(config, "eager" if not fused else attention, device, seed)
        super().__init__()
        self.config = c = config
        # every tensor allocated uninitialised on the device, then drawn once by reset_parameters: no value
        # is drawn twice or on the CPU
        self.patch_embed = conv2d(c.in_chans, c.embed_dim, c.patch_size, c.patch_size, 0, device)
        self.cls_token = nn.Parameter(torch.empty(1, 1, c.embed_dim, device=device))
        self.pos_embed = nn.Parameter(torch.empty(1, c.num_tokens, c.embed_dim, device=device))
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, h, c.block_head_dim(h), r, c.qkv_bias, c.attention, device, init=False)
            for h, r in zip(c.block_heads(), c.block_mlp_ratios())
        )
        self.norm = layer_norm(c.embed_dim, device)
        self.head = linear(c.embed_dim, c.num_classes, True, device)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None):
        """timm's ViT initialisation: truncated normal on [-2, 2] with std .02 for Linear weights and the
        positional embedding, with std sqrt(1 / fan_in) for the patch embedding, N(0, 1e-6) for the class
        token, LayerNorm at identity, zero biases; drawn from ``generator`` (default: the device's default
        generator).

        Draws in this order: one truncated normal for the positional embedding and every Linear weight
        (``init_layers``), the patch embedding, the class token: a handful of kernel launches per model,
        not several per tensor.
        """
        init_layers(self, generator, first=[self.pos_embed])  # also zeroes the patch embedding's bias
        fan_in = self.patch_embed.weight[0].numel()  # in_chans · patch_size²
        trunc_normal_(self.patch_embed.weight, std=math.sqrt(1.0 / fan_in), generator=generator)
        self.cls_token.normal_(0.0, 1e-6, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
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
    Returns ``(heads (H, N', d), out (N', D))`` where out = concat_h(heads) @ wo. All five tensors dense,
    floating, of one dtype and on one device (TypeError naming the first that is not); ValueError for
    shapes that do not chain.
    """
    for name, t in (("x", x), ("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}.dtype={t.dtype}: expected a floating dtype")
        if t.layout != torch.strided:
            raise TypeError(f"{name}.layout={t.layout}: expected a dense (torch.strided) tensor")
    for name, t in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name} is {t.dtype} on {t.device} but x is {x.dtype} on {x.device}: "
                            "give all five tensors one dtype and device")
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

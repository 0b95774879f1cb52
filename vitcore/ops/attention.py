"""Multi-head self-attention: the eager reference, the Triton flash-attention autograd Function and
the public ``flash_attention`` that dispatches between them (``vitcore.ops.dispatch.use_triton``)."""
import math
import numbers
import os
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from vitcore.ops.dispatch import triton_available, use_triton

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPES = _KERNEL_DTYPES + (torch.float64,)  # float64 (e.g. synflow) always runs the eager reference
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 1, 256  # tiles pad d to max(16, 2^k) for tl.dot; 256 is the largest that fits SRAM


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v, non-causal; q (..., N', d), k (..., M, d), v (..., M, d_v), scale
    defaults to 1/sqrt(d). Returns (..., N', d_v) in the inputs' dtype.

    Precision follows ``F.scaled_dot_product_attention``: fp16 / bf16 inputs are computed in float32
    (autocast off; SDPA's CPU and flash kernels accumulate in float32) and the result rounded once,
    and q and k are each multiplied by sqrt(scale) before q k^T (as SDPA's math path does), so the
    product does not overflow before it is scaled: fp16 q and k of size ~32 at d = 64 give logits of
    ~8000, whose unscaled q k^T (65 536) is past fp16's largest value. float32 and float64 compute in
    their own dtype (upcast the inputs for a float64 reference).
    TypeError for a non-tensor or a sparse one, ValueError for shapes that do not chain or dtypes that
    differ (named in the message).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{name}.layout={t.layout}: expected a dense (torch.strided) tensor")
        if t.dim() < 2:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (..., N', d)")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shapes q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)} do not chain: "
                         "q and k need the same d, k and v the same number of keys")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    compute = torch.promote_types(q.dtype, torch.float32)  # fp16 / bf16 -> float32; float64 stays
    root = math.sqrt(abs(scale))  # scale = sign * root^2, split between q and k
    with torch.autocast(q.device.type, enabled=False):
        qs = q.to(compute) * math.copysign(root, scale)  # (..., N', d)
        ks = k.to(compute) * root  # (..., M, d)
        scores = torch.matmul(qs, ks.transpose(-2, -1))  # (..., N', M)
        out = torch.matmul(scores.softmax(dim=-1), v.to(compute))  # (..., N', d_v)
    return out.to(q.dtype)


# -- torch.library registration: what torch.compile sees --
# The kernels are opaque custom ops with fake (meta) implementations for shapes, so
# ``torch.compile(model, fullgraph=True)`` traces through flash attention. Autograd stays with the
# autograd.Function below, which calls the ops only while compiling and the launchers directly
# otherwise: its host overhead is the lower one. Measured on this project's CPU host with a body that
# only allocates (the wiring alone, not the kernels), best of 5 x 3000 calls: autograd.Function
# 23 µs forward / 230 µs forward+autograd.grad, custom_op with register_autograd 135 / 513 µs (a busy
# 2-core machine, so only the ratio carries; issue 12 quotes ~8 µs against 23-30 µs on an H200).
@torch.library.custom_op("vitcore::flash_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from vitcore.kernels import attention as _kernels

    return _kernels.attention_fwd(q, k, v, scale)


@_fwd_op.register_fake
def _fwd_fake(q, k, v, scale):
    B, H, N, d = q.shape
    o = q.new_empty((B, N, H, d)).transpose(1, 2)  # (B, H, N', d) laid out (B, N', H, d)
    return o, q.new_empty((B, H, 2, N), dtype=torch.float32)  # row max and log2 row sum (B, H, 2, N')


@torch.library.custom_op("vitcore::flash_attention_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            stats: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from vitcore.kernels import attention_bwd as _kernels

    return _kernels.attention_bwd(do, q, k, v, o, stats, scale)


@_bwd_op.register_fake
def _bwd_fake(do, q, k, v, o, stats, scale):
    B, H, N, d = q.shape
    return tuple(q.new_empty((B, N, H, d)).transpose(1, 2) for _ in range(3))  # dq, dk, dv like o


class _FlashAttention(torch.autograd.Function):
    """Triton forward (saves O and the softmax's row statistics) and backward (dQ, then dK and dV)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        if torch.compiler.is_compiling():
            o, stats = _fwd_op(q, k, v, scale)
        else:
            from vitcore.kernels import attention as _kernels

            o, stats = _kernels.attention_fwd(q, k, v, scale)  # o (B, H, N', d) laid out (B, N', H, d)
        ctx.save_for_backward(q, k, v, o, stats)
        ctx.scale = scale
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, o, stats = ctx.saved_tensors
        if torch.compiler.is_compiling():
            dq, dk, dv = _bwd_op(do, q, k, v, o, stats, ctx.scale)
        else:
            from vitcore.kernels import attention_bwd as _kernels

            dq, dk, dv = _kernels.attention_bwd(do, q, k, v, o, stats, ctx.scale)
        return dq, dk, dv, None


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float]) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{name}.layout={t.layout}: expected a dense (torch.strided) tensor")
        if t.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(t.shape)} (ndim={t.dim()}); expected 4 dims (B, H, N', d)")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}.dtype={t.dtype} is not supported; expected one of {_DTYPES}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v shapes differ: q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)}; "
            "flash_attention is self-attention: one (B, H, N', d) for all three"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: q={q.device}, k={k.device}, v={v.device}")
    B, H, N, d = q.shape
    if not _MIN_HEAD_DIM <= d <= _MAX_HEAD_DIM:
        raise ValueError(f"head dim d={d} is outside the supported {_MIN_HEAD_DIM}..{_MAX_HEAD_DIM}")
    if min(B, H, N) < 1:
        raise ValueError(f"empty input: (B, H, N', d)={(B, H, N, d)}; every size must be >= 1")
    if scale is not None and not _finite_number(scale):
        raise ValueError(f"scale={scale!r} must be a finite number or None")


def _finite_number(value) -> bool:
    """A real number (Python's or NumPy's, not a bool) that is a finite float64 (an int or fraction past
    1.8e308 is not: float() would overflow)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy's bool is no numbers.Real
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """Non-causal softmax(q k^T * scale) v; a drop-in for ``F.scaled_dot_product_attention(q, k, v)``.

    q, k, v: (B, H, N', d) with any strides (views of a packed (B, N', 3, H, d) QKV projection are
    read in place), fp16 / bf16 / fp32 (float64 runs the eager reference), 1 <= d <= 256;
    scale (a real number) defaults to 1/sqrt(d). For fp16 / bf16 / fp32 inputs the logits scale * q.k
    must stay within float32's range: the Triton kernels return NaN past |logit| = 2.4e38 (float32's
    largest value / log2(e)), or where scale * log2(e) or, in fp32, q * scale * log2(e) is past it; the
    eager path, as SDPA, past 3.4e38. The Triton backward recomputes the probabilities from the scores and
    the forward's row maximum and log2 row sum: those of one-hot and tied rows come out exactly the
    forward's at any logits (``vitcore.kernels.attention`` says how, and what a GPU must do for it). In fp32
    against float64 (Triton's interpreter, ``bench/results/cpu-2026-12-08-attention-logit-range.md``, max
    |logit| 4.1 to 4.1e17, random and tied inputs): O and dV within 4.7e-7 relative error (the eager path
    3e-7); on the random inputs dQ and dK within 3.7e-6 (eager 2.9e-6) up to |logit| 411 and 0 where every
    row is one-hot, as eager's; on the tied ones, where the true dQ is (nearly) 0, dQ is rounding of 1.7
    to 2.4 times the norm of eager's from |logit| 30. In a row within a few roundings of one-hot
    (1 - max P = 3.2e-7, at |logit| 4.1e3) dQ is off by 0.15 of its norm (1e-4), eager's by 0.0017, since
    delta = rowsum(dO * O) is rounded apart from dP (as in FlashAttention; in fp16 from 1 - max P ~ 1e-3);
    attention="eager" keeps P for such logits.
    The Triton backward is not itself differentiable (no double backward).
    Returns (B, H, N', d). On the Triton path it is a view of memory laid out (B, N', H, d), so
    ``out.transpose(1, 2).reshape(B, N', H * d)`` is free; the eager fallback (``attention_ref``)
    returns a contiguous (B, H, N', d). fp32 follows ``torch.get_float32_matmul_precision()``.
    bf16 CPU tensors with ``VITCORE_TRITON=1`` run the eager reference (with a warning): Triton's
    interpreter computes bf16 ``tl.dot`` wrongly (``vitcore.ops.dispatch``).
    """
    _validate(q, k, v, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.dtype in _KERNEL_DTYPES and use_triton(q, uses_dot=True):
        return _FlashAttention.apply(q, k, v, scale)
    return attention_ref(q, k, v, scale)


def _tuned_table_module(path, name: str):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: path must be a str or os.PathLike, got {type(path).__name__}")
    if not triton_available():
        raise RuntimeError(f"{name}: the triton package is not installed, so there is nothing tuned")
    from vitcore.kernels import attention as _kernels

    return _kernels


def save_tuned(path) -> int:
    """Write the attention kernels' autotuned block sizes (every key tuned or loaded in this process)
    to ``path`` as JSON, replacing it atomically; returns the number of entries written."""
    return _tuned_table_module(path, "save_tuned").save_tuned(os.fspath(path))


def load_tuned(path) -> int:
    """Read a table written by ``save_tuned`` so that its keys are not tuned again; returns the number
    of entries read. ValueError for a file that is not such a table or was tuned with another Triton
    release; OSError if it cannot be read. ``VITCORE_TUNED=path`` does this at import (and saves at exit)."""
    return _tuned_table_module(path, "load_tuned").load_tuned(os.fspath(path))

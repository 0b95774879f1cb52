"""Which attention a ViT's MSA runs: ``vitcore``, ``sdpa``, ``eager`` or ``auto``.

    vitcore  ``flash_attention``: the Triton kernel where ``vitcore.ops.dispatch.use_triton`` says so,
             its eager reference elsewhere (on a CPU)
    sdpa     ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch picks its backend)
    eager    softmax(q kᵀ / sqrt(d)) v written out (``vitcore.ops.attention.attention_ref``)
    auto     vitcore's Triton kernel for the dtypes, sequence lengths N' and head dims d where the
             committed GPU report measured it faster than SDPA (``AUTO_VITCORE_MIN_TOKENS``,
             ``AUTO_VITCORE_HEAD_DIMS``), SDPA everywhere else, so scoring with ``auto`` is never
             slower than PyTorch's own attention where measured

Inside ``vitcore.ops.dispatch.eager()`` (passes that differentiate twice or run in float64) every
choice runs the eager reference: SDPA's fused CPU and CUDA backends have no double backward.
"""
import torch
import torch.nn.functional as F

from vitcore.ops.attention import attention_ref, flash_attention
from vitcore.ops.dispatch import eager_forced, use_triton

ATTENTION_CHOICES = ("vitcore", "sdpa", "eager", "auto")

# The fewest tokens N' from which ``auto`` runs vitcore's kernel, per dtype of q, k, v (absent: never).
# Source: bench/results/h100-2026-11-23-attention.md, forward+backward, vitcore vs SDPA's default:
# - fp32 is faster at every measured N' >= 577 (b-577 1.15x, b-1025 1.17x, l-4097 1.27x at "highest"
#   precision; 2.07x, 2.81x, 3.17x with TF32) but at N' = 197 only with 12-16 heads (0.41x-0.59x with
#   3-6 heads, 0.46x at d = 96), so N' = 197 stays on SDPA;
# - bf16 and fp16 are slower at every measured shape (0.14x-0.97x), so they always run SDPA.
AUTO_VITCORE_MIN_TOKENS = {torch.float32: 577}
# The head dims those N' >= 577 rows measured: d = 64 only (ViT-B, ViT-L). Other widths pad to the next
# power-of-two tile, and the one other width measured, d = 96 (a 128 tile), ran 2.2x slower than SDPA;
# a PiT's first stage (730 tokens at 224², heads 16-40 wide) therefore runs SDPA under auto.
AUTO_VITCORE_HEAD_DIMS = (64,)


def check_attention(attention) -> str:
    """``attention`` if it is one of ``ATTENTION_CHOICES``; a TypeError or ValueError naming it otherwise."""
    if not isinstance(attention, str):
        raise TypeError(f"attention={attention!r} must be a string, one of {', '.join(ATTENTION_CHOICES)}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention={attention!r}; valid: {', '.join(ATTENTION_CHOICES)}")
    return attention


def auto_uses_vitcore(dtype: torch.dtype, num_tokens: int, head_dim: int, triton: bool) -> bool:
    """Whether ``auto`` runs vitcore's kernel for q, k, v of ``dtype``, ``num_tokens`` (N') tokens and
    head dim ``head_dim`` (d); ``triton``: whether the kernel would run at all (else vitcore means the
    eager reference: SDPA)."""
    min_tokens = AUTO_VITCORE_MIN_TOKENS.get(dtype)
    return triton and min_tokens is not None and num_tokens >= min_tokens and head_dim in AUTO_VITCORE_HEAD_DIMS


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention: str) -> torch.Tensor:
    """Non-causal softmax(q kᵀ / sqrt(d)) v with the ``attention`` choice; q, k, v (B, H, N', d) -> (B, H, N', d)."""
    if eager_forced() or attention == "eager":
        return attention_ref(q, k, v)
    if attention == "auto":
        triton = use_triton(q, uses_dot=True)
        attention = "vitcore" if auto_uses_vitcore(q.dtype, q.shape[-2], q.shape[-1], triton) else "sdpa"
    if attention == "vitcore":
        return flash_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)

"""Attention providers side by side (pytest-benchmark; needs a CUDA GPU, skipped otherwise).

    pytest bench/bench_attention.py --benchmark-group-by=param:shape,param:dtype,param:mode

x-axis: ViT shapes; providers: SDPA's default dispatch, each SDPA backend forced, the eager
reference (``attention_ref``) and vitcore's Triton kernels; modes: ``fwd`` and ``fwd+bwd``.
All providers read q, k, v as views of one packed (B, N', 3, H, d) tensor, as a ViT's QKV
projection produces them (timm's layout). ``python -m bench.attention_report`` times the same providers
with ``triton.testing.do_bench`` and writes the markdown report.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from vitcore.bench.ceilings import matmul_precision
from vitcore.ops import attention_ref, flash_attention

# name: (B, H, N', d). ViT-Ti/S/B/L at 224 (197 tokens), then longer sequences and other head dims.
SHAPES = {
    "vit-ti": (64, 3, 197, 64),
    "vit-s": (64, 6, 197, 64),
    "vit-b": (64, 12, 197, 64),
    "vit-l": (64, 16, 197, 64),
    "ti-d32": (64, 6, 197, 32),
    "b-d96": (64, 8, 197, 96),
    "b-577": (16, 12, 577, 64),
    "b-1025": (8, 12, 1025, 64),
    "l-4097": (2, 16, 4097, 64),
}
# name: (dtype, torch.get_float32_matmul_precision() while it runs)
DTYPES = {
    "bf16": (torch.bfloat16, "highest"),
    "fp16": (torch.float16, "highest"),
    "fp32": (torch.float32, "highest"),
    "fp32-tf32": (torch.float32, "high"),
}
MODES = ["fwd", "fwd+bwd"]


def _sdpa_backend(backend):
    """SDPA forced onto one backend (None: PyTorch's own choice)."""

    def run(q, k, v):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _vitcore(q, k, v):
    return flash_attention(q, k, v)


def providers():
    """name -> fn(q, k, v) -> (B, H, N', d)."""
    from torch.nn.attention import SDPBackend

    return {
        "sdpa": _sdpa_backend(None),
        "sdpa-flash": _sdpa_backend(SDPBackend.FLASH_ATTENTION),
        "sdpa-efficient": _sdpa_backend(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa-cudnn": _sdpa_backend(SDPBackend.CUDNN_ATTENTION),
        "sdpa-math": _sdpa_backend(SDPBackend.MATH),
        "eager": attention_ref,
        "vitcore": _vitcore,
    }


def make_inputs(B, H, N, d, dtype, seed=0):
    """q, k, v (B, H, N', d) views of a packed (B, N', 3, H, d) tensor, requiring grad, and dO."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, N, 3, H, d, device="cuda", dtype=dtype, generator=gen)  # (B, N', 3, H, d)
    qkv.requires_grad_()
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N', d), non-leaf views
    do = torch.randn(B, H, N, d, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, do


def step(fn, mode, q, k, v, do):
    """One timed call: the forward (recording autograd, as in training), or forward + backward."""
    out = fn(q, k, v)
    if mode == "fwd+bwd":
        torch.autograd.grad(out, (q, k, v), do)
    return out


def flops(B, H, N, d, mode):
    """4 B H N'^2 d per forward (two matmuls), 2.5x that for the backward (five matmuls)."""
    fwd = 4 * B * H * N * N * d
    return fwd if mode == "fwd" else fwd * 3.5


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", list(providers()) if torch.cuda.is_available() else ["vitcore"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(benchmark, shape, dtype, provider, mode):
    B, H, N, d = SHAPES[shape]
    torch_dtype, precision = DTYPES[dtype]
    if provider in ("eager", "sdpa-math") and N > 1025 and os.environ.get("BENCH_SLOW") != "1":
        pytest.skip("N'^2 memory; set BENCH_SLOW=1")
    fn = providers()[provider]
    q, k, v, do = make_inputs(B, H, N, d, torch_dtype)
    with matmul_precision(precision):
        try:
            step(fn, mode, q, k, v, do)
        except RuntimeError as e:  # e.g. SDPA's flash / cuDNN backends have no fp32
            pytest.skip(f"{provider} does not run {dtype}: {str(e).splitlines()[0][:120]}")

        def timed():
            step(fn, mode, q, k, v, do)
            torch.cuda.synchronize()

        benchmark.pedantic(timed, rounds=50, warmup_rounds=5)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["tflops"] = flops(B, H, N, d, mode) / seconds / 1e12

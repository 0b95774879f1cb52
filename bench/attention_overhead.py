"""Host-side cost of one vitcore attention call, part by part (diagnoses launch-bound small shapes).

    python bench/attention_overhead.py
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from vitcore.kernels import attention as K
from vitcore.kernels.attention_bwd import attention_bwd
from vitcore.ops import flash_attention
from vitcore.ops.attention import _validate


@triton.jit
def _noop_kernel(X, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20,
                 a21, a22, a23, a24, a25, a26, a27, a28, a29, a30, a31, a32, a33, a34, a35, a36, BLOCK: tl.constexpr):
    pass


@triton.jit
def _noop_small_kernel(X, a1, BLOCK: tl.constexpr):
    pass


def host_us(fn, n=300):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main():
    B, H, N, d = 64, 12, 197, 64
    qkv = torch.randn(B, N, 3, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    do = torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16)
    x = torch.empty(16, device="cuda")
    out = {}
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    o, lse = K.attention_fwd(qd, kd, vd, 0.125)
    out["torch.empty"] = host_us(lambda: torch.empty((B, N, H, d), device="cuda", dtype=torch.bfloat16))
    out["x.add_(1)"] = host_us(lambda: x.add_(1))
    out["noop kernel 38 args"] = host_us(lambda: _noop_kernel[(1,)](x, *range(1, 37), BLOCK=16))
    out["noop kernel 2 args"] = host_us(lambda: _noop_small_kernel[(1,)](x, 1, BLOCK=16))
    out["_validate"] = host_us(lambda: _validate(q, k, v, None))
    out["attention_fwd launcher"] = host_us(lambda: K.attention_fwd(qd, kd, vd, 0.125))
    out["attention_bwd launcher"] = host_us(lambda: attention_bwd(do, qd, kd, vd, o, lse, 0.125))
    K._AUTOTUNE = False
    out["attention_fwd launcher, no autotuner"] = host_us(lambda: K.attention_fwd(qd, kd, vd, 0.125))
    K._AUTOTUNE = True
    out["flash_attention fwd (no grad)"] = host_us(lambda: flash_attention(qd, kd, vd))
    out["flash_attention fwd"] = host_us(lambda: flash_attention(q, k, v))
    out["flash_attention fwd+bwd"] = host_us(lambda: torch.autograd.grad(flash_attention(q, k, v), (q, k, v), do))
    out["sdpa fwd+bwd"] = host_us(
        lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), do))
    # GPU time per kernel
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            torch.autograd.grad(flash_attention(q, k, v), (q, k, v), do)
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), do)
        torch.cuda.synchronize()
    kern = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0:
            kern[e.key[:60]] = getattr(e, "self_device_time_total", 0) / max(e.count, 1)
    out["gpu_us_per_call"] = kern
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()

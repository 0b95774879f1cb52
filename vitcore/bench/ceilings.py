"""The device's measured ceilings, for "fraction of ceiling" columns (nanoGPT's estimate_mfu, measured).

- matmul: a large square matmul per dtype, TFLOP/s = 2·n³ / t (n = 8192 on CUDA, 1024 on CPU).
  A precision such as ``"high"`` (TF32) is set for the fp32 matmul when given.
- copy: a device-to-device copy, GB/s = (bytes read + bytes written) / t (1 GiB on CUDA, 64 MiB on CPU).
The fastest window counts: a ceiling is the best the device does, not its typical time.
"""
import contextlib
from typing import Dict, Optional, Sequence

import torch

from vitcore.bench.timers import time_windows

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def matmul_precision(precision: Optional[str]):
    """``torch.set_float32_matmul_precision(precision)`` for the block (None: leave it as it is)."""
    previous = torch.get_float32_matmul_precision()
    if precision is not None:
        torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def matmul_tflops(device, dtype: str, budget_s: float = 0.04, windows: int = 5,
                  precision: Optional[str] = None) -> float:
    """Measured TFLOP/s of an n x n @ n x n matmul in ``dtype`` ("fp32", "bf16", "fp16")."""
    n = 8192 if torch.device(device).type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[dtype]) for _ in range(2))
    with matmul_precision(precision):
        t = min(min(time_windows(lambda: a @ b, device, budget_s, windows)[0]) for _ in range(2))  # 1st: clocks up
    return 2 * n**3 / t / 1e12  # 2·n³ FLOPs


def copy_gbps(device, budget_s: float = 0.04, windows: int = 5) -> Dict[str, float]:
    """Measured copy bandwidth: {"copy_gbps": read + write GB/s, "copy_bytes": bytes copied}."""
    numel = (1 << 28) if torch.device(device).type == "cuda" else (1 << 24)  # 1 GiB / 64 MiB of fp32
    src, dst = torch.empty(numel, device=device), torch.empty(numel, device=device)
    t = min(time_windows(lambda: dst.copy_(src), device, budget_s, windows)[0])
    return {"copy_gbps": 2 * numel * 4 / t / 1e9, "copy_bytes": numel * 4}  # bytes read + bytes written


def measure_ceiling(device, dtypes: Sequence[str], budget_s: float, windows: int) -> dict:
    """The matmul ceiling of each dtype and the copy ceiling, in the form results files record."""
    n = 8192 if torch.device(device).type == "cuda" else 1024
    out = {"matmul_n": n, "matmul_tflops": {dt: matmul_tflops(device, dt, 4 * budget_s, windows) for dt in dtypes}}
    out.update(copy_gbps(device, 4 * budget_s, windows))
    return out

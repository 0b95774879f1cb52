"""Per-parameter gradient statistics: Σg², Σ|g·θ|, Σg·θ, Σθ² for every tensor of a model at once.

The proxies read them all: grad_norm = sqrt(Σ Σg²), snip = Σ Σ|g·θ|, plain = Σ Σg·θ. On CUDA one
multi-tensor Triton reduction (``kernels/param_stats.py``) replaces three or more launches and a host
sync per tensor. Not differentiable: runs under ``torch.no_grad()`` and returns a plain tensor.
Sums are float64 on both paths (no sum of squares of fp32 values overflows on the way; a loss
scaled by 1e20 gives Σg² ~ 1e40, beyond fp32).
"""
from typing import Iterable, List

import torch

from vitcore.ops.dispatch import use_triton

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _as_list(name: str, tensors) -> list:
    """``tensors`` as a list; a single tensor (whose rows would iterate) or a non-iterable is a TypeError."""
    if isinstance(tensors, torch.Tensor):
        raise TypeError(f"{name} must be a sequence of tensors, got one tensor of shape {tuple(tensors.shape)} "
                        f"(pass [{name[:-1]}] for a single pair)")
    try:
        return list(tensors)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of tensors, got {type(tensors).__name__}") from None


def _validate(params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
    """Raise naming the first bad index; O(T) Python, so the Triton path runs it on a plan miss only."""
    if len(params) != len(grads):
        raise ValueError(f"len(params)={len(params)} != len(grads)={len(grads)}")
    if not params:
        raise ValueError("params and grads are empty: nothing to reduce")
    device = params[0].device if isinstance(params[0], torch.Tensor) else None
    for i, (w, g) in enumerate(zip(params, grads)):
        for name, t in (("params", w), ("grads", g)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] is a {type(t).__name__}, not a torch.Tensor")
            if t.dtype not in _DTYPES:
                raise TypeError(f"{name}[{i}].dtype={t.dtype}: expected one of {_DTYPES}")
            if t.layout != torch.strided:
                raise TypeError(f"{name}[{i}].layout={t.layout}: expected a dense (torch.strided) tensor")
            if t.device != device:
                raise ValueError(f"{name}[{i}].device={t.device} but params[0].device={device}")
        if g.shape != w.shape:
            raise ValueError(f"grads[{i}].shape={tuple(g.shape)} != params[{i}].shape={tuple(w.shape)}")


def param_stats_ref(params: Iterable[torch.Tensor], grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """(T, 4) float64 Σg², Σ|g·θ|, Σg·θ, Σθ² per tensor, computed in float64 (for tests)."""
    params, grads = _as_list("params", params), _as_list("grads", grads)
    _validate(params, grads)
    with torch.no_grad():
        rows = []
        for w, g in zip(params, grads):
            g, w = g.double(), w.double()
            gw = g * w
            rows.append(torch.stack((g.square().sum(), gw.abs().sum(), gw.sum(), w.square().sum())))
        return torch.stack(rows)  # (T, 4)


def _param_stats_eager(params: List[torch.Tensor], grads: List[torch.Tensor]) -> torch.Tensor:
    # float64 like the kernel: squares of fp32 values cannot overflow, products of two fp32 values are
    # exact; on the device, no host sync. torch._foreach_* runs an op over all T tensors in one call (a
    # C++ loop on the CPU, multi-tensor kernels on CUDA) instead of ~8 Python-dispatched ops per tensor:
    # Σg² = ‖g‖₂², Σθ² = ‖θ‖₂², Σ|g·θ| = ‖g·θ‖₁; only the casts and Σg·θ (foreach has no sum) stay per tensor.
    f64 = torch.float64
    g = [t.to(f64) for t in grads]
    gw = torch._foreach_mul(g, [t.to(f64) for t in params])
    g2 = torch.stack(torch._foreach_norm(g)).square()  # (T,)
    w2 = torch.stack(torch._foreach_norm(params, 2, dtype=f64)).square()  # (T,)
    abs_gw = torch.stack(torch._foreach_norm(gw, 1))  # (T,)
    sum_gw = torch.stack([t.sum() for t in gw])  # (T,)
    return torch.stack((g2, abs_gw, sum_gw, w2), dim=1)  # (T, 4)


@torch.no_grad()
def param_stats(params: Iterable[torch.Tensor], grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """(T, 4) float64 [Σg², Σ|g·θ|, Σg·θ, Σθ²] for each (weight θ, gradient g) pair, on their device.

    params, grads: equal-length sequences (not single tensors) of floating tensors (fp32 / fp16 /
    bf16 / fp64, mixed freely), dense, each gradient shaped like its weight, all on one device. ``None``
    gradients are the caller's to skip. Accumulated in float64 on both paths: no sum overflows
    unless its float64 result would. Raises TypeError for a non-sequence, a non-tensor, a sparse
    tensor or an unsupported dtype, ValueError for mismatched lengths, shapes or devices (naming the index).
    """
    params, grads = _as_list("params", params), _as_list("grads", grads)
    if params and grads and all(isinstance(t, torch.Tensor) for t in (params[0], grads[0])) \
            and use_triton(params[0]):
        from vitcore.kernels import param_stats as _kernels

        plan = _kernels.find_plan(params, grads) if len(params) == len(grads) else None
        if plan is None:  # first sight of this metadata: validate, then plan
            _validate(params, grads)
            plan = _kernels.make_plan(params, grads)
        return _kernels.param_stats(plan, params, grads)
    _validate(params, grads)
    return _param_stats_eager(params, grads)

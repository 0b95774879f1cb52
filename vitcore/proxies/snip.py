"""snip: Σ_t Σ_i |g_ti θ_ti|, connection sensitivity at initialisation (Lee et al., ICLR 2019).

g_t = dL/dθ_t for the counted tensors θ_t, L the batch's mean loss.
"""
import torch

from vitcore.proxies.base import Context, Proxy

_ABS_GW = 1  # param_stats column: Σ|g·θ|


def _reduce(ctx: Context) -> torch.Tensor:
    return ctx.param_stats()[:, _ABS_GW].sum()


PROXY = Proxy(name="snip", passes=("data",), taps=("grads",), reduce=_reduce)

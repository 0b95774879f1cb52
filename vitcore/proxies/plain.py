"""plain: Σ_t Σ_i g_ti θ_ti, the first-order loss change of removing θ (Mozer & Smolensky,
NeurIPS 1988; named "plain" by Abdelfattah et al., ICLR 2021).

g_t = dL/dθ_t for the counted tensors θ_t, L the batch's mean loss.
"""
import torch

from vitcore.proxies.base import Context, Proxy

_GW = 2  # param_stats column: Σg·θ


def _reduce(ctx: Context) -> torch.Tensor:
    return ctx.param_stats()[:, _GW].sum()


PROXY = Proxy(name="plain", passes=("data",), taps=("grads",), reduce=_reduce)

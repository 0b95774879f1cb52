"""grad_norm: the norm of the loss gradient at initialisation (Abdelfattah et al., ICLR 2021).

    global     sqrt(Σ_t Σ_i g_ti²)      the norm of the whole gradient vector
    per_layer  Σ_t sqrt(Σ_i g_ti²)      the sum of per-tensor norms, as foresight's loop computes it

g_t = dL/dθ_t for the counted tensors θ_t, L the batch's mean loss; ``mode`` picks the form.
"""
import torch

from vitcore.proxies.base import Context, Proxy

GRAD_NORM_MODES = ("global", "per_layer")  # how grad_norm adds the tensors' norms
_G2 = 0  # param_stats column: Σg²


def _reduce(ctx: Context) -> torch.Tensor:
    g2 = ctx.param_stats()[:, _G2]  # (T',) float64
    return g2.sum().sqrt() if ctx.mode == "global" else g2.sqrt().sum()


PROXY = Proxy(name="grad_norm", passes=("data",), taps=("grads",), reduce=_reduce)

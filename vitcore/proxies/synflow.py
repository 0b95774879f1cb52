"""synflow: Σ_t Σ_i |θ_ti ∂R/∂θ_ti|, R = Σ f(1) for the network with |θ| (and |·| of its floating
buffers) on one all-ones example, in float64 and eval mode (Tanaka et al., NeurIPS 2020; their code
scores in eval mode), so BatchNorm is a fixed affine map: its |running statistics|, or mean 0 and
variance 1 for a BatchNorm that tracks none (NAS-Bench-201's cells; ``vitcore.passes.synflow_grads``
gives the reasons). foresight strips BatchNorm instead (``vitcore.compat``'s "synflow").
The "synflow" pass runs on copies; the sums stay float64, since deep |θ| products exceed fp32.
"""
import torch

from vitcore.proxies.base import Context, Proxy


def _reduce(ctx: Context) -> torch.Tensor:
    theta, grads = ctx.synflow
    terms = [(t.detach() * g).abs().sum() for t, g in zip(theta, grads) if g is not None]
    return sum(terms) if terms else torch.zeros((), dtype=torch.float64, device=ctx.inputs.device)


PROXY = Proxy(name="synflow", passes=("synflow",), reduce=_reduce)

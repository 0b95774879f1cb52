"""grasp: -Σ_t Σ_i θ_ti (H g)_ti, H the Hessian of the batch's mean loss and g its gradient
(Wang et al., ICLR 2020, with temperature T = 1). H·g comes from the "hessian" pass (double backward
through the eager references, and through ``F.scaled_dot_product_attention`` on its math backend in
models that call it, timm's among them); one multi-tensor reduction gives Σθ·(Hg).
"""
import torch

from vitcore.ops.param_stats import param_stats
from vitcore.proxies.base import Context, Proxy, present

_GW = 2  # param_stats column: Σ g·θ, here Σ (Hg)·θ


def _reduce(ctx: Context) -> torch.Tensor:
    return -param_stats(*present(ctx.counted, ctx.hessian))[:, _GW].double().sum()


PROXY = Proxy(name="grasp", passes=("data", "hessian"), taps=("grads",), reduce=_reduce)

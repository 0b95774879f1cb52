"""fisher: Σ_layers Σ_c ½ mean_b (Σ_n a_bnc ∂L/∂a_bnc)² (Turner et al., ICLR 2020).

a is the output of every Linear/Conv layer call, c its channel axis (last for Linear, 1 for Conv),
n every other axis (tokens, pixels). foresight sums every axis after the second instead, which for a
transformer's (B, N', C) activations sums the channels and keeps the tokens; vitcore keeps channels.
"""
import torch

from vitcore.proxies.base import Context, Proxy


def _reduce(ctx: Context) -> torch.Tensor:
    terms = [f.double().sum() for f in ctx.data.fisher]
    return 0.5 * sum(terms) if terms else torch.zeros((), dtype=torch.float64, device=ctx.inputs.device)


PROXY = Proxy(name="fisher", passes=("data",), taps=("fisher",), reduce=_reduce)

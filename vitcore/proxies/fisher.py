"""fisher: Σ_layers Σ_c ½ mean_b (Σ_n a_bnc ∂L/∂a_bnc)² (Turner et al., ICLR 2020).

a is the output of every Linear/Conv layer call, c its channel axis (last for Linear, 1 for Conv),
n every other axis (tokens, pixels). Frozen weights change nothing (the loss still has a gradient at
their layer's output); a layer run under torch.no_grad() inside forward has none and adds nothing.
foresight sums every axis after the second instead, which for a transformer's (B, N', C) activations
sums the channels and keeps the tokens; vitcore keeps channels.
"""
import torch

from vitcore.proxies.base import Context, Proxy


def _reduce(ctx: Context) -> torch.Tensor:
    if not ctx.data.fisher_layers:
        raise ValueError("fisher reads the outputs of nn.Linear / nn.Conv layers, and the model ran none whose "
                         "output the loss depends on")
    return 0.5 * sum(f.double().sum() for f in ctx.data.fisher)


PROXY = Proxy(name="fisher", passes=("data",), taps=("fisher",), reduce=_reduce)

"""zico: Σ_l log Σ_{i: σ_li > 0} E|g_li| / σ_li over the weights of Linear/Conv layers l (Li et al.,
"ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients", ICLR 2023).

Mean and standard deviation are taken over two minibatches: the two halves of the batch, each
forwarded on its own (the "halves" pass: BatchNorm sees each half's statistics, as in the paper,
and the other proxies still see the whole batch). It always counts layer weights only, as the paper
does: a bias can have an exactly zero gradient in exact arithmetic (the key bias of softmax
attention), and then σ is rounding noise that decides the score. NaN gradients give NaN, not 0.
"""
import torch

from vitcore.passes import layer_weights
from vitcore.proxies.base import Context, Proxy


def _reduce(ctx: Context) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=ctx.inputs.device)
    index = {id(p): i for i, p in enumerate(ctx.halves.params)}
    weights = layer_weights(ctx.model)
    if not weights:
        raise ValueError("zico reads the gradients of nn.Linear / nn.Conv weights, and the model has none")
    for w in weights:
        first, second = (g[index[id(w)]] for g in ctx.halves.group_grads)
        if first is None or second is None:
            continue
        first, second = first.double(), second.double()
        # over two values: mean |g| = (|g1| + |g2|) / 2 and σ = |g1 - g2| / 2, so E|g| / σ is
        # (|g1| + |g2|) / |g1 - g2|, in closed form (torch's std over a dim of 2 took most of zico's CPU time)
        spread = (first - second).abs()
        ratio = torch.where(spread > 0, (first.abs() + second.abs()) / torch.where(spread > 0, spread, 1), 0).sum()
        term = torch.where(ratio > 0, torch.log(torch.where(ratio > 0, ratio, 1)), 0)
        finite = torch.isfinite(first).all() & torch.isfinite(second).all()
        total = total + torch.where(finite, term, torch.nan)
    return total


PROXY = Proxy(name="zico", passes=("halves",), reduce=_reduce, min_batch=2)

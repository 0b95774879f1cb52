"""zico: Σ_l log Σ_{i: σ_li > 0} E|g_li| / σ_li over the weights of Linear/Conv layers l (Li et al.,
"ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients", ICLR 2023).

Mean and standard deviation are taken over two minibatches: the two halves of the batch, each
forwarded on its own (the "halves" pass: BatchNorm sees each half's statistics, as in the paper,
and the other proxies still see the whole batch). It always counts layer weights only, as the paper
does: a bias can have an exactly zero gradient in exact arithmetic (the key bias of softmax
attention), and then σ is rounding noise that decides the score. NaN gradients give NaN, not 0.
"""
import torch

from vitcore.passes import layer_weight_groups
from vitcore.proxies.base import Context, Proxy


def _reduce(ctx: Context) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=ctx.inputs.device)
    index = {id(p): i for i, p in enumerate(ctx.halves.params)}
    groups = layer_weight_groups(ctx.model)
    if not groups:
        raise ValueError("zico reads the gradients of nn.Linear / nn.Conv weights, and the model has none")
    for group in groups:  # one layer: a weight, or the parameters a computed weight is made from
        pairs = [tuple(g[index[id(w)]] for g in ctx.halves.group_grads) for w in group]
        pairs = [(first.double(), second.double()) for first, second in pairs
                 if first is not None and second is not None]
        if not pairs:
            continue
        ratio = sum(_ratio_sum(first, second) for first, second in pairs)
        term = torch.where(ratio > 0, torch.log(torch.where(ratio > 0, ratio, 1)), 0)
        finite = torch.stack([torch.isfinite(f).all() & torch.isfinite(s).all() for f, s in pairs]).all()
        total = total + torch.where(finite, term, torch.nan)
    return total


def _ratio_sum(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Σ_i E|g_i| / σ_i over the entries with σ_i > 0, for two gradients of one tensor: over two values
    mean |g| = (|g1| + |g2|) / 2 and σ = |g1 - g2| / 2, so the ratio is (|g1| + |g2|) / |g1 - g2|, in closed
    form (torch's std over a dim of 2 took most of zico's CPU time)."""
    spread = (first - second).abs()
    return torch.where(spread > 0, (first.abs() + second.abs()) / torch.where(spread > 0, spread, 1), 0).sum()


PROXY = Proxy(name="zico", passes=("halves",), reduce=_reduce, min_batch=2)

"""lswag: L-SWAG, layer-sample wise activation with gradients (Casarin, Escalera and Lanz, "L-SWAG:
Layer-Sample Wise Activation with Gradients information for Zero-Shot NAS on Vision Transformers",
CVPR 2025, arXiv 2505.07300).

    L-SWAG = Λ · Ψ,   Λ = Σ_{l ∈ L̂} log Σ_{θ ∈ W_l, σ_θ > 0} 1/σ_θ,   Ψ = SWAP over the layers L̂

σ_θ is the standard deviation over the B examples of the per-example loss gradient ∂ℓ_b/∂θ (the
population std, as ZiCo's code computes it); W_l the weights of layer l; L̂ a window of layers;
Ψ the number of distinct sample-wise activation patterns (``vitcore.proxies.swap``) of the
activation layers in that window.

Provenance, stated plainly: the paper's argument, as its abstract and secondary summaries give it,
is that ZiCo's Σ_l log Σ_θ mean|g_θ|/σ_θ keeps its value without the gradient mean, that layers
differ in how much their statistics say (hence a window L̂), and that the gradient term is multiplied
by SWAP's expressivity count over the same layers. The paper's own equations and the authors' code
could not be read through this project's tools, so three points are vitcore's reading and should be
checked against arXiv 2505.07300 §3: (1) the mean is dropped as Σ 1/σ (ZiCo's ratio with μ = 1);
(2) the window L̂ is every block (the paper chooses depth percentiles; none is assumed here);
(3) Ψ counts patterns once over the whole window (not per layer).

ViT choices: the layers are the Linear layers inside the blocks (QKV, W^O, both MLP layers), their
weights only (ZiCo's practice; vitcore's zico explains why biases are left out); Ψ reads the blocks'
GELU inputs, class token included. Per-example gradients come from one private batched forward and
backward (the data pass keeps batch-mean gradients only): for y = x Wᵀ the gradient of example b is
B · Σ_tokens dy_b ⊗ x_b (the loss averages over the batch), so no per-example passes are needed.
Ψ reads the data pass's "codes" tap, as SWAP does. Everything reduces on the device before the one
host sync; at least 2 examples are needed.
"""
from typing import List, Sequence

import torch
from torch import nn

from vitcore.model import Block, ViT
from vitcore.proxies.base import Context, Proxy
from vitcore.proxies.swap import swap_reduce


def inverse_std_term(per_example: torch.Tensor) -> torch.Tensor:
    """log Σ_{θ: σ_θ > 0} 1/σ_θ for per-example gradients (B, *θ shape); 0-d float64.

    0 when no weight has σ > 0 (log of an empty sum is left out, as ZiCo's code skips such layers).
    """
    std = per_example.double().std(0, unbiased=False)  # (*θ shape), float64 statistics
    total = torch.where(std > 0, 1 / torch.where(std > 0, std, 1), 0).sum()
    return torch.where(total > 0, torch.log(torch.where(total > 0, total, 1)), 0)


def lswag_reduce(per_layer_terms: Sequence[torch.Tensor], active: torch.Tensor) -> torch.Tensor:
    """Λ · Ψ from Λ's per-layer terms (0-d each) and the (B, U) activity matrix of the window."""
    return torch.stack(list(per_layer_terms)).sum() * swap_reduce(active)


def lswag_layers(model: nn.Module) -> List[nn.Linear]:
    """The Linear layers inside the blocks of a vitcore ViT (the window L̂ = every block)."""
    if not isinstance(model, ViT):
        raise TypeError(f"lswag needs a vitcore.ViT (it reads the blocks' layers), got {type(model).__name__}")
    return [m for b in model.modules() if isinstance(b, Block) for m in b.modules() if isinstance(m, nn.Linear)]


def _reduce(ctx: Context) -> torch.Tensor:
    layer_io: List[tuple] = []

    def keep_io(module, args, output):
        layer_io.append((args[0].detach(), output))

    # a private forward and backward: per-example weight gradients need each layer's input and output
    handles = [m.register_forward_hook(keep_io) for m in lswag_layers(ctx.model)]
    try:
        loss = ctx.loss_fn(ctx.model(ctx.inputs), ctx.targets)
        grads = torch.autograd.grad(loss, [o for _, o in layer_io])  # each (B, N', out)
    finally:
        for h in handles:
            h.remove()
    B = ctx.inputs.shape[0]
    # y = x Wᵀ: example b's gradient of its own loss is B · Σ_tokens dy_b ⊗ x_b (the loss averages)
    terms = [inverse_std_term(B * torch.einsum("bno,bni->boi", dy, x)) for (x, _), dy in zip(layer_io, grads)]
    active = torch.cat(ctx.data.codes, 1)  # (B, U), the data pass's GELU input signs: Ψ's window
    return torch.where(ctx.data.codes_nan, torch.nan, lswag_reduce(terms, active))


PROXY = Proxy(name="lswag", passes=("data",), taps=("codes",), reduce=_reduce, min_batch=2)

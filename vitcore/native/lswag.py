"""L-SWAG, layer-sample wise activation with gradients (Casarin, Escalera and Lanz, "L-SWAG:
Layer-Sample Wise Activation with Gradients information for Zero-Shot NAS on Vision Transformers",
CVPR 2025, arXiv 2505.07300).

    L-SWAG = Λ · Ψ,   Λ = Σ_{l ∈ L̂} log Σ_{θ ∈ W_l, σ_θ > 0} 1/σ_θ,   Ψ = SWAP over the layers L̂

σ_θ is the standard deviation over the B examples of the per-example loss gradient ∂ℓ_b/∂θ (the
population std, as ZiCo's code computes it); W_l the weights of layer l; L̂ a window of layers;
Ψ the number of distinct sample-wise activation patterns (``vitcore.native.swap``) of the
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
GELU inputs, class token included. Per-example gradients come from one batched forward and
backward (``vitcore.native.passes``, shared with SWAP and MeCo): for y = x Wᵀ the gradient of
example b is B · Σ_tokens dy_b ⊗ x_b (the loss averages over the batch), so no per-example passes
are needed. Everything reduces on the device; ``lswag``
returns a 0-d float64 tensor.
"""
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitcore.native.passes import native_pass
from vitcore.native.swap import swap_reduce


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


def lswag(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> torch.Tensor:
    """L-SWAG of ``model`` (a vitcore ViT) on one batch; 0-d float64. ``loss_fn`` must average over examples.

    Needs at least 2 examples (a standard deviation over examples). One forward and one backward
    pass (``vitcore.native.passes``); the model's parameters and their ``.grad`` are not changed.
    """
    if inputs.shape[0] < 2:
        raise ValueError(f"lswag takes gradient statistics over the examples: it needs at least 2, got {inputs.shape[0]}")
    p = native_pass(model, inputs, targets, loss_fn, lswag=True)
    return lswag_reduce(p.lswag_terms, p.active)

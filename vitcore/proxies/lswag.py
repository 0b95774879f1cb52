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
Looked for again (2026-11-29): the stored copies of arxiv.org/html/2505.07300v1 and of the CVPR 2025
open-access page give the abstract and introduction only; two summaries on en.papernotes.org
(CVPR2025/interpretability/lswag_zero_shot_nas/ and CVPR2025/model_compression/
l_swag_zero_shot_nas_vision_transformers/) say the mean is discarded "keeping only the variance",
that the gradient statistics' contribution differs across layers, and "Code: None"; no repository of
the authors' was found (GitHub names with lswag, L-SWAG, L_SWAG, LIBRA-NAS, casarin; the first
author's casarinsof/TRAS is another project). None of this settles (1)-(3), so they stand unchanged.
Ψ inherits SWAP's saturation (``vitcore.proxies.swap``): with fewer examples than about log2 of the
window's GELU neurons Ψ = 2^B for every network, and L-SWAG then ranks as Λ alone; well above it
(the SWAP authors' 128 examples, all 100 AutoFormer-Tiny dev-set networks) Ψ is 99.7–99.8% of the
neuron count U, and L-SWAG ranks as Λ times U. The host-side finish warns in both cases.

ViT choices: the layers are the Linear layers inside the blocks (QKV, W^O, both MLP layers), their
weights only (ZiCo's practice; vitcore's zico explains why biases are left out); Ψ reads the blocks'
GELU inputs, class token included. Per-example gradients come from a private batched forward and
backward (the data pass keeps batch-mean gradients only): for y = x Wᵀ the gradient of example b is
n · Σ_tokens dy_b ⊗ x_b (the loss averages over the n examples of a chunk), so no per-example passes
are needed.
The private pass runs over ``ctx.chunks`` like the shared ones (so the automatic doubling of the
chunks on CUDA out-of-memory covers it too) and merges each layer's per-example statistics chunk
by chunk; its loss goes through ``vitcore.passes.loss_on``, so targets outside the classes are
refused after the sync as for every proxy. Ψ reads the data pass's "codes" tap, as SWAP does.
Everything reduces on the device before the one host sync; at least 2 examples are needed.
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from vitcore.passes import logits_of, loss_on, split
from vitcore.proxies.base import Context, Proxy, activation_codes, vit_blocks
from vitcore.proxies.swap import pattern_bounds, swap_reduce, warn_if_saturated


def inverse_std_term(std: torch.Tensor) -> torch.Tensor:
    """log Σ_{θ: σ_θ > 0} 1/σ_θ for the per-weight standard deviations σ (any shape); 0-d float64.

    0 when no weight has σ > 0 (log of an empty sum is left out, as ZiCo's code skips such layers).
    """
    total = torch.where(std > 0, 1 / torch.where(std > 0, std, 1), 0).sum()
    return torch.where(total > 0, torch.log(torch.where(total > 0, total, 1)), 0)


class _Moments:
    """Mean and Σ(g - mean)² over examples of one layer's per-example gradients, merged chunk by
    chunk in float64 (Chan, Golub and LeVeque's pairwise update), so the chunks never change σ
    beyond rounding and the (B, *θ shape) gradients are never held at once. A chunk's own mean and
    Σ(g - mean)² are taken in the gradients' dtype, float32 at least (a float64 copy of the
    (n, *θ shape) chunk cost a third of lswag's time at B = 64 on CPU), about the mean accumulated in
    float64; only those (*θ shape) results are merged in float64."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, chunk: torch.Tensor) -> None:
        """chunk: (n, *θ shape) per-example gradients of n more examples."""
        if chunk.element_size() < 4:  # fp16/bf16 under autocast: their rounding would reach σ
            chunk = chunk.float()
        # the mean accumulated in float64 and rounded once: n equal gradients give their value exactly,
        # so their σ is 0 (left out), not a rounding residue whose 1/σ would swamp Λ
        n, mean = chunk.shape[0], chunk.mean(0, dtype=torch.float64)  # (*θ shape)
        m2 = (chunk - mean.to(chunk.dtype)).square_().sum(0).double()  # (*θ shape)
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta.pow(2) * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def std(self) -> torch.Tensor:
        """The population standard deviation (ZiCo's numpy std), (*θ shape) float64."""
        return (self.m2 / self.n).sqrt()


def lswag_reduce(per_layer_terms: Sequence[torch.Tensor], psi: torch.Tensor) -> torch.Tensor:
    """Λ · Ψ from Λ's per-layer terms (0-d each) and Ψ (0-d, ``swap_reduce`` of the window's activity)."""
    return torch.stack(list(per_layer_terms)).sum() * psi


def lswag_layers(model: nn.Module) -> List[nn.Linear]:
    """The Linear layers inside the blocks of a vitcore ViT or PiT or a timm ViT
    (``vitcore.proxies.base.find_vit_blocks``; the window L̂ = every block)."""
    return [m for b in vit_blocks(model, "lswag", "it reads the blocks' layers") for m in b.modules() if isinstance(m, nn.Linear)]


def _reduce(ctx: Context) -> Tuple[torch.Tensor, ...]:
    layers = lswag_layers(ctx.model)
    layer_io: List[tuple] = []

    def keep_io(module, args, output):
        layer_io.append((args[0].detach(), output))

    # a private forward and backward per chunk: per-example weight gradients need each layer's input
    # and output; the loss goes through loss_on, so bad targets are counted and refused after the sync
    moments = [_Moments() for _ in layers]
    handles = [m.register_forward_hook(keep_io) for m in layers]
    try:
        for start, end, _ in split(ctx.inputs.shape[0], ctx.chunks):
            layer_io.clear()
            logits = logits_of(ctx.model(ctx.inputs[start:end]), end - start, ctx.targets)
            loss = loss_on(ctx.loss_fn, logits, ctx.targets[start:end])
            grads = torch.autograd.grad(loss, [o for _, o in layer_io])  # each (n, N', out)
            # y = x Wᵀ: example b's gradient of its own loss is n · Σ_tokens dy_b ⊗ x_b (the loss averages)
            for stats, (x, _), dy in zip(moments, layer_io, grads):
                stats.add((end - start) * torch.einsum("bno,bni->boi", dy, x))  # (n, out, in)
    finally:
        for h in handles:
            h.remove()
        layer_io.clear()
    terms = [inverse_std_term(stats.std()) for stats in moments]
    active = torch.cat(activation_codes(ctx, "lswag"), 1)  # (B, U), the data pass's GELU input signs: Ψ's window
    psi = swap_reduce(active)
    return torch.where(ctx.data.codes_nan, torch.nan, lswag_reduce(terms, psi)), psi, *pattern_bounds(active)


def _finish(values: Tuple[np.ndarray, ...]) -> float:
    value, psi, B, U = (float(v) for v in values)
    warn_if_saturated("lswag's Ψ", psi, B, U)
    return value


PROXY = Proxy(name="lswag", passes=("data",), taps=("codes",), reduce=_reduce, finish=_finish, min_batch=2,
              vit_only=True)

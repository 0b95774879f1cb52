"""az_expressivity: AZ-NAS's expressivity (Lee and Ham, "AZ-NAS: Assembling Zero-Cost Proxies for
Network Architecture Search", CVPR 2024), as its authors apply it to ViTs.

    expressivity = Σ_l H(λ(Σ_l)),   H(λ) = -Σ_i p_i log(p_i + 1e-8),   p = λ / Σ_i λ_i

Σ_l is the covariance (C_l x C_l) of residual feature l over every token of every example: the
(B·N', C_l) rows centred by their mean, Σ_l = FᵀF / (B·N'); λ its eigenvalues. A network whose
features spread over many directions (isotropic) scores high.

Which features: the authors' ViT code (cvlab-yonsei/AZ-NAS, ``ImageNet_AutoFormer``, the AutoFormer
space: ``extract_res_features`` and ``indicators/az_nas.py``) takes the residual stream of every block
twice, after its MSA residual and after its MLP residual: x_att = x + MSA(LN(x)) and
x_out = x_att + MLP(LN(x_att)). vitcore takes the same two tensors of every ``Block`` of a ViT or a PiT
(``residual_stream``); the patch embedding's output is not one of them, as in the authors' code.
Their code scores N(0, 1) images (it is given no data loader) in eval mode; vitcore scores the batch
it is given (N(0, 1) images for ``--data synthetic``), and its networks have no dropout, so train and
eval mode compute the same features.

AZ-NAS ranks an architecture by ``vitcore.ensemble.AZ_NAS``: this proxy, ``az_trainability`` and
``flops`` (the authors' complexity), combined by the sum of their log ranks.

The covariances (float64) are computed on the device, batch chunks merged by their sums, and cross
in the one host sync; their eigenvalues come from one batched numpy ``eigvalsh`` per width.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from vitcore.passes import split
from vitcore.proxies.base import Context, Proxy, stack_by_shape, vit_blocks

ENTROPY_EPS = 1e-8  # the authors' log(p + 1e-8)


def residual_stream(model: nn.Module, x: torch.Tensor, proxy: str) -> Tuple[List[torch.Tensor], List[Tuple[int, int]]]:
    """Run ``model(x)``; return the residual features [x_att_1, x_out_1, x_att_2, ...], each (n, N'_s, D_s),
    and the pairs (i, j) where feature j is computed from feature i by one residual branch (MSA or
    MLP): (x_att_l, x_out_l) for every block, and (x_out_{l-1}, x_att_l) where block l's input is block
    l-1's output (within a PiT stage; not across its pooling). Gradients flow when grad mode is on."""
    feats: List[torch.Tensor] = []
    pairs: List[Tuple[int, int]] = []
    before: List[Optional[int]] = []

    def block_in(block, args):
        before.append(len(feats) - 1 if feats and args[0] is feats[-1] else None)

    def after_msa(norm, args):
        if before[-1] is not None:
            pairs.append((before[-1], len(feats)))
        feats.append(args[0])

    def block_out(block, args, output):
        pairs.append((len(feats) - 1, len(feats)))
        feats.append(output)

    handles = []
    for b in vit_blocks(model, proxy, "it reads the blocks' residual stream"):
        handles += [b.register_forward_pre_hook(block_in), b.norm2.register_forward_pre_hook(after_msa),
                    b.register_forward_hook(block_out)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return feats, pairs


def _reduce(ctx: Context) -> Tuple[torch.Tensor, ...]:
    B = ctx.inputs.shape[0]
    sums: List[torch.Tensor] = []  # per feature: Σ rows (C,) float64, over the chunks
    grams: List[torch.Tensor] = []  # per feature: Σ rowsᵀ rows (C, C) float64, over the chunks
    with torch.no_grad():
        for start, end, _ in split(B, ctx.chunks):
            feats, _ = residual_stream(ctx.model, ctx.inputs[start:end], "az_expressivity")
            flat = [f.reshape(-1, f.shape[-1]).double() for f in feats]  # each (n·N'_s, C)
            chunk_sums, chunk_grams = [f.sum(0) for f in flat], [f.T @ f for f in flat]
            sums = [a + b for a, b in zip(sums, chunk_sums)] if sums else chunk_sums
            grams = [a + b for a, b in zip(grams, chunk_grams)] if grams else chunk_grams
    rows = [B * f.shape[1] for f in feats]  # B·N'_s rows behind each feature's sums
    return stack_by_shape([g / n - torch.outer(s / n, s / n) for s, g, n in zip(sums, grams, rows)])  # centred


def expressivity_finish(values: Tuple[np.ndarray, ...]) -> float:
    """Σ over the features of the entropy of each covariance's normalised eigenvalues (float64); NaN
    when a covariance is not finite."""
    if not all(np.isfinite(s).all() for s in values):
        return float("nan")
    total = 0.0
    for stack in values:
        lam = np.linalg.eigvalsh(stack)  # (L, C)
        p = lam / lam.sum(axis=1, keepdims=True)
        total += float((-p * np.log(p + ENTROPY_EPS)).sum())
    return total


PROXY = Proxy(name="az_expressivity", reduce=_reduce, finish=expressivity_finish, vit_only=True)

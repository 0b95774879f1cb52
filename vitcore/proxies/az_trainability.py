"""az_trainability: AZ-NAS's trainability (Lee and Ham, "AZ-NAS: Assembling Zero-Cost Proxies for
Network Architecture Search", CVPR 2024), as its authors apply it to ViTs.

    trainability = mean over pairs (i, j) of  2 - σ_ij - 1 / (σ_ij + 1e-6)

for each pair of residual features where f_j is computed from f_i by one residual branch (see
``az_expressivity.residual_stream``: x_att_l from x_out_{l-1} through MSA, x_out_l from x_att_l through
the MLP). With r a Rademacher tensor shaped like f_j (entries ±1) and g = Jᵀr its backward through
that branch (J = ∂f_j/∂f_i), M = Σ_rows gᵀ r / (B·N') is (C_i x C_j) and σ_ij its largest singular
value. The term is 0 at σ = 1, its maximum, and falls as the block amplifies (σ > 1) or attenuates
(σ < 1) gradients: a network whose blocks keep the gradient's scale trains more easily.

Choices, with the authors' ViT code (cvlab-yonsei/AZ-NAS, ``ImageNet_AutoFormer/lib/training_free/
indicators/az_nas.py``) as the reference where the paper leaves them open:
- The pairs are consecutive residual features; a pair whose backward returns r itself (an identity
  layer) is left out, as theirs. Their code refuses two features of different token counts; on a PiT
  vitcore leaves the pair across each pooling out (``residual_stream`` pairs only features of one stage).
- r: theirs draws it from the global RNG. vitcore draws pair k's r over the whole batch from a generator
  seeded with k, so the value does not depend on other proxies, on the chunking, or on the seed of
  the run; it depends on the batch and the weights only.
- Their code scores N(0, 1) images in eval mode; vitcore the batch it is given (its networks have no
  dropout: train and eval mode compute the same).

The M matrices (float64) are computed on the device, chunks merged by their sums, and cross in the one
host sync; their singular values come from numpy on the host.
"""
from typing import List, Tuple

import numpy as np
import torch

from vitcore.passes import split
from vitcore.proxies.az_expressivity import residual_stream
from vitcore.proxies.base import Context, Proxy, shape_order, stack_by_shape

SIGMA_EPS = 1e-6  # the authors' 1 / (σ + 1e-6)


def rademacher(shape: torch.Size, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of ±1 (``dtype``) drawn from a generator seeded with ``seed`` on ``device``."""
    g = torch.Generator(device).manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g, device=device).to(dtype) * 2 - 1


def _reduce(ctx: Context) -> Tuple[torch.Tensor, ...]:
    B = ctx.inputs.shape[0]
    mats: List[torch.Tensor] = []  # per pair: Σ_rows gᵀ r (C_i, C_j) float64, over the chunks
    differs: List[torch.Tensor] = []  # per pair: did g differ from r anywhere (0-d bool), over the chunks
    for start, end, _ in split(B, ctx.chunks):
        chunk_mats, chunk_differs = [], []
        with torch.enable_grad():
            feats, pairs = residual_stream(ctx.model, ctx.inputs[start:end], "az_trainability")
            for k, (i, j) in enumerate(pairs):
                f_in, f_out = feats[i], feats[j]
                r = rademacher((B, *f_out.shape[1:]), k, f_out.dtype, f_out.device)[start:end]
                (g,) = torch.autograd.grad(f_out, f_in, grad_outputs=r, retain_graph=True)
                chunk_mats.append(g.reshape(-1, g.shape[-1]).double().T @ r.reshape(-1, r.shape[-1]).double())
                chunk_differs.append((g != r).any() if g.shape == r.shape else torch.ones((), dtype=torch.bool,
                                                                                        device=g.device))
        mats = [a + b for a, b in zip(mats, chunk_mats)] if mats else chunk_mats
        differs = [a | b for a, b in zip(differs, chunk_differs)] if differs else chunk_differs
    mats = [m / (B * feats[i].shape[1]) for m, (i, _) in zip(mats, pairs)]  # B·N'_s rows behind each
    return (*stack_by_shape(mats), torch.stack([differs[k] for k in shape_order(mats)]))


def trainability_finish(values: Tuple[np.ndarray, ...]) -> float:
    """Mean over the pairs that are not identity layers of 2 - σ_max - 1 / (σ_max + 1e-6) (float64);
    NaN when a matrix is not finite or no pair is left."""
    *stacks, differs = values
    if not all(np.isfinite(s).all() for s in stacks):
        return float("nan")
    sigma = np.concatenate([np.linalg.svd(s, compute_uv=False)[:, 0] for s in stacks])  # descending
    kept = sigma[differs.astype(bool)]
    return float(np.mean(2 - kept - 1 / (kept + SIGMA_EPS))) if kept.size else float("nan")


PROXY = Proxy(name="az_trainability", reduce=_reduce, finish=trainability_finish, vit_only=True)

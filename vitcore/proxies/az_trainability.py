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
from typing import Dict, List, Tuple

import numpy as np
import torch

from vitcore.passes import split
from vitcore.proxies.az_expressivity import residual_stream
from vitcore.proxies.base import Context, Proxy

SIGMA_EPS = 1e-6  # the authors' 1 / (σ + 1e-6)


def rademacher(shape: torch.Size, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of ±1 (``dtype``) drawn from a generator seeded with ``seed`` on ``device``."""
    g = torch.Generator(device).manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g, device=device).to(dtype) * 2 - 1


def _reduce(ctx: Context) -> Tuple[torch.Tensor, ...]:
    B = ctx.inputs.shape[0]
    mats: List[torch.Tensor] = []  # per pair: Σ_rows gᵀ r (C_i, C_j) float64
    differs: List[torch.Tensor] = []  # per pair: did g differ from r anywhere (0-d bool)
    rows: List[int] = []  # per pair: rows summed, n·N'_s
    for start, end, _ in split(B, ctx.chunks):
        with torch.enable_grad():
            feats, pairs = residual_stream(ctx.model, ctx.inputs[start:end], "az_trainability")
            for k, (i, j) in enumerate(pairs):
                f_in, f_out = feats[i], feats[j]
                r = rademacher((B, *f_out.shape[1:]), k, f_out.dtype, f_out.device)[start:end]
                (g,) = torch.autograd.grad(f_out, f_in, grad_outputs=r, retain_graph=True)
                g2, r2 = g.reshape(-1, g.shape[-1]).double(), r.reshape(-1, r.shape[-1]).double()
                d = (g != r).any() if g.shape == r.shape else torch.ones((), dtype=torch.bool, device=g.device)
                if len(mats) <= k:
                    mats.append(g2.T @ r2)
                    differs.append(d)
                    rows.append(g2.shape[0])
                else:
                    mats[k] = mats[k] + g2.T @ r2
                    differs[k] = differs[k] | d
                    rows[k] += g2.shape[0]
    groups: Dict[Tuple[int, ...], List[Tuple[torch.Tensor, torch.Tensor]]] = {}
    for m, d, n in zip(mats, differs, rows):
        groups.setdefault(tuple(m.shape), []).append((m / n, d))
    stacks = tuple(torch.stack([m for m, _ in g]) for g in groups.values())  # each (P, C_i, C_j)
    return (*stacks, torch.stack([d for g in groups.values() for _, d in g]))  # flags in the stacks' order


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

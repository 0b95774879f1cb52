"""DSS, TF-TAS's synaptic diversity and saliency (Zhou et al., "Training-free Transformer
Architecture Search", CVPR 2022).

    DSS = Σ_{W ∈ MSA}  ‖∂R/∂W‖_* · ‖W‖_*   +   Σ_{W ∈ MLP}  Σ_ij |∂R/∂W_ij · W_ij|

‖·‖_* is the nuclear norm (sum of singular values). The first sum is the synaptic diversity of the
multi-head self-attention, the second the synaptic saliency of the MLPs.

What the paper leaves open, taken from the authors' code (decemberzhou/TF_TAS,
``lib/training_free/indicators/dss.py``):
- R is synflow's objective: every parameter replaced by its absolute value, one all-ones input
  example, R = Σ of the network's outputs. vitcore runs this as synflow's pass (``synflow_grads``:
  float64, eval mode), so W above is |θ| and ∂R/∂W its gradient.
- MSA weights: the QKV projection and the output projection W^O of every block (the authors pick
  Linear layers named ``qkv`` or square ones; vitcore picks them by role, so an MLP with ratio 1 is
  not mistaken for attention).
- MLP weights: both MLP layers of every block and the classifier head (the authors count the
  1000-way head as saliency, and, because it also passes their "sampled Linear" test, twice;
  vitcore counts it once).
- Not counted, as in the authors' code: the patch embedding, biases, LayerNorms, the class token
  and positional embedding.

The nuclear norms run batched on the device: the MSA matrices are grouped by shape and each group
goes through one ``torch.linalg.svdvals`` call. ``dss`` returns a 0-d float64 tensor; nothing syncs
with the host.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from vitcore.model import MLP, MSA, ViT
from vitcore.passes import synflow_grads


def dss_weights(model: nn.Module) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(MSA weights, MLP weights) of a vitcore ViT, in module order, as DSS counts them.

    Raises TypeError for a model that is not a ``vitcore.ViT``: DSS needs to know which layers
    are attention and which are MLP.
    """
    if not isinstance(model, ViT):
        raise TypeError(f"dss needs a vitcore.ViT (it tells MSA from MLP layers), got {type(model).__name__}")
    msa = [w for m in model.modules() if isinstance(m, MSA) for w in (m.qkv.weight, m.proj.weight)]
    mlp = [w for m in model.modules() if isinstance(m, MLP) for w in (m.fc1.weight, m.fc2.weight)]
    return msa, mlp + [model.head.weight]


def dss_reduce(msa_w: Sequence[torch.Tensor], msa_g: Sequence[torch.Tensor],
               mlp_w: Sequence[torch.Tensor], mlp_g: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ ‖G‖_*·‖W‖_* over the MSA pairs + Σ |G ⊙ W| over the MLP pairs, as a 0-d float64 tensor.

    Every W, G is a 2-D matrix (out, in); a G of None (a weight the objective does not reach)
    contributes 0, as in the authors' code.
    """
    device = (list(msa_w) + list(mlp_w))[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    groups: Dict[torch.Size, List[Tuple[torch.Tensor, torch.Tensor]]] = {}
    for w, g in zip(msa_w, msa_g):
        if g is not None:
            groups.setdefault(w.shape, []).append((w, g))
    for pairs in groups.values():
        W = torch.stack([w.detach().double() for w, _ in pairs])  # (L, out, in)
        G = torch.stack([g.double() for _, g in pairs])  # (L, out, in)
        both = torch.linalg.svdvals(torch.cat([W, G]))  # (2L, min(out, in)), one batched call
        nuc_w, nuc_g = both[: len(pairs)].sum(-1), both[len(pairs):].sum(-1)  # (L,), (L,)
        total = total + (nuc_w * nuc_g).sum()
    for w, g in zip(mlp_w, mlp_g):
        if g is not None:
            total = total + (g.double() * w.detach().double()).abs().sum()
    return total


def dss(model: nn.Module, input_shape: torch.Size) -> torch.Tensor:
    """DSS of ``model`` (a vitcore ViT) for inputs of shape ``input_shape`` = (C, H, W); 0-d float64.

    Runs synflow's pass (see the module docstring); the model itself is not changed.
    """
    msa_w, mlp_w = dss_weights(model)
    theta, grads = synflow_grads(model, msa_w + mlp_w, input_shape)
    k = len(msa_w)
    return dss_reduce(theta[:k], grads[:k], theta[k:], grads[k:])

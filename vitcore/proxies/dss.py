"""dss: TF-TAS's synaptic diversity and saliency (Zhou et al., "Training-free Transformer
Architecture Search", CVPR 2022).

    DSS = Σ_{W ∈ MSA}  ‖∂R/∂W‖_* · ‖W‖_*   +   Σ_{W ∈ MLP}  Σ_ij |∂R/∂W_ij · W_ij|

‖·‖_* is the nuclear norm (sum of singular values). The first sum is the synaptic diversity of the
multi-head self-attention, the second the synaptic saliency of the MLPs.

What the paper leaves open, taken from the authors' code (decemberzhou/TF_TAS,
``lib/training_free/indicators/dss.py``):
- R is synflow's objective: every parameter replaced by its absolute value, one all-ones input
  example, R = Σ of the network's outputs. vitcore reads synflow's pass ("synflow": float64, eval
  mode), so W above is |θ| and ∂R/∂W its gradient; a weight outside the counted tensors
  (``params=``) or frozen counts 0.
- MSA weights: the QKV projection and the output projection W^O of every block (the authors pick
  Linear layers named ``qkv`` or square ones; vitcore picks them by role, so an MLP with ratio 1 is
  not mistaken for attention).
- MLP weights: both MLP layers of every block and the classifier head (the authors count the
  1000-way head as saliency, and, because it also passes their "sampled Linear" test, twice;
  vitcore counts it once).
- Not counted, as in the authors' code: the patch embedding, biases, LayerNorms, the class token
  and positional embedding.

The saliency sums run on the device; the MSA matrices, grouped by shape, cross in the one host sync
(float64) and their nuclear norms come from one batched numpy SVD per shape on the host:
``torch.linalg.svdvals`` would sync the device with the host on CUDA (it checks cusolver's info).
The transfer carries each MSA weight and its gradient: 16 bytes per MSA weight element.
A model that is not a vitcore ViT or PiT or a timm VisionTransformer is refused (TypeError): DSS must
tell attention from MLP layers.
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from vitcore.proxies.base import Context, Proxy, stack_by_shape, vit_blocks


def dss_weights(model: nn.Module) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(MSA weights, MLP weights) of a vitcore ViT or PiT or a timm ViT, in module order, as DSS counts
    them (a PiT's pooling layers are in neither).

    Raises TypeError for a model that is not one ``vitcore.proxies.base.find_vit_blocks`` knows (a
    vitcore ViT or PiT, a timm VisionTransformer): DSS needs to know which layers are attention and
    which are MLP. The classifier counts when ``model.head`` is an nn.Linear (a timm ViT built with
    ``num_classes=0`` has none).
    """
    blocks = vit_blocks(model, "dss", "it tells MSA from MLP layers")
    msa = [w for b in blocks for w in (b.attn.qkv.weight, b.attn.proj.weight)]
    mlp = [w for b in blocks for w in (b.mlp.fc1.weight, b.mlp.fc2.weight)]
    head = getattr(model, "head", None)
    return msa, mlp + ([head.weight] if isinstance(head, nn.Linear) else [])


def dss_reduce(msa_w: Sequence[torch.Tensor], msa_g: Sequence[torch.Tensor],
               mlp_w: Sequence[torch.Tensor], mlp_g: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """The device side of DSS: (saliency, *stacks), all float64, for ``dss_finish``.

    saliency is 0-d: Σ |G ⊙ W| over the MLP pairs. Each stack is (2L, out, in): the L MSA weights of
    one shape, then their L gradients, for the nuclear norms on the host. Every W, G is a 2-D matrix
    (out, in); a G of None (a weight the objective does not reach) contributes 0, as in the authors'
    code.
    """
    device = (list(msa_w) + list(mlp_w))[0].device  # callers pass at least one weight
    saliency = torch.zeros((), dtype=torch.float64, device=device)
    for w, g in zip(mlp_w, mlp_g):
        if g is not None:
            saliency = saliency + (g.double() * w.detach().double()).abs().sum()
    kept = [(w, g) for w, g in zip(msa_w, msa_g) if g is not None]
    # per shape: its L weights, then their L gradients (the weights come first in the list), (2L, out, in)
    return (saliency, *stack_by_shape([w.detach().double() for w, _ in kept] + [g.double() for _, g in kept]))


def dss_finish(values: Tuple[np.ndarray, ...]) -> float:
    """DSS from ``dss_reduce``'s arrays: saliency + Σ ‖G‖_*·‖W‖_* over the MSA pairs, the nuclear norms
    by numpy's batched SVD in float64 (one call per stack). NaN when a matrix holds NaN or inf."""
    saliency, *stacks = values
    total = float(saliency)
    for stack in stacks:
        if not np.isfinite(stack).all():
            return float("nan")
        nuclear = np.linalg.svd(stack, compute_uv=False).sum(-1)  # (2L,)
        half = len(stack) // 2
        total += float((nuclear[:half] * nuclear[half:]).sum())
    return total


def _reduce(ctx: Context) -> torch.Tensor:
    msa_w, mlp_w = dss_weights(ctx.model)
    theta, grads = ctx.synflow  # aligned with ctx.counted
    index = {id(p): i for i, p in enumerate(ctx.counted)}

    def pairs(weights):
        found = [index[id(w)] for w in weights if id(w) in index]
        return [theta[i] for i in found], [grads[i] for i in found]

    if not any(id(w) in index for w in msa_w + mlp_w):
        return (torch.zeros((), dtype=torch.float64, device=ctx.inputs.device),)
    return dss_reduce(*pairs(msa_w), *pairs(mlp_w))


PROXY = Proxy(name="dss", passes=("synflow",), reduce=_reduce, finish=dss_finish, vit_only=True)

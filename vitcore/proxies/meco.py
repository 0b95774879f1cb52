"""meco: MeCo, the minimum eigenvalue of correlation (Jiang et al., "MeCo: Zero-Shot NAS with One Data
and Single Forward Pass via Minimum Eigenvalue of Correlation", NeurIPS 2023).

    MeCo = Σ_l λ_min(P(f_l(x)))

for one input example x; f_l(x) is layer l's feature map, reshaped to (rows, -1), and P the Pearson
correlation matrix of its rows.

What the paper leaves open for a ViT, and vitcore's choices:
- Which example and which rows: the authors' code (HamsterMimi/MeCo, ``get_score``) takes the first
  example of the batch, ``output[0]``, and reshapes it to (its first axis, -1). For a conv map that
  is channels x pixels; for a ViT's (N', C) token map it is tokens x channels, so P is the N' x N'
  correlation of the tokens over their C features. vitcore keeps that reading of the authors' code:
  rows are the N' tokens, the class token one of them. (Channels as rows would give a C x C matrix
  from N' observations, singular whenever C >= N', as every MLP hidden layer is at 224².)
- Which layers: the authors hook every module. vitcore takes the output of every block's MLP
  activation (the GELU, (N', hidden)), once each. The output of a Linear layer cannot serve: it is
  a linear map of its block's LayerNorm output, so its N' token rows span at most D dimensions, and
  at D < N' (D = 192 < 197 at 224²) every such P is singular, λ_min = 0 up to rounding, whatever
  the network (measured: the sum over the Linear outputs of a dev-set network was 8e-13). The GELU
  is the first non-linear map of each block, and its hidden width (3.5·D or more) exceeds N'.
- On a PiT (``vitcore.pit``) that no longer holds: its first stages see 730 and 197 tokens at 224²,
  and many MLPs of the "pit" space are narrower (64 at base_dim 16, 2 heads, ratio 2). A map at
  most N' wide gives a singular P (its centred rows span at most hidden - 1 dimensions), so that
  layer adds 0 up to rounding: measured -1.8e-14 (N' = 730, 64 wide) and -2.4e-15 (N' = 197, 128 wide)
  for base_dim 16, heads 2-4-4, ratio 2, seed 0, against 0.01-0.02 for its last stage's layers
  (N' = 50). MeCo then sums only the stages whose MLPs are wider than their token count; vitcore
  applies the definition as it is and does not correct for it.
- NaN or infinite correlations (a constant row) are set to 0 before the eigenvalues, as the
  authors' code does; a feature map that itself holds NaN or inf gives NaN (it gave 0).
- The authors' foresight measure scores one N(0, 1) example it draws itself; vitcore scores the
  first example of the batch it is given (real images when the run has them).

The P matrices (N' x N', float64) are computed on the device and cross in the one host sync; their
eigenvalues come from one batched numpy ``eigvalsh`` on the host (``torch.linalg.eigvalsh`` would sync
the device with the host on CUDA: it checks cusolver's info). MeCo runs its own forward of one
example without gradients (no shared pass keeps activation values).
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from vitcore.proxies.base import Context, Proxy, stack_by_shape, vit_blocks


def meco_layers(model: nn.Module) -> List[nn.Module]:
    """The MLP activations (GELU modules) inside the blocks of a vitcore ViT or PiT or a timm ViT
    (``vitcore.proxies.base.find_vit_blocks``), in forward order. TypeError for a model whose blocks hold
    none (a timm ViT built with another ``act_layer``): MeCo would sum nothing."""
    layers = [m for b in vit_blocks(model, "meco", "it reads the blocks' GELUs") for m in b.modules()
              if isinstance(m, nn.GELU)]
    if not layers:
        raise TypeError(f"meco reads the GELU activations of the blocks' MLPs; {type(model).__name__}'s blocks "
                        "have none")
    return layers


def _row_correlation(f: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the rows of f (N', C) in float64, NaN/inf set to 0 (the authors' code: the
    0/0 of a constant row); all NaN when f itself holds NaN or inf (a model that makes NaN scores NaN,
    not the 0 that the zeroed matrix would give)."""
    f = f.double()
    centred = f - f.mean(1, keepdim=True)  # (N', C)
    norms = centred.norm(dim=1)  # (N',)
    corr = (centred @ centred.T) / (norms[:, None] * norms[None, :])  # (N', N')
    return torch.where(torch.isfinite(f).all(), torch.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0), torch.nan)


def meco_reduce(feature_maps: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """The device side of MeCo: the row correlations of the (rows, C_l) maps, float64, stacked by
    row count, each (L, rows, rows), for ``meco_finish``."""
    return stack_by_shape([_row_correlation(f) for f in feature_maps])


def meco_finish(values: Tuple[np.ndarray, ...]) -> float:
    """MeCo from ``meco_reduce``'s arrays: Σ_l λ_min, by numpy's batched eigvalsh in float64; NaN when a
    map held NaN or inf (``_row_correlation``)."""
    if not all(np.isfinite(stack).all() for stack in values):
        return float("nan")
    return float(sum(np.linalg.eigvalsh(stack)[:, 0].sum() for stack in values))  # ascending per matrix


def _reduce(ctx: Context) -> torch.Tensor:
    maps: List[torch.Tensor] = []

    def keep_map(module, args, output):
        maps.append(output[0].detach().reshape(output.shape[1], -1))  # example 0: (rows, -1), (N', hidden)

    # a private forward of the first example: the data pass keeps no activation values
    handles = [m.register_forward_hook(keep_map) for m in meco_layers(ctx.model)]
    try:
        with torch.no_grad():
            ctx.model(ctx.inputs[:1])
    finally:
        for h in handles:
            h.remove()
    return meco_reduce(maps)


PROXY = Proxy(name="meco", reduce=_reduce, finish=meco_finish, vit_only=True)

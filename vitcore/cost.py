"""The ViT cost model: multiply-adds, FLOPs and parameters, counted exactly for ``vitcore.model.ViT``.

One multiply-add (MAC) is two FLOPs. Only matrix products and the patch-embedding convolution are
counted, because they are the work a GPU spends its tensor cores on:

    MSA block, N' tokens, width D, H heads of width d (E = H·d, E = D when d = D/H)
        projections  W^Q, W^K, W^V (D -> E each) and W^O (E -> D)   4·N'·D·E   (= 4N'D²)
        core         Q K^T and softmax(.) V, per head N'²·d each     2·N'²·E    (= 2N'²D)
    MLP block, hidden h = round(ratio·D): fc1 and fc2                  2·N'·D·h
    patch embedding, P = N' - 1 patches of C·p² pixels               P·C·p²·D
    head on the class token                                            D·num_classes

Not counted (they move memory rather than multiply): softmax, the 1/sqrt(d) scaling, LayerNorms,
GELU, bias additions, residual additions, the class token and positional embedding. This is the
convention of ``torch.utils.flop_counter.FlopCounterMode``, which the tests compare against exactly.

Forward + backward: the backward pass of a product computes the gradient of both operands, twice the
forward work, so fwd+bwd = 3x forward -- except for the patch embedding, whose input is the image and
needs no gradient: its backward is the weight gradient alone (1x), so it costs 2x forward in all.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from vitcore.model import ViTConfig, positive_int

COMPONENTS = ("patch_embed", "msa_proj", "msa_core", "mlp", "head")


@dataclass(frozen=True)
class MSAMacs:
    """Multiply-adds of one MSA block on one sequence."""

    proj: int  # W^Q, W^K, W^V and W^O: 4·N'·D·E
    core: int  # Q K^T and P V over all heads: 2·N'²·E

    @property
    def total(self) -> int:
        return self.proj + self.core


def msa_macs(n: int, d: int, inner: Optional[int] = None) -> MSAMacs:
    """Multiply-adds of multi-head self-attention on ``n`` tokens of width ``d``.

    ``inner`` is the attention width E = heads · head_dim (default ``d``): the projections cost
    4·n·d·E and the core 2·n²·E, i.e. 4N'D² + 2N'²D when E = D. The quadratic core overtakes the
    projections at n = 2·d. Softmax and scaling are not counted (see the module docstring).
    """
    n, d = positive_int("n", n), positive_int("d", d)
    e = d if inner is None else positive_int("inner", inner)
    return MSAMacs(proj=4 * n * d * e, core=2 * n * n * e)


@dataclass(frozen=True)
class ViTCost:
    """The cost of one forward (and forward + backward) pass of a ViT on a batch of images."""

    batch: int
    params: int  # equals sum(p.numel() for p in ViT(config).parameters())
    macs: Dict[str, int]  # forward MACs for the batch, one entry per name in COMPONENTS
    blocks: Tuple[Dict[str, int], ...]  # per block, forward MACs for the batch: msa_proj, msa_core, mlp
    bwd_macs: int  # backward MACs for the batch (2x forward, 1x for the patch embedding)

    @property
    def macs_fwd(self) -> int:
        return sum(self.macs.values())

    @property
    def flops_fwd(self) -> int:
        return 2 * self.macs_fwd

    @property
    def flops_bwd(self) -> int:
        return 2 * self.bwd_macs

    @property
    def flops_fwd_bwd(self) -> int:
        return self.flops_fwd + self.flops_bwd


def vit_cost(config: ViTConfig, batch: int = 1) -> ViTCost:
    """MACs, FLOPs and parameters of ``ViT(config)`` on ``batch`` images (see the module docstring)."""
    if not isinstance(config, ViTConfig):
        raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
    batch = positive_int("batch", batch)
    c = config
    D, N, P, pix = c.embed_dim, c.num_tokens, c.num_patches, c.in_chans * c.patch_size**2
    params = pix * D + D + D + N * D  # patch conv weight and bias, class token, positional embedding
    blocks = []
    for heads, ratio in zip(c.block_heads(), c.block_mlp_ratios()):
        e = heads * c.block_head_dim(heads)  # attention width E = H·d
        hidden = max(1, round(ratio * D))  # as vitcore.model.Block
        m = msa_macs(N, D, e)
        blocks.append({"msa_proj": batch * m.proj, "msa_core": batch * m.core, "mlp": batch * 2 * N * D * hidden})
        params += 2 * 2 * D  # norm1, norm2 (weight and bias)
        params += D * 3 * e + (3 * e if c.qkv_bias else 0) + e * D + D  # qkv, proj
        params += D * hidden + hidden + hidden * D + D  # fc1, fc2
    params += 2 * D + D * c.num_classes + c.num_classes  # final norm, head
    macs = {
        "patch_embed": batch * P * pix * D,
        "msa_proj": sum(b["msa_proj"] for b in blocks),
        "msa_core": sum(b["msa_core"] for b in blocks),
        "mlp": sum(b["mlp"] for b in blocks),
        "head": batch * D * c.num_classes,  # the class token only
    }
    bwd = 2 * (sum(macs.values()) - macs["patch_embed"]) + macs["patch_embed"]
    return ViTCost(batch=batch, params=params, blocks=tuple(blocks), macs=macs, bwd_macs=bwd)

"""What a proxy unit is (``Proxy``) and what its device-side step reads (``Context``).

See ``vitcore.proxies.registry`` for the contract a proxy file follows.
"""
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from vitcore.model import Block, VisionTransformer
from vitcore.ops.param_stats import param_stats
from vitcore.passes import DATA_TAPS, PASSES, DataPass


def scalar(value: np.ndarray) -> float:
    """The default host-side finish: the one number ``reduce`` returned."""
    return float(value)


@dataclass(frozen=True)
class Proxy:
    """One zero-cost proxy: what it needs, how it reduces on the device, how it finishes on the host.

    name      the proxy's name as ``score`` takes it (the file ``vitcore/proxies/<name>.py``)
    passes    the shared passes it reads, from ``vitcore.passes.PASSES``: "data" (forward and backward
              on the batch), "halves" (the data pass over each half of the batch separately),
              "synflow" (the |θ| pass), "hessian" (GraSP's H·g pass, which also needs "data" and the
              "grads" tap); () for none
    taps      what the "data" pass must record, from ``vitcore.passes.DATA_TAPS``
    reduce    device side: ``reduce(ctx)`` -> a torch.Tensor of any shape, or a tuple of them,
              computed without reading a value on the host (no ``.item()``, ``bool(t)``, ``.cpu()``,
              nor ops that check their result on the host, such as ``torch.linalg.eigvalsh``);
              None for a host-only proxy
    finish    host side: ``finish(values) -> float`` on the float64 numpy array of reduce's tensor
              (same shape), or on the tuple of arrays when reduce returned a tuple
    host      host-only proxies (nothing to read from the device): ``host(ctx) -> float``
    min_batch the fewest examples it is defined for (``score`` refuses fewer, naming the proxy)
    vit_only  True when it reads the blocks (MSA vs MLP) of a ViT (``find_vit_blocks``: vitcore's ViT or
              PiT, timm's VisionTransformer) and raises TypeError on other models
    """

    name: str
    passes: Tuple[str, ...] = ()
    taps: Tuple[str, ...] = ()
    reduce: Optional[Callable[["Context"], Union[torch.Tensor, Tuple[torch.Tensor, ...]]]] = None
    finish: Callable[..., float] = scalar
    host: Optional[Callable[["Context"], float]] = None
    min_batch: int = 1
    vit_only: bool = False

    def __post_init__(self):
        assert (self.reduce is None) != (self.host is None), f"{self.name}: give reduce or host, not both"
        assert set(self.passes) <= set(PASSES), (self.name, self.passes)
        assert set(self.taps) <= set(DATA_TAPS), (self.name, self.taps)
        assert not self.taps or "data" in self.passes, f"{self.name}: taps need the data pass"
        assert "hessian" not in self.passes or "grads" in self.taps, f"{self.name}: H·g needs the grads"


@dataclass
class Context:
    """The request and every pass's result, as a proxy's ``reduce`` (or ``host``) reads them."""

    model: nn.Module
    inputs: torch.Tensor  # (B, ...) the batch
    targets: torch.Tensor  # (B,) class indices or (B, C) probabilities
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    mode: str  # grad_norm's mode, one of GRAD_NORM_MODES
    counted: List[torch.Tensor]  # the counted parameter tensors (``params=``), in order
    chunks: int = 1  # the split the passes use to fit memory; a private pass in reduce should use it too
    data: Optional[DataPass] = None  # the "data" pass; grads follow ``counted``
    halves: Optional[DataPass] = None  # the "halves" pass; group_grads follow ``halves.params``
    synflow: Optional[Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]] = None  # (|θ|, dR/d|θ|)
    hessian: List[Optional[torch.Tensor]] = field(default_factory=list)  # H·g per counted tensor
    _cache: Dict[str, torch.Tensor] = field(default_factory=dict)

    def param_stats(self) -> torch.Tensor:
        """(T', 4) float64 Σg², Σ|g·θ|, Σg·θ, Σθ² over the counted tensors that got a gradient,
        one reduction shared by every proxy that asks (``vitcore.ops.param_stats``)."""
        if "param_stats" not in self._cache:
            params, grads = present(self.counted, self.data.grads)
            self._cache["param_stats"] = param_stats(params, grads).double()
        return self._cache["param_stats"]


def present(params, grads):
    """(params, grads) without the tensors that got no gradient (unused or frozen)."""
    kept = [(p.detach(), g) for p, g in zip(params, grads) if g is not None]
    return [p for p, _ in kept], [g for _, g in kept]


# What a block must hold for the proxies that read blocks: MSA projections, MLP layers, the LayerNorm
# before the MLP (the residual stream after attention, az_nas).
BLOCK_PARTS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm2")


def activation_codes(ctx: "Context", proxy: str) -> List[torch.Tensor]:
    """The data pass's per ReLU/GELU call (B, units) sign codes; ValueError naming ``proxy`` when the model
    ran no nn.ReLU / nn.GELU module (that proxy fails, the pass's others are still scored)."""
    if not ctx.data.codes:
        raise ValueError(f"{proxy} reads the inputs of nn.ReLU / nn.GELU modules, and the model ran none "
                         "(a functional F.relu or F.gelu is not a module)")
    return ctx.data.codes


def _timm_vit_blocks(model: nn.Module) -> Optional[List[nn.Module]]:
    """The blocks of a timm ``VisionTransformer`` (``model.blocks``), or None for any other model (and
    whenever timm was never imported: then no model can be one of its)."""
    if "timm" not in sys.modules:
        return None
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return list(model.blocks) if isinstance(model, TimmViT) else None


def find_vit_blocks(model: nn.Module) -> Optional[List[nn.Module]]:
    """The blocks, in forward order, of a model the block-reading proxies know: a vitcore ViT or PiT
    (``vitcore.model.VisionTransformer``'s ``Block``s) or a timm ``VisionTransformer`` (its
    ``blocks[i]``, DeiT's included); None for any other model. Each block holds ``BLOCK_PARTS``:
    ``attn.qkv`` and ``attn.proj`` (nn.Linear), ``mlp.fc1`` and ``mlp.fc2`` (nn.Linear), ``norm2``
    (the norm before the MLP; its input is the residual stream after attention); a timm ViT whose
    blocks lack one (a custom ``block_fn``) is refused with a TypeError naming the part."""
    if isinstance(model, VisionTransformer):
        return [m for m in model.modules() if isinstance(m, Block)]
    blocks = _timm_vit_blocks(model)
    for i, block in enumerate(blocks or ()):
        for part in BLOCK_PARTS:
            try:
                module = block.get_submodule(part)
            except AttributeError:
                raise TypeError(f"{type(model).__name__}.blocks[{i}] ({type(block).__name__}) has no {part}") from None
            if part != "norm2" and not isinstance(module, nn.Linear):
                raise TypeError(f"{type(model).__name__}.blocks[{i}].{part} is a {type(module).__name__}, "
                                "not an nn.Linear")
    return blocks


def vit_blocks(model: nn.Module, proxy: str, why: str) -> List[nn.Module]:
    """``find_vit_blocks(model)`` for the proxies marked ``vit_only``; TypeError naming ``proxy``, ``why``
    it reads blocks and what it needs for any other model."""
    blocks = find_vit_blocks(model)
    if blocks is None:
        raise TypeError(f"{proxy} needs a vitcore ViT or PiT or a timm VisionTransformer ({why}: blocks with "
                        f"{', '.join(BLOCK_PARTS)}), got {type(model).__name__}")
    return blocks


def shape_order(mats: Sequence[torch.Tensor]) -> List[int]:
    """The indices of ``mats`` in ``stack_by_shape``'s order: grouped by shape, the groups in order of
    their shape's first appearance, each group in its order in ``mats`` (to line up per-tensor flags)."""
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for k, m in enumerate(mats):
        groups.setdefault(tuple(m.shape), []).append(k)
    return [k for group in groups.values() for k in group]


def stack_by_shape(mats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """The tensors stacked by shape, each (count, *shape), in ``shape_order``. Host steps that batch
    small matrix decompositions (eigenvalues, singular values, nuclear norms) read them so."""
    groups: Dict[Tuple[int, ...], List[torch.Tensor]] = {}
    for k in shape_order(mats):
        groups.setdefault(tuple(mats[k].shape), []).append(mats[k])
    return tuple(torch.stack(group) for group in groups.values())

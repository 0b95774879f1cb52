"""The one pass that MeCo, SWAP and L-SWAG share: a forward (and, for L-SWAG, a backward) over the
batch with hooks on the blocks' GELUs and Linear layers.

Hooks record, per request:
- ``active`` (SWAP, L-SWAG): which GELU inputs are positive, (B, U) booleans over every block;
- ``meco_maps`` (MeCo): each GELU's output for the first example, (N', hidden);
- ``lswag_terms`` (L-SWAG): per Linear layer of the blocks, log Σ 1/σ of its per-example weight
  gradients (``vitcore.native.lswag.inverse_std_term``).
A request that needs no gradient runs the forward under ``no_grad``. The model's parameters and
their ``.grad`` are never changed.
"""
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

from vitcore.model import Block, ViT


@dataclass
class NativePass:
    active: Optional[torch.Tensor] = None  # (B, U) bool: GELU input > 0, every block's neurons
    meco_maps: List[torch.Tensor] = field(default_factory=list)  # per block: (N', hidden), example 0
    lswag_terms: List[torch.Tensor] = field(default_factory=list)  # per block Linear layer: 0-d float64


def block_modules(model: nn.Module, kind: type) -> List[nn.Module]:
    """The modules of type ``kind`` inside a vitcore ViT's blocks, in forward order."""
    if not isinstance(model, ViT):
        raise TypeError(f"this proxy needs a vitcore.ViT (it reads the blocks' layers), got {type(model).__name__}")
    return [m for b in model.modules() if isinstance(b, Block) for m in b.modules() if isinstance(m, kind)]


def native_pass(model: nn.Module, inputs: torch.Tensor, targets: Optional[torch.Tensor] = None,
                loss_fn: Optional[Callable] = None, active: bool = False, meco: bool = False,
                lswag: bool = False) -> NativePass:
    """Run the hooks the request needs over one forward (+ backward for ``lswag``) of ``inputs``."""
    from vitcore.native.lswag import inverse_std_term  # the reduction lives with its proxy

    out = NativePass()
    codes: List[torch.Tensor] = []
    layer_io: List[tuple] = []
    handles = []
    if active or lswag:
        def keep_code(module, args):
            codes.append((args[0] > 0).reshape(args[0].shape[0], -1))  # (B, neurons of this call)

        handles += [m.register_forward_pre_hook(keep_code) for m in block_modules(model, nn.GELU)]
    if meco:
        def keep_map(module, args, output):
            out.meco_maps.append(output[0].detach().reshape(output.shape[1], -1))  # (N', hidden)

        handles += [m.register_forward_hook(keep_map) for m in block_modules(model, nn.GELU)]
    if lswag:
        def keep_io(module, args, output):
            layer_io.append((args[0].detach(), output))

        handles += [m.register_forward_hook(keep_io) for m in block_modules(model, nn.Linear)]
    try:
        with torch.set_grad_enabled(lswag):
            logits = model(inputs)
            grads = torch.autograd.grad(loss_fn(logits, targets), [o for _, o in layer_io]) if lswag else []
    finally:
        for h in handles:
            h.remove()
    B = inputs.shape[0]
    for (x, _), dy in zip(layer_io, grads):
        # y = x Wᵀ: example b's gradient of its own loss is B · Σ_tokens dy_b ⊗ x_b (the loss averages)
        out.lswag_terms.append(inverse_std_term(B * torch.einsum("bno,bni->boi", dy, x)))  # (B, out, in)
    if codes:
        out.active = torch.cat(codes, 1)  # (B, U)
    return out

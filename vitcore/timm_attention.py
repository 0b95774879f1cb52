"""vitcore's attention inside timm's models: ``use_vitcore_attention(model, attention)``.

Every ``timm.layers.Attention`` of ``model`` (the MSA of timm's ``VisionTransformer``, DeiT and the
models built from its ``Block``) is replaced by a ``TimmAttention`` that holds the same layers (the
same parameters, under the same names) and runs softmax(q kᵀ / sqrt(d)) v with vitcore's
``attention`` choice (``vitcore.attention_choice``: "vitcore", "sdpa", "eager", "auto") instead of
timm's own. Everything else of timm's forward is kept: the fused QKV projection, q/k norms, the
output norm, the gate, the output projection and its dropout. Not supported, and refused: attention
dropout (p > 0; vitcore's kernel has none), and an attention mask or causal attention at call time.
"""
import sys
from typing import Optional

import torch
from torch import nn

from vitcore.attention_choice import attend, check_attention


class TimmAttention(nn.Module):
    """A ``timm.layers.Attention``'s layers with vitcore's attention; built by ``use_vitcore_attention``."""

    def __init__(self, timm_attention: nn.Module, attention: str):
        super().__init__()
        self.attention = check_attention(attention)
        self.num_heads, self.head_dim = timm_attention.num_heads, timm_attention.head_dim
        self.attn_dim = self.num_heads * self.head_dim  # H·d
        for name in ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop"):
            setattr(self, name, getattr(timm_attention, name))
        # timm 1.0's output norm and gate (absent before: identity and none)
        self.norm = getattr(timm_attention, "norm", nn.Identity())
        self.gate = getattr(timm_attention, "gate", None)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) \
            -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("vitcore's attention is non-causal without a mask; this timm model passed "
                             f"{'a mask' if attn_mask is not None else 'is_causal=True'}")
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None  # (B, N', H·d)
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # (B, N', 3, H, d)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # each (B, H, N', d), strided views
        q, k = self.q_norm(q), self.k_norm(k)
        out = attend(q, k, v, self.attention)  # (B, H, N', d)
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))  # (B, N', H·d)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))  # (B, N', D)


def use_vitcore_attention(model: nn.Module, attention: str = "auto") -> int:
    """Route every ``timm.layers.Attention`` of ``model`` (in place) through vitcore's ``attention`` choice;
    modules already routed get the new choice. Returns how many attention modules run it (0 for a model
    without any, a CNN say).

    An attention module shared by several blocks is routed wherever it sits, through one wrapper.
    Raises TypeError or ValueError for an ``attention`` not in ``vitcore.attention_choice``'s choices;
    ValueError naming the module for attention dropout p > 0 (vitcore's attention has no dropout), and for
    a ``model`` that is itself an Attention (it cannot replace itself: route its parent).
    Without timm imported no model holds its modules: 0, and timm need not be installed.
    """
    check_attention(attention)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if "timm" not in sys.modules:
        return 0
    from timm.layers import Attention

    # every place a module sits (one attention shared by several blocks sits in each), not each module once
    found = [(name, m) for name, m in model.named_modules(remove_duplicate=False)
             if type(m) in (Attention, TimmAttention)]
    if found and found[0][0] == "" and isinstance(model, TimmAttention):  # routed already: a new choice only
        model.attention = attention
        return 1
    if found and found[0][0] == "":
        raise ValueError(f"model is itself a {type(model).__name__}, which cannot be replaced in place: route the "
                         "model that holds it")
    for name, m in found:
        if m.attn_drop.p > 0:
            raise ValueError(f"{name}: attention dropout p={m.attn_drop.p}; vitcore's attention has none "
                             "(build the model with attn_drop_rate=0)")
    routed: dict = {}  # id of each module -> its wrapper, so a shared module gets one wrapper everywhere
    for name, m in found:
        if isinstance(m, TimmAttention):
            m.attention = attention
            routed[id(m)] = m
            continue
        wrapper = routed.setdefault(id(m), TimmAttention(m, attention))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapper)
    return len(routed)

"""Zero-cost proxies (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021).

Every proxy here is a sum over the trainable parameters θ_t (t = 1..T, each a tensor) of statistics
of the gradient g_t = dL/dθ_t of one minibatch's loss at initialisation:

    grad_norm  mode="global":    sqrt(Σ_t Σ_i g_ti²)       the norm of the whole gradient vector
               mode="per_layer": Σ_t sqrt(Σ_i g_ti²)       the sum of per-tensor norms (foresight's loop)
    snip       Σ_t Σ_i |g_ti · θ_ti|                        (Lee et al., ICLR 2019)
    plain      Σ_t Σ_i g_ti · θ_ti                          (Mozer & Smolensky, 1989)

``mode`` changes only grad_norm: the other sums are the same either way.
"""
from typing import Callable, Dict, Iterable, List

import torch
import torch.nn.functional as F
from torch import nn

# Columns of the (T, 4) statistics: Σg², Σ|g·θ|, Σg·θ, Σθ², each per parameter tensor.
_G2, _ABS_GW, _GW = 0, 1, 2
MODES = ("global", "per_layer")


def param_stats(params: List[torch.Tensor], grads: List[torch.Tensor]) -> torch.Tensor:
    """(T, 4) fp32: Σg², Σ|g·θ|, Σg·θ, Σθ² per tensor, on the tensors' device, without a host sync."""
    rows = []
    for p, g in zip(params, grads):
        p, g = p.float(), g.float()
        gw = g * p
        rows.append(torch.stack([g.pow(2).sum(), gw.abs().sum(), gw.sum(), p.pow(2).sum()]))
    return torch.stack(rows)


def _grad_norm(stats: torch.Tensor, mode: str) -> torch.Tensor:
    g2 = stats[:, _G2].double()
    return g2.sum().sqrt() if mode == "global" else g2.sqrt().sum()


PROXIES: Dict[str, Callable[[torch.Tensor, str], torch.Tensor]] = {
    "grad_norm": _grad_norm,
    "snip": lambda stats, mode: stats[:, _ABS_GW].double().sum(),
    "plain": lambda stats, mode: stats[:, _GW].double().sum(),
}


def check_proxies(proxies: Iterable[str]) -> List[str]:
    """The requested proxy names as a list; an unknown name raises, listing the valid ones."""
    names = [proxies] if isinstance(proxies, str) else list(proxies)
    if not names:
        raise ValueError("proxies is empty; valid: " + ", ".join(PROXIES))
    for name in names:
        if name not in PROXIES:
            raise ValueError(f"unknown proxy {name!r}; valid: {', '.join(PROXIES)}")
    return names


def score(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    proxies: Iterable[str] = ("grad_norm", "snip"),
    mode: str = "global",
) -> Dict[str, float]:
    """Score ``model`` on one minibatch: one forward, one backward pass, one host sync.

    The model is scored in train mode (as foresight does) and left in the mode it came in.
    Gradients come from ``torch.autograd.grad``, so existing ``.grad`` values are neither
    read nor changed. Parameters with ``requires_grad=False`` or that get no gradient are skipped.
    Returns ``{proxy: float}`` in the order asked.
    """
    names = check_proxies(proxies)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; valid: {', '.join(MODES)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    was_training = model.training
    model.train()
    try:
        loss = loss_fn(model(inputs), targets)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        model.train(was_training)
    used = [(p.detach(), g) for p, g in zip(params, grads) if g is not None]
    if not used:
        raise ValueError("no parameter received a gradient from the loss")
    stats = param_stats([p for p, _ in used], [g for _, g in used])  # (T, 4) fp32
    values = torch.stack([PROXIES[name](stats, mode) for name in names]).tolist()  # the one sync
    return dict(zip(names, values))

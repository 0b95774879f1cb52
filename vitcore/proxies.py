"""Zero-cost proxies (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021).

Notation: θ_t a counted parameter tensor, g_t = dL/dθ_t for L the batch's mean loss at
initialisation. ``params="all"`` counts every trainable tensor (the textbook formulas);
``params="weights"`` only the weights of Linear and Conv layers, as foresight (SamsungLabs'
zero-cost-nas) does. "Layer" below means a counted tensor.

    grad_norm  global: sqrt(Σ_t Σ_i g_ti²); per_layer: Σ_t sqrt(Σ_i g_ti²)   (foresight's loop)
    snip       Σ_t Σ_i |g_ti θ_ti|                              Lee et al., ICLR 2019
    plain      Σ_t Σ_i g_ti θ_ti                                Mozer & Smolensky, NeurIPS 1988
    grasp      -Σ_t Σ_i θ_ti (H g)_ti, H the loss Hessian      Wang et al., ICLR 2020 (T = 1)
    synflow    Σ_t Σ_i |θ_ti ∂R/∂θ_ti|, R = Σ f(1) for the net with |θ| and one all-ones input, float64, eval mode
                                                                Tanaka et al., NeurIPS 2020
    fisher     Σ_layers Σ_c ½ mean_b (Σ_n a_bnc ∂L/∂a_bnc)², a the output of every Linear/Conv layer,
               c its channel axis (last for Linear, 1 for Conv), n every other axis (tokens, pixels)
                                                                Turner et al., ICLR 2020
    jacob_cov  -Σ_k [log(λ_k + 1e-5) + 1/(λ_k + 1e-5)], λ the eigenvalues of the correlation
               matrix of the per-example input gradients of Σ f(x)   Mellor et al., 2021 (v1)
    nwot       log|det K|, K_ij = number of ReLU/GELU inputs whose signs agree for examples i, j
                                                                Mellor et al., ICML 2021 (NASWOT)
    zico       Σ_l log Σ_{i: σ_li > 0} E|g_li| / σ_li over the weights of Linear/Conv layers l, mean
               and std over the two halves of the batch      Li et al., ICLR 2023
    params     the number of trainable parameters;  flops  forward FLOPs per example (matmuls, convs)

Where vitcore departs from foresight, on purpose:
- fisher reduces over the tokens of (B, N', C) activations and keeps channels; foresight sums every
  axis after the second, which for a transformer sums the channels and keeps the tokens.
- nwot reads the inputs of ReLU *and* GELU modules (NASLib hooks ReLU only, so a GELU ViT scores a
  constant); the ViT's MLP applies its GELU as a module, so its pre-activations count.
- Scores do not depend on how a batch is chunked to fit memory (foresight multiplies grad_norm by
  the number of chunks when it retries after running out of memory).
- zico uses the two halves of the one batch as its two minibatches. It always counts layer weights
  only, as the paper does: a bias can have an exactly zero gradient in exact arithmetic (the key
  bias of softmax attention), and then σ is rounding noise that decides the score.
"""
from typing import Callable, Dict, Iterable, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitcore.ops.dispatch import eager
from vitcore.ops.param_stats import param_stats
from vitcore.passes import data_pass, hessian_grad, layer_weights, synflow_grads

PROXIES = ("grad_norm", "snip", "plain", "grasp", "synflow", "fisher", "jacob_cov", "nwot", "zico", "params", "flops")
GRAD_NORM_MODES = ("global", "per_layer")  # how grad_norm adds the tensors' norms
PARAM_SETS = ("all", "weights")
_GRADIENT = {"grad_norm", "snip", "plain", "grasp"}  # need the batch gradient of the counted tensors
_G2, _ABS_GW, _GW = 0, 1, 2  # columns of param_stats: Σg², Σ|g·θ|, Σg·θ (Σθ² unused)
_JACOB_K = 1e-5  # foresight's eigenvalue offset


def check_proxies(proxies: Iterable[str]) -> List[str]:
    """The requested proxy names as a list; an unknown name raises, listing the valid ones."""
    names = [proxies] if isinstance(proxies, str) else list(proxies)
    if not names:
        raise ValueError("proxies is empty; valid: " + ", ".join(PROXIES))
    for name in names:
        if name not in PROXIES:
            raise ValueError(f"unknown proxy {name!r}; valid: {', '.join(PROXIES)}")
    return names


def _counted(model: nn.Module, which: str) -> List[torch.Tensor]:
    if which == "weights":
        return layer_weights(model)
    return [p for p in model.parameters() if p.requires_grad]


def _pairs(params, grads):
    return [p.detach() for p, g in zip(params, grads) if g is not None], [g for g in grads if g is not None]


def _zico(group_grads, keep, device) -> torch.Tensor:
    total = None
    for per_group in (p for p, k in zip(zip(*group_grads), keep) if k):
        if any(g is None for g in per_group):
            continue
        G = torch.stack([g.double() for g in per_group])  # (groups, *shape)
        std, mean_abs = G.std(0, unbiased=False), G.abs().mean(0)
        ratio = torch.where(std > 0, mean_abs / torch.where(std > 0, std, 1), 0).sum()
        term = torch.where(ratio > 0, torch.log(torch.where(ratio > 0, ratio, 1)), 0)
        term = torch.where(torch.isfinite(G).all(), term, torch.nan)  # not 0 where gradients are NaN
        total = term if total is None else total + term
    return total if total is not None else torch.zeros((), dtype=torch.float64, device=device)


def _corrcoef(x: torch.Tensor) -> torch.Tensor:
    """Correlation of the rows of x (B, F), as np.corrcoef: NaN for a constant row. Written out
    because torch.corrcoef checks its degrees of freedom with a host sync on CUDA."""
    centred = x - x.mean(1, keepdim=True)  # (B, F)
    norms = centred.norm(dim=1)  # (B,)
    return (centred @ centred.T) / (norms[:, None] * norms[None, :])  # (B, B)


def _jacob_cov(corr: np.ndarray) -> float:
    if not np.isfinite(corr).all():
        return float("nan")  # a constant jacobian row has no correlation (foresight returns NaN too)
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(v + _JACOB_K) + 1.0 / (v + _JACOB_K)))


def _log_det(kernel: np.ndarray) -> float:
    return float(np.linalg.slogdet(kernel)[1]) if np.isfinite(kernel).all() else float("nan")


def _run(model, inputs, targets, loss_fn, names, mode, counted, chunks) -> Dict[str, float]:
    wanted = set(names)
    grad_params = counted if wanted & _GRADIENT or "zico" in wanted else []
    groups = 2 if "zico" in wanted else 1
    scalars: Dict[str, torch.Tensor] = {}
    matrices: Dict[str, torch.Tensor] = {}
    if wanted & (_GRADIENT | {"fisher", "jacob_cov", "nwot", "zico"}):
        dp = data_pass(model, inputs, targets, loss_fn, grad_params, chunks, groups,
                       fisher="fisher" in wanted, jacobian="jacob_cov" in wanted, naswot="nwot" in wanted)
        if wanted & {"grad_norm", "snip", "plain"}:
            stats = param_stats(*_pairs(grad_params, dp.grads)).double()  # (T, 4), one launch
            g2 = stats[:, _G2]
            scalars["grad_norm"] = g2.sum().sqrt() if mode == "global" else g2.sqrt().sum()
            scalars["snip"], scalars["plain"] = stats[:, _ABS_GW].sum(), stats[:, _GW].sum()
        if "grasp" in wanted:
            hg = hessian_grad(model, inputs, targets, loss_fn, grad_params, dp.grads, chunks)
            scalars["grasp"] = -param_stats(*_pairs(grad_params, hg))[:, _GW].double().sum()
        if "fisher" in wanted:
            scalars["fisher"] = 0.5 * sum(f.double().sum() for f in dp.fisher)
        if "zico" in wanted:
            weight_ids = {id(w) for w in layer_weights(model)}
            scalars["zico"] = _zico(dp.group_grads, [id(p) in weight_ids for p in grad_params], inputs.device)
        if "jacob_cov" in wanted:
            matrices["jacob_cov"] = _corrcoef(dp.jacobian)  # (B, B)
        if "nwot" in wanted:
            matrices["nwot"] = dp.kernel  # (B, B)
    if "synflow" in wanted:
        theta, g = synflow_grads(model, counted, inputs.shape[1:])
        # float64 sums: the kernel accumulates in fp32, whose range deep |θ| products can exceed
        scalars["synflow"] = sum((t.detach() * gi).abs().sum() for t, gi in zip(theta, g) if gi is not None)
    host = {}
    if "params" in wanted:
        host["params"] = float(sum(p.numel() for p in model.parameters() if p.requires_grad))
    if "flops" in wanted:
        model.eval()  # one example: BatchNorm must use its running statistics
        with eager(), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs[:1])
        model.train()
        host["flops"] = float(counter.get_total_flops())

    # -- the one host sync: every scalar and matrix in one transfer, with the count of bad inputs --
    keys = list(scalars)
    non_finite = inputs.numel() - torch.isfinite(inputs).sum()
    parts = [torch.stack([scalars[k].double() for k in keys] + [non_finite.double()])]
    parts += [m.double().flatten() for m in matrices.values()]
    flat = torch.cat(parts).cpu().numpy()
    if flat[len(keys)]:
        raise ValueError(f"inputs hold {int(flat[len(keys)])} NaN or infinite values of {inputs.numel()}")
    values = dict(zip(keys, flat[: len(keys)].tolist()))
    offset = len(keys) + 1
    for name, m in matrices.items():
        block = flat[offset: offset + m.numel()].reshape(m.shape)
        offset += m.numel()
        values[name] = _jacob_cov(block) if name == "jacob_cov" else _log_det(block)
    values.update(host)
    return {name: float(values[name]) for name in names}


def score(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    proxies: Iterable[str] = ("grad_norm", "snip"),
    mode: str = "global",
    params: str = "all",
    chunks: int = 1,
) -> Dict[str, float]:
    """Score ``model`` on one minibatch with the fewest passes the requested proxies need.

    One data pass (forward + backward, with hooks) serves grad_norm, snip, plain, fisher,
    jacob_cov, nwot and zico; synflow adds its own pass on |θ|, grasp a Hessian-gradient pass.
    The model is scored in train mode (as foresight does) and left as it came in: every module's
    train/eval flag and every buffer (BatchNorm statistics) are restored, and its weights are never
    changed. Gradients come from ``torch.autograd.grad``, so existing ``.grad`` values are neither
    read nor changed. The device syncs with the host once.

    ``mode`` changes grad_norm only (see the module docstring); ``params`` picks the counted
    tensors; ``chunks`` splits the batch to fit memory without changing the scores (up to
    rounding; except with layers that normalise with batch statistics, such as BatchNorm in train
    mode), and on CUDA out-of-memory the split doubles automatically. ``loss_fn`` must average
    over examples. Returns ``{proxy: float}`` in the order asked. Inputs holding NaN or inf are
    refused (ValueError, raised after the one sync); a model that makes NaN gets NaN scores.
    """
    names = check_proxies(proxies)
    if mode not in GRAD_NORM_MODES:
        raise ValueError(f"mode={mode!r}; valid: {', '.join(GRAD_NORM_MODES)}")
    if params not in PARAM_SETS:
        raise ValueError(f"params={params!r}; valid: {', '.join(PARAM_SETS)}")
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    B = inputs.shape[0] if inputs.ndim else 0
    if B < 1 or len(targets) != B:
        raise ValueError(f"inputs hold {B} examples and targets {len(targets)}; need the same number >= 1")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or not 1 <= chunks <= B:
        raise ValueError(f"chunks={chunks!r} must be an int in 1..{B} (the batch size)")
    if "zico" in names and B < 2:
        raise ValueError("zico compares the two halves of the batch: it needs at least 2 examples")
    if "jacob_cov" in names and B < 2:
        raise ValueError("jacob_cov correlates the examples' input gradients: it needs at least 2 examples")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("vitcore.score differentiates the model: call it outside torch.inference_mode()")
    counted = _counted(model, params)
    if not counted:
        raise ValueError(f"the model has no trainable parameters for params={params!r}")
    modes = {m: m.training for m in model.modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # BatchNorm statistics move in train mode
    model.train()
    try:
        while True:
            try:
                with torch.enable_grad():
                    return _run(model, inputs, targets, loss_fn, names, mode, counted, chunks)
            except torch.cuda.OutOfMemoryError:
                if chunks >= B:
                    raise
                _restore(model, modes, buffers)
                model.train()
                chunks = min(2 * chunks, B)
                torch.cuda.empty_cache()
    finally:
        _restore(model, modes, buffers)


def _restore(model: nn.Module, modes: Dict[nn.Module, bool], buffers: Dict[str, torch.Tensor]) -> None:
    """Each module's train/eval flag and every buffer's value, as they were before scoring."""
    for m, training in modes.items():
        m.training = training
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])

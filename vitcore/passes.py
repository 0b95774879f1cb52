"""The passes that zero-cost proxies share: one data pass with hooks, synflow's pass, GraSP's pass.

Every pass may split the batch into chunks to fit memory. Each chunk's mean loss is weighted by
its share of the batch (n_c / B), so gradients, activation gradients and Hessian-gradient products
are those of the whole batch's mean loss, whatever the split (foresight instead sums per-chunk
means, which scales grad_norm with the number of chunks). ``loss_fn`` must therefore average over
the examples, as ``F.cross_entropy`` does by default.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitcore.ops.dispatch import eager

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # "layers" for fisher and params="weights"
ACTIVATION_TYPES = (nn.ReLU, nn.GELU)  # NASWOT reads the sign pattern of their inputs
SYNFLOW_BATCHNORM = ("eval", "strip", "keep")  # how synflow's pass treats BatchNorm, see synflow_grads
PASSES = ("data", "halves", "synflow", "hessian")  # what a proxy unit may ask for (vitcore.proxies.base)
DATA_TAPS = ("grads", "fisher", "jacobian", "codes")  # what the data pass may record, see DataPass
NOT_DIFFERENTIABLE = ("the model's output does not depend on its parameters or inputs (detached, or computed "
                      "under torch.no_grad() inside forward): nothing to differentiate")


def _weight_parameters(m: nn.Module) -> List[torch.Tensor]:
    """The parameters a layer's weight is: ``weight`` itself, or, for a weight computed on every forward
    (``weight_norm``, ``spectral_norm``, ``torch.nn.utils.parametrize``), the parameters it is computed
    from (g and v, the original), whose gradients the loss has; nn.MultiheadAttention's input projection
    (``in_proj_weight``, or its q / k / v weights), which is no Linear module."""
    if isinstance(m, nn.MultiheadAttention):
        names = ("in_proj_weight",) if m.in_proj_weight is not None else ("q_proj_weight", "k_proj_weight",
                                                                            "v_proj_weight")
        return [getattr(m, name) for name in names]
    if isinstance(m._parameters.get("weight"), nn.Parameter):
        return [m.weight]
    return [p for name, p in m.named_parameters() if name != "bias" and not name.startswith("parametrizations.bias.")]


def layer_weight_groups(model: nn.Module) -> List[List[torch.Tensor]]:
    """Per Linear / Conv layer (and nn.MultiheadAttention input projection), in module order, its trainable
    weight tensors (``_weight_parameters``); a tensor shared by several layers counts once, with the first."""
    seen, groups = set(), []
    for m in model.modules():
        if isinstance(m, LAYER_TYPES + (nn.MultiheadAttention,)):
            group = [p for p in _weight_parameters(m) if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in group)
            if group:
                groups.append(group)
    return groups


def layer_weights(model: nn.Module) -> List[torch.Tensor]:
    """The trainable weight tensors of the model's layers (``layer_weight_groups``), each once."""
    return [p for group in layer_weight_groups(model) for p in group]


def split(n: int, chunks: int, groups: int = 1) -> List[Tuple[int, int, int]]:
    """(start, end, group) ranges cutting range(n) at every chunk and group boundary."""
    cuts = {c * n // chunks for c in range(chunks + 1)} | {g * n // groups for g in range(groups + 1)}
    cuts = sorted(cuts)
    return [(a, b, next(g for g in range(groups) if a < (g + 1) * n // groups)) for a, b in zip(cuts, cuts[1:])]


def logits_of(output, n: int, targets: Optional[torch.Tensor]) -> torch.Tensor:
    """The model's ``output`` for ``n`` examples, checked to be logits: a floating tensor (n, C), or (n, ...)
    for floating targets of that shape (any (n, ...) when ``targets`` is None: synflow sums the outputs).
    A tuple, list or dict (Hugging Face models return a ModelOutput) is refused, not unpacked: which
    entry holds the logits is the model's convention, so the caller wraps the model to return them
    (``forward(x): return self.inner(x).logits``). TypeError / ValueError naming what came back."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model returned a {type(output).__name__}, not a tensor of logits (B, C): wrap it in "
                        "an nn.Module whose forward returns the logits alone (e.g. model(x)[0] or model(x).logits)")
    if not output.is_floating_point():
        raise TypeError(f"the model returned logits of dtype {output.dtype}: expected a floating dtype")
    if output.ndim == 0 or output.shape[0] != n:
        raise ValueError(f"the model returned a tensor of shape {tuple(output.shape)} for {n} examples: "
                         f"expected logits of shape ({n}, C)")
    if output.numel() == 0:
        raise ValueError(f"the model returned logits of shape {tuple(output.shape)}: no class scores")
    soft_like = targets is not None and targets.is_floating_point() and targets.shape[1:] == output.shape[1:]
    if targets is not None and output.ndim != 2 and not soft_like:
        raise ValueError(f"the model returned logits of shape {tuple(output.shape)}: expected ({n}, C), one row "
                         "of class scores per example (squeeze or flatten the extra dimensions)")
    return output


def chunk_shares(targets: torch.Tensor, ranges: Sequence[Tuple[int, int, int]],
                 ignore_index: Optional[int] = None) -> List[float]:
    """Each chunk's weight in the batch's mean loss: n_c / B; with ``ignore_index``, the chunk's
    targets that the loss counts over the batch's (one host read, made only when the batch is split)."""
    B = targets.shape[0]
    if ignore_index is None or len(ranges) == 1 or targets.is_floating_point():
        return [(end - start) / B for start, end, _ in ranges]
    ends = torch.tensor([end for _, end, _ in ranges], device=targets.device) - 1
    counted = (targets != ignore_index).cumsum(0)[ends].tolist()  # (chunks,) running counts
    total = counted[-1]
    if total == 0:  # every target ignored: the loss is NaN whatever the weights
        return [(end - start) / B for start, end, _ in ranges]
    return [(c - prev) / total for c, prev in zip(counted, [0] + counted[:-1])]


def loss_on(loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor,
            ignore_index: Optional[int] = None) -> torch.Tensor:
    """``loss_fn(logits, targets)`` with integer targets outside 0..C-1 (C = logits.shape[1]) replaced
    by 0 on the device, so a bad index neither raises inside torch (nor trips a CUDA device assert)
    nor is silently ignored (-100): ``vitcore.score`` counts them and refuses them after its sync.
    ``ignore_index`` (``vitcore.compat``: -100, which cross_entropy leaves out of its mean) is passed
    to the loss as it is. A loss that is not one number (a 0-d tensor: the batch's mean) is refused,
    naming what came back."""
    if loss_fn is F.cross_entropy and logits.ndim == 2 and logits.shape[1] == 1:
        raise ValueError("the model returned 1 class score per example: the cross-entropy over one class is 0 "
                         "for every network, and so is every gradient proxy; give a head of 2 or more classes "
                         "(labels of 2 or more classes), or a loss_fn for one output")
    if not targets.is_floating_point() and logits.ndim >= 2:
        valid = (targets >= 0) & (targets < logits.shape[1])
        if ignore_index is not None:
            valid |= targets == ignore_index
        targets = torch.where(valid, targets, 0)
    elif loss_fn is F.cross_entropy and targets.shape != logits.shape:
        raise ValueError(f"class probabilities of shape {tuple(targets.shape)} for the model's outputs of "
                         f"shape {tuple(logits.shape)}: they must match")
    loss = loss_fn(logits, targets)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn returned a {type(loss).__name__}: it must return the mean loss as a 0-d tensor")
    if loss.ndim != 0:
        raise ValueError(f"loss_fn returned a tensor of shape {tuple(loss.shape)}: it must return the mean loss "
                         "over the examples, a 0-d tensor (e.g. reduction='mean')")
    if torch.is_grad_enabled() and logits.requires_grad and not loss.requires_grad:
        raise ValueError("loss_fn returned a tensor that does not depend on the logits (detached, or computed "
                         "under torch.no_grad()): the proxies differentiate it")
    return loss


def averaging_check(loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(L, L2), float64 (2,) on the device: ``loss_fn`` on these n examples, and on them twice over (2n rows).

    A loss that averages over the examples gives L2 = L (up to rounding); one that sums (``reduction="sum"``)
    gives 2L, and would make every gradient proxy scale with the number of chunks. Only the loss function
    is probed, on logits already computed (no model pass); ``vitcore.score`` reads the pair with its one
    host sync and refuses a loss whose L2 is not L."""
    with torch.no_grad():
        once = loss_on(loss_fn, logits, targets)
        twice = loss_on(loss_fn, torch.cat([logits, logits]), torch.cat([targets, targets]))
    return torch.stack([once.double(), twice.double()])


@dataclass
class DataPass:
    """What one data pass produced; fields the request did not need stay empty."""

    params: List[torch.Tensor] = field(default_factory=list)  # the tensors whose gradients were taken
    grads: List[Optional[torch.Tensor]] = field(default_factory=list)  # d(mean loss)/dθ per params entry
    group_grads: List[List[Optional[torch.Tensor]]] = field(default_factory=list)  # per group, per entry
    fisher: List[torch.Tensor] = field(default_factory=list)  # per layer call: mean_b (Σ_n a·da)², (C,)
    fisher_layers: List[nn.Module] = field(default_factory=list)  # the module of each fisher entry
    jacobian: Optional[torch.Tensor] = None  # (B, input features) float64: d(Σ outputs)/dx per example; None
    # where asked for when the inputs reach the outputs only through torch.no_grad() or a detach
    codes: List[torch.Tensor] = field(default_factory=list)  # per ReLU/GELU call: (B, units) bool, input > 0
    codes_nan: Optional[torch.Tensor] = None  # 0-d bool: did any ReLU/GELU input hold a NaN
    num_outputs: int = 0  # logits.shape[1]: the number of classes targets index
    first_logits: Optional[torch.Tensor] = None  # the first chunk's logits, detached (for averaging_check)


def _accumulate(total: List[Optional[torch.Tensor]], part: Sequence[Optional[torch.Tensor]], weight: float,
                only: bool):
    """total += weight * part. ``only``: the sole contribution, so autograd's tensors are kept as they
    are instead of copied; they are never written to, since autograd may return one tensor twice."""
    for i, g in enumerate(part):
        if g is None:
            continue
        if total[i] is None:
            total[i] = g if only and weight == 1.0 else g * weight
        else:
            total[i].add_(g, alpha=weight)


def _fisher_term(act: torch.Tensor, grad: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Σ_b g_bc² over the chunk, g_bc = Σ over every axis but batch and channel of act·grad."""
    channel = act.ndim - 1 if isinstance(module, nn.Linear) else 1
    dtype = torch.promote_types(act.dtype, torch.float32)  # fp32 at least, float64 stays
    prod = (act.to(dtype) * grad.to(dtype)).movedim(channel, -1)  # (n, ..., C)
    g = prod.reshape(prod.shape[0], -1, prod.shape[-1]).sum(1)  # (n, C)
    return g.pow(2).sum(0)  # (C,)


def data_pass(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable,
    params: List[torch.Tensor],
    chunks: int,
    groups: int = 1,
    taps: Sequence[str] = (),
    ignore_index: Optional[int] = None,
) -> DataPass:
    """Forward and backward over the batch in chunks, with the hooks ``taps`` asks for.

    params: the tensors whose loss gradient is wanted (may be empty; "grads" records it);
    groups > 1 also keeps the gradient of each group's mean loss (the batch cut in ``groups``
    equal parts, for ZiCo). taps, from DATA_TAPS: "grads", "fisher" (every Linear/Conv output times
    its loss gradient, frozen weights or not; one computed under torch.no_grad() has none and adds
    nothing), "jacobian" (input gradients of Σ f(x)), "codes" (ReLU/GELU input signs).
    ignore_index: a target value the loss leaves out (see ``loss_on``); groups must then be 1.
    """
    unknown = set(taps) - set(DATA_TAPS)
    assert not unknown, unknown
    assert ignore_index is None or groups == 1, "per-group weights do not count ignored targets"
    fisher, jacobian, naswot = "fisher" in taps, "jacobian" in taps, "codes" in taps
    B = inputs.shape[0]
    out = DataPass(params=list(params), grads=[None] * len(params),
                   group_grads=[[None] * len(params) for _ in range(groups)])
    layer_calls: List[Tuple[nn.Module, torch.Tensor]] = []
    codes: List[List[torch.Tensor]] = []  # per activation call (in forward order): its codes per chunk
    chunk_codes: List[torch.Tensor] = []
    nan_seen: List[torch.Tensor] = []  # per activation call and chunk: did its input hold a NaN (0-d)
    jacobians, handles = [], []
    if fisher:
        def keep_output(module, args, output):
            if output.requires_grad:
                layer_calls.append((module, output))
            elif torch.is_grad_enabled():  # frozen weights, inputs without gradient: the loss has one here still
                leaf = output.detach().requires_grad_(True)
                layer_calls.append((module, leaf))
                return leaf.clone()  # a later layer may write in place; the leaf keeps the output's values

        handles += [m.register_forward_hook(keep_output) for m in model.modules() if isinstance(m, LAYER_TYPES)]
    if naswot:
        def keep_code(module, args):
            x = args[0]
            chunk_codes.append((x > 0).reshape(x.shape[0], -1))  # (n, units), one entry per call
            nan_seen.append(x.isnan().any())  # a NaN reads as "off": the codes alone would hide it

        handles += [m.register_forward_pre_hook(keep_code) for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]
    want_loss_grad = bool(params) or fisher
    fisher_sums: List[torch.Tensor] = []
    fisher_layers: List[nn.Module] = []
    try:
        ranges = split(B, chunks, groups)
        shares = chunk_shares(targets, ranges, ignore_index)
        for (start, end, group), share in zip(ranges, shares):
            x = inputs[start:end]
            if jacobian:
                x = x.detach().requires_grad_(True)
            layer_calls.clear()
            chunk_codes.clear()
            with torch.set_grad_enabled(want_loss_grad or jacobian):  # x's clone: a leaf allows no in-place write
                logits = logits_of(model(x.clone() if jacobian else x), end - start, targets)
            if (want_loss_grad or jacobian) and not logits.requires_grad:
                raise ValueError(NOT_DIFFERENTIABLE)
            out.num_outputs = logits.shape[1] if logits.ndim >= 2 else 0
            if out.first_logits is None:
                out.first_logits = logits.detach()
            if naswot and chunk_codes:  # none: nwot's reduction says so, the pass serves the other proxies
                codes = codes or [[] for _ in chunk_codes]
                for call, c in zip(codes, chunk_codes):
                    call.append(c)
            if want_loss_grad and share > 0:  # a chunk whose targets are all ignored adds nothing
                loss = loss_on(loss_fn, logits, targets[start:end], ignore_index)
                acts = [a for _, a in layer_calls]
                got = (torch.autograd.grad(loss, params + acts, retain_graph=jacobian, allow_unused=True)
                       if params or acts else [])  # fisher alone on a model without layers: fisher says so
                _accumulate(out.grads, got[: len(params)], share, only=len(ranges) == 1)
                if groups > 1:
                    group_size = (group + 1) * B // groups - group * B // groups
                    _accumulate(out.group_grads[group], got[: len(params)], (end - start) / group_size,
                                only=end - start == group_size)
                called = [(m, a, ga) for (m, a), ga in zip(layer_calls, got[len(params):]) if ga is not None]
                terms = [_fisher_term(a.detach(), ga * share, m) for m, a, ga in called]
                fisher_sums = terms if not fisher_sums else [s + t for s, t in zip(fisher_sums, terms)]
                fisher_layers = [m for m, _, _ in called]
            if jacobian:
                (jx,) = torch.autograd.grad(logits.sum(), x, allow_unused=True)
                if jx is None:  # the inputs reach the logits only through torch.no_grad() or a detach
                    jacobians = None
                    jacobian = False  # no retained graph needed for a next chunk; jacob_cov says why
                else:
                    jacobians.append(jx.reshape(jx.shape[0], -1))  # (n, input features)
    finally:
        for h in handles:
            h.remove()
        layer_calls.clear()
        chunk_codes.clear()
    out.fisher = [s / B for s in fisher_sums]
    out.fisher_layers = fisher_layers
    if jacobians:
        out.jacobian = torch.cat(jacobians).double()  # (B, features)
    if naswot:
        out.codes = [torch.cat(call_codes) for call_codes in codes]  # each (B, units); [] when none ran
        out.codes_nan = torch.stack(nan_seen).any() if nan_seen else None
    return out


@contextlib.contextmanager
def _tensors_kept(model: nn.Module):
    """Put every module's own parameter and buffer entries back on exit. ``functional_call`` does
    not when one module is registered under two names (``self.a2 = self.a``): it leaves the
    swapped-in tensors in place (PyTorch 2.13)."""
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for m, params, buffers in saved:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)


@contextlib.contextmanager
def _batchnorm_stripped(model: nn.Module):
    """Every BatchNorm1d/BatchNorm2d of the model an identity map inside the block (foresight's
    ``synflow``, which swaps their ``forward`` for a no-op on its copy of the network)."""
    stripped = [(m, m.__dict__.get("forward")) for m in model.modules()
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for m, _ in stripped:
        m.forward = _identity
    try:
        yield
    finally:
        for m, own in stripped:
            del m.forward
            if own is not None:
                m.forward = own


def _identity(x):
    return x


def synflow_grads(model: nn.Module, params: List[torch.Tensor], input_shape: torch.Size, batchnorm: str = "eval"):
    """Synflow's pass: gradients of R = Σ f(1) for the network with |θ| in float64, one all-ones example.

    The model itself is untouched: ``functional_call`` runs it on float64 copies of |θ| and of its
    floating buffers (|·| of the whole state, as Tanaka et al.'s code and foresight take it).
    float64 keeps deep products of |θ| from overflowing. ``batchnorm``, from SYNFLOW_BATCHNORM:

    - "eval" (``vitcore.score``): every module in eval mode, so BatchNorm is the fixed affine map of
      its |running statistics| (Tanaka et al.'s synflow code scores in eval mode). A BatchNorm that
      tracks no statistics (``track_running_stats=False``: NAS-Bench-201's cells) would normalise
      by the one all-ones example even in eval mode; it gets the fixed statistics mean 0, variance 1
      instead, those of a freshly built BatchNorm that tracks them. So the same initialised network
      scores the same whichever way its BatchNorm is built, and its γ and β keep their place in R,
      where stripping the layer (foresight's choice) would give them no synflow at all.
    - "strip" (foresight's ``synflow``): BatchNorm1d/2d are identity maps, every module in the mode
      it is in when the pass runs.
    - "keep" (foresight's ``synflow_bn``): BatchNorm as it is, every module in its current mode; in
      train mode it normalises by the statistics of the one example.

    Returns (|θ|, grads); the model's train/eval flags are put back.
    """
    assert batchnorm in SYNFLOW_BATCHNORM, batchnorm
    wanted = {id(p) for p in params}
    values, abs_params = {}, {}
    for name, p in model.named_parameters():
        values[name] = p.detach().double().abs().requires_grad_(id(p) in wanted)
        if id(p) in wanted:
            abs_params[id(p)] = values[name]
    for name, b in model.named_buffers():
        values[name] = b.double().abs() if b.is_floating_point() else b
    device = params[0].device
    if batchnorm == "eval":
        for name, m in model.named_modules():
            if isinstance(m, _BatchNorm) and m.running_mean is None and m.running_var is None:
                prefix = f"{name}." if name else ""
                values[prefix + "running_mean"] = torch.zeros(m.num_features, dtype=torch.float64, device=device)
                values[prefix + "running_var"] = torch.ones(m.num_features, dtype=torch.float64, device=device)
    ones = torch.ones((1,) + tuple(input_shape), dtype=torch.float64, device=device)
    modes = [(m, m.training) for m in model.modules()]
    if batchnorm == "eval":
        model.eval()
    stripped = _batchnorm_stripped(model) if batchnorm == "strip" else contextlib.nullcontext()
    try:
        with eager(), torch.enable_grad(), torch.autocast(ones.device.type, enabled=False), _tensors_kept(model), \
                stripped:
            total = logits_of(functional_call(model, values, (ones,)), 1, None).sum()  # float64 throughout
            if not total.requires_grad:
                raise ValueError(NOT_DIFFERENTIABLE)
    finally:
        for m, mode in modes:
            m.training = mode
    abs_list = [abs_params[id(p)] for p in params]
    return abs_list, torch.autograd.grad(total, abs_list, allow_unused=True)


def hessian_grad(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable,
    params: List[torch.Tensor],
    grads: Sequence[Optional[torch.Tensor]],
    chunks: int,
    ignore_index: Optional[int] = None,
) -> List[Optional[torch.Tensor]]:
    """GraSP's pass: H·g, the loss Hessian times the (fixed) batch gradient g, by double backward.

    Runs the eager references (``eager()``): the Triton kernels' backward is not differentiable; and
    ``F.scaled_dot_product_attention`` (timm's and nn.MultiheadAttention's attention) on its math
    backend, the only one whose backward PyTorch differentiates (its flash and memory-efficient
    backward have no derivative). ignore_index: as in ``data_pass``.
    """
    B = inputs.shape[0]
    hg: List[Optional[torch.Tensor]] = [None] * len(params)
    ranges = split(B, chunks)
    with eager(), sdpa_kernel([SDPBackend.MATH]):
        for (start, end, _), share in zip(ranges, chunk_shares(targets, ranges, ignore_index)):
            if share == 0:
                continue
            logits = logits_of(model(inputs[start:end]), end - start, targets)
            loss = loss_on(loss_fn, logits, targets[start:end], ignore_index) * share
            gf = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            z = sum((g.detach() * f).sum() for g, f in zip(grads, gf) if g is not None and f is not None)
            if not isinstance(z, torch.Tensor) or not z.requires_grad:
                continue
            _accumulate(hg, torch.autograd.grad(z, params, allow_unused=True), 1.0, only=len(ranges) == 1)
    return hg

"""``score``: plan the passes the requested proxies need, run each once, read everything in one sync."""
import contextlib
import contextvars
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vitcore.passes import (SYNFLOW_BATCHNORM, averaging_check, data_pass, hessian_grad, layer_weights, split,
                            synflow_grads)
from vitcore.proxies.base import BLOCK_PARTS, Context, Proxy, find_vit_blocks
from vitcore.proxies.grad_norm import GRAD_NORM_MODES
from vitcore.proxies.registry import PROXIES, UNITS

PARAM_SETS = ("all", "weights")
_PASSES_END = contextvars.ContextVar("vitcore_passes_end", default=None)


@contextlib.contextmanager
def passes_end_marks():
    """Yields a list to which every ``score`` inside the block appends ``time.perf_counter()`` at the
    end of its passes, just before its one host read; on CUDA it first waits for the device, so the
    mark splits a call into passes and host read (one extra sync per call: for timing runs only)."""
    token = _PASSES_END.set([])
    try:
        yield _PASSES_END.get()
    finally:
        _PASSES_END.reset(token)


@dataclass(frozen=True)
class Settings:
    """How ``score_counted`` runs the passes; the defaults are ``vitcore.score``'s definitions
    (``vitcore.compat`` runs foresight's)."""

    units: Mapping[str, Proxy] = field(default_factory=lambda: UNITS)  # the proxy of each name asked for
    train_mode: bool = True  # every module in train mode; False: each in the mode it came in
    synflow_batchnorm: str = "eval"  # BatchNorm in synflow's pass, from vitcore.passes.SYNFLOW_BATCHNORM
    ignore_index: Optional[int] = None  # a target value the loss leaves out (foresight: -100), else refused
    num_classes: Optional[int] = None  # the logits' width the data asks for (vitcore score: the batch's)

    def __post_init__(self):
        assert self.synflow_batchnorm in SYNFLOW_BATCHNORM, self.synflow_batchnorm


class ProxyFailed(RuntimeError):
    """Some proxies raised while the others were scored: ``scores`` holds every requested proxy, NaN for
    those that failed, and ``errors`` {proxy: "ExceptionType: message"} for each failed one. Raised
    by ``score`` after the one host sync, so the others' values are kept (``vitcore.runs`` records both)."""

    def __init__(self, scores: Dict[str, float], errors: Dict[str, str]):
        self.scores, self.errors = scores, errors
        super().__init__("; ".join(f"{name} failed: {why}" for name, why in errors.items()))


class NeedsViT(TypeError):
    """A ViT-native proxy (dss, meco, lswag, ...) was asked of a model that is not a ViT it can read: the
    choice of proxies does not fit the models, so ``vitcore score`` stops there (for a file mixing ViTs and
    other models, score the ViT-native proxies on a file of the ViTs)."""


def _failure(e: Exception) -> str:
    """The first line of "ExceptionType: message"; out of memory is not a proxy's failure and goes on up
    (``score`` retries it with a finer split)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        raise e
    return f"{type(e).__name__}: {e}".splitlines()[0]


def check_proxies(proxies: Iterable[str]) -> List[str]:
    """The requested proxy names as a list, each once and without surrounding blanks; an unknown name
    raises, listing the valid ones."""
    if isinstance(proxies, str):
        names = [proxies]
    elif isinstance(proxies, Iterable):
        names = list(proxies)
    else:
        raise TypeError(f"proxies={proxies!r} must be a proxy name or a list of names")
    names = [n.strip() if isinstance(n, str) else n for n in names]  # " grad_norm", as "a, b" splits
    if not names:
        raise ValueError("proxies is empty; valid: " + ", ".join(PROXIES))
    for name in names:
        if name not in PROXIES:
            raise ValueError(f"unknown proxy {name!r}; valid: {', '.join(PROXIES)}")
    return list(dict.fromkeys(names))  # each once


def counted_tensors(model: nn.Module, which: str) -> List[torch.Tensor]:
    """``params="all"``: every trainable tensor once; ``"weights"``: layer weights once each (``layer_weights``)."""
    if which == "weights":
        return layer_weights(model)
    return [p for p in model.parameters() if p.requires_grad]


class _Fresh:
    """The model's state on entry (train/eval flags, buffers, RNG), put back before every pass and
    every reduction, so no proxy sees what another one's pass changed (BatchNorm running statistics,
    dropout masks), and for good at the end. The passes read ``inputs``, a copy of the caller's
    ``original``, put back as well where the model changed it in place (``x.sub_``, a ReLU(inplace=True)
    on its input): the caller's batch is never handed to the model, and every pass reads the same one."""

    def __init__(self, model: nn.Module, original: torch.Tensor):
        device = original.device
        self.model, self.device = model, device
        self.original, self.inputs = original, original.detach().clone()
        self.version = self.inputs._version  # PyTorch bumps it on every in-place write, views' included
        self.modes = [(m, m.training) for m in model.modules()]
        # by owner and name, not by tensor: a pass may replace a buffer (``self.mean = ...``) rather
        # than update it in place, and the model then holds the new tensor
        self.buffers = [(m, name, b.clone()) for m in model.modules() for name, b in m.named_buffers(recurse=False)]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def reset(self, training: bool = True) -> None:
        """Put the entry state back; ``training``: every module in train mode (the passes), else each
        in its entry mode (the end). It runs before every pass and reduction, so it walks lists kept on
        entry rather than the module tree."""
        with torch.no_grad():
            for m, name, saved in self.buffers:
                getattr(m, name).copy_(saved)
            if self.inputs._version != self.version:
                self.inputs.copy_(self.original)
                self.version = self.inputs._version
        for m, mode in self.modes:
            if m.training != (training or mode):  # Module.__setattr__ is slow: set only what changed
                m.training = training or mode
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


def _tensors(out) -> Tuple[torch.Tensor, ...]:
    """A reduce's result as a tuple of tensors (it returns one tensor or a tuple of them)."""
    return out if isinstance(out, tuple) else (out,)


def _run(model, inputs, targets, loss_fn, names, mode, counted, chunks, fresh, settings) -> Dict[str, float]:
    units: List[Proxy] = [settings.units[n] for n in dict.fromkeys(names)]
    ignore = settings.ignore_index
    passes = {p for u in units for p in u.passes}
    taps = sorted({t for u in units for t in u.taps})
    ctx = Context(model, inputs, targets, loss_fn, mode, counted, chunks)
    B = inputs.shape[0]
    weights = layer_weights(model) if "halves" in passes else []
    # The halves pass shares the data pass's forward only where both cut the batch at the same places
    # (then each chunk's computation is the same): asking for zico never changes another proxy's value.
    shared = "halves" in passes and [r[:2] for r in split(B, chunks, 2)] == [r[:2] for r in split(B, chunks)]
    # A pass that raises fails the proxies that read it and leaves the others scored; when every requested
    # proxy reads it, its exception goes up as it came. So does a TypeError or ValueError, whoever reads
    # the pass: it names a wrong argument of the caller's (a loss_fn that does not average, probabilities
    # of the wrong shape), which no choice of proxies makes right.
    errors: Dict[str, str] = {}  # per proxy that raised: its error; the others are still scored
    failed: Dict[str, str] = {}  # per pass that raised: its error

    def run_pass(name: str, fn: Callable[[], object], serves: Tuple[str, ...] = ()) -> object:
        needs = [u for u in units if {name, *serves} & set(u.passes)]
        fresh.reset(training=settings.train_mode)
        try:
            return fn()
        except Exception as e:
            if len(needs) == len(units) or isinstance(e, (TypeError, ValueError)):
                raise
            for p in (name, *serves):
                failed[p] = f"the {name} pass failed: {_failure(e)}"
            return None

    if "data" in passes:
        params = list(counted) if "grads" in taps else []
        if shared:
            ids = {id(p) for p in params}
            params += [w for w in weights if id(w) not in ids]
        ctx.data = run_pass("data", lambda: data_pass(model, inputs, targets, loss_fn, params, chunks,
                                                      2 if shared else 1, taps, ignore), ("halves",) if shared else ())
        if shared:
            ctx.halves = ctx.data
    if "halves" in passes and ctx.halves is None and "halves" not in failed:
        ctx.halves = run_pass("halves", lambda: data_pass(model, inputs, targets, loss_fn, weights, chunks, groups=2))
    if "synflow" in passes:
        ctx.synflow = run_pass("synflow", lambda: synflow_grads(model, counted, inputs.shape[1:],
                                                                     settings.synflow_batchnorm))
    if "hessian" in passes and "data" not in failed:
        ctx.hessian = run_pass("hessian", lambda: hessian_grad(model, inputs, targets, loss_fn, counted,
                                                               ctx.data.grads[: len(counted)], chunks, ignore))
    reduced: Dict[str, object] = {}  # per proxy: a tensor or a tuple of tensors
    for unit in units:
        lost = next((failed[p] for p in unit.passes if p in failed), None)
        if lost is not None:
            errors[unit.name] = lost
        elif unit.reduce is not None:
            fresh.reset(training=settings.train_mode)
            try:
                reduced[unit.name] = unit.reduce(ctx)
            except Exception as e:  # a proxy's own failure; the passes' are handled above
                errors[unit.name] = _failure(e)

    # -- the one host sync: every proxy's tensor, with the counts of bad inputs and targets --
    done = next((p for p in (ctx.data, ctx.halves) if p is not None), None)
    num_outputs = done.num_outputs if done is not None else 0
    zero = torch.zeros((), device=inputs.device)
    if targets.is_floating_point():
        checks = _target_rows(targets, loss_fn)
    elif num_outputs:
        bad = (targets < 0) | (targets >= num_outputs)
        if ignore is not None:
            bad &= targets != ignore
        checks = [bad.sum(), targets.min(), targets.max(), zero]
    else:
        checks = [zero] * 4
    # a loss_fn of the caller's: does it average? (F.cross_entropy's default does)
    averaging = [zero.double()] * 2
    if loss_fn is not F.cross_entropy and done is not None and done.first_logits is not None:
        first = done.first_logits
        averaging = list(averaging_check(loss_fn, first, targets[: len(first)]))
    non_finite = inputs.numel() - torch.isfinite(fresh.original).sum()
    parts = [torch.stack([non_finite.double()] + [c.double() for c in checks] + averaging)]
    parts += [t.double().reshape(-1) for out in reduced.values() for t in _tensors(out)]
    marks = _PASSES_END.get()
    if marks is not None:
        if inputs.device.type == "cuda":
            torch.cuda.synchronize(inputs.device)
        marks.append(time.perf_counter())
    flat = torch.cat(parts).cpu().numpy()
    if flat[0]:
        raise ValueError(f"inputs hold {int(flat[0])} NaN or infinite values of {inputs.numel()}")
    if flat[1] and targets.is_floating_point():
        row, low, total = int(flat[2]), flat[3], flat[4]
        what = ("class probabilities: finite, >= 0, each row summing to 1 within "
                f"{_sum_tolerance(targets):.2g}" if _probabilities(targets, loss_fn) else "finite values")
        raise ValueError(f"targets hold {int(flat[1])} rows of {len(targets)} that are not {what}; the first is row "
                         f"{row} (smallest entry {low:.6g}, sum {total:.6g})")
    if flat[1]:
        raise ValueError(f"targets hold {int(flat[1])} class indices outside 0..{num_outputs - 1} for the "
                         f"model's {num_outputs} outputs (min {int(flat[2])}, max {int(flat[3])}); "
                         "ignore_index (-100) is not supported: drop those examples")
    if settings.num_classes is not None and num_outputs and num_outputs != settings.num_classes:
        raise ValueError(f"the model returned {num_outputs} class scores per example, not the "
                         f"{settings.num_classes} it is scored for (num_classes): features without a "
                         "classifier head, or a head of another width")
    once, twice = flat[5], flat[6]
    if abs(twice - once) > 0.25 * abs(once):  # a mean: equal up to rounding; a sum: twice; NaN: not decided
        n = len(done.first_logits)
        raise ValueError(f"loss_fn={loss_fn!r} does not average over the examples: on the first {n} examples it "
                         f"gives {once:.6g}, on the same {n} examples taken twice {twice:.6g} (a mean gives the same "
                         "value, a sum twice it); the scores would depend on chunks: use reduction='mean'")
    values, offset = {}, 7
    for name, out in reduced.items():
        arrays = []
        for t in _tensors(out):
            arrays.append(flat[offset: offset + t.numel()].reshape(t.shape))
            offset += t.numel()
        try:
            values[name] = float(settings.units[name].finish(tuple(arrays) if isinstance(out, tuple) else arrays[0]))
        except Exception as e:
            errors[name] = _failure(e)
    for unit in units:
        if unit.host is not None and unit.name not in errors:
            fresh.reset(training=settings.train_mode)
            try:
                values[unit.name] = float(unit.host(ctx))
            except Exception as e:
                errors[unit.name] = _failure(e)
    scores = {name: values.get(name, math.nan) for name in names}
    if errors:
        raise ProxyFailed(scores, errors)
    return scores


def _probabilities(targets: torch.Tensor, loss_fn) -> bool:
    """Whether floating ``targets`` are class probabilities: they are for ``F.cross_entropy``; a loss of
    the caller's may read other values (regression targets), which need only be finite."""
    return loss_fn is F.cross_entropy and targets.ndim == 2


def _sum_tolerance(targets: torch.Tensor) -> float:
    """How far a row of C probabilities in ``targets.dtype`` may sum from 1: C rounding errors of the
    dtype (normalising by a sum taken in that dtype, accumulated one term at a time)."""
    return targets.shape[1] * torch.finfo(targets.dtype).eps


def _target_rows(targets: torch.Tensor, loss_fn) -> List[torch.Tensor]:
    """[bad rows, first bad row, its smallest entry, its sum] of floating ``targets``, on the device (no sync).
    A row is bad when it holds NaN or inf, or, for class probabilities, a negative entry or a sum off 1."""
    rows = targets.reshape(len(targets), -1)  # (B, C) or (B, features)
    bad = ~torch.isfinite(rows).all(1)  # (B,)
    sums = rows.double().sum(1)  # (B,)
    if _probabilities(targets, loss_fn):
        bad |= (rows < 0).any(1) | ((sums - 1).abs() > _sum_tolerance(targets))
    first = bad.int().argmax().reshape(1)  # the first True (0 when none); a tensor index: no host read
    return [bad.sum(), first[0], rows.index_select(0, first).min(), sums.index_select(0, first)[0]]


def _check_targets(targets: torch.Tensor, B: int, loss_fn) -> None:
    if targets.ndim == 0:
        raise ValueError(f"targets is 0-d ({targets!r}); give one target per example, shape (B,) = ({B},)")
    if targets.dtype == torch.bool or targets.is_complex() or (
            not targets.is_floating_point() and targets.dtype != torch.int64):
        raise TypeError(f"targets.dtype={targets.dtype}: class indices must be torch.int64 (long), "
                        "class probabilities a floating dtype")
    if len(targets) != B:
        raise ValueError(f"inputs hold {B} examples and targets {len(targets)}; need the same number >= 1")
    if not targets.is_floating_point() and targets.ndim != 1 and loss_fn is F.cross_entropy:
        raise ValueError(f"int64 targets of shape {tuple(targets.shape)}: class indices have shape (B,) = ({B},); "
                         "one-hot or soft labels go as floating class probabilities (B, C)")
    if targets.is_floating_point() and loss_fn is F.cross_entropy and targets.ndim != 2:
        raise ValueError(f"floating targets of shape {tuple(targets.shape)}: cross_entropy takes class "
                         "probabilities of shape (B, classes), or int64 class indices of shape (B,)")


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _check_dtype(model: nn.Module, inputs: torch.Tensor) -> None:
    """Refuse inputs of another floating dtype than the model's one parameter dtype, outside autocast:
    torch's layers would fail on the first matmul with a dtype message."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and inputs.dtype not in dtypes and not _autocast_on(inputs.device.type):
        (dtype,) = dtypes
        raise TypeError(f"inputs.dtype={inputs.dtype} and the model's parameters are {dtype}: give inputs of the "
                        f"model's dtype (inputs.to({dtype})), or build the model in {inputs.dtype}")


def score(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    proxies: Iterable[str] = ("grad_norm", "snip"),
    mode: str = "global",
    params: str = "all",
    chunks: int = 1,
    num_classes: Optional[int] = None,
) -> Dict[str, float]:
    """Score ``model`` on one minibatch with the fewest passes the requested proxies need.

    model: an ``nn.Module`` taking ``inputs`` (B, ...) floating, on the model's device, and returning
    logits (B, C) as one tensor (a model returning a tuple or a Hugging Face ModelOutput is refused with
    a TypeError: wrap it to return the logits). targets: (B,) int64 class indices in 0..C-1, or (B, C)
    floating probabilities, each row finite, >= 0 and summing to 1 within C · eps of its dtype (with a
    ``loss_fn`` of the caller's, floating targets need only be finite); -100 (cross_entropy's
    ignore_index), other out-of-range indices and rows that are not probabilities are refused
    (ValueError naming the first bad row, counted on the device and raised after the sync).
    proxies: names from ``PROXIES``.

    The registry (``vitcore.proxies.registry``) says which passes each proxy needs; each pass runs
    once: one data pass (forward + backward, with hooks) serves grad_norm, snip, plain, fisher,
    jacob_cov and nwot; zico's two half-batches share it when the chunks cut there anyway, else run
    as their own pass; synflow adds its pass on |θ|, grasp a Hessian-gradient pass. Every pass starts
    from the model's buffers, mode and RNG state on entry, so asking for one proxy never changes
    another's value. Every module is put in train mode for the passes, synflow's aside (eval mode,
    see ``vitcore.proxies.synflow``): the proxies' papers score freshly built networks, which PyTorch
    builds in train mode (foresight instead keeps the mode a network is passed in, fisher aside;
    ``vitcore.compat.find_measures`` does as foresight). The model is left as it came in:
    every module's train/eval flag, every buffer (BatchNorm statistics) and the global RNG state are
    restored, and its weights are never changed. Gradients come from ``torch.autograd.grad``, so
    existing ``.grad`` values are neither read nor changed. The device syncs with the host once.

    ``mode`` changes grad_norm only (``GRAD_NORM_MODES``); ``params`` picks the counted tensors
    (``"all"``: every trainable tensor once, ``"weights"``: each Linear/Conv weight once, even if
    shared by several modules, the parameters a computed weight is made from (``weight_norm``'s g and v)
    and nn.MultiheadAttention's input projection, see ``vitcore.passes.layer_weight_groups``;
    ``vitcore.compat.find_measures`` counts per module instead);
    ``chunks`` splits the batch to fit memory without changing the scores (up to rounding; except
    with layers that normalise with batch statistics, such as BatchNorm in train mode), and on CUDA
    out-of-memory the split doubles automatically, with a warning when the model has BatchNorm.
    ``loss_fn`` must average over examples: one of the caller's is run on the first chunk's logits once
    and on them twice over, and refused (ValueError) unless both give one value, as a mean does and a
    sum (``reduction="sum"``) does not. Returns ``{proxy: float}`` in the order asked. Inputs
    holding NaN or inf are refused (ValueError, raised after the one sync); a model that makes NaN
    gets NaN scores. Errors: TypeError for a wrong type, ValueError for a wrong value, each naming it;
    a proxy that raises in its own reduction or finish, or whose pass raises while other requested
    proxies do not read that pass, does not stop the others: ``ProxyFailed`` is raised after them,
    carrying every score (NaN for the failed ones) and each error. A pass that every requested proxy
    reads raises its own exception, as does a pass's TypeError or ValueError (a wrong argument).
    ``num_classes``, when given, is the width the logits must have (the classes the head was built
    for): another width C is refused (ValueError; cross_entropy alone accepts any C above the largest
    target, so a headless model's features would be scored as logits).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = check_proxies(proxies)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn={loss_fn!r} must be callable (logits, targets) -> mean loss")
    if mode not in GRAD_NORM_MODES:
        raise ValueError(f"mode={mode!r}; valid: {', '.join(GRAD_NORM_MODES)}")
    if params not in PARAM_SETS:
        raise ValueError(f"params={params!r}; valid: {', '.join(PARAM_SETS)}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
                                    or num_classes < 0):
        raise ValueError(f"num_classes={num_classes!r:.40}: expected an int >= 0 or None")
    num_classes = None if num_classes is None else int(num_classes)  # a numpy int too
    return score_counted(model, inputs, targets, loss_fn, names, mode, counted_tensors(model, params),
                         chunks, f"params={params!r}", Settings(num_classes=num_classes))


def score_counted(model, inputs, targets, loss_fn, names, mode, counted, chunks, which,
                  settings: Settings = Settings()) -> Dict[str, float]:
    """``score`` on an explicit list of counted tensors (``vitcore.compat`` counts per module), the
    passes run as ``settings`` says."""
    units = settings.units
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.layout != torch.strided:
            raise TypeError(f"{name}.layout={value.layout}: expected a dense (torch.strided) tensor")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs.dtype={inputs.dtype}: expected a floating dtype")
    B = inputs.shape[0] if inputs.ndim else 0
    if B < 1:
        raise ValueError(f"inputs of shape {tuple(inputs.shape)} hold no examples; need (B, ...) with B >= 1")
    _check_targets(targets, B, loss_fn)
    ignore = settings.ignore_index
    if ignore is not None and not targets.is_floating_point() and bool((targets == ignore).all()):
        raise ValueError(f"every target is {ignore} (ignore_index): the loss counts no example, so no proxy "
                         "has a gradient to read; give labelled examples")
    if targets.device != inputs.device:
        raise ValueError(f"targets are on {targets.device} and inputs on {inputs.device}")
    if isinstance(chunks, bool) or not isinstance(chunks, numbers.Integral) or not 1 <= chunks <= B:
        raise ValueError(f"chunks={chunks!r} must be an int in 1..{B} (the batch size)")
    chunks = int(chunks)  # a numpy int too
    for name in names:
        if B < units[name].min_batch:
            raise ValueError(f"{name} needs at least {units[name].min_batch} examples; the batch holds {B}")
    vit_only = [name for name in names if units[name].vit_only]
    if vit_only and find_vit_blocks(model) is None:
        raise NeedsViT(f"{', '.join(vit_only)} {'needs' if len(vit_only) == 1 else 'need'} a vitcore ViT or PiT "
                        f"or a timm VisionTransformer (they read its blocks' {', '.join(BLOCK_PARTS)}), "
                        f"got {type(model).__name__}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("vitcore.score differentiates the model: call it outside torch.inference_mode()")
    if not counted:
        raise ValueError(f"the model has no trainable parameters for {which}")
    if counted[0].is_meta:
        raise ValueError("the model's parameters are on the meta device (shapes without values): build it on a "
                         "real device, or materialise it (model.to_empty(device=...)) and initialise its weights")
    if counted[0].device != inputs.device:
        raise ValueError(f"the model is on {counted[0].device} and inputs on {inputs.device}")
    _check_dtype(model, inputs)
    fresh = _Fresh(model, inputs)
    try:
        while True:
            try:
                with torch.enable_grad():
                    return _run(model, fresh.inputs, targets, loss_fn, names, mode, counted, chunks, fresh, settings)
            except torch.cuda.OutOfMemoryError:
                if chunks >= B:
                    raise
                fresh.reset()
                more = min(2 * chunks, B)
                if any(isinstance(m, _BatchNorm) for m in model.modules()):
                    warnings.warn(f"CUDA ran out of memory with chunks={chunks}; retrying with chunks={more}. "
                                  "The model's BatchNorm layers normalise each chunk with its own statistics, "
                                  "so these scores differ from those of the unsplit batch", RuntimeWarning)
                chunks = more
                torch.cuda.empty_cache()
    finally:
        fresh.reset(training=False)

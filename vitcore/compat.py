"""A drop-in for foresight's ``find_measures`` (SamsungLabs/zero-cost-nas, commit a43bfbc), computed
by vitcore.

Switching is a one-line change::

    from foresight.pruners.predictive import find_measures   # before
    from vitcore.compat import find_measures                  # after

Each of foresight's measure names gives foresight's definition wherever it is what foresight's users
reported; "vitcore.<proxy>" gives ``vitcore.score``'s definition of any proxy instead. Both count as
foresight's loop does: the weight of every Conv2d and Linear module, once per module (a weight tied
between two modules counts twice), grad_norm as the sum of per-layer norms. docs/foresight.md has
the side-by-side report.

As foresight (``vitcore.score`` differs; ask for "vitcore.<name>" to get its definition):

- the network is scored in the train/eval mode it is passed in, fisher in train mode; ``vitcore.score``
  puts every module in train mode.
- "fisher" sums each layer's per-channel values ½ mean_b (Σ a ∂L/∂a)² after copying each onto the
  channel's fan-in weights, so a layer's total is weighted by its fan-in (Cin/groups·kh·kw for a
  Conv2d, in_features for a Linear); "vitcore.fisher" counts each channel once (Turner et al.).
- "synflow" runs the network with its BatchNorm1d/2d layers stripped (identity maps), the other
  modules in the mode passed in; "synflow_bn" keeps them as they are (in train mode they normalise by
  the one all-ones example's statistics). "vitcore.synflow" runs in eval mode, BatchNorm a fixed
  affine map (``vitcore.passes.synflow_grads``).
- targets of -100 are left out of the loss (cross_entropy's ignore_index), where ``vitcore.score``
  refuses them; jacob_cov on a batch of one example is NaN (foresight's eigenvalue call fails on the
  1x1 correlation and it returns NaN), where ``vitcore.score`` refuses it.
- the first argument is named ``net_orig``; measure_names defaults to foresight's eight measures in
  its order, ``FORESIGHT_MEASURES``; ``measures_arr`` sums precomputed per-layer arrays.

Where foresight is wrong, vitcore's definition, whatever the name:

- fisher on activations with more than two axes that a Linear makes, (B, N', C) in a transformer:
  foresight sums every axis after the second, so it sums the channels and keeps the tokens, and its
  "per-channel" values are per-token ones; here the tokens are summed and the channels kept (the
  channel is what fisher scores, as for a Conv2d's pixels), then weighted by the fan-in as above.
  foresight's reading is not offered.
- a batch split to fit memory: foresight retries after CUDA runs out of memory with the batch cut in
  k chunks and adds the chunks' mean-loss gradients, so grad_norm, snip and plain grow k-fold, fisher
  k³-fold, and grasp reads the last chunk's gradient only. Here each chunk's loss is weighted by its
  share of the batch, so the scores do not depend on the device's free memory; that is why foresight's
  scaling is not offered by any name.
- a layer run more than once per forward: foresight's fisher fails in its backward hook; here every
  call adds its terms.
- a network's own ``get_prunable_copy`` (foresight's NAS-Bench-201 model has one) is not called:
  "synflow" strips every BatchNorm1d/2d, where that NAS-Bench-201 copy keeps 4 BatchNorm layers (in its two
  reduction blocks) in train mode, and is rebuilt in fp32 whatever the network's dtype.
- the network stays where and as it came in: foresight moves it to the CPU and returns it on
  ``device`` in train mode; here its device, train/eval flags, buffers and the RNG state are put back.
  Each pass starts from the RNG state on entry, where foresight's measures draw one after another
  from the global generator, so a network with active dropout gets other random draws.
"""
import dataclasses
import numbers
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitcore.proxies import ProxyFailed
from vitcore.proxies.base import Context, Proxy
from vitcore.proxies.plan import Settings, score_counted
from vitcore.proxies.registry import PROXIES, UNITS

FORESIGHT_MEASURES = ("grad_norm", "snip", "grasp", "fisher", "jacob_cov", "plain", "synflow_bn", "synflow")
FORESIGHT_LAYERS = (nn.Conv2d, nn.Linear)  # the modules foresight's loop visits
IGNORE_INDEX = -100  # the target foresight's loss (cross_entropy) leaves out
VITCORE = "vitcore."  # "vitcore.<proxy>": vitcore.score's definition of the proxy


def _batches(loader: Iterable):
    """The dataloader's (inputs, targets) pairs; anything else is refused, naming the batch and its type."""
    for i, item in enumerate(loader):
        if not isinstance(item, (tuple, list)) or len(item) != 2 \
                or not all(isinstance(t, torch.Tensor) for t in item):
            got = type(item).__name__ if not isinstance(item, (tuple, list)) else \
                "(" + ", ".join(type(t).__name__ for t in item) + ")"
            raise TypeError(f"the dataloader's batch {i} is {got}: expected a pair (inputs, targets) of tensors")
        yield item


def _random_batches(loader: Iterable, num_batches: int) -> Tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in _batches(loader):
        if xs and (x.shape[1:], y.shape[1:], x.dtype, y.dtype) != (xs[0].shape[1:], ys[0].shape[1:], xs[0].dtype,
                                                                  ys[0].dtype):
            raise ValueError(f"batch {len(xs)} holds inputs {tuple(x.shape)} {x.dtype} and targets {tuple(y.shape)} "
                             f"{y.dtype}, batch 0 {tuple(xs[0].shape)} {xs[0].dtype} and {tuple(ys[0].shape)} "
                             f"{ys[0].dtype}: the batches are joined into one, so they must match but for their size")
        xs.append(x)
        ys.append(y)
        if len(xs) == num_batches:
            return torch.cat(xs), torch.cat(ys)
    raise ValueError(f"the dataloader ran out after {len(xs)} batches; dataload_info asked for {num_batches}")


def _per_class(loader: Iterable, num_classes: int, per_class: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` examples of each class, ordered by class (foresight's 'grasp' loading)."""
    buckets = {c: [] for c in range(num_classes)}
    for x, y in _batches(loader):
        if y.is_floating_point() or y.is_complex() or y.ndim != 1:
            raise ValueError(f"dataload 'grasp' picks examples by class: targets must be class indices of shape "
                             f"(B,), got {tuple(y.shape)} {y.dtype}; use ('random', batches, classes)")
        for xi, yi in zip(x, y):
            c = int(yi)
            if c in buckets and len(buckets[c]) < per_class:
                buckets[c].append(xi)
        if all(len(b) == per_class for b in buckets.values()):
            xs = [xi for c in range(num_classes) for xi in buckets[c]]
            ys = [c for c in range(num_classes) for _ in range(per_class)]
            return torch.stack(xs), torch.tensor(ys)
    short = {c: len(b) for c, b in buckets.items() if len(b) < per_class}
    raise ValueError(f"the dataloader has too few examples of classes {short} for {per_class} per class")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"dataload_info's {name}={value!r} must be an int")
    if value < 1:
        raise ValueError(f"dataload_info's {name}={value!r} must be positive")


def per_module_weights(net: nn.Module) -> List[torch.Tensor]:
    """The trainable weight of every Conv2d/Linear module, once per module as foresight's loop visits
    them: a weight tied between two modules appears twice."""
    return [m.weight for m in net.modules() if isinstance(m, FORESIGHT_LAYERS) and m.weight.requires_grad]


def _fisher_fan_in(ctx: Context) -> torch.Tensor:
    """foresight's fisher total: Σ_calls fan_in · ½ Σ_c mean_b g_bc² over Conv2d/Linear calls."""
    terms = [f.double().sum() * m.weight[0].numel()  # fan-in: Cin/groups·kh·kw, or in_features
             for f, m in zip(ctx.data.fisher, ctx.data.fisher_layers) if isinstance(m, FORESIGHT_LAYERS)]
    return 0.5 * sum(terms) if terms else torch.zeros((), dtype=torch.float64, device=ctx.inputs.device)


def _jacob_cov_finish(corr: np.ndarray) -> float:
    """NaN for one example, as foresight returns; else jacob_cov's own finish."""
    return float("nan") if corr.shape == (1, 1) else UNITS["jacob_cov"].finish(corr)


# foresight's measures: (unit, the mode its passes run in, synflow's BatchNorm or None)
_FORESIGHT: Dict[str, Tuple[Proxy, str, Optional[str]]] = {
    "grad_norm": (UNITS["grad_norm"], "as passed", None),
    "snip": (UNITS["snip"], "as passed", None),
    "grasp": (UNITS["grasp"], "as passed", None),
    "fisher": (dataclasses.replace(UNITS["fisher"], reduce=_fisher_fan_in), "train", None),
    "jacob_cov": (dataclasses.replace(UNITS["jacob_cov"], finish=_jacob_cov_finish, min_batch=1), "as passed", None),
    "plain": (UNITS["plain"], "as passed", None),
    "synflow_bn": (dataclasses.replace(UNITS["synflow"], name="synflow_bn"), "as passed", "keep"),
    "synflow": (UNITS["synflow"], "as passed", "strip"),
}
assert tuple(_FORESIGHT) == FORESIGHT_MEASURES
MEASURE_NAMES = (FORESIGHT_MEASURES + tuple(VITCORE + p for p in PROXIES)
                 + tuple(p for p in PROXIES if p not in _FORESIGHT))  # every name find_measures takes


def _plan(names: Sequence[str], all_train: bool) -> List[Tuple[Settings, List[str]]]:
    """The names grouped by how their passes must run, (settings, names) per group: one ``score`` run
    serves all names of one mode and targets, a second one per further synflow BatchNorm setting."""
    needs = {}  # name -> (unit, train mode, ignore_index, synflow's BatchNorm or None)
    for name in dict.fromkeys(names):
        if name in _FORESIGHT:
            unit, mode, batchnorm = _FORESIGHT[name]
            needs[name] = (unit, mode == "train" or all_train, IGNORE_INDEX, batchnorm)
        else:
            unit = dataclasses.replace(UNITS[name.removeprefix(VITCORE)], name=name)
            needs[name] = (unit, True, None, "eval" if "synflow" in unit.passes else None)
    groups: Dict[Tuple, Dict[str, Proxy]] = {}  # (train, ignore, batchnorm) -> {name: unit}
    for name, (unit, train, ignore, batchnorm) in needs.items():
        if batchnorm is None:  # no synflow pass: the first group of its mode and targets serves it
            batchnorm = next((k[2] for k in groups if k[:2] == (train, ignore)),
                             next((n[3] for n in needs.values() if n[1:3] == (train, ignore) and n[3]), "eval"))
        groups.setdefault((train, ignore, batchnorm), {})[name] = unit
    return [(Settings(units=units, train_mode=train, synflow_batchnorm=batchnorm, ignore_index=ignore), list(units))
            for (train, ignore, batchnorm), units in groups.items()]


def _summed(measures_arr: Mapping) -> Dict[str, float]:
    """foresight's summary of precomputed arrays: each per-layer array summed, jacob_cov as given."""
    if not isinstance(measures_arr, Mapping):
        raise TypeError(f"measures_arr must be a dict {{measure: per-layer values}}, got {type(measures_arr).__name__}")
    out = {}
    for name, value in measures_arr.items():
        try:
            out[name] = float(value) if name == "jacob_cov" else float(sum(torch.as_tensor(v).sum() for v in value))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"measures_arr[{name!r}]={value!r}: expected "
                            f"{'a number' if name == 'jacob_cov' else 'a list of per-layer tensors or numbers'}") from None
    return out


def find_measures(
    net_orig: nn.Module,
    dataloader: Iterable,
    dataload_info: Tuple[str, int, int],
    device,
    loss_fn=F.cross_entropy,
    measure_names: Optional[Sequence[str]] = None,
    measures_arr: Optional[Mapping] = None,
) -> Dict[str, float]:
    """foresight's ``find_measures``: ``{measure: float}`` for one batch drawn from ``dataloader``.

    net_orig: the network, scored on its own device, in the train/eval mode it comes in (fisher and
    the "vitcore.<proxy>" names in train mode), and left unchanged.
    dataloader: yields (inputs, targets) pairs of tensors. dataload_info = (dataload,
    num_imgs_or_batches, num_classes): ``("random", k, C)`` concatenates the first k batches;
    ``("grasp", k, C)`` takes k examples of each of the C classes. device: where the batch goes.
    loss_fn(logits, targets) -> the mean loss (a 0-d tensor).
    measure_names: foresight's names (``FORESIGHT_MEASURES``, the default: all eight), "vitcore.<proxy>"
    for ``vitcore.score``'s definition of any of ``vitcore.PROXIES``, or one of vitcore's other proxies
    by its name (nwot, zico, ...: their vitcore definitions); ``MEASURE_NAMES`` lists them. The module
    docstring lists every difference between a foresight name and its "vitcore." twin, and from
    foresight's own code.
    measures_arr, as in foresight: already computed per-layer arrays ``{measure: [tensor per layer]}``
    (jacob_cov a number) to be summed instead of computed; the other arguments are then not used.

    Returns the scores in the order asked (floats; NaN where the network makes NaN). Errors: TypeError
    or ValueError naming a wrong argument, a batch of the wrong type, an unknown name or too few
    examples; ``vitcore.proxies.ProxyFailed`` (carrying every score) when some measures failed.
    """
    if measures_arr is not None:
        return _summed(measures_arr)
    if not isinstance(net_orig, nn.Module):
        raise TypeError(f"net_orig must be a torch.nn.Module, got {type(net_orig).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn={loss_fn!r} must be callable (logits, targets) -> mean loss")
    if not isinstance(dataload_info, (tuple, list)) or len(dataload_info) != 3:
        raise ValueError(f"dataload_info={dataload_info!r} must be (dataload, num_imgs_or_batches, num_classes)")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:0')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: no CUDA GPU is available to this process; use 'cpu'")
    dataload, count, num_classes = dataload_info
    _positive("num_imgs_or_batches", count)
    if dataload == "grasp":
        _positive("num_classes", num_classes)
    if isinstance(measure_names, str):
        raise TypeError(f"measure_names={measure_names!r} must be a list of names, e.g. [{measure_names!r}]")
    names = list(measure_names) if measure_names is not None else list(FORESIGHT_MEASURES)
    if not names:
        raise ValueError("measure_names is empty; valid: " + ", ".join(MEASURE_NAMES))
    for name in names:
        if name not in MEASURE_NAMES:
            raise ValueError(f"unknown measure {name!r}; valid: {', '.join(MEASURE_NAMES)}")
    if dataload == "random":
        inputs, targets = _random_batches(dataloader, count)
    elif dataload == "grasp":
        inputs, targets = _per_class(dataloader, num_classes, count)
    else:
        raise ValueError(f"dataload={dataload!r}; valid: random, grasp")
    inputs, targets = inputs.to(device), targets.to(device)
    counted = per_module_weights(net_orig)
    all_train = all(m.training for m in net_orig.modules())
    scores, errors = {}, {}
    for settings, group in _plan(names, all_train):
        try:
            scores.update(score_counted(net_orig, inputs, targets, loss_fn, group, "per_layer", counted, 1,
                                        "foresight's Conv2d/Linear weights", settings))
        except ProxyFailed as e:
            scores.update(e.scores)
            errors.update(e.errors)
    scores = {name: scores[name] for name in names}
    if errors:
        raise ProxyFailed(scores, errors)
    return scores

"""A drop-in for foresight's ``find_measures`` (SamsungLabs/zero-cost-nas), computed by vitcore.

Switching is a one-line change::

    from foresight.pruners.predictive import find_measures   # before
    from vitcore.compat import find_measures                  # after

The numbers are foresight's wherever its definitions are sound — a CNN of Conv2d and Linear layers
scored on one batch: this runs ``vitcore.score``'s passes with ``mode="per_layer"`` and counts the
weights as foresight's loop does, once per Linear/Conv module. A weight tied between two modules
therefore counts twice here, once in ``vitcore.score(params="weights")``, which counts each tensor once.
On transformers vitcore corrects two of them (see ``vitcore.proxies``): fisher reduces over tokens
rather than channels, and nwot also reads GELU inputs. Scores never scale with the number of chunks
a batch is split into after running out of memory, where foresight's grad_norm and fisher do.
Unlike foresight, the network is scored where it is (no copy, not moved to the CPU afterwards) and
left unchanged, in the train/eval mode it came in.
"""
import numbers
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vitcore.passes import LAYER_TYPES
from vitcore.proxies import check_proxies
from vitcore.proxies.plan import score_counted

FORESIGHT_MEASURES = ("grad_norm", "snip", "grasp", "fisher", "jacob_cov", "plain", "synflow")


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
        xs.append(x)
        ys.append(y)
        if len(xs) == num_batches:
            return torch.cat(xs), torch.cat(ys)
    raise ValueError(f"the dataloader ran out after {len(xs)} batches; dataload_info asked for {num_batches}")


def _per_class(loader: Iterable, num_classes: int, per_class: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` examples of each class, ordered by class (foresight's 'grasp' loading)."""
    buckets = {c: [] for c in range(num_classes)}
    for x, y in _batches(loader):
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
    """The trainable weight of every Linear/Conv module, once per module as foresight's loop visits
    them: a weight tied between two modules appears twice."""
    return [m.weight for m in net.modules() if isinstance(m, LAYER_TYPES) and m.weight.requires_grad]


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
    net: nn.Module,
    dataloader: Iterable,
    dataload_info: Tuple[str, int, int],
    device,
    loss_fn=F.cross_entropy,
    measure_names: Optional[Sequence[str]] = None,
    measures_arr: Optional[Mapping] = None,
) -> Dict[str, float]:
    """foresight's ``find_measures``: ``{measure: float}`` for one batch drawn from ``dataloader``.

    dataload_info = (dataload, num_imgs_or_batches, num_classes): ``("random", k, C)`` concatenates
    the first k batches; ``("grasp", k, C)`` takes k examples of each of the C classes.
    measure_names defaults to foresight's seven measures; vitcore's others are accepted too.
    measures_arr, as in foresight: already computed per-layer arrays ``{measure: [tensor per layer]}``
    (jacob_cov a number) to be summed instead of computed; the other arguments are then not used.
    Counting follows foresight's loop over modules: grad_norm, snip, plain, grasp and synflow count
    each Linear/Conv module's weight once per module (``vitcore.score`` counts each tensor once).
    """
    if measures_arr is not None:
        return _summed(measures_arr)
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn={loss_fn!r} must be callable (logits, targets) -> mean loss")
    if not isinstance(dataload_info, (tuple, list)) or len(dataload_info) != 3:
        raise ValueError(f"dataload_info={dataload_info!r} must be (dataload, num_imgs_or_batches, num_classes)")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:0')") from None
    dataload, count, num_classes = dataload_info
    _positive("num_imgs_or_batches", count)
    if dataload == "grasp":
        _positive("num_classes", num_classes)
    if isinstance(measure_names, str):
        raise TypeError(f"measure_names={measure_names!r} must be a list of names, e.g. [{measure_names!r}]")
    if dataload == "random":
        inputs, targets = _random_batches(dataloader, count)
    elif dataload == "grasp":
        inputs, targets = _per_class(dataloader, num_classes, count)
    else:
        raise ValueError(f"dataload={dataload!r}; valid: random, grasp")
    names = check_proxies(list(measure_names) if measure_names is not None else list(FORESIGHT_MEASURES))
    return score_counted(net, inputs.to(device), targets.to(device), loss_fn, names, "per_layer",
                         per_module_weights(net), 1, "foresight's Linear/Conv weights")

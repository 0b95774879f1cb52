"""A drop-in for foresight's ``find_measures`` (SamsungLabs/zero-cost-nas), computed by vitcore.

Switching is a one-line change::

    from foresight.pruners.predictive import find_measures   # before
    from vitcore.compat import find_measures                  # after

The numbers are foresight's wherever its definitions are sound — a CNN of Conv2d and Linear layers
scored on one batch — because this calls ``vitcore.score(..., params="weights", mode="per_layer")``.
On transformers vitcore corrects two of them (see ``vitcore.proxies``): fisher reduces over tokens
rather than channels, and nwot also reads GELU inputs. Scores never scale with the number of chunks
a batch is split into after running out of memory, where foresight's grad_norm and fisher do.
Unlike foresight, the network is scored where it is (no copy, not moved to the CPU afterwards) and
left unchanged, in the train/eval mode it came in.
"""
import numbers
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vitcore.proxies import score

FORESIGHT_MEASURES = ("grad_norm", "snip", "grasp", "fisher", "jacob_cov", "plain", "synflow")


def _random_batches(loader: Iterable, num_batches: int) -> Tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        if len(xs) == num_batches:
            return torch.cat(xs), torch.cat(ys)
    raise ValueError(f"the dataloader ran out after {len(xs)} batches; dataload_info asked for {num_batches}")


def _per_class(loader: Iterable, num_classes: int, per_class: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` examples of each class, ordered by class (foresight's 'grasp' loading)."""
    buckets = {c: [] for c in range(num_classes)}
    for x, y in loader:
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


def find_measures(
    net: nn.Module,
    dataloader: Iterable,
    dataload_info: Tuple[str, int, int],
    device,
    loss_fn=F.cross_entropy,
    measure_names: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """foresight's ``find_measures``: ``{measure: float}`` for one batch drawn from ``dataloader``.

    dataload_info = (dataload, num_imgs_or_batches, num_classes): ``("random", k, C)`` concatenates
    the first k batches; ``("grasp", k, C)`` takes k examples of each of the C classes.
    measure_names defaults to foresight's seven measures; vitcore's others are accepted too.
    """
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
    names = list(measure_names) if measure_names is not None else list(FORESIGHT_MEASURES)
    return score(net, inputs.to(device), targets.to(device), loss_fn=loss_fn, proxies=names,
                 mode="per_layer", params="weights")

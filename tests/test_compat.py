"""vitcore.compat.find_measures: foresight's entry point, counting per module as foresight's loop does."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import LAYERS, U, batch, bound64, small_cnn, small_vit
from torch import nn

import vitcore
from vitcore.compat import find_measures


class TiedNet(nn.Module):
    """fc3 uses fc2's weight: one tensor, two Linear modules."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(64, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 5)
        self.fc3.weight = self.fc2.weight

    def forward(self, x):
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))))


def foresight_loop(net, x, y):
    """foresight's per-module loop (get_layer_metric_array over Conv2d/Linear), float64, per measure:
    (value, the Σ|terms| its rounding is relative to)."""
    net = copy.deepcopy(net).double().train()
    layers = [m for m in net.modules() if isinstance(m, LAYERS)]
    weights = [m.weight for m in layers]  # a tied weight appears once per module
    g = torch.autograd.grad(F.cross_entropy(net(x), y), weights)
    out = {
        "grad_norm": (sum(gi.norm().item() for gi in g), None),
        "snip": (sum((gi * w).abs().sum().item() for gi, w in zip(g, weights)), None),
        "plain": (sum((gi * w).sum().item() for gi, w in zip(g, weights)),
                  sum((gi * w).abs().sum().item() for gi, w in zip(g, weights))),
    }
    gf = torch.autograd.grad(F.cross_entropy(net(x), y), weights, create_graph=True)
    hg = torch.autograd.grad(sum((gi * fi).sum() for gi, fi in zip(g, gf)), weights)
    out["grasp"] = (-sum((w * h).sum().item() for w, h in zip(weights, hg)),
                    sum((w * h).abs().sum().item() for w, h in zip(weights, hg)))
    return out


def test_a_weight_tied_between_two_modules_counts_once_per_module(triton_off):
    torch.manual_seed(1)
    net = TiedNet().double()
    x, y = batch(6, seed=2)
    got = find_measures(net, [(x, y)], ("random", 1, 5), "cpu", measure_names=["grad_norm", "snip", "plain", "grasp"])
    ref = foresight_loop(net, x, y)
    rel = U[torch.float32] + 2 * bound64(nn.Sequential(net.fc1, net.fc2, net.fc3, net.head), 6)
    for name, (value, scale) in ref.items():
        assert abs(got[name] - value) <= rel * (scale if scale is not None else abs(value)), name
    per_tensor = vitcore.score(net, x, y, proxies=["grad_norm", "snip"], params="weights", mode="per_layer")
    assert per_tensor["grad_norm"] < got["grad_norm"] and per_tensor["snip"] < got["snip"]


def test_compat_equals_score_with_foresight_settings_without_tied_weights(triton_off):
    torch.manual_seed(4)
    model = small_vit()
    data = [batch(3, seed=s, dtype=torch.float32) for s in range(3)]
    got = find_measures(model, data, ("random", 2, 5), "cpu")
    x, y = torch.cat([d[0] for d in data[:2]]), torch.cat([d[1] for d in data[:2]])
    expected = vitcore.score(model, x, y, proxies=list(got), mode="per_layer", params="weights")
    assert list(got) == ["grad_norm", "snip", "grasp", "fisher", "jacob_cov", "plain", "synflow"]
    assert got == expected


def test_compat_on_a_cnn_gives_foresights_numbers(triton_off):
    """On Conv2d/Linear networks foresight's definitions are sound: the same numbers ("grasp" loading)."""
    torch.manual_seed(5)
    model = small_cnn().double()
    data = [(batch(4, seed=s)[0], torch.arange(4) % 2) for s in range(4)]
    got = find_measures(model, data, ("grasp", 3, 2), "cpu", measure_names=["grad_norm", "snip", "plain", "grasp"])
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    x = torch.cat([x[y == 0][:3], x[y == 1][:3]])
    ref = foresight_loop(model, x, torch.tensor([0, 0, 0, 1, 1, 1]))
    rel = U[torch.float32] + 2 * bound64(model, 6)
    for name, (value, scale) in ref.items():
        assert abs(got[name] - value) <= rel * (scale if scale is not None else abs(value)), name


def test_measures_arr_is_summed_as_foresight_does():
    arr = {"snip": [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])], "grad_norm": [3.0, 4.0], "jacob_cov": -7.5}
    assert find_measures(None, None, None, None, measures_arr=arr) == {"snip": 3.5, "grad_norm": 7.0, "jacob_cov": -7.5}
    with pytest.raises(TypeError, match="measures_arr must be a dict"):
        find_measures(None, None, None, None, measures_arr=[1.0])
    with pytest.raises(TypeError, match=r"measures_arr\['snip'\]=None: expected a list of per-layer"):
        find_measures(None, None, None, None, measures_arr={"snip": None})


def test_compat_bad_arguments():
    with pytest.raises(ValueError, match="dataload='all'"):
        find_measures(small_cnn(), [], ("all", 1, 2), "cpu")
    with pytest.raises(ValueError, match="ran out after 1 batches"):
        find_measures(small_cnn(), [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))], ("random", 2, 2), "cpu")
    for info, error, message in [(("random", 0, 2), ValueError, "num_imgs_or_batches=0 must be positive"),
                                 (("grasp", 1, 0), ValueError, "num_classes=0 must be positive"),
                                 (("random", 1.0, 2), TypeError, "num_imgs_or_batches=1.0 must be an int"),
                                 (("random", 1), ValueError, r"dataload_info=\('random', 1\) must be"),
                                 ]:
        with pytest.raises(error, match=message):
            find_measures(small_cnn(), [], info, "cpu")
    with pytest.raises(TypeError, match=r"measure_names='snip' must be a list of names, e.g. \['snip'\]"):
        find_measures(small_cnn(), [], ("random", 1, 2), "cpu", measure_names="snip")
    with pytest.raises(TypeError, match="net must be a torch.nn.Module, got NoneType"):
        find_measures(None, [], ("random", 1, 2), "cpu")
    with pytest.raises(ValueError, match="device='gpu0' is not a torch device"):
        find_measures(small_cnn(), [], ("random", 1, 2), "gpu0")
    x, y = torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    for loader, message in [([(x, y), (x.tolist(), y)], r"batch 1 is \(list, Tensor\): expected a pair"),
                            ([x], r"batch 0 is Tensor: expected a pair"),
                            ([(x, y, y)], r"batch 0 is \(Tensor, Tensor, Tensor\)")]:
        for info in [("random", 2, 2), ("grasp", 2, 2)]:
            with pytest.raises(TypeError, match=message):
                find_measures(small_cnn(), loader, info, "cpu")


def test_compat_scores_are_finite_on_a_vit(triton_off):
    torch.manual_seed(6)
    x, y = batch(4, seed=7, dtype=torch.float32)
    got = find_measures(small_vit(), [(x, y)], ("random", 1, 5), "cpu")
    assert all(math.isfinite(v) for v in got.values())

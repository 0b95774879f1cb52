"""synflow against foresight's recipe in float64: |·| of the state dict, one all-ones example."""
import copy

import pytest
import torch
from proxy_helpers import MODELS, batch, bound64, counted
from torch import nn

import vitcore


def reference(model, which):
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    net(torch.ones(1, 1, 8, 8, dtype=torch.float64)).sum().backward()
    return sum((p * p.grad).abs().sum().item() for p in counted(net, which))


@pytest.mark.parametrize("which", ["all", "weights"])
@pytest.mark.parametrize("make", MODELS)
def test_synflow_matches_float64(make, which, triton_off):
    torch.manual_seed(9)
    model = MODELS[make]()
    x, y = batch(3, seed=10, dtype=torch.float32)
    got = vitcore.score(model, x, y, proxies=["synflow"], params=which)["synflow"]
    assert got == pytest.approx(reference(model, which), rel=bound64(model, 1), abs=0)  # float64 throughout


def test_synflow_uses_absolute_batchnorm_statistics(triton_off):
    """foresight's synflow takes |·| of the whole state dict; with trained (negative) running means
    that differs from taking |θ| alone."""
    torch.manual_seed(15)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Linear(17, 5)).double()
    with torch.no_grad():
        model[2].running_mean.uniform_(-2.0, -1.0)
        model[2].running_var.uniform_(0.5, 2.0)
    x, y = batch(4, seed=11)
    got = vitcore.score(model, x, y, proxies=["synflow"])["synflow"]
    assert got == pytest.approx(reference(model, "all"), rel=bound64(model, 1), abs=0)


def test_synflow_stays_float64_under_autocast(triton_off):
    torch.manual_seed(6)
    model = MODELS["vit"]()
    x, y = batch(3, seed=12, dtype=torch.float32)
    exact = vitcore.score(model, x, y, proxies=["synflow"])["synflow"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = vitcore.score(model, x, y, proxies=["synflow"])["synflow"]
    assert amp == exact  # the same float64 computation: autocast is switched off inside

"""synflow against foresight's recipe in float64: |·| of the state dict, one all-ones example."""
import copy

import pytest
import torch
from proxy_helpers import MODELS, batch, bound64, counted, nb201_net
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


def fixed_statistics_reference(model, which):
    """synflow from its definition: |θ| and |buffers| in float64, eval mode, and every BatchNorm that
    tracks no statistics the fixed affine map x / sqrt(1 + eps) · |γ| + |β| (mean 0, variance 1)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()

    def fixed(bn, args, output):
        y = args[0] / (1.0 + bn.eps) ** 0.5  # (B, C, H, W)
        if bn.affine:
            y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
        return y

    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d) and not m.track_running_stats:
            m.register_forward_hook(fixed)
    net(torch.ones(1, 1, 8, 8, dtype=torch.float64)).sum().backward()
    return sum((p * p.grad).abs().sum().item() for p in counted(net, which) if p.grad is not None)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("which", ["all", "weights"])
def test_synflow_on_batchnorm_without_running_statistics_uses_fixed_ones(which, affine, triton_off):
    """NAS-Bench-201's cells: BatchNorm(track_running_stats=False) would normalise by the one all-ones
    example even in eval mode; synflow uses mean 0 and variance 1 instead."""
    torch.manual_seed(21)
    model = nb201_net(channels=3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not m.track_running_stats and affine:
            m.affine = True
            m.weight, m.bias = nn.Parameter(torch.rand(3) + 0.5), nn.Parameter(torch.rand(3) - 0.5)
    with torch.no_grad():
        model[1].running_mean.uniform_(-1.0, 1.0)
        model[1].running_var.uniform_(0.5, 2.0)
    x, y = batch(3, seed=22, dtype=torch.float32)
    got = vitcore.score(model, x, y, proxies=["synflow"], params=which)["synflow"]
    ref = fixed_statistics_reference(model, which)
    assert got == pytest.approx(ref, rel=bound64(model, 1), abs=0)
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if isinstance(m, nn.BatchNorm2d) and not m.track_running_stats:
            m.track_running_stats = True  # the same BatchNorm built to track statistics, at its initial ones
            m.register_buffer("running_mean", torch.zeros(3))
            m.register_buffer("running_var", torch.ones(3))
    tracked = vitcore.score(fresh, x, y, proxies=["synflow"], params=which)["synflow"]
    assert tracked == pytest.approx(got, rel=bound64(model, 1), abs=0)

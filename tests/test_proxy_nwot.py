"""nwot against a float64 NASWOT kernel built from hooks on every ReLU/GELU module."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import MODELS, U, batch
from torch import nn

import vitcore


def reference(model, x):
    """(log|det K|, abs bound): K holds integer counts, exact in float64; slogdet's LU has backward
    error ~B·u·||K||, so |δ log det| <= B · cond(K) · B·u to first order."""
    codes = []

    def code(module, args):
        codes.append((args[0] > 0).reshape(len(x), -1).double().numpy())

    hooks = [m.register_forward_pre_hook(code) for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
    model(x)
    for h in hooks:
        h.remove()
    Kmat = sum(c @ c.T + (1 - c) @ (1 - c).T for c in codes)
    B = len(x)
    return np.linalg.slogdet(Kmat)[1], 2 * B * B * U[torch.float64] * np.linalg.cond(Kmat)


@pytest.mark.parametrize("make", MODELS)
def test_nwot_matches_float64(make, triton_off):
    torch.manual_seed(19)
    model = MODELS[make]().double()
    x, y = batch(7, seed=20)
    got = vitcore.score(model, x, y, proxies=["nwot"])["nwot"]
    value, tol = reference(model, x)
    assert abs(got - value) <= tol


class SharedReLUNet(nn.Module):
    """One nn.ReLU module applied twice, at two widths (as torchvision's BasicBlock reuses its ReLU)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 13), nn.Linear(13, 7), nn.Linear(7, 5)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x.flatten(1))))))


@pytest.mark.parametrize("chunks", [1, 3])
def test_nwot_with_an_activation_module_called_twice(chunks, triton_off):
    torch.manual_seed(9)
    model = SharedReLUNet().double()
    x, y = batch(6, seed=21)
    got = vitcore.score(model, x, y, proxies=["nwot"], chunks=chunks)["nwot"]
    value, tol = reference(model, x)
    assert abs(got - value) <= tol


def test_one_example_gives_the_log_of_the_unit_count(triton_off):
    """K is 1x1: every unit agrees with itself."""
    torch.manual_seed(22)
    model = MODELS["vit"]().double()
    x, y = batch(1, seed=23)
    got = vitcore.score(model, x, y, proxies=["nwot"])["nwot"]
    units = sum(b.mlp.fc1.out_features * model.config.num_tokens for b in model.blocks)
    assert got == pytest.approx(math.log(units), rel=U[torch.float64], abs=0)


def test_nwot_without_activation_modules_says_so(triton_off):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    x, y = batch(3, seed=24, dtype=torch.float32)
    with pytest.raises(vitcore.ProxyFailed, match="nwot failed: ValueError: nwot reads the inputs of nn.ReLU / "
                                                  "nn.GELU modules"):
        vitcore.score(model, x, y, proxies=["nwot"])


def test_a_functional_gelu_is_not_read(triton_off):
    """Only modules are hooked: F.gelu in forward is invisible, and the ViT applies nn.GELU."""
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(64, 9), nn.ReLU(), nn.Linear(9, 5)

        def forward(self, x):
            return self.head(F.gelu(self.act(self.fc(x.flatten(1)))))

    model = Functional().double()
    x, y = batch(4, seed=25)
    value, tol = reference(model, x)
    assert abs(vitcore.score(model, x, y, proxies=["nwot"])["nwot"] - value) <= tol

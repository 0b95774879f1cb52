"""grad_norm against a float64 loop over the counted tensors."""
import math

import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import MODELS, batch, bound64, counted, float64_train_copy

import vitcore


def per_tensor_g2(model, x, y, which):
    """Σ_i g_ti² per counted tensor, in float64 with .backward()."""
    model = float64_train_copy(model)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.pow(2).sum().item() for p in counted(model, which)]


@pytest.mark.parametrize("which", ["all", "weights"])
@pytest.mark.parametrize("mode", ["global", "per_layer"])
@pytest.mark.parametrize("make", MODELS)
def test_grad_norm_matches_float64(make, mode, which, triton_off):
    torch.manual_seed(0)
    model = MODELS[make]().double()
    x, y = batch(7, seed=1)
    got = vitcore.score(model, x, y, proxies=["grad_norm"], mode=mode, params=which)["grad_norm"]
    g2 = per_tensor_g2(model, x, y, which)
    ref = math.sqrt(sum(g2)) if mode == "global" else sum(math.sqrt(v) for v in g2)
    # float64 throughout (param_stats sums in float64): the passes' rounding alone, halved by sqrt
    assert got == pytest.approx(ref, rel=bound64(model, 7), abs=0)


def test_bad_mode_names_it(triton_off):
    x, y = batch(2, seed=2)
    with pytest.raises(ValueError, match="mode='layer'; valid: global, per_layer"):
        vitcore.score(MODELS["mlp"]().double(), x, y, proxies=["grad_norm"], mode="layer")

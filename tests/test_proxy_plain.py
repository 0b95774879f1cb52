"""plain against a float64 loop over the counted tensors."""
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import MODELS, batch, bound64, counted, float64_train_copy

import vitcore


def reference(model, x, y, which):
    """(Σ g·θ, Σ |g·θ|): the value and the scale its rounding error is relative to."""
    model = float64_train_copy(model)
    F.cross_entropy(model(x), y).backward()
    terms = [p.grad * p for p in counted(model, which)]
    return sum(t.sum().item() for t in terms), sum(t.abs().sum().item() for t in terms)


@pytest.mark.parametrize("which", ["all", "weights"])
@pytest.mark.parametrize("make", MODELS)
def test_plain_matches_float64(make, which, triton_off):
    torch.manual_seed(5)
    model = MODELS[make]().double()
    x, y = batch(6, seed=6)
    got = vitcore.score(model, x, y, proxies=["plain"], params=which)["plain"]
    value, scale = reference(model, x, y, which)
    # signed sums in float64 (param_stats too): within bound64·Σ|g·θ| of the reference
    assert abs(got - value) <= bound64(model, 6) * scale

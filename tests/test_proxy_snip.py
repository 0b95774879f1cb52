"""snip against a float64 loop over the counted tensors."""
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import MODELS, batch, bound64, counted, float64_train_copy

import vitcore


def reference(model, x, y, which):
    model = float64_train_copy(model)
    F.cross_entropy(model(x), y).backward()
    return sum((p.grad * p).abs().sum().item() for p in counted(model, which))


@pytest.mark.parametrize("which", ["all", "weights"])
@pytest.mark.parametrize("make", MODELS)
def test_snip_matches_float64(make, which, triton_off):
    torch.manual_seed(3)
    model = MODELS[make]().double()
    x, y = batch(5, seed=4)
    got = vitcore.score(model, x, y, proxies=["snip"], params=which)["snip"]
    # a sum of non-negative terms, float64 throughout (param_stats sums in float64)
    assert got == pytest.approx(reference(model, x, y, which), rel=bound64(model, 5), abs=0)

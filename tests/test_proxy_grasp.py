"""grasp against float64 double backward with .backward()-style autograd."""
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import MODELS, batch, bound64, counted, float64_train_copy

import vitcore


def reference(model, x, y, which):
    """(-Σ θ·Hg, Σ |θ·Hg|) in float64."""
    model = float64_train_copy(model)
    params = counted(model, which)
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    gf = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    hg = torch.autograd.grad(sum((gi * fi).sum() for gi, fi in zip(g, gf)), params)
    terms = [p * h for p, h in zip(params, hg)]
    return -sum(t.sum().item() for t in terms), sum(t.abs().sum().item() for t in terms)


@pytest.mark.parametrize("which", ["all", "weights"])
@pytest.mark.parametrize("make", MODELS)
def test_grasp_matches_float64(make, which, triton_off):
    torch.manual_seed(7)
    model = MODELS[make]().double()
    x, y = batch(7, seed=8)
    got = vitcore.score(model, x, y, proxies=["grasp"], params=which)["grasp"]
    value, scale = reference(model, x, y, which)
    # double backward is ~2x the backward's work: 2·bound64 relative to Σ|θ·Hg| (param_stats sums in float64)
    assert abs(got - value) <= 2 * bound64(model, 7) * scale

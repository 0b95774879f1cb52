"""zico against a float64 implementation: two half-batches forwarded separately, numpy statistics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import LAYERS, MODELS, U, batch, bound64, float64_train_copy

import vitcore


def reference(model, x, y, base=None):
    """(score, abs bound). Per element, σ = |g1 - g2| / 2 loses (|g1| + |g2|) / |g1 - g2| of its
    relative accuracy to cancellation, with ``base`` (default: the float64 gradients' rounding,
    bound64, and the statistics', 4u) as the gradients' relative error; a layer's log Σ ratio then
    moves by Σ ratio·ε / Σ ratio."""
    model = float64_train_copy(model)
    half = len(x) // 2  # vitcore's first half holds floor(B / 2) examples
    weights = [m.weight for m in model.modules() if isinstance(m, LAYERS)]
    halves = []
    for xs, ys in ((x[:half], y[:half]), (x[half:], y[half:])):
        grads = torch.autograd.grad(F.cross_entropy(model(xs), ys), weights)
        halves.append([g.numpy() for g in grads])
    base = bound64(model, len(x)) + 4 * U[torch.float64] if base is None else base
    score, tol = 0.0, 0.0
    for g1, g2 in zip(*halves):
        G = np.stack([g1, g2])
        std, mean_abs = G.std(0), np.abs(G).mean(0)
        keep = std != 0
        ratio = mean_abs[keep] / std[keep]
        s = ratio.sum()
        if s == 0:
            continue
        score += np.log(s)
        eps = base * (np.abs(g1) + np.abs(g2))[keep] / np.abs(g1 - g2)[keep]
        tol += 2 * (ratio * eps).sum() / s
    return score, tol


@pytest.mark.parametrize("B", [2, 7])
@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("which", ["all", "weights"])
def test_zico_matches_float64(make, B, which, triton_off):
    """zico counts layer weights whatever ``params`` says."""
    torch.manual_seed(26)
    model = MODELS[make]().double()
    x, y = batch(B, seed=27)
    got = vitcore.score(model, x, y, proxies=["zico"], params=which)["zico"]
    value, tol = reference(model, x, y)
    assert abs(got - value) <= tol


def test_one_example_is_refused(triton_off):
    x, y = batch(1, seed=28)
    with pytest.raises(ValueError, match="zico needs at least 2 examples; the batch holds 1"):
        vitcore.score(MODELS["mlp"]().double(), x, y, proxies=["zico"])

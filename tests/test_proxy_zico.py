"""zico against a float64 implementation: two half-batches forwarded separately, numpy statistics."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import LAYERS, MODELS, U, batch, bound64, float64_train_copy
from torch import nn

import vitcore
from vitcore.passes import DataPass
from vitcore.proxies import zico
from vitcore.proxies.base import Context


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


def _std_form(first, second):
    """zico's reduction before 88b4c76, torch's population std over the two halves, and its bound: per
    element, std's rounding (a few u of |g1| + |g2|, cancelled to a relative ~4u · ratio of σ) moves the
    ratio by ~4u · ratio², and a layer's log Σ ratio by that sum over Σ ratio."""
    u = torch.finfo(torch.float64).eps / 2
    total, tol = torch.zeros((), dtype=torch.float64), 0.0
    for g1, g2 in zip(first, second):
        G = torch.stack([g1, g2])  # (2, *shape)
        std, mean_abs = G.std(0, unbiased=False), G.abs().mean(0)
        each = torch.where(std > 0, mean_abs / torch.where(std > 0, std, 1), 0)
        ratio = each.sum()
        term = torch.where(ratio > 0, torch.log(torch.where(ratio > 0, ratio, 1)), 0)
        total = total + torch.where(torch.isfinite(G).all(), term, torch.nan)
        if ratio > 0:
            tol += 8 * u * float((each ** 2).sum() / ratio) + 8 * u
    return float(total), tol


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_closed_form_is_the_std_form(seed, bad):
    """(|g1| + |g2|) / |g1 - g2| is E|g| / σ over two values: against torch's std on random float64
    gradients of odd shapes spanning 12 decades, with exact ties (σ = 0: left out), opposite pairs
    (σ = |g|), zeros and a layer tied throughout (Σ ratio = 0: no term); a NaN or inf gives NaN."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3), nn.Linear(3, 3)).double()
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    first, second = [], []
    for w in weights:
        scale = 10.0 ** torch.randint(-6, 7, w.shape, generator=gen).double()
        g1 = torch.randn(w.shape, generator=gen, dtype=torch.float64) * scale
        g2 = torch.randn(w.shape, generator=gen, dtype=torch.float64) * scale
        pick = torch.rand(w.shape, generator=gen)
        g2 = torch.where(pick < 0.2, g1, torch.where(pick < 0.3, -g1, g2))  # ties, opposites
        g1 = torch.where(pick > 0.95, 0.0, g1)
        first.append(g1)
        second.append(g2)
    second[-1] = first[-1].clone()  # a layer with σ = 0 everywhere
    if bad is not None:
        first[1][2, 3] = bad
    want, tol = _std_form(first, second)
    ctx = Context(model, torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.long), F.cross_entropy,
                  "global", [], halves=DataPass(params=weights, group_grads=[first, second]))
    got = float(zico.PROXY.reduce(ctx))
    if bad is None:
        assert math.isfinite(want) and abs(got - want) <= tol
    else:
        assert math.isnan(got) and math.isnan(want)

"""lswag against a float64 loop that takes each example's own loss gradient, one example at a time."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from native_cases import CONFIGS, EPS32, block_linears, blocks, copy64, make_batch, make_model, score_one, swap_reference
from vitcore.proxies.lswag import _Moments


def lswag_reference(model, x, y):
    m = copy64(model)
    weights = [lin.weight for lin in block_linears(m)]
    per_example = [[] for _ in weights]
    for b in range(len(x)):
        loss = F.cross_entropy(m(x[b:b + 1].double()), y[b:b + 1])
        for i, gw in enumerate(torch.autograd.grad(loss, weights)):
            per_example[i].append(gw.numpy())
    lam = 0.0
    for grads in per_example:
        std = np.stack(grads).std(0)  # population std, as ZiCo's numpy code
        s = (1 / std[std > 0]).sum()
        lam += np.log(s) if s > 0 else 0.0
    return lam * swap_reference(model, x)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [2, 5])
def test_lswag_matches_per_example_float64_loop(name, B, triton_off):
    model = make_model(name, 30 + B)
    x, y = make_batch(name, B, seed=40 + B)
    m64 = copy64(model)
    assert score_one(m64, x.double(), y, "lswag") == pytest.approx(lswag_reference(model, x, y), rel=1e-9)
    assert all(p.grad is None for p in m64.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lswag_in_float32_matches_the_float64_loop(name, triton_off):
    """A float32 model: each chunk's moments are taken in float32, only their merge in float64.
    The bound is the worst-case float32 rounding of the per-example gradients: every forward and
    backward product sums over at most D + hidden + N' terms per block, twice (forward and backward)
    per block, plus the 8 examples' moments; Λ (a sum of logs of Σ 1/σ) keeps that relative error.
    Measured here: about 2e-7, 2 ulps. Ψ is exact unless a GELU input lies within rounding of 0."""
    model = make_model(name, 50)
    c, fc1 = CONFIGS[name], [b.mlp.fc1 for b in blocks(model)]  # a PiT's D, hidden and N' differ per stage
    terms = 2 * len(fc1) * (max(f.in_features for f in fc1) + max(f.out_features for f in fc1)
                            + max(c.num_tokens if isinstance(c.num_tokens, tuple) else [c.num_tokens])) + 8
    x, y = make_batch(name, 8, seed=51)
    assert score_one(model, x, y, "lswag") == pytest.approx(lswag_reference(model, x, y), rel=terms * EPS32)


def test_lswag_needs_two_examples_and_a_vit(triton_off):
    model = make_model("tiny", 0)
    x, y = make_batch("tiny", 1, seed=0)
    with pytest.raises(ValueError, match="lswag needs at least 2 examples"):
        score_one(model, x, y, "lswag")
    with pytest.raises(TypeError, match="vitcore.ViT"):
        score_one(nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.GELU()), torch.randn(2, 1, 8, 8),
                  torch.tensor([0, 1]), "lswag")


def test_lswag_refuses_targets_outside_the_classes(triton_off):
    """Issue 15 item 3: lswag's private pass gave torch's IndexError for these targets on 5 classes."""
    model = make_model("tiny", 1)
    x, _ = make_batch("tiny", 4, seed=2)
    y = torch.tensor([0, 1, 7, -100])
    with pytest.raises(ValueError, match=r"targets hold 2 class indices outside 0\.\.4 .*min -100, max 7"):
        score_one(model, x, y, "lswag")


@pytest.mark.parametrize("chunks", [2, 3, 5])
def test_lswag_is_the_same_for_every_chunks(chunks, triton_off):
    """The private pass splits like the shared ones; σ merged over chunks moves only by rounding."""
    model = copy64(make_model("odd", 7))
    x, y = make_batch("odd", 5, seed=8, dtype=torch.float64)
    whole = score_one(model, x, y, "lswag")
    assert score_one(model, x, y, "lswag", chunks=chunks) == pytest.approx(whole, rel=1e-9)


def test_lswag_private_pass_follows_the_out_of_memory_doubling(monkeypatch, triton_off):
    """A forward of more than 2 examples 'runs out of memory': score doubles the chunks (1, 2, 4) and
    lswag's own pass must split with them, or it runs out of memory up to chunks = B and fails."""
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    model = copy64(make_model("tiny", 3))
    x, y = make_batch("tiny", 5, seed=4, dtype=torch.float64)
    whole = score_one(model, x, y, "lswag")
    seen = []

    def at_most_two(module, args):
        seen.append(args[0].shape[0])
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = model.register_forward_pre_hook(at_most_two)
    try:
        got = score_one(model, x, y, "lswag")
    finally:
        handle.remove()
    # chunks=1 fails on 5, chunks=2 on its second chunk of 3; chunks=4: the data pass, then lswag's own
    assert seen == [5, 2, 3] + [1, 1, 1, 2] * 2
    assert got == pytest.approx(whole, rel=1e-9)


def test_lswag_warns_when_psi_is_saturated(triton_off):
    """"tiny" has 5 x (24 + 18) = 210 GELU neurons: 2 examples draw all 4 patterns, so Ψ = 2^2 for any
    network (a warning, the value kept); 9 examples cannot (2^9 = 512 > 210): no warning."""
    model = make_model("tiny", 9)
    x, y = make_batch("tiny", 2, seed=10)
    with pytest.warns(RuntimeWarning, match=r"lswag's Ψ: 4 = 2\^2 distinct patterns.*saturated"):
        got = score_one(copy64(model), x.double(), y, "lswag")
    assert got == pytest.approx(lswag_reference(model, x, y), rel=1e-9)
    x, y = make_batch("tiny", 9, seed=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = score_one(copy64(model), x.double(), y, "lswag")
    assert got == pytest.approx(lswag_reference(model, x, y), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lswag_moments_of_half_precision_gradients_are_taken_in_float32(dtype):
    """Under autocast the per-example gradients come in fp16/bf16; σ must not carry their 2^-8..2^-11
    rounding a second time: the moments of the given values agree with float64 to float32's rounding
    (a chunk of n ≤ 9 rounds its mean once, its deviations and squares once each, and sums n terms:
    about (n + 3) ulps on Σ(g - mean)², half that on σ; 64 ulps leave room for a mean larger than σ)."""
    g = torch.Generator().manual_seed(60)
    chunks = [torch.randn(n, 7, 5, generator=g).to(dtype) for n in (9, 4)]
    stats = _Moments()
    for c in chunks:
        stats.add(c)
    want = torch.cat(chunks).double().std(0, unbiased=False)
    torch.testing.assert_close(stats.std(), want, rtol=64 * EPS32, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sizes", [(3,), (7, 1), (13, 64)])
def test_lswag_moments_of_equal_gradients_have_zero_std(dtype, sizes):
    """Examples whose gradients are equal have σ = 0 exactly, so that weight is left out of Λ, as in
    float64; a float32 mean of n equal values is not always that value, and its rounding residue
    (σ ~ 1e-7 |g|) would put a 1/σ of ~1e7 into Λ."""
    g = torch.Generator().manual_seed(61)
    row = torch.randn(1, 11, 9, generator=g).to(dtype)
    stats = _Moments()
    for n in sizes:
        stats.add(row.expand(n, 11, 9).contiguous())
    assert torch.equal(stats.std(), torch.zeros(11, 9, dtype=torch.float64))

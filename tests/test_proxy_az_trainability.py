"""az_trainability against a float64 loop: each residual branch's vector-Jacobian product taken by
torch.autograd.functional.vjp on the branch rebuilt in the test, numpy's largest singular value."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import vjp

from native_cases import CONFIGS, EPS32, blocks, copy64, make_batch, make_model, score_one
from vitcore.proxies.az_trainability import rademacher, trainability_finish


def branch_pairs(model, x):
    """Per pair in forward order: (branch function, its input), recomputed from each block's input."""
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: inputs.append((mod, args[0].detach()))) for b in blocks(model)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    pairs, previous_out = [], None
    for b, h in inputs:
        def msa(t, b=b):
            return t + b.attn(b.norm1(t))

        def mlp(t, b=b):
            return t + b.mlp(b.norm2(t))

        with torch.no_grad():
            att = msa(h)
            out = mlp(att)
        if previous_out is not None and previous_out.shape == h.shape and torch.equal(previous_out, h):
            pairs.append((msa, h))  # the block reads the block before's output: same stage
        pairs.append((mlp, att))
        previous_out = out
    return pairs


def trainability_reference(model, x):
    terms, sigmas = [], []
    for k, (branch, t) in enumerate(branch_pairs(model, x)):
        out = branch(t)
        r = rademacher(out.shape, k, out.dtype, out.device)
        _, g = vjp(branch, t, r)
        m = g.reshape(-1, g.shape[-1]).numpy().T @ r.reshape(-1, r.shape[-1]).numpy() / (g.shape[0] * g.shape[1])
        sigma = np.linalg.norm(m, 2)
        sigmas.append(sigma)
        terms.append(2 - sigma - 1 / (sigma + 1e-6))
    return float(np.mean(terms)), sigmas


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_az_trainability_matches_float64_loop(name, B, triton_off):
    model = make_model(name, B)
    x, y = make_batch(name, B, seed=30 + B)
    ref, sigmas = trainability_reference(copy64(model), x.double())
    assert score_one(copy64(model), x.double(), y, "az_trainability") == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # fp32: the backward through one branch is a few matrix products, each entry within a few
    # eps·sqrt(width) of its size (Higham's γ_n); σ moves by that much relative, and the term
    # 2 - σ - 1/σ by |1 - 1/σ²| times the change of σ
    config = CONFIGS[name]
    width = max(config.widths) if hasattr(config, "widths") else config.embed_dim  # a PiT's widest stage
    bound = np.mean([abs(1 - 1 / s**2) * 20 * EPS32 * np.sqrt(4 * width) * s for s in sigmas])
    assert abs(score_one(model, x, y, "az_trainability") - ref) <= bound


@pytest.mark.parametrize("chunks", [2, 3])
def test_chunks_draw_the_same_directions_as_the_whole_batch(chunks, triton_off):
    model = copy64(make_model("pit", 5))
    x, y = make_batch("pit", 3, seed=5, dtype=torch.float64)
    whole = score_one(model, x, y, "az_trainability")
    assert score_one(model, x, y, "az_trainability", chunks=chunks) == pytest.approx(whole, rel=1e-12)


def test_other_proxies_and_the_global_rng_do_not_change_it(triton_off):
    model = make_model("odd", 2)
    x, y = make_batch("odd", 3, seed=2)
    alone = score_one(model, x, y, "az_trainability")
    torch.manual_seed(12345)
    import vitcore
    together = vitcore.score(model, x, y, proxies=["zico", "az_trainability", "grasp"])["az_trainability"]
    assert together == alone


def test_identity_pairs_are_left_out_and_sigma_one_scores_zero():
    eye = np.eye(3)[None]  # σ = 1: 2 - 1 - 1/(1 + 1e-6), about 1e-6
    double = 2 * np.eye(3)[None]  # σ = 2: 2 - 2 - 1/(2 + 1e-6), about -1/2
    both = np.concatenate([eye, double])
    one, two = 1 - 1 / (1 + 1e-6), -1 / (2 + 1e-6)
    assert trainability_finish((both, np.array([1.0, 1.0]))) == pytest.approx((one + two) / 2, abs=1e-12)
    assert trainability_finish((both, np.array([0.0, 1.0]))) == pytest.approx(two, abs=1e-12)
    assert np.isnan(trainability_finish((both, np.array([0.0, 0.0]))))
    assert np.isnan(trainability_finish((np.full((1, 2, 2), np.nan), np.array([1.0]))))


def test_rademacher_is_plus_minus_one_and_seeded():
    a = rademacher((4, 5, 6), 3, torch.float32, torch.device("cpu"))
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(a, rademacher((4, 5, 6), 3, torch.float32, torch.device("cpu")))
    assert not torch.equal(a, rademacher((4, 5, 6), 4, torch.float32, torch.device("cpu")))


def test_az_trainability_refuses_a_model_that_is_not_a_vit(triton_off):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="az_trainability needs a vitcore ViT or PiT"):
        score_one(model, torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 1]), "az_trainability")

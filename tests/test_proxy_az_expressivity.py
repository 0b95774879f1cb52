"""az_expressivity against a float64 loop: each block's two residual features recomputed from its input
in the test, numpy's covariance and eigenvalues, the entropy summed."""
import numpy as np
import pytest
import torch
from torch import nn

from native_cases import CONFIGS, EPS32, blocks, copy64, make_batch, make_model, score_one
from vitcore.proxies.az_expressivity import expressivity_finish, residual_stream


def residual_features(model, x):
    """[x_att_1, x_out_1, ...] float64 numpy (B·N', C), each recomputed from its block's input."""
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: inputs.append((mod, args[0].detach()))) for b in blocks(model)]
    with torch.no_grad():
        model(x)
        feats = []
        for b, h in inputs:
            att = h + b.attn(b.norm1(h))
            out = att + b.mlp(b.norm2(att))
            feats += [att, out]
    for hook in hooks:
        hook.remove()
    return [f.reshape(-1, f.shape[-1]).double().numpy() for f in feats]


def entropy_of_spectrum(f):
    cov = np.cov(f, rowvar=False, bias=True)  # (C, C), centred, divided by the rows
    lam = np.linalg.eigvalsh(cov)
    p = lam / lam.sum()
    return float(-(p * np.log(p + 1e-8)).sum()), cov


def expressivity_reference(model, x):
    terms = [entropy_of_spectrum(f) for f in residual_features(copy64(model), x.double())]
    return sum(t for t, _ in terms), [c for _, c in terms]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_az_expressivity_matches_float64_loop(name, B, triton_off):
    model = make_model(name, B)
    x, y = make_batch(name, B, seed=20 + B)
    ref, covs = expressivity_reference(model, x)
    assert score_one(copy64(model), x.double(), y, "az_expressivity") == pytest.approx(ref, rel=1e-9, abs=1e-9)
    # fp32 features carry a relative error of a few eps·sqrt(C) per block, so every eigenvalue of a
    # covariance moves by at most δ = 2·that·λ_max (Weyl); p_i = λ_i / Σλ by (δ + p_i·C·δ) / Σλ, and
    # the entropy term by |log(p_i + 1e-8) + 1| times that (first order)
    bound = 0.0
    for c in covs:
        C, lam = c.shape[0], np.linalg.eigvalsh(c)
        p, delta = lam / lam.sum(), 8 * EPS32 * np.sqrt(c.shape[0]) * len(blocks(model)) * lam.max()
        bound += (np.abs(np.log(np.abs(p) + 1e-8) + 1) * (delta + p * C * delta) / lam.sum()).sum()
    assert abs(score_one(model, x, y, "az_expressivity") - ref) <= bound


@pytest.mark.parametrize("chunks", [2, 3])
def test_chunks_merge_to_the_whole_batchs_covariance(chunks, triton_off):
    model = copy64(make_model("odd", 4))
    x, y = make_batch("odd", 3, seed=4, dtype=torch.float64)
    whole = score_one(model, x, y, "az_expressivity")
    assert score_one(model, x, y, "az_expressivity", chunks=chunks) == pytest.approx(whole, rel=1e-12)


def test_residual_stream_pairs_stay_within_a_pit_stage(triton_off):
    model = make_model("pit", 0)  # stages of 1 and 2 blocks
    x, _ = make_batch("pit", 2, seed=0)
    feats, pairs = residual_stream(model, x, "az_expressivity")
    assert [tuple(f.shape) for f in feats] == [(2, 26, 3)] * 2 + [(2, 10, 9)] * 4
    # each block's MLP pair, each MSA pair inside a stage; none from feature 1 (stage 0) to 2 (stage 1)
    assert pairs == [(0, 1), (2, 3), (3, 4), (4, 5)]
    vit_feats, vit_pairs = residual_stream(make_model("odd", 0), make_batch("odd", 2, seed=0)[0], "az_expressivity")
    assert len(vit_feats) == 6 and vit_pairs == [(i, i + 1) for i in range(5)]


def test_an_isotropic_feature_scores_log_c_and_a_rank_one_feature_zero():
    C = 6
    iso = np.eye(C)[None]
    rank_one = np.zeros((1, C, C))
    rank_one[0, 0, 0] = 3.0
    assert expressivity_finish((iso,)) == pytest.approx(np.log(C), abs=C * 1e-8)
    assert expressivity_finish((rank_one,)) == pytest.approx(0.0, abs=1e-7)
    assert np.isnan(expressivity_finish((np.full((1, 2, 2), np.nan),)))


def test_az_expressivity_refuses_a_model_that_is_not_a_vit(triton_off):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="az_expressivity needs a vitcore ViT or PiT"):
        score_one(model, torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 1]), "az_expressivity")

"""meco against a float64 loop: numpy's correlation and eigenvalues of each GELU map of example 0."""
import numpy as np
import pytest
import torch
from torch import nn

from native_cases import CONFIGS, EPS32, blocks, copy64, make_batch, make_model, score_one
from vitcore.proxies.meco import meco_finish, meco_reduce


def meco_reference(model, x):
    m = copy64(model)
    maps = []
    hooks = [b.mlp.act.register_forward_hook(lambda mod, a, out: maps.append(out[0].detach().numpy()))
             for b in blocks(m)]
    with torch.no_grad():
        m(x[:1].double())
    for h in hooks:
        h.remove()
    total = 0.0
    for f in maps:  # (N', hidden)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(f)
        corr[~np.isfinite(corr)] = 0
        total += np.linalg.eigvalsh(corr).min()
    return total, maps


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_meco_matches_float64_loop(name, B, triton_off):
    model = make_model(name, B)
    x, y = make_batch(name, B, seed=10 + B)
    ref, maps = meco_reference(model, x)
    assert score_one(copy64(model), x.double(), y, "meco") == pytest.approx(ref, rel=1e-9, abs=1e-9)
    # fp32 features: each correlation entry moves by a few eps·sqrt(C), an eigenvalue by at most
    # N' times that (Weyl); summed over the layers
    bound = sum(20 * EPS32 * f.shape[0] * np.sqrt(f.shape[1]) for f in maps)
    assert abs(score_one(model, x, y, "meco") - ref) <= bound


def test_a_constant_row_is_zeroed_as_the_authors_do():
    f = torch.randn(4, 9, dtype=torch.float64)
    f[2] = 1.5  # a token whose features are all equal has no correlation: its row and column become 0
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(f.numpy())
    corr[~np.isfinite(corr)] = 0
    (stack,) = meco_reduce([f])
    assert stack.dtype == torch.float64 and stack.shape == (1, 4, 4)
    got = meco_finish((stack.numpy(),))  # as the planner hands it over after the sync
    assert got == pytest.approx(np.linalg.eigvalsh(corr).min(), abs=1e-12)
    assert got == pytest.approx(0.0, abs=1e-12)


def test_a_model_that_makes_nan_scores_nan_not_zero(triton_off):
    """Every NaN correlation was zeroed, so a NaN feature map scored 0 (a finite, plausible value)."""
    f = torch.randn(4, 9, dtype=torch.float64)
    f[1, 3] = float("nan")
    assert np.isnan(meco_finish(tuple(s.numpy() for s in meco_reduce([f, torch.randn(4, 9)]))))
    model = make_model("odd", 3)
    with torch.no_grad():
        blocks(model)[0].mlp.fc1.weight[0, 0] = float("nan")
    x, y = make_batch("odd", 3, seed=1)
    assert np.isnan(score_one(model, x, y, "meco"))


def test_meco_refuses_a_model_that_is_not_a_vit(triton_off):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.GELU())
    with pytest.raises(TypeError, match="vitcore.ViT"):
        score_one(model, torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 1]), "meco")

"""dss against a float64 loop: |θ| network, all-ones example, numpy nuclear norms per layer."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from native_cases import CONFIGS, copy64, make_batch, make_model, score_one
from vitcore.model import MLP, MSA
from vitcore.proxies.dss import dss_finish, dss_reduce


def dss_reference(model):
    m = copy64(model)
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    c = model.config
    m.eval()
    m(torch.ones(1, c.in_chans, c.img_size, c.img_size, dtype=torch.float64)).sum().backward()
    total = 0.0
    for mod in m.modules():
        if isinstance(mod, MSA):
            for lin in (mod.qkv, mod.proj):
                w, g = lin.weight.detach().numpy(), lin.weight.grad.numpy()
                total += np.linalg.norm(g, "nuc") * np.linalg.norm(w, "nuc")
        elif isinstance(mod, MLP):
            for lin in (mod.fc1, mod.fc2):
                total += np.abs(lin.weight.grad.numpy() * lin.weight.detach().numpy()).sum()
    return total + np.abs(m.head.weight.grad.numpy() * m.head.weight.detach().numpy()).sum()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("seed, params", [(0, "all"), (1, "weights")])
def test_dss_matches_float64_loop(name, seed, params, triton_off):
    model = make_model(name, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = make_batch(name, 3, seed)
    got = score_one(model, x, y, "dss", params=params)
    # synflow's pass runs in float64 on the float32 weights' exact values: only summation order differs
    assert got == pytest.approx(dss_reference(model), rel=1e-10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dss_reduce_groups_shapes_and_skips_missing_gradients():
    g = torch.Generator().manual_seed(3)
    shapes = [(9, 5), (5, 5), (9, 5), (7, 3)]
    W = [torch.randn(s, generator=g) for s in shapes]
    G = [torch.randn(s, generator=g) for s in shapes]
    G[3] = None
    ref = sum(np.linalg.norm(gi.double().numpy(), "nuc") * np.linalg.norm(w.double().numpy(), "nuc")
              for w, gi in zip(W, G) if gi is not None)
    mlp_w, mlp_g = [torch.randn(4, 6, generator=g)], [torch.randn(4, 6, generator=g)]
    ref += np.abs(mlp_w[0].double().numpy() * mlp_g[0].double().numpy()).sum()
    out = dss_reduce(W, G, mlp_w, mlp_g)  # saliency, then one (2L, out, in) stack per MSA shape
    assert all(t.dtype == torch.float64 for t in out) and out[0].ndim == 0
    assert [tuple(t.shape) for t in out[1:]] == [(4, 9, 5), (2, 5, 5)]  # the G of None left out
    got = dss_finish(tuple(t.numpy() for t in out))  # as the planner hands it over after the sync
    assert got == pytest.approx(ref, rel=1e-12)


def test_dss_refuses_a_model_that_is_not_a_vit(triton_off):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="vitcore.ViT"):
        score_one(model, torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 1]), "dss")


def test_dss_finish_gives_nan_for_a_non_finite_matrix():
    """numpy's SVD raises on NaN; a model that makes NaN gets a NaN score, as score's docstring says."""
    stack = np.ones((2, 3, 2))
    stack[1, 0, 0] = np.nan
    assert math.isnan(dss_finish((np.array(1.0), stack)))

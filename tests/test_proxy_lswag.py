"""lswag against a float64 loop that takes each example's own loss gradient, one example at a time."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from native_cases import CONFIGS, block_linears, copy64, make_batch, make_model, score_one, swap_reference


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


def test_lswag_needs_two_examples_and_a_vit(triton_off):
    model = make_model("tiny", 0)
    x, y = make_batch("tiny", 1, seed=0)
    with pytest.raises(ValueError, match="lswag needs at least 2 examples"):
        score_one(model, x, y, "lswag")
    with pytest.raises(TypeError, match="vitcore.ViT"):
        score_one(nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.GELU()), torch.randn(2, 1, 8, 8),
                  torch.tensor([0, 1]), "lswag")

"""swap against a Python set of activation patterns; the device-side distinct count against torch.unique."""
import math

import pytest
import torch
from torch import nn

from native_cases import CONFIGS, copy64, make_batch, make_model, score_one, swap_reference
from vitcore.proxies.swap import count_distinct_rows, pack_patterns, swap_reduce


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 2, 7])
def test_swap_matches_a_set_of_patterns(name, B, triton_off):
    model = make_model(name, B + 20)
    x, y = make_batch(name, B, seed=B)
    assert score_one(copy64(model), x.double(), y, "swap") == swap_reference(model, x)


@pytest.mark.parametrize("B", [1, 62, 63, 64, 131])
def test_distinct_patterns_across_word_boundaries(B):
    g = torch.Generator().manual_seed(B)
    base = torch.rand(B, 40, generator=g) > 0.5  # (B, U)
    active = torch.cat([base, base[:, :15], base[:, 3:9]], 1)  # repeated neurons
    active = active[:, torch.randperm(active.shape[1], generator=g)]
    words = pack_patterns(active)
    assert words.shape == (active.shape[1], -(-B // 63))
    assert swap_reduce(active).item() == len({tuple(col.tolist()) for col in active.T})
    assert count_distinct_rows(words).item() == torch.unique(words, dim=0).shape[0]


def test_swap_reads_any_relu_or_gelu_model_and_nan_gives_nan(triton_off):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 9), nn.ReLU(), nn.Linear(9, 3))
    x, y = torch.randn(5, 1, 4, 4), torch.randint(0, 3, (5,))
    with torch.no_grad():
        active = (model[1](model[0](x)) > 0)  # (5, 9)
    assert score_one(model, x, y, "swap") == len({tuple(c.tolist()) for c in active.T})
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    assert math.isnan(score_one(model, x, y, "swap"))

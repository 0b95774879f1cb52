"""swap against a Python set of activation patterns; the device-side distinct count against torch.unique."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from native_cases import CONFIGS, copy64, make_batch, make_model, score_one, swap_reference
from vitcore import score
from vitcore.proxies.swap import PROXY, count_distinct_rows, pack_patterns, swap_reduce


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


@pytest.mark.parametrize("B, U", [(3, 8), (3, 40), (5, 97), (7, 33)])
def test_swap_is_at_most_the_number_of_neurons_and_two_to_the_batch(B, U):
    """The bound min(U, 2^B): all 2^B patterns among U >= 2^B neurons count exactly 2^B."""
    g = torch.Generator().manual_seed(B * U)
    every = torch.tensor([[(p >> b) & 1 for p in range(2 ** B)] for b in range(B)], dtype=torch.bool)  # (B, 2^B)
    active = torch.cat([every, torch.rand(B, U, generator=g) > 0.5], 1)[:, torch.randperm(2 ** B + U, generator=g)]
    assert swap_reduce(active).item() == 2 ** B
    assert swap_reduce(active[:, :U]).item() <= min(U, 2 ** B)


def test_swap_warns_exactly_when_every_pattern_occurs(triton_off):
    """"odd" has 17 x (60 + 52 + 15) = 2159 GELU neurons: 2 examples draw all 4 patterns (saturated, a
    warning, the value kept); 13 examples cannot (2^13 = 8192 > 2159): no warning."""
    model = make_model("odd", 5)
    x, y = make_batch("odd", 2, seed=6)
    with pytest.warns(RuntimeWarning, match=r"swap: 4 = 2\^2 distinct patterns.*saturated"):
        assert score_one(model, x, y, "swap") == 4 == swap_reference(model, x)
    x, y = make_batch("odd", 13, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score_one(model, x, y, "swap") == swap_reference(model, x) < 2 ** 13


def test_swap_warns_when_the_count_is_nearly_the_neuron_count():
    """At the SWAP authors' 128 examples an AutoFormer-Tiny ViT gives 99.8% of its GELU neurons: the
    count then ranks networks by their neuron count, and the finish says so (the value kept)."""
    with pytest.warns(RuntimeWarning, match=r"swap: 995 distinct patterns are 99\.5% of the 1000 neurons"):
        assert PROXY.finish((np.float64(995), np.float64(128), np.float64(1000))) == 995
    with pytest.warns(RuntimeWarning, match=r"swap: 990 distinct patterns are 99\.0% of the 1000 neurons"):
        assert PROXY.finish((np.float64(990), np.float64(128), np.float64(1000))) == 990  # the bound itself
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PROXY.finish((np.float64(989), np.float64(128), np.float64(1000))) == 989
        assert PROXY.finish((np.float64(1000), np.float64(16), np.float64(2000))) == 1000  # 50% of U


def test_no_neurons_count_no_patterns():
    """U = 0 (a zero-width layer before the ReLU): no neuron, no pattern, and no warning (the share of U
    is not defined); the count was 1 and the finish divided by U."""
    assert count_distinct_rows(torch.zeros(0, 1, dtype=torch.long)).item() == 0
    assert swap_reduce(torch.zeros(5, 0, dtype=torch.bool)).item() == 0
    model = nn.Sequential(nn.Linear(4, 0), nn.ReLU(), nn.Linear(0, 3))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score(model, x, y, proxies=["swap"]) == {"swap": 0.0}

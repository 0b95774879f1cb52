"""fisher against float64 activations and their .grad, channels kept, tokens and pixels summed."""
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import LAYERS, MODELS, batch, bound64, float64_train_copy, small_cnn
from torch import nn

import vitcore


def reference(model, x, y):
    model = float64_train_copy(model)
    acts = []

    def keep(module, args, output):
        output.retain_grad()
        acts.append((module, output))

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, LAYERS)]
    F.cross_entropy(model(x), y).backward()
    for h in hooks:
        h.remove()
    total = 0.0
    for m, a in acts:
        prod = a * a.grad
        if prod.ndim == 2:
            per_channel = prod  # (B, C)
        elif isinstance(m, nn.Linear):
            per_channel = prod.sum(dim=tuple(range(1, prod.ndim - 1)))  # (B, C): tokens summed
        else:
            per_channel = prod.sum(dim=tuple(range(2, prod.ndim)))  # (B, C): pixels summed
        total += 0.5 * per_channel.pow(2).mean(0).sum().item()
    return total


@pytest.mark.parametrize("make", [*MODELS, "cnn"])
def test_fisher_matches_float64(make, triton_off):
    torch.manual_seed(13)
    model = (small_cnn if make == "cnn" else MODELS[make])().double()
    x, y = batch(7, seed=14)
    got = vitcore.score(model, x, y, proxies=["fisher"])["fisher"]
    assert got == pytest.approx(reference(model, x, y), rel=bound64(model, 7), abs=0)  # non-negative terms

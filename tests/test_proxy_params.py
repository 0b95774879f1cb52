"""params: the trainable parameters, counted by hand."""
import torch
from proxy_helpers import batch, small_mlp

import vitcore


def test_params_counts_trainable_tensors_only(triton_off):
    model = small_mlp()
    model[3].requires_grad_(False)  # the middle Linear, 17 -> 9
    x, y = batch(2, seed=29, dtype=torch.float32)
    assert vitcore.score(model, x, y, proxies=["params"])["params"] == (64 * 17 + 17) + (9 * 5 + 5)

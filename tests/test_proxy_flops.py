"""flops: forward FLOPs of one example, counted by hand."""
import torch
from proxy_helpers import batch, small_mlp, small_vit

import vitcore
from vitcore.cost import vit_cost


def test_flops_counts_matmuls_per_example(triton_off):
    x, y = batch(3, seed=30, dtype=torch.float32)
    assert vitcore.score(small_mlp(), x, y, proxies=["flops"])["flops"] == 2 * (64 * 17 + 17 * 9 + 9 * 5)


def test_flops_of_a_vit_is_the_cost_models(triton_off):
    model = small_vit()
    x, y = batch(3, seed=31, dtype=torch.float32)
    assert vitcore.score(model, x, y, proxies=["flops"])["flops"] == vit_cost(model.config, 1).flops_fwd

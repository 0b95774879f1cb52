"""pytest-benchmark: grad_norm + snip over every parameter tensor of ViT-Ti/S/B/L, per provider.

    pytest bench/bench_param_stats.py --benchmark-group-by=param:model

Each round is one call ending in its host sync (what a caller waits for). Providers and the ViT
parameter shapes come from ``bench.param_stats_report``, which also writes the markdown report.
``test_vitcore_fresh_grads`` calls param_stats as vitcore.score does: fresh gradient tensors at new
addresses and fresh detached weight views every call.
"""
import pytest
import torch

from bench.param_stats_report import PROVIDERS, VIT, fresh_calls, grad_norm_snip, make_tensors, rotate, vit_shapes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=list(VIT))
def model(request):
    dim, depth = VIT[request.param]
    params, grads = make_tensors(vit_shapes(dim, depth))
    yield request.param, params, grads
    del params, grads
    torch.cuda.empty_cache()


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_grad_norm_snip(benchmark, model, provider):
    name, params, grads = model
    # bytes g + bytes θ, each read once: GB/s = nbytes / time
    nbytes = sum(x.numel() * x.element_size() for x in params + grads)
    benchmark.extra_info.update(model=name, provider=provider, bytes=nbytes)
    grad_norm_snip(provider, params, grads)  # warm up: compile, build the plan
    benchmark(grad_norm_snip, provider, params, grads)


def test_vitcore_fresh_grads(benchmark, model):
    name, params, grads = model
    nbytes = sum(x.numel() * x.element_size() for x in params + grads)
    benchmark.extra_info.update(model=name, provider="vitcore fresh g", bytes=nbytes)
    call = rotate("vitcore", fresh_calls(params, grads))
    call().tolist()  # warm up: compile, build the plan
    benchmark(lambda: call().tolist())  # .tolist(): the host sync

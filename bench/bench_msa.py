"""pytest-benchmark suites: one MSA block over the scaling sweep, and a full ViT forward + backward.

    pytest bench/bench_msa.py --benchmark-only [-k "vitcore and fwd+bwd"]

The grid is ``vitcore.bench.scaling``'s (the full sweep on CUDA in bf16, the ``--quick`` one on CPU in fp32),
with the same MSA block, providers and modes as the ``vitcore bench`` report. Each benchmark records
its FLOPs (``vitcore.cost``: 2 per MAC, fwd+bwd = 3x forward) and achieved TFLOP/s in extra_info.
"""
import pytest
import torch

from vitcore.cost import vit_cost
from vitcore.model import ViT, ViTConfig
from vitcore.bench.options import MODES, PROVIDERS, QUICK_D, QUICK_N, SWEEP_D, SWEEP_N
from vitcore.bench.scaling import TOKENS, MSACase
from vitcore.bench.scaling_fit import BACKWARD_FACTOR
from vitcore.bench.timers import synchronizer

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
NS, DS = (SWEEP_N, SWEEP_D) if CUDA else (QUICK_N, QUICK_D)
VITS = {  # (config, batch): ViT-Ti/S/B at 224 px; CPU runs the two small ones on two images
    "vit-ti": (ViTConfig(embed_dim=192, num_heads=3), 64 if CUDA else 2),
    "vit-s": (ViTConfig(embed_dim=384, num_heads=6), 64 if CUDA else 2),
    "vit-b": (ViTConfig(embed_dim=768, num_heads=12), 64 if CUDA else None),
}


def _run(benchmark, fn, flops: int) -> None:
    sync = synchronizer(DEVICE)

    def call():
        fn()
        sync()

    call()  # warm-up: compilation and autotuning stay out of the rounds
    benchmark(call)
    benchmark.extra_info["flops"] = flops
    benchmark.extra_info["tflops"] = flops / benchmark.stats.stats.median / 1e12


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
def test_msa_block(benchmark, n, d, provider, mode):
    case = MSACase(n, d, DTYPE, DEVICE, TOKENS[DEVICE])
    proj, core = case.macs()
    benchmark.group = f"msa N'={n} D={d} {mode}"
    _run(benchmark, case.fn("block", mode, provider), 2 * BACKWARD_FACTOR[mode] * (proj + core))


@pytest.mark.parametrize("name", [k for k, (_, b) in VITS.items() if b])
def test_vit_fwd_bwd(benchmark, name):
    config, batch = VITS[name]
    torch.manual_seed(0)
    model = ViT(config).to(DEVICE)
    x = torch.randn(batch, config.in_chans, config.img_size, config.img_size, device=DEVICE)
    y = torch.randint(0, config.num_classes, (batch,), device=DEVICE)
    amp = torch.autocast(DEVICE, dtype=DTYPE, enabled=DTYPE != torch.float32)
    params = list(model.parameters())

    def step():
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params)

    benchmark.group = "vit fwd+bwd"
    _run(benchmark, step, vit_cost(config, batch).flops_fwd_bwd)

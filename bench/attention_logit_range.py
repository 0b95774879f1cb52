"""Attention accuracy against float64 over the range of logits: the Triton kernels beside the eager path.

Run on a CPU (Triton's interpreter):
    TRITON_INTERPRET=1 VITCORE_TRITON=1 python -m bench.attention_logit_range --out bench/results/REPORT.md
and on a GPU (the compiled kernels): python -m bench.attention_logit_range --out ...

Two kinds of inputs, fp32, (B, H, N', d) = (1, 2, 20, 16), v and dO N(0, 1), seed 0, for magnitudes m from 1
to 1e17: "random", q and k N(0, m) (max |logit| from about 4 to 3e17); "tied", every q and k row a multiple of
the first unit vector (q.k one product, exact in any order) with each query's top logit m shared by the first
two keys and the others' at least m / 2 below it, so the softmax is 1/2, 1/2, 0, ... (exactly, past m ~ 1e3).
Each row gives the relative error ||x - x64|| / ||x64|| of the output and of dQ, dK, dV, and the norm of dQ beside
float64's (which is (nearly) 0 where the softmax is one-hot), for both paths.
"""
import argparse
import math

import torch

from vitcore.bench.env import environment, header_lines
from vitcore.bench.writer import publish
from vitcore.ops.attention import attention_ref, flash_attention
from vitcore.ops.dispatch import eager, use_triton

MAGNITUDES = (1.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e6, 1e9, 1e12, 1e17)
SHAPE = (1, 2, 20, 16)
KINDS = ("random", "tied")


def inputs(kind: str, magnitude: float) -> tuple:
    """q, k, v, dO (``SHAPE``, fp32) of ``kind`` at ``magnitude`` (see the module)."""
    gen = torch.Generator().manual_seed(0)
    if kind == "random":
        q, k = (torch.randn(SHAPE, generator=gen) * math.sqrt(magnitude) for _ in range(2))
    else:
        c = math.sqrt(magnitude * math.sqrt(SHAPE[-1]))  # q.k / sqrt(d) = magnitude for unit factors
        factors = torch.rand(SHAPE[:-1], generator=gen) - 0.5  # the others' logits: in [-m / 2, m / 2)
        factors[..., :2] = 1.0
        q, k = torch.zeros(SHAPE), torch.zeros(SHAPE)
        q[..., 0], k[..., 0] = c, c * factors
    v, do = (torch.randn(SHAPE, generator=gen) for _ in range(2))
    return q, k, v, do


def errors(magnitude: float, device: str, on_eager: bool, kind: str = "random") -> dict:
    """Relative errors of one path against float64 on the inputs of ``kind`` and ``magnitude`` (see the module)."""
    q, k, v, do = inputs(kind, magnitude)
    leaves = [t.to(device).requires_grad_() for t in (q, k, v)]
    if on_eager:
        with eager():
            out = flash_attention(*leaves)
    else:
        out = flash_attention(*leaves)
    grads = torch.autograd.grad(out, leaves, do.to(device))
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    ref = attention_ref(*exact)
    ref_grads = torch.autograd.grad(ref, exact, do.double())

    def rel(x, y):
        return ((x.detach().cpu().double() - y).norm() / y.norm()).item()

    return {"logit": (q @ k.transpose(-1, -2)).abs().max().item() / math.sqrt(SHAPE[-1]),
            "out": rel(out, ref.detach()), "dq": rel(grads[0], ref_grads[0]), "dk": rel(grads[1], ref_grads[1]),
            "dv": rel(grads[2], ref_grads[2]), "dq_norm": grads[0].norm().item(),
            "dq64_norm": ref_grads[0].norm().item()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the markdown report")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if not use_triton(torch.empty(0, device=args.device), uses_dot=True):
        p.error("the Triton path is not on: on a CPU set TRITON_INTERPRET=1 VITCORE_TRITON=1")
    env = environment(args.device)
    lines = ["# Attention over the range of logits: Triton kernels and the eager path against float64", "",
             *header_lines(env), f"- device: {env['device_name']}; q, k, v, dO (B, H, N', d) = {SHAPE}, fp32", "",
             "| inputs | max abs logit | path | out | dQ | dK | dV | norm dQ (float64's) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for kind in KINDS:
        for magnitude in MAGNITUDES:
            for name, on_eager in (("triton", False), ("eager", True)):
                e = errors(magnitude, args.device, on_eager, kind)
                lines.append(f"| {kind} | {e['logit']:.3g} | {name} | {e['out']:.2g} | {e['dq']:.2g} | "
                             f"{e['dk']:.2g} | {e['dv']:.2g} | {e['dq_norm']:.3g} ({e['dq64_norm']:.3g}) |")
    return publish(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

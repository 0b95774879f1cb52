"""Time proxy scoring of a search space's architectures: vitcore against the per-parameter loop.

Both providers score the same architectures with the same weights and the same minibatch, in one
process, interleaved per architecture:
- loop:    the usual implementation: eager attention, ``loss.backward()``, then a Python loop over
           the parameters with ``.item()`` per tensor (grad_norm and snip, as foresight's loop does);
- vitcore: ``vitcore.score`` with flash attention and the fused per-parameter reduction.
Model construction is not timed; each timing ends with a device synchronisation. The full family
is also timed per pass (data pass set, synflow, grasp, all together). The JSON is rewritten after
every architecture ("complete": false until the end), so a run cut off loses nothing it measured.

    python -m bench.score_report --out bench/results/h200-2026-11-29-score             # ImageNet preset
    python -m bench.score_report --device cpu --space small --out bench/results/cpu-2026-11-23-score

``run(out, ...)`` is the same as a function (the GPU suite calls it).
"""
import argparse
import sys
from typing import Optional

import torch
import torch.nn.functional as F

import vitcore
from vitcore.bench.env import environment, header_lines
from vitcore.bench.timers import once_s
from vitcore.bench.writer import write_json, write_text
from vitcore.model import MSA, ViT
from vitcore.space import SPACES, sample

DATA_PASS = ["grad_norm", "snip", "plain", "fisher", "jacob_cov", "nwot", "zico"]
SETS = {
    "grad_norm+snip": ["grad_norm", "snip"],
    "data pass (7 proxies)": DATA_PASS,
    "synflow": ["synflow"],
    "grasp": ["grasp"],
    "all proxies": list(vitcore.PROXIES),
}


def loop_score(model, x, y):
    """grad_norm and snip the common way: backward, then one tensor at a time with a sync each."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    g2, snip = 0.0, 0.0
    for p in model.parameters():
        if p.grad is not None:
            g2 += p.grad.norm().item() ** 2
            snip += (p.grad * p).abs().sum().item()
    return {"grad_norm": g2 ** 0.5, "snip": snip}


def set_fused(model, fused):
    for m in model.modules():
        if isinstance(m, MSA):
            m.fused = fused


def run(out: str, n: int = 50, batch_size: int = 64, space_name: str = "imagenet", device: str = "cuda",
        full_family_n: int = 10, command: Optional[str] = None) -> dict:
    """Score ``n`` architectures of ``space_name`` with both providers; write ``out``.json (after every
    architecture) and ``out``.md. Returns {"meta", "complete", "rows", "speedup", "max_rel_diff"}.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda': no CUDA GPU is available")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n={n} and batch_size={batch_size} must be positive")
    space = SPACES[space_name]
    device = torch.device(device)
    archs = sample(space, n, 0)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch_size, space.in_chans, space.img_size, space.img_size)
    x = torch.randn(shape, device=device, generator=gen)
    y = torch.randint(0, space.num_classes, (batch_size,), device=device, generator=gen)
    meta = {**environment(device, command), "batch_size": batch_size, "space": space_name}
    rows = []

    def save(complete):
        write_json(out + ".json", {"meta": meta, "complete": complete, "rows": rows})

    for i, arch in enumerate(archs):
        torch.manual_seed(i)
        model = ViT(arch.config(space.img_size, space.in_chans, space.num_classes), fused=True).to(device)
        if i == 0:  # warm-up: Triton compilation and autotuning stay out of the numbers
            vitcore.score(model, x, y, proxies=list(vitcore.PROXIES))
            set_fused(model, False)
            loop_score(model, x, y)
            set_fused(model, True)
        row = {"id": arch.id, "params": sum(q.numel() for q in model.parameters())}
        row["vitcore_s"], ours = once_s(lambda: vitcore.score(model, x, y), device)
        set_fused(model, False)
        row["loop_s"], theirs = once_s(lambda: loop_score(model, x, y), device)
        set_fused(model, True)
        model.zero_grad(set_to_none=True)
        row["rel_diff"] = {k: abs(ours[k] - theirs[k]) / abs(theirs[k]) for k in ours}
        if i < full_family_n:
            row["sets_s"] = {name: once_s(lambda: vitcore.score(model, x, y, proxies=names), device)[0]
                             for name, names in SETS.items()}
        rows.append(row)
        save(complete=False)
        print(f"[{i + 1}/{len(archs)}] {arch.id} vitcore {row['vitcore_s'] * 1e3:.1f} ms "
              f"loop {row['loop_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
        del model
    save(complete=True)
    paths = ("flash attention, fused reduction" if device.type == "cuda"
             else "on a CPU: the eager attention and reduction")
    total_v = sum(r["vitcore_s"] for r in rows)
    total_l = sum(r["loop_s"] for r in rows)
    worst = max(max(r["rel_diff"].values()) for r in rows)
    fam = [r for r in rows if "sets_s" in r]
    lines = [
        f"# Scoring {len(rows)} `{space_name}`-space ViTs: vitcore vs the per-parameter loop",
        "", *header_lines(meta), f"- batch size: {batch_size}", "",
        f"Batch {'x'.join(map(str, shape))}, fp32, grad_norm + snip, one forward + backward per architecture.",
        "", "| provider | total over the set (s) | per architecture (ms) |", "| --- | ---: | ---: |",
        f"| per-parameter loop (eager attention, .item() per tensor) | {total_l:.3f} | {total_l / len(rows) * 1e3:.1f} |",
        f"| vitcore.score ({paths}) | {total_v:.3f} | {total_v / len(rows) * 1e3:.1f} |",
        "", f"Speed-up: {total_l / total_v:.2f}x. Largest relative difference between the two providers' "
        f"scores: {worst:.2e}.", "",
        f"Proxy sets through `vitcore.score`, mean over the first {len(fam)} architectures:", "",
        "| proxies | ms per architecture |", "| --- | ---: |",
        *(f"| {name} | {sum(r['sets_s'][name] for r in fam) / len(fam) * 1e3:.1f} |" for name in SETS),
    ]
    write_text(out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"meta": meta, "complete": True, "rows": rows, "speedup": total_l / total_v, "max_rel_diff": worst}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="path stem: writes .json and .md")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--full-family-n", type=int, default=10, help="architectures timed with every proxy set")
    p.add_argument("--space", default="imagenet", choices=sorted(SPACES))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args()
    try:
        run(args.out, args.n, args.batch_size, args.space, args.device, args.full_family_n)
    except ValueError as e:
        p.exit(2, f"score_report: error: {e}\n")


if __name__ == "__main__":
    main()

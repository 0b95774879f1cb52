"""Time proxy scoring of a search space's architectures: vitcore against the per-parameter loop.

Both providers score the same architectures with the same weights and the same minibatch, in one
process, interleaved per architecture:
- loop:    the usual implementation: eager attention, ``loss.backward()``, then a Python loop over
           the parameters with ``.item()`` per tensor (grad_norm and snip, as foresight's loop does);
- vitcore: ``vitcore.score`` with flash attention and the fused per-parameter reduction.
Model construction is not timed; each timing ends with a device synchronisation. The full family
is also timed per pass (data pass set, synflow, grasp, all together). The JSON is rewritten after
every architecture ("complete": false until the end), so a run cut off loses nothing it measured.

    python bench/score_report.py --out bench/results/h100-2026-11-23-score             # ImageNet preset
    python bench/score_report.py --device cpu --space small --out bench/results/cpu-2026-11-23-score
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

import vitcore
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


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="path stem: writes .json and .md")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--full-family-n", type=int, default=10, help="architectures timed with every proxy set")
    p.add_argument("--space", default="imagenet", choices=sorted(SPACES))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args()
    space = SPACES[args.space]
    device = torch.device(args.device)
    archs = sample(space, args.n, 0)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch_size, space.in_chans, space.img_size, space.img_size)
    x = torch.randn(shape, device=device, generator=gen)
    y = torch.randint(0, space.num_classes, (args.batch_size,), device=device, generator=gen)
    meta = {
        "device": torch.cuda.get_device_name() if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "date": str(datetime.date.today()),
        "torch": torch.__version__, "triton": __import__("triton").__version__,
        "python": platform.python_version(), "command": "python " + " ".join(sys.argv),
        "batch_size": args.batch_size, "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    rows = []

    def save(complete):
        with open(args.out + ".json.tmp", "w") as f:
            json.dump({"meta": meta, "complete": complete, "rows": rows}, f, indent=1)
        os.replace(args.out + ".json.tmp", args.out + ".json")

    for i, arch in enumerate(archs):
        torch.manual_seed(i)
        model = ViT(arch.config(space.img_size, space.in_chans, space.num_classes), fused=True).to(device)
        if i == 0:  # warm-up: Triton compilation and autotuning stay out of the numbers
            vitcore.score(model, x, y, proxies=list(vitcore.PROXIES))
            set_fused(model, False)
            loop_score(model, x, y)
            set_fused(model, True)
        row = {"id": arch.id, "params": sum(q.numel() for q in model.parameters())}
        row["vitcore_s"], ours = timed(lambda: vitcore.score(model, x, y), device)
        set_fused(model, False)
        row["loop_s"], theirs = timed(lambda: loop_score(model, x, y), device)
        set_fused(model, True)
        model.zero_grad(set_to_none=True)
        row["rel_diff"] = {k: abs(ours[k] - theirs[k]) / abs(theirs[k]) for k in ours}
        if i < args.full_family_n:
            row["sets_s"] = {name: timed(lambda: vitcore.score(model, x, y, proxies=names), device)[0]
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
        f"# Scoring {len(rows)} `{args.space}`-space ViTs: vitcore vs the per-parameter loop",
        "", *(f"- {k}: {v}" for k, v in meta.items()), "",
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
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

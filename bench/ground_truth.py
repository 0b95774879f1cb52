"""Ground truth for ranking proxies: train the built-in 50 architectures of the `small` space on digits.

Each architecture is trained from scratch with 3 seeds on a fixed stratified 80/20 split of
scikit-learn's digits (1437 train / 360 test images) for a fixed budget, and its test accuracy
recorded. Results are appended one JSON line per (architecture, seed) as they finish, so an
interrupted run resumes where it stopped; the CSV (mean and std over seeds) and a provenance file
are written at the end.

    python -m bench.ground_truth --out vitcore/truth/digits-small-50
"""
import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vitcore.bench.env import environment, header_lines
from vitcore.model import ViT
from vitcore.space import SPACES, Arch, sample

SPLIT_SEED = 0  # the fixed train/test split
EPOCHS = 40  # the fixed training budget
BATCH = 64
LR, WEIGHT_DECAY = 1e-3, 0.05  # AdamW with a cosine schedule over the whole budget


def digits_split():
    d = load_digits()
    x = d.images[:, None].astype(np.float32)  # (1797, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=SPLIT_SEED)
    mean, std = xtr.mean(), xtr.std()
    return [torch.from_numpy(a) for a in ((xtr - mean) / std, ytr, (xte - mean) / std, yte)]


def train_one(job):
    """Train one (architecture, seed); returns its record. Runs in a worker process."""
    arch_json, seed, threads = job
    torch.set_num_threads(threads)
    arch = Arch.from_json(arch_json)
    xtr, ytr, xte, yte = digits_split()
    torch.manual_seed(seed)
    model = ViT(arch.config(8, 1, 10))
    steps = EPOCHS * -(-len(xtr) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), BATCH):
            idx = order[i:i + BATCH]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return {"id": arch.id, "seed": seed, "test_acc": acc, "train_time_s": time.perf_counter() - start,
            "params": sum(p.numel() for p in model.parameters()), "arch": arch.to_dict()}


def summarise(records, archs, seeds, csv_path):
    by_id = {}
    for r in records:
        by_id.setdefault(r["id"], {})[r["seed"]] = r
    rows = []
    for a in archs:
        runs = [by_id[a.id][s] for s in seeds]
        accs = np.array([r["test_acc"] for r in runs])
        rows.append({"id": a.id, "acc_mean": accs.mean(), "acc_std": accs.std(ddof=1),
                     **{f"acc_seed{s}": r["test_acc"] for s, r in zip(seeds, runs)},
                     "params": runs[0]["params"], "train_time_s": np.mean([r["train_time_s"] for r in runs]),
                     "arch": json.dumps(a.to_dict(), separators=(",", ":"))})
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})
    taus = {}
    for i, s in enumerate(seeds):
        for t in seeds[i + 1:]:
            a = [by_id[x.id][s]["test_acc"] for x in archs]
            b = [by_id[x.id][t]["test_acc"] for x in archs]
            taus[f"{s}-{t}"] = stats.kendalltau(a, b).statistic
    return taus


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="vitcore/truth/digits-small-50", help="path stem for .jsonl, .csv, .md")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes, one thread each")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    archs = sample(SPACES["small"], args.n, 0)  # the built-in 50 of `vitcore score`
    log = args.out + ".jsonl"
    done = {}
    if os.path.exists(log):
        with open(log) as f:
            done = {(r["id"], r["seed"]): r for r in map(json.loads, f.read().splitlines()) if r}
    jobs = [(a.to_json(), s, 1) for a in archs for s in seeds if (a.id, s) not in done]
    start = time.time()
    with open(log, "a") as f, ProcessPoolExecutor(args.workers) as pool:
        for i, r in enumerate(pool.map(train_one, jobs)):
            f.write(json.dumps(r) + "\n")
            f.flush()
            done[(r["id"], r["seed"])] = r
            print(f"[{i + 1}/{len(jobs)}] {r['id']} seed {r['seed']}: acc {r['test_acc']:.4f} "
                  f"({r['train_time_s']:.1f} s)", file=sys.stderr, flush=True)
    taus = summarise(list(done.values()), archs, seeds, args.out + ".csv")
    with open(args.out + ".md", "w") as f:
        f.write(f"# Ground truth: {args.n} `small`-space ViTs trained on digits\n\n"
                + "".join(line + "\n" for line in header_lines(environment("cpu")))
                + f"- machine: {os.cpu_count()} cores ({args.workers} workers, one thread each)\n"
                f"- split: digits stratified 80/20 (random_state={SPLIT_SEED}): 1437 train, 360 test\n"
                f"- budget: {EPOCHS} epochs, batch {BATCH}, AdamW lr {LR} wd {WEIGHT_DECAY}, cosine schedule\n"
                f"- seeds: {seeds}; wall time this invocation {time.time() - start:.0f} s\n\n"
                "Seed-to-seed noise, Kendall τ between the seeds' test accuracies (the ceiling any proxy "
                "can reach):\n\n" + "".join(f"- seeds {k}: τ = {v:.3f}\n" for k, v in taus.items()))


if __name__ == "__main__":
    main()

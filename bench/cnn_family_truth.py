"""Ground truth for the docs' example family: train the CNN records of docs/models/cnn-archs.jsonl
(``vitcore.examples.cnn_family``) on digits and write their test accuracies as a truth CSV.

The split, optimiser and schedule are ``bench.ground_truth``'s (stratified 80/20 digits, AdamW, cosine);
one seed per record, the weights drawn by the family's builder from that seed.

    python -m bench.cnn_family_truth  # docs/models/cnn-truth.csv and bench/results/cpu-<date>-cnn-family-truth.md
"""
import argparse
import csv
import json
import time

import torch
import torch.nn.functional as F

from bench.ground_truth import BATCH, LR, WEIGHT_DECAY, digits_split
from vitcore.bench.env import environment, header_lines
from vitcore.examples.cnn_family import build


def train(record: dict, epochs: int, seed: int) -> float:
    """Test accuracy of ``record``'s CNN after ``epochs`` of training on the digits split."""
    xtr, ytr, xte, yte = digits_split()
    model = build(record, torch.device("cpu"), seed)
    steps = epochs * -(-len(xtr) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), BATCH):
            idx = order[i:i + BATCH]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return (model(xte).argmax(1) == yte).double().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="docs/models/cnn-archs.jsonl")
    p.add_argument("--out", default="docs/models/cnn-truth.csv", help="the truth CSV (id, acc_mean)")
    p.add_argument("--report", help="the provenance report (default bench/results/cpu-<date>-cnn-family-truth.md)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with open(args.archs) as f:
        records = [json.loads(line) for line in f if line.strip()]
    start = time.perf_counter()
    accs = {r["id"]: train({k: v for k, v in r.items() if k != "id"}, args.epochs, args.seed) for r in records}
    wall = time.perf_counter() - start
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "acc_mean"])
        w.writerows([i, f"{a:.4f}"] for i, a in accs.items())
    env = environment("cpu", f"python -m bench.cnn_family_truth --epochs {args.epochs} --seed {args.seed}")
    report = args.report or f"bench/results/cpu-{env['date'][:10]}-cnn-family-truth.md"
    lines = [f"# Ground truth: the example CNN family on digits ({len(records)} records of {args.archs})", "",
             *header_lines(env),
             f"- split: bench.ground_truth's digits 80/20; {args.epochs} epochs, batch {BATCH}, AdamW lr {LR} "
             f"wd {WEIGHT_DECAY}, cosine; seed {args.seed}; wall time {wall:.0f} s", "",
             f"- written: {args.out}", "",
             "| id | test accuracy |", "| --- | ---: |", *(f"| {i} | {a:.4f} |" for i, a in accs.items())]
    with open(report, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The dev-set report: every scored proxy x every accuracy column of ../shared/data/autoformer-tiny-100.jsonl.

Reads one or more results files of ``vitcore score`` (runs over the dev set's architectures, possibly
with different proxy sets, merged by architecture id), the JSON-lines truth, and writes a markdown
report: τ per proxy and column with the mean over the named columns, each column's full table (τ
with its bootstrap interval, p, ρ, top-k overlap), the time per architecture of each run, the batch,
and the machine, versions, date and commands. ``vit_vote`` and ``az_nas`` (``vitcore.ensemble.COMBINED``)
join when their members were scored. The truth is read where it lies, never copied.

    python -m bench.autoformer_dev_report --scores RUN1.jsonl RUN2.jsonl \\
        --truth ../shared/data/autoformer-tiny-100.jsonl --out bench/results/cpu-2026-11-29-autoformer-dev.md
"""
import argparse
import math
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from vitcore.ensemble import AZ_NAS, COMBINED, VIT_VOTE
from vitcore.evaluate import (Truth, columns_ceiling, evaluate_columns, format_table, mean_tau, mean_tau_vs,
                              read_truth_jsonl, with_combined)
from vitcore.ranking import CI_LEVEL, kendall_tau
from vitcore.runs import read_results
from vitcore.bench.env import environment
from vitcore.bench.writer import publish

KD_COLUMNS = ("c100_kd", "flower_kd", "chaoyang_kd")
DATA_WORDS = {"synthetic": "N(0, 1) images, labels uniform over the classes",
              "digits": "scikit-learn's 8x8 digits"}  # vitcore.data's built-in choices; anything else is a file


def merge(paths: List[str]) -> List[dict]:
    """One record per architecture id, with the scores of every file (a later file's value wins)."""
    merged: Dict[str, dict] = {}
    for path in paths:
        for r in read_results(path):
            if "scores" not in r:
                continue
            into = merged.setdefault(r["id"], {"id": r["id"], "scores": {}})
            into["scores"].update(r["scores"])
    return list(merged.values())


def run_summary(path: str) -> str:
    records = [r for r in read_results(path) if "scores" in r]
    failed = [r for r in read_results(path) if "scores" not in r]
    if not records:
        return f"| {path} | 0 | - | - | - | {len(failed)} |"
    times = np.array([r["time_s"] for r in records])
    s = records[0]["settings"]
    proxies = ", ".join(s["proxies"])
    return (f"| {os.path.basename(path)} | {len(records)} | {s['batch_size']} | {proxies} | {times.mean():.1f} "
            f"(median {np.median(times):.1f}, max {times.max():.1f}) | {len(failed)} |")


def tau_table(records: List[dict], truth: Truth, columns: List[str]) -> str:
    """Kendall τ of every proxy against every column (no bootstrap: cheap), with the mean over ``columns``."""
    proxies = list(dict.fromkeys(p for r in records for p in r["scores"]))
    names = list(truth.columns)
    lines = ["| proxy | " + " | ".join(f"τ {c}" for c in names) + f" | mean τ ({', '.join(columns)}) |",
             "| --- |" + " ---: |" * (len(names) + 1)]
    for p in proxies:
        taus = {}
        for c, acc in truth.columns.items():
            common = [r for r in records if r["id"] in acc]
            taus[c] = kendall_tau([r["scores"].get(p, float("nan")) for r in common], [acc[r["id"]] for r in common])
        mean = sum(taus[c] for c in columns) / len(columns)
        lines.append(f"| {p} | " + " | ".join(f"{taus[c]:.3f}" for c in names) + f" | {mean:.3f} |")
    return "\n".join(lines)


def report(args) -> str:
    truth = read_truth_jsonl(args.truth)
    for c in args.columns:  # as vitcore evaluate --columns: a column that ranks nothing cannot be averaged over
        if c in truth.flat:
            raise ValueError(f"--columns: {c!r} of {args.truth} ranks nothing: {truth.flat[c]}")
    records = with_combined(merge(args.scores))
    ids = set(truth.archs)
    records = [r for r in records if r["id"] in ids]
    named = Truth(columns={c: truth.columns[c] for c in args.columns}, archs=truth.archs)
    results = evaluate_columns(records, named, args.top_fraction)  # bootstrap intervals: the named columns
    means = mean_tau(results, args.columns)
    settings = read_results(args.scores[0])[0]["settings"]
    env = environment("cpu", command=args.command)
    lines = [
        f"# AutoFormer-Tiny dev set: every proxy x every accuracy column ({settings.get('device', 'cpu').upper()})",
        "",
        f"- truth: `{args.truth}` ({len(truth.archs)} architectures, columns {', '.join(truth.columns)}), "
        "read in place",
        f"- networks: built exactly as the truth's README says (heads embed_dim / num_heads wide, 224x224, "
        f"16x16 patches, a class token), {settings.get('space', 'autoformer')} space: 3 channels, 100 classes; "
        "each architecture's weights drawn from a generator seeded with `(int(id, 16) + seed) mod 2^31` "
        "(`vitcore.runs.arch_seed`)",
        f"- batch (of the first results file; each file's size in the runs table): {settings['batch_size']} "
        f"examples of `{settings['data']}` data "
        f"({DATA_WORDS.get(settings['data'], 'images and labels from that file')}, input "
        f"{'x'.join(map(str, settings['input_shape']))}), seed {settings['seed']}, {settings.get('dtype', 'fp32')}, "
        "one batch for every architecture",
        f"- machine: {env['device_name']}, shared with other jobs (load average at report time "
        f"{', '.join(f'{v:.1f}' for v in env['load_average'])}); date {env['date']}",
        f"- versions: python {env['versions']['python']}, torch {env['versions']['torch']}, "
        f"numpy {env['versions']['numpy']}, vitcore git {env['versions']['git']}",
        "- commands: the scoring runs below (`python -m vitcore score --space autoformer --archs ARCHS.jsonl "
        f"--data {settings['data']} --batch-size {settings['batch_size']} --seed {settings['seed']} "
        f"--device {settings.get('device', 'cpu')} "
        "--proxies ... --out ... --resume`, ARCHS.jsonl the truth's architectures without their accuracies), then",
        f"  `{env['command']}`",
        "",
        "## Runs and time per architecture (seconds, all of a run's proxies in one `vitcore.score` call)",
        "",
        "| results file | architectures | batch | proxies | time per architecture, mean | failed |",
        "| --- | ---: | ---: | --- | --- | ---: |",
        *[run_summary(p) for p in args.scores],
        "",
        f"## Kendall τ per column; mean over {', '.join(args.columns)}",
        "",
        f"`vit_vote` = mean rank of {', '.join(VIT_VOTE)}; `az_nas` = Σ log(rank / N) of {', '.join(AZ_NAS)} "
        "(AZ-NAS's aggregation); both forms fixed before this evaluation, see `vitcore/ensemble.py`; each joins "
        "when all its members were scored. Each proxy is ranked over the {n} architectures scored (a NaN ranks "
        "last).".replace("{n}", str(len(records))),
        "",
        tau_table(records, truth, args.columns),
        "",
        *[f"### {c}\n\n{format_table(results[c])}\n" for c in args.columns],
        "",
        "## Target",
        "",
    ]
    versus = mean_tau_vs(records, named, args.columns)  # {} without params

    def interval(name: str) -> str:
        lo, hi = (f"{x:+.3f}" if np.isfinite(x) else "nan" for x in versus[name].ci)
        return f"{CI_LEVEL:.0%} CI of the difference [{lo}, {hi}], paired bootstrap over the architectures"

    for name in [c for c in COMBINED if c in means and "params" in means]:
        gap = means[name] - means["params"]
        met = "met" if gap >= 0.10 else "not met"
        lines.append(f"Mean τ over {', '.join(args.columns)}: {name} {means[name]:.3f}, params "
                     f"{means['params']:.3f}, difference {gap:+.3f} ({interval(name)}; target +0.10: {met}).")
    defined = {p: t for p, t in means.items() if not math.isnan(t)}  # NaN: a constant proxy, no τ
    if defined:
        best = max(defined, key=defined.get)
        against = f" (params {means['params']:.3f}; difference {means[best] - means['params']:+.3f}, " \
                  f"{interval(best)})" if best in versus else ""
        lines.append(f"Highest mean τ of any proxy here: {best} {means[best]:.3f}{against}.")
    if len(args.columns) > 1:
        lines += ["", *ceiling_lines(truth, args.columns, means.get("params"))]
    return "\n".join(lines) + "\n"


def ceiling_lines(truth: Truth, columns: List[str], params: Optional[float]) -> List[str]:
    """How far the mean τ over ``columns`` can go at all: τ between the columns, and
    ``vitcore.ranking.mean_tau_ceiling`` (a ranking that knew every trained accuracy)."""
    lines = ["## How high the mean τ can go", "",
             "Kendall τ between the columns themselves (each column's own ranking judged by the others):", "",
             "| column | " + " | ".join(columns) + " | mean τ over the columns |",
             "| --- |" + " ---: |" * (len(columns) + 1)]
    for a in columns:
        taus = [kendall_tau([truth.columns[a][i] for i in truth.columns[a] if i in truth.columns[b]],
                            [truth.columns[b][i] for i in truth.columns[a] if i in truth.columns[b]]) for b in columns]
        lines.append(f"| {a} | " + " | ".join(f"{t:.3f}" for t in taus) + f" | {np.mean(taus):.3f} |")
    try:
        ceiling = columns_ceiling(truth, columns)
    except ValueError as e:  # too few shared architectures, a column of one value: the rest of the report stands
        lines += ["", f"No ceiling over these columns: {e}."]
    else:
        lines += ["", f"A ranking that knew every trained accuracy of these columns (their consensus, found by "
                  f"`vitcore.ranking.mean_tau_ceiling`) reaches mean τ {ceiling.reached:.3f}; no ranking without "
                  f"ties exceeds {ceiling.bound:.3f}."]
    if params is not None:
        lines.append(f"params + 0.10 = {params + 0.10:.3f}.")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scores", nargs="+", required=True, help="results files of `vitcore score` on the dev set")
    p.add_argument("--truth", required=True, help="the JSON-lines truth (../shared/data/autoformer-tiny-100.jsonl)")
    p.add_argument("--columns", default=",".join(KD_COLUMNS), help="columns to average τ over")
    p.add_argument("--top-fraction", type=float, default=0.1)
    p.add_argument("--out", required=True, help="markdown report to write")
    args = p.parse_args(argv)
    args.columns = [c for c in args.columns.split(",") if c]
    args.command = " ".join(["python -m bench.autoformer_dev_report", *(argv if argv is not None else sys.argv[1:])])
    return publish(args.out, report(args))


if __name__ == "__main__":
    sys.exit(main())

"""The few-shot calibration report on the dev set: ``vitcore evaluate --few-shot K`` for several K.

Runs the command (through ``vitcore.cli.main``) once per K on a scores file of the dev set, keeps each
``few-shot.json`` in a folder beside the report, and writes a markdown report: per column the rule's,
params' and the best single proxy's mean τ on the rest, the gain over params with its interval, the
mean over the columns, and the issue's targets. More tables rerun the protocol (``few_shot``): on every
column of the truth with the proxies in both directions (the rule) and as scored only, on the same
draws (what the reversed candidates buy where the task rewards smaller networks, and cost where it does
not); and, with fewer draws, with params and the column's best single proxy as the only candidates
(what the test can find when the user knows in advance which proxy to try: the power of the test
itself), and at other levels ``alpha`` of the test, to show what the choice of level costs and buys.

    python -m bench.few_shot_report --scores bench/results/cpu-2026-11-29-autoformer-dev-100-scores.jsonl \\
        --truth ../shared/data/autoformer-tiny-100.jsonl --out bench/results/cpu-2026-12-07-few-shot-dev.md
"""
import argparse
import contextlib
import io
import json
import os
import sys
import time

from bench.autoformer_dev_report import KD_COLUMNS
from vitcore.bench.env import environment
from vitcore.bench.writer import publish
from vitcore.calibrate import ALPHA, few_shot
from vitcore.cli import main as vitcore_main
from vitcore.evaluate import read_truth_jsonl, with_combined
from vitcore.runs import read_results

TARGETS = {20: 0.05, 40: 0.08}  # the mean gain over params at K
WORST = -0.01  # the issue's: no column below params by more than this, at any K


def run_k(args, k: int) -> tuple:
    folder = os.path.join(os.path.splitext(args.out)[0], f"k{k}")
    argv = ["evaluate", "--scores", args.scores, "--truth", args.truth, "--columns", ",".join(args.columns),
            "--few-shot", str(k), "--draws", str(args.draws), "--seed", str(args.seed), "--out", folder]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        vitcore_main(argv)
    seconds = time.perf_counter() - start
    with open(os.path.join(folder, "few-shot.json")) as f:
        return json.load(f), seconds, "vitcore " + " ".join(argv)


def k_section(result: dict, seconds: float, command: str) -> list:
    k = result["k"]
    lines = [f"## K = {k}", "", f"`{command}` ({seconds:.0f} s)", "",
             "| column | rule τ | params τ | best single proxy (τ) | rule − params [95% CI] | kept params | "
             "rules chosen (draws) |", "| --- | ---: | ---: | --- | :---: | ---: | --- |"]
    for c, r in result["columns"].items():
        lo, hi = r["gain_ci"]
        chosen = ", ".join(f"{p} {n}" for p, n in sorted(r["chosen"].items(), key=lambda x: -x[1]))
        lines.append(f"| {c} | {r['rule_tau']:.3f} | {r['params_tau']:.3f} | {r['best_proxy']} "
                     f"({r['best_proxy_tau']:.3f}) | {r['gain']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                     f"{r['fallback_share']:.0%} | {chosen} |")
    lines += ["", f"Mean gain over params ({', '.join(result['columns'])}): **{result['mean_gain']:+.3f}**.", ""]
    return lines


def targets(results: list) -> list:
    lines = ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    by_k = {r["k"]: r for r in results}
    for k, goal in TARGETS.items():
        if k in by_k:
            got = by_k[k]["mean_gain"]
            lines.append(f"| mean gain ≥ {goal:+.2f} at K = {k} | {got:+.3f} | {'yes' if got >= goal else 'no'} |")
    worst = min((c["gain"], r["k"], name) for r in results for name, c in r["columns"].items())
    lines.append(f"| no column below params by more than {-WORST:.2f}, any K | worst: {worst[0]:+.3f} "
                 f"({worst[2]}, K = {worst[1]}) | {'yes' if worst[0] >= WORST else 'no'} |")
    return lines + [""]


def direction_section(args, records, truth, results) -> list:
    """Every column of the truth at every K, ``args.draws`` draws: the rule's gain over params with the
    proxies in both directions and as scored only (``reverse=False``), paired (the same draws: a column
    keeps its position in the ``columns`` it is run with, which seeds its draws)."""
    lines = [f"## Both directions against as scored only, every column ({args.draws} draws, seed {args.seed})",
             "", "`vitcore.calibrate.few_shot` with `reverse=True` (the rule; for the columns above, the runs above) "
             "and `reverse=False` (only the proxies as scored), on the same draws: mean gain over params [95% CI].",
             "", "| column | K | params τ | rule − params | as scored only − params | rules reversed (draws) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    main_columns = {c: truth.columns[c] for c in args.columns}
    others = {c: acc for c, acc in truth.columns.items() if c not in main_columns}
    for k, shipped in zip(args.k, results):
        rows = dict(shipped["columns"])
        if others:
            rows.update(few_shot(records, others, k, args.draws, args.seed)["columns"])
        scored = dict(few_shot(records, main_columns, k, args.draws, args.seed, reverse=False)["columns"])
        if others:
            scored.update(few_shot(records, others, k, args.draws, args.seed, reverse=False)["columns"])
        for column in truth.columns:
            r, a = rows[column], scored[column]
            reversed_ = sum(n for p, n in r["chosen"].items() if p.startswith("-"))
            lines.append(f"| {column} | {k} | {r['params_tau']:.3f} | {r['gain']:+.3f} [{r['gain_ci'][0]:+.3f}, "
                         f"{r['gain_ci'][1]:+.3f}] | {a['gain']:+.3f} [{a['gain_ci'][0]:+.3f}, "
                         f"{a['gain_ci'][1]:+.3f}] | {reversed_} |")
    return lines + [""]


def oracle_section(args, records, columns, results) -> list:
    lines = [f"## Candidates known in advance ({args.alpha_draws} draws, seed {args.seed}; an oracle)", "",
             "`vitcore.calibrate.few_shot` on scores holding only params and the column's best single proxy (from "
             "the run with the largest K above), default alpha: the gain the test finds when no selection among "
             "proxies is needed. Gain over params [95% CI], share of draws that kept params.", "",
             "| column | best proxy | " + " | ".join(f"K = {k}" for k in args.k) + " |",
             "| --- | --- |" + " --- |" * len(args.k)]
    for column, acc in columns.items():
        best = results[-1]["columns"][column]["best_proxy"]
        two = [dict(r, scores={p: r["scores"][p] for p in ("params", best)}) for r in records if "scores" in r]
        cells = []
        for k in args.k:
            c = few_shot(two, {column: acc}, k, args.alpha_draws, args.seed)["columns"][column]
            lo, hi = c["gain_ci"]
            cells.append(f"{c['gain']:+.3f} [{lo:+.3f}, {hi:+.3f}], kept {c['fallback_share']:.0%}")
        lines.append(f"| {column} | {best} | " + " | ".join(cells) + " |")
    return lines + [""]


def alpha_section(args, records, columns) -> list:
    lines = [f"## Other levels of the test ({args.alpha_draws} draws, seed {args.seed}; not the default)", "",
             "`vitcore.calibrate.few_shot(..., alpha=A)` on the same scores and truth; mean gain over params per "
             "column (c100_kd / flower_kd / chaoyang_kd) and over the columns.", "",
             "| alpha | " + " | ".join(f"K = {k}" for k in args.k) + " |", "| ---: |" + " --- |" * len(args.k)]
    for alpha in args.alphas:
        cells = []
        for k in args.k:
            r = few_shot(records, columns, k, args.alpha_draws, args.seed, alpha=alpha)
            per = " / ".join(f"{c['gain']:+.3f}" for c in r["columns"].values())
            cells.append(f"{per} (mean {r['mean_gain']:+.3f})")
        lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
    return lines + [""]


def add_inputs(p: argparse.ArgumentParser, k: str) -> None:
    """The options every few-shot report takes: the dev set's scores and truth, columns, K list, draws, seed."""
    p.add_argument("--scores", required=True, help="results of `vitcore score` on the dev set")
    p.add_argument("--truth", required=True, help="the JSON-lines truth (../shared/data/autoformer-tiny-100.jsonl)")
    p.add_argument("--columns", default=",".join(KD_COLUMNS))
    p.add_argument("--k", default=k, help="labelled architectures per draw, comma-separated")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inputs(p, "10,20,40")
    p.add_argument("--alphas", default="0.1,0.2,0.4", help="other levels of the test to rerun at (empty: none)")
    p.add_argument("--alpha-draws", type=int, default=100)
    p.add_argument("--out", required=True, help="markdown report; the few-shot.json files go in a folder beside it")
    args = p.parse_args(argv)
    args.columns = [c for c in args.columns.split(",") if c]
    args.k = [int(k) for k in args.k.split(",")]
    args.alphas = [float(a) for a in args.alphas.split(",") if a]
    command = " ".join(["python -m bench.few_shot_report", *(argv if argv is not None else sys.argv[1:])])
    env = environment("cpu", command=command)
    runs = [run_k(args, k) for k in args.k]
    truth = read_truth_jsonl(args.truth)
    records = with_combined(list({r["id"]: r for r in read_results(args.scores)}.values()))
    v = env["versions"]
    lines = ["# Few-shot calibration on the AutoFormer-Tiny dev set (CPU)", "",
             f"- scores (S): `{args.scores}` (batch 16 of synthetic data, seed 0; "
             f"[its report](cpu-2026-11-29-autoformer-dev-100.md)); truth: `{args.truth}`, read in place",
             f"- protocol: per column, {args.draws} seeded draws of K labelled architectures (T) among 100; "
             "`vitcore.calibrate` fits the rule on T alone; Kendall τ-b on the other 100 − K; means over the draws. "
             "The gain's interval is a 95% percentile bootstrap of the mean over the draws (scipy.stats.bootstrap). "
             "\"best single proxy\" is the proxy with the highest mean τ on the rests, known only with every "
             "label (an oracle), among those ranking S otherwise than params.",
             f"- rule (see `vitcore/calibrate.py`'s docstring): candidates every proxy as scored and reversed; "
             f"leave params only when the leave-one-out τ of picking the best candidate on T beats params' τ on T, "
             f"one-sided paired bootstrap at alpha = {ALPHA}",
             f"- machine: {env['device_name']}, shared with other jobs (load average at start "
             f"{', '.join(f'{x:.1f}' for x in env['load_average'])}); date {env['date']}",
             f"- versions: python {v['python']}, torch {v['torch']}, triton {v['triton']}, numpy {v['numpy']}, "
             f"vitcore git {v['git']}",
             f"- command: `{command}` (it runs the `vitcore evaluate` commands below)", ""]
    for result, seconds, cmd in runs:
        lines += k_section(result, seconds, cmd)
    lines += targets([r for r, _, _ in runs])
    lines += direction_section(args, records, truth, [r for r, _, _ in runs])
    columns = {c: truth.columns[c] for c in args.columns}
    lines += oracle_section(args, records, columns, [r for r, _, _ in runs])
    if args.alphas:
        lines += alpha_section(args, records, columns)
    return publish(args.out, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

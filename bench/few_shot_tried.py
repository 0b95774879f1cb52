"""Richer few-shot candidates, tried against the shipped rule on the same draws (not shipped).

Candidate 1, the architectures' own fields: the shipped rule (``vitcore.calibrate._fit``, its gate
included) with more candidates beside the proxies, each numeric field of the records' "arch" (a number as
it is; a list of numbers by its sum and by its mean: AutoFormer's embed_dim, depth, total and mean heads,
total and mean MLP ratio), in both directions as the proxies; a field of one value on S, or not finite,
is left out. The issue asks whether the size axes that params collapses into one help.

Candidate 2, a ridge. The candidate procedure, fitted on labelled architectures R with accuracies a:

- the shipped rule's choice, the proxy with the best Kendall τ-b on R, with its leave-one-out τ on R
  (``vitcore.calibrate``'s selection), and
- a ridge on within-R ranks: target rank(a)/|R| − params' percentile in S (params is the offset, the
  prior the ridge shrinks to), features every candidate's percentile in S (the shipped rule's
  candidates: each proxy as scored and reversed), params' included so that the fit can also lower
  params' weight (computed without labels), fitted with scikit-learn's ``RidgeCV``; its penalty is
  chosen by ridge's exact leave-one-out error on R over 10^-2 … 10^4 (the top of the grid is params
  alone), and its leave-one-out τ-b on R comes from the same leave-one-out predictions;
- the procedure returns the ridge's score (params' percentile + the fitted ridge) when its
  leave-one-out τ on R beats the selection's, else the selected proxy.

It enters the shipped gate as a whole: each architecture i of T gets the score of the procedure fitted
on T without i (so the choice between the selection and the ridge is itself cross-validated), and the
rule leaves params only when the one-sided paired bootstrap (``vitcore.calibrate``'s, alpha 0.05) of
τ-b(held out) − τ-b(params) on T has its lower bound above 0.

The draws are ``vitcore.calibrate.few_shot``'s (same generator, same order), so the shipped rule's
gain here is the one of its first ``--draws`` draws, paired with the candidate's.

    python -m bench.few_shot_tried --scores bench/results/cpu-2026-11-29-autoformer-dev-100-scores.jsonl \\
        --truth ../shared/data/autoformer-tiny-100.jsonl --k 40,20 --draws 200 \\
        --out bench/results/cpu-2026-12-07-few-shot-tried.md
"""
import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import stats
from sklearn.linear_model import RidgeCV

from bench.few_shot_report import add_inputs
from vitcore import calibrate
from vitcore.bench.env import environment
from vitcore.bench.writer import publish
from vitcore.evaluate import read_truth_jsonl, with_combined
from vitcore.runs import read_results

PENALTIES = np.logspace(-2, 4, 13)  # ridge penalties: near least squares on percentiles ... params alone


def _tau(score: np.ndarray, acc: np.ndarray) -> float:
    return float(calibrate.weighted_tau_b(calibrate._signs(score)[None], calibrate._signs(acc),
                                          np.ones((1, len(acc))))[0, 0])


def procedure(percentiles: np.ndarray, rows: np.ndarray, acc: np.ndarray) -> tuple:
    """(score of every architecture of S (N,), whether the ridge was chosen) fitted on S's positions
    ``rows`` with accuracies ``acc``; ``percentiles`` (P, N), params first."""
    n = len(acc)
    p_r = percentiles[:, rows]  # (P, n)
    score_signs, acc_signs = calibrate._signs(p_r), calibrate._signs(acc)
    best = calibrate._best(calibrate.weighted_tau_b(score_signs, acc_signs, np.ones((1, n))))[0]
    loo = calibrate._best(calibrate.weighted_tau_b(score_signs, acc_signs, 1.0 - np.eye(n)))  # (n,)
    selection_cv = _tau(p_r[loo, np.arange(n)], acc)
    target = stats.rankdata(acc) / n - p_r[0]  # (n,) within-R rank over params' percentile
    ridge = RidgeCV(alphas=PENALTIES, scoring="neg_mean_squared_error", store_cv_results=True)
    ridge.fit(p_r.T, target)  # (n, P) features
    held_out = ridge.cv_results_[:, list(PENALTIES).index(ridge.alpha_)]  # (n,) exact leave-one-out predictions
    if _tau(p_r[0] + held_out, acc) > selection_cv:
        return percentiles[0] + ridge.predict(percentiles.T), True
    return percentiles[best], False


def field_scores(records: list, ids: list) -> tuple:
    """(names, (F, N) values) of the numeric "arch" fields of candidate 1 over S's ``ids``, those of one
    value or not finite on S left out."""
    arch = {r["id"]: r.get("arch") or {} for r in records}
    table: dict = {}
    for n, i in enumerate(ids):
        for field, value in arch[i].items():
            if calibrate._real(value):
                table.setdefault(field, {})[n] = float(value)
            elif isinstance(value, list) and value and all(map(calibrate._real, value)):
                table.setdefault(f"{field} (sum)", {})[n] = float(sum(value))
                table.setdefault(f"{field} (mean)", {})[n] = float(sum(value)) / len(value)
    names, rows = [], []
    for field, by_position in table.items():
        row = np.array([by_position.get(n, np.nan) for n in range(len(ids))])
        if np.isfinite(row).all() and np.ptp(row) > 0:
            names.append(field)
            rows.append(row)
    return names, np.array(rows).reshape(len(rows), len(ids))


def load(scores: str, truth: str, columns: list) -> tuple:
    """(percentiles (2P, N) of the shipped rule's candidates, params first, as ``few_shot`` computes them;
    the fields' names; their percentiles (2F, N); {column: (positions in S of its labelled architectures,
    their accuracies)}) from a scores file and a JSON-lines truth."""
    records = with_combined(list({r["id"]: r for r in read_results(scores)}.values()))
    acc_of = read_truth_jsonl(truth).columns
    matrix = calibrate.score_matrix(records)
    ids = list(dict.fromkeys(i for col in matrix.values() for i in col))
    names, values, _ = calibrate._candidates(matrix, ids)
    _, percentiles = calibrate._orderings(names, values)
    field_names, values = field_scores(records, ids)
    _, fields = calibrate._orderings(field_names, values)
    labelled = {}
    for column in columns:
        held = np.array([n for n, i in enumerate(ids) if i in acc_of[column]])
        labelled[column] = (held, np.array([float(acc_of[column][ids[n]]) for n in held]))
    return percentiles, field_names, fields, labelled


def _lower_bound(held_out: np.ndarray, params: np.ndarray, acc: np.ndarray, seed: int) -> float:
    """The shipped gate's one-sided bootstrap lower bound of τ-b(held_out) − τ-b(params) on T."""
    k = len(acc)
    pair_signs, acc_signs = calibrate._signs(np.stack([held_out, params])), calibrate._signs(acc)

    def difference(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        counts = (idx[..., :, None] == np.arange(k)).sum(-2).reshape(-1, k)  # (B, K)
        taus = calibrate.weighted_tau_b(pair_signs, acc_signs, counts.astype(np.float64))
        return np.nan_to_num(taus[0] - taus[1]).reshape(idx.shape[:-1])

    boot = stats.bootstrap((np.arange(k),), difference, vectorized=True, n_resamples=calibrate.RESAMPLES,
                           confidence_level=1 - 2 * calibrate.ALPHA, method="percentile",
                           random_state=np.random.default_rng(seed))
    return float(boot.confidence_interval.low)


def run_column(task: tuple) -> dict:
    """Gains over params on the rest, per draw, of the shipped rule, candidate 1 (the shipped rule with the
    fields' percentiles ``fields`` (F, N) as more candidates), candidate 2 gated and ungated, for one
    (column, column index, K, draws, seed, percentiles, fields, held, acc)."""
    column, c_index, k, draws, seed, percentiles, fields, held, acc = task
    names = list(range(len(percentiles)))
    widened = np.concatenate([percentiles, fields])
    acc_signs = calibrate._signs(acc)
    rng = np.random.default_rng([seed, c_index])  # few_shot's generator: the same draws
    out = {"column": column, "k": k, "shipped": [], "fields": [], "candidate": [], "ungated": [], "ridge": 0,
           "kept": 0, "field_chosen": 0}
    start = time.perf_counter()
    for _ in range(draws):
        t = np.sort(rng.choice(len(held), size=k, replace=False))
        boot_seed = int(rng.integers(2**32))
        rows, a = held[t], acc[t]
        rest = np.ones((1, len(held)))
        rest[0, t] = 0.0

        def gain(score: np.ndarray) -> float:
            taus = calibrate.weighted_tau_b(calibrate._signs(np.stack([score[held], percentiles[0, held]])),
                                            acc_signs, rest)[:, 0]
            return float(taus[0] - taus[1])

        chosen, _ = calibrate._fit(names, percentiles, rows, a, calibrate.ALPHA, calibrate.RESAMPLES, boot_seed)
        out["shipped"].append(gain(percentiles[chosen]))
        chosen, _ = calibrate._fit(list(range(len(widened))), widened, rows, a, calibrate.ALPHA,
                                   calibrate.RESAMPLES, boot_seed)
        out["fields"].append(gain(widened[chosen]))
        out["field_chosen"] += int(chosen >= len(percentiles))
        full, is_ridge = procedure(percentiles, rows, a)
        held_out = np.array([procedure(percentiles, np.delete(rows, i), np.delete(a, i))[0][rows[i]]
                             for i in range(k)])  # (K,)
        passed = _lower_bound(held_out, percentiles[0, rows], a, boot_seed) > 0
        out["ungated"].append(gain(full))
        out["candidate"].append(out["ungated"][-1] if passed else 0.0)
        out["ridge"] += int(is_ridge and passed)
        out["kept"] += int(not passed)
    out["seconds"] = time.perf_counter() - start
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inputs(p, "40,20,10")  # largest K first: the slowest tasks start first
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one (column, K) each")
    p.add_argument("--out", required=True, help="markdown report")
    args = p.parse_args(argv)
    columns = [c for c in args.columns.split(",") if c]
    ks = [int(k) for k in args.k.split(",")]
    command = " ".join(["python -m bench.few_shot_tried", *(argv if argv is not None else sys.argv[1:])])
    env = environment("cpu", command=command)
    percentiles, field_names, fields, labelled = load(args.scores, args.truth, columns)
    tasks = [(column, c_index, k, args.draws, args.seed, percentiles, fields, *labelled[column])
             for k in ks for c_index, column in enumerate(columns)]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_column, tasks))
    v = env["versions"]
    lines = ["# Few-shot calibration: the architectures' fields and a ridge on within-T ranks, tried against the "
             "shipped rule (CPU)", "",
             f"- scores (S): `{args.scores}`; truth: `{args.truth}`, read in place",
             f"- candidates and gate: `bench/few_shot_tried.py`'s docstring; {args.draws} draws per column and K, "
             f"the first {args.draws} of `vitcore evaluate --few-shot K --seed {args.seed}` (paired)",
             f"- machine: {env['device_name']}, {args.jobs} worker processes, shared with other jobs (load average "
             f"at start {', '.join(f'{x:.1f}' for x in env['load_average'])}); date {env['date']}",
             f"- versions: python {v['python']}, torch {v['torch']}, triton {v['triton']}, numpy {v['numpy']}, "
             f"vitcore git {v['git']}",
             f"- fields of candidate 1 (from the records' \"arch\"): {', '.join(field_names) or 'none'}",
             f"- command: `{command}`", "",
             "Mean gain over params' τ on the rest: the shipped rule; candidate 1 (the shipped rule with the fields "
             "as more candidates) and the draws where it ranks by a field; candidate 2 (the ridge procedure) "
             "behind the same gate and without it, the draws where the gated candidate 2 ranks by the ridge, "
             "and where it kept params.", "",
             "| K | column | shipped | fields | field (draws) | ridge | ridge, ungated | ridge (draws) | "
             "kept params (draws) | s |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(results, key=lambda r: r["k"]):  # tasks ran largest K first
        lines.append(f"| {r['k']} | {r['column']} | {np.mean(r['shipped']):+.3f} | {np.mean(r['fields']):+.3f} | "
                     f"{r['field_chosen']} | {np.mean(r['candidate']):+.3f} | {np.mean(r['ungated']):+.3f} | "
                     f"{r['ridge']} | {r['kept']} | {r['seconds']:.0f} |")
    methods = ("shipped", "fields", "candidate", "ungated")
    lines += ["", "Mean over the columns:", "", "| K | shipped | fields | ridge | ridge, ungated |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for k in sorted(ks):
        mean = {m: np.mean([np.mean(r[m]) for r in results if r["k"] == k]) for m in methods}
        lines.append(f"| {k} | " + " | ".join(f"{mean[m]:+.3f}" for m in methods) + " |")
    return publish(args.out, "\n".join(lines + [""]))


if __name__ == "__main__":
    sys.exit(main())

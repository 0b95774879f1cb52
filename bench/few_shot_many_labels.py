"""The few-shot procedures fitted on nearly every label of a dev column: how far they get with far more
evidence than a draw of K labels gives (an estimate, not a bound).

The few-shot rule (``vitcore.calibrate``) sees K labelled architectures. This script gives the two
procedures it and ``bench/few_shot_tried.py`` build on far more labels: repeated ``--folds``-fold
cross-validation over a column's labelled architectures (scikit-learn ``KFold``, shuffled, one seed per
repeat), each fold fitted on the others (90 of 100 with 10 folds):

- selection: the candidate (the shipped rule's: every proxy as scored and reversed, params first) with
  the best Kendall τ-b on the training folds (``vitcore.calibrate``'s choice: NaN never wins), no gate;
- ridge: ``bench/few_shot_tried.py``'s ridge, no gate: scikit-learn ``RidgeCV`` on the candidates'
  percentiles in S, target the within-training rank over params' percentile, penalty by its exact
  leave-one-out error over ``PENALTIES``; with the architectures' own fields as more features (``+
  fields``) and without.

Each architecture gets the score of the fit that did not see it; the Kendall τ-b of these held-out
scores with the column's accuracies over all of the column's architectures, averaged over the repeats,
is the procedure's τ (the folds' scores are percentiles in S or a fitted offset on them: comparable
across folds). The gain over params is that τ minus params' τ on the same architectures. "Perfect
gate" keeps params wherever the procedure's gain is negative, which no K labels can know. A draw's
rule is judged on the 100 − K architectures it did not see, so its numbers are comparable with these,
not bounded by them.

    python -m bench.few_shot_many_labels --scores bench/results/cpu-2026-11-29-autoformer-dev-100-scores.jsonl \\
        --truth ../shared/data/autoformer-tiny-100.jsonl --out bench/results/cpu-2026-12-07-few-shot-many-labels.md
"""
import argparse
import math
import sys

import numpy as np
import scipy
import sklearn
from scipy import stats
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

from bench.autoformer_dev_report import KD_COLUMNS
from bench.few_shot_tried import PENALTIES, _tau, load
from vitcore import calibrate
from vitcore.bench.env import environment
from vitcore.bench.writer import publish

METHODS = ("selection", "ridge", "ridge + fields")


def held_out_scores(features: np.ndarray, acc: np.ndarray, folds: int, seed: int, n_candidates: int) -> dict:
    """{method: (n,) score of each architecture from the fit that did not see it} for ``features`` (n, F):
    the candidates' percentiles (params first) in the first ``n_candidates`` columns, then any fields."""
    out = {m: np.empty(len(acc)) for m in METHODS}
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(features):
        x, a = features[train], acc[train]
        best = int(calibrate._best(np.array([_tau(x[:, j], a) for j in range(n_candidates)])))
        out["selection"][test] = features[test, best]
        target = stats.rankdata(a) / len(a) - x[:, 0]  # within-training rank over params' percentile
        for method, width in (("ridge", n_candidates), ("ridge + fields", features.shape[1])):
            ridge = RidgeCV(alphas=PENALTIES).fit(x[:, :width], target)
            out[method][test] = features[test, 0] + ridge.predict(features[test, :width])
    return out


def column_taus(features: np.ndarray, acc: np.ndarray, folds: int, repeats: int, seed: int,
                   n_candidates: int) -> dict:
    """{"params": τ, method: mean τ over ``repeats`` cross-validations} for one column."""
    taus = {m: [] for m in METHODS}
    for r in range(repeats):
        for method, score in held_out_scores(features, acc, folds, seed + r, n_candidates).items():
            taus[method].append(_tau(score, acc))
    return {"params": _tau(features[:, 0], acc), **{m: float(np.mean(t)) for m, t in taus.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scores", required=True, help="results of `vitcore score` on the dev set")
    p.add_argument("--truth", required=True, help="the JSON-lines truth (../shared/data/autoformer-tiny-100.jsonl)")
    p.add_argument("--columns", default=",".join(KD_COLUMNS))
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="markdown report")
    args = p.parse_args(argv)
    columns = [c for c in args.columns.split(",") if c]
    command = " ".join(["python -m bench.few_shot_many_labels", *(argv if argv is not None else sys.argv[1:])])
    env = environment("cpu", command=command)
    percentiles, field_names, fields, labelled = load(args.scores, args.truth, columns)
    features = np.concatenate([percentiles, fields]).T  # (N, 2P + 2F)
    results = {c: column_taus(features[held], acc, args.folds, args.repeats, args.seed, len(percentiles))
               for c, (held, acc) in labelled.items()}
    v = env["versions"]
    sizes = sorted({len(acc) for _, acc in labelled.values()})
    fitted = sorted({n - math.ceil(n / args.folds) for n in sizes} | {n - n // args.folds for n in sizes})
    fitted_span = str(fitted[0]) if len(fitted) == 1 else f"{fitted[0]} to {fitted[-1]}"
    lines = ["# Few-shot calibration on the dev set: the procedures fitted on nearly every label (CPU)", "",
             f"- scores (S): `{args.scores}`; truth: `{args.truth}`, read in place",
             f"- procedures: `bench/few_shot_many_labels.py`'s docstring; {args.repeats} repeats of {args.folds}-fold "
             f"cross-validation on each column's {', '.join(map(str, sizes))} labelled architectures (each fit "
             f"on {fitted_span} of them), seeds "
             f"{args.seed}…{args.seed + args.repeats - 1}",
             f"- fields (+ fields): {', '.join(field_names) or 'none'}",
             f"- machine: {env['device_name']}; date {env['date']}",
             f"- versions: python {v['python']}, numpy {v['numpy']}, scipy {scipy.__version__}, scikit-learn "
             f"{sklearn.__version__}, vitcore git {v['git']}",
             f"- command: `{command}`", "",
             "Kendall τ-b of the held-out scores with the column's accuracies (mean over the repeats); in "
             "brackets the gain over params.", "",
             "| column | params τ | " + " | ".join(METHODS) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in METHODS) + " |"]
    for c, r in results.items():
        lines.append(f"| {c} | {r['params']:.3f} | "
                     + " | ".join(f"{r[m]:.3f} ({r[m] - r['params']:+.3f})" for m in METHODS) + " |")
    gains = {m: [r[m] - r["params"] for r in results.values()] for m in METHODS}
    lines += ["", f"Mean gain over params ({', '.join(results)}), as fitted and with a perfect gate (params "
              "kept on each column where the procedure's gain is negative):", "",
              "| | " + " | ".join(METHODS) + " |", "| --- | " + " | ".join("---:" for _ in METHODS) + " |",
              "| as fitted | " + " | ".join(f"{np.mean(gains[m]):+.3f}" for m in METHODS) + " |",
              "| perfect gate | " + " | ".join(f"{np.mean(np.maximum(gains[m], 0)):+.3f}" for m in METHODS) + " |"]
    return publish(args.out, "\n".join(lines + [""]))


if __name__ == "__main__":
    sys.exit(main())

"""Few-shot calibration: which proxy to rank a task's architectures by, from K of them trained.

A user holds S, every candidate architecture scored by zero-cost proxies (``vitcore score``), and T,
the trained accuracies of K of them on the task. ``fit_rule`` turns (S, T) into a rule, the one score
to rank S by; ``apply_rule`` ranks with it; ``few_shot`` measures the whole procedure on a full ground
truth by drawing T at random R times and scoring the rule on the architectures outside T.

The rule and why (decided before the dev-set runs, but for the reversed candidates, added when the dev
truth's other columns showed size-driven proxies ranking backwards; the report says what else was tried):

- Candidates: every proxy of S that is finite on all of S, params included, each in both directions:
  as scored (higher ranks higher) and reversed (lower ranks higher, named with a leading "-", e.g.
  "-params"). No weights are fitted, since K labels cannot estimate more than a choice among a few
  orderings. A proxy's direction is a claim about the task, not a law: when training favours smaller
  networks (from scratch on little data, short schedules) the size-driven proxies rank backwards, as
  the dev truth's from-scratch CIFAR-100 and supernet ImageNet columns show (params' τ -0.324 and
  -0.217, bench/results/cpu-2026-11-29-autoformer-dev-100.md), and the reversed proxy is the right rule. The
  selection below pays for the doubled candidates: it is cross-validated over all of them.
- The default is params, the parameter count, which ranks ViTs as well as any single proxy on average
  (bench/results/cpu-2026-11-29-autoformer-dev-100.md).
- Picking the proxy with the best τ on T ("naive selection") overestimates the winner: with K labels
  and a dozen proxies of similar τ the maximum is mostly noise (the winner's curse). So the selection
  is judged out of sample, by leave-one-out cross-validation on T: for each architecture i of T the
  proxy with the best Kendall τ-b on T without i is chosen, and i gets its percentile in S under that
  proxy (percentiles within S are comparable across folds; S's scores carry no label). The Kendall τ-b
  of these held-out percentiles with T's accuracies (``cv_tau``) is the selection's honest τ on T.
- The rule leaves params only when that held-out ranking beats params on T with a one-sided paired
  bootstrap test at level ``alpha`` = 0.05: the architectures of T are resampled together with their
  held-out percentile, params' percentile and accuracy (scipy.stats.bootstrap, percentile method), and
  the ``alpha`` quantile of τ_b(held out) − τ_b(params) must exceed 0. One comparison is made, of one
  procedure chosen in advance, so no correction for many proxies is needed: the multiplicity lives
  inside the cross-validation. Then the rule is the candidate with the best τ on all of T (the earliest
  on ties: params, then the proxies as scored, then reversed). Otherwise it is params, and the rule says
  so (``fallback``) with the numbers it rests on.

Only the accuracies of T are read: S's architectures outside T enter through their scores alone (the
percentiles), never through an accuracy.
"""
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from vitcore.ranking import _signs, weighted_tau_b  # noqa: F401 (weighted_tau_b: part of this module's API)

BASELINE = "params"  # the rule a calibration falls back to
MIN_K = 5  # fewer labels cannot separate a rule from params (K = 5: 10 pairs)
ALPHA = 0.05  # one-sided level of the test that a rule beats params on T
RESAMPLES = 2000  # bootstrap resamples of T's architectures
MAX_DRAWS = 100_000  # few_shot's draws: each refits the rule (milliseconds to a second)
RULE_FORMAT = 2  # version of the rule file's layout; 2 added "reversed" (format 1 rules never reverse)


@dataclass
class Rule:
    """A fitted ranking rule: rank architectures by the score ``proxy``, higher first, or lower first when
    ``reversed`` (``label`` is then "-" + proxy).

    ``fallback`` is True when the labels could not show that any rule beats params (``proxy`` is then
    params) and ``reason`` says why in words. ``evidence``: ``k`` (labelled architectures), ``tau``
    ({candidate: Kendall τ-b on T}, reversed ones labelled "-proxy"), ``params_tau``, ``cv_tau`` (the
    selection's leave-one-out τ on T), ``cv_minus_params``, ``lower_bound`` (the bootstrap ``alpha``
    quantile of cv_tau − params_tau), ``excluded`` ({proxy: why it was not a
    candidate}). ``parameters``: alpha, resamples, seed, reverse.
    ``inputs``: where S and T came from, the column, the ids of T. A τ that is undefined (a candidate or
    a bootstrap of one value on T) is NaN here and null in the rule file."""

    proxy: str
    fallback: bool
    reason: str
    evidence: dict
    parameters: dict
    inputs: dict = field(default_factory=dict)
    reversed: bool = False

    @property
    def label(self) -> str:
        """The rule's name: the proxy, with a leading "-" when reversed."""
        return ("-" if self.reversed else "") + self.proxy

    def to_dict(self) -> dict:
        return {"format": RULE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d, where: str = "rule") -> "Rule":
        """A rule read back from ``to_dict``'s form (format 1 files too: never reversed); ValueError naming
        ``where`` and the bad field."""
        fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
        if not isinstance(d, dict) or type(fmt) is not int or fmt not in (1, RULE_FORMAT):
            raise ValueError(f"{where}: not a vitcore rule (format {fmt!r:.40}; expected 1 or {RULE_FORMAT})")
        if fmt == 1:
            if "reversed" in d:
                raise ValueError(f"{where}: field 'reversed' is not part of format 1, whose rules are never "
                                 f"reversed; write format {RULE_FORMAT} to reverse a rule")
            d = dict(d, reversed=False)
        for name, kind in [("proxy", str), ("fallback", bool), ("reason", str), ("evidence", dict),
                           ("parameters", dict), ("inputs", dict), ("reversed", bool)]:
            if name not in d:
                raise ValueError(f"{where}: field {name!r} is missing")
            if not isinstance(d[name], kind):
                raise ValueError(f"{where}: field {name!r} is {d[name]!r:.60}, expected a {kind.__name__}")
        if d["proxy"].startswith("-"):
            raise ValueError(f"{where}: proxy {d['proxy']!r} starts with '-': name the proxy and set "
                             "\"reversed\": true to rank it lower first")
        return cls(**{k: d[k] for k in ("proxy", "fallback", "reason", "evidence", "parameters", "inputs",
                                        "reversed")})


def score_matrix(records: Sequence[dict]) -> Dict[str, Dict[str, float]]:
    """{proxy: {id: score}} of the scored records (``vitcore.runs.read_results``); params from the
    record's own count when it was not scored as a proxy. Failed records (no "scores") are left out."""
    out: Dict[str, Dict[str, float]] = {}
    for n, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise TypeError(f"record {n} is a {type(r).__name__}, not a dict of vitcore score's results")
        if "id" not in r:
            raise ValueError(f"record {n} has no \"id\": not a result of vitcore score")
        if "scores" not in r:
            continue
        scores = dict(r["scores"])
        if BASELINE not in scores and _real(r.get("params")):
            scores[BASELINE] = r["params"]
        for p, v in scores.items():
            out.setdefault(p, {})[r["id"]] = _float(v) if _real(v) else math.nan
    return out


def _real(x) -> bool:
    """A real number, Python's or numpy's; not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _float(x) -> float:
    """float(x), an int beyond float's range as ±inf (not finite, so never a candidate or a label)."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _check_int(value, name: str, least: int, most: Optional[int] = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < least or (most is not None and value > most):
        bound = f"from {least} to {most}" if most is not None else f">= {least}"
        raise ValueError(f"{name}={value!r:.40}: expected an integer {bound}")
    return int(value)


def _check_test(alpha, resamples, seed, reverse) -> None:
    """fit_rule's and few_shot's own arguments: ValueError naming a bad one, TypeError for ``reverse``."""
    if not _real(alpha) or not 0 < alpha < 0.5:
        raise ValueError(f"alpha={alpha!r:.40}: expected a level in (0, 0.5)")
    _check_int(resamples, "resamples", 100)
    _check_int(seed, "seed", 0)
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse={reverse!r:.40}: expected True or False")


def _candidates(matrix: Dict[str, Dict[str, float]], ids: List[str]):
    """(names, (P, N) scores) of the proxies finite on every id, params first; {proxy: why} for the rest."""
    if BASELINE not in matrix:
        raise ValueError(f"the scores hold no {BASELINE!r}: a rule falls back to it, so score it "
                         "(--proxies params,...) or keep the records' \"params\" field")
    names, rows, excluded = [], [], {}
    for p in [BASELINE] + [q for q in matrix if q != BASELINE]:
        row = np.array([matrix[p].get(i, math.nan) for i in ids])
        if not np.isfinite(row).all():
            excluded[p] = f"not finite on {int((~np.isfinite(row)).sum())} of {len(ids)} architectures"
        elif np.ptp(row) == 0:
            excluded[p] = "the same score for every architecture"
        else:
            names.append(p)
            rows.append(row)
    if not names or names[0] != BASELINE:
        raise ValueError(f"{BASELINE} is {excluded[BASELINE]}: it cannot be the fallback")
    return names, np.stack(rows), excluded


def _orderings(names: List[str], scores: np.ndarray, reverse: bool = True) -> tuple:
    """(labels, (2P, N) percentiles) of the P candidates as scored, then reversed ("-" + name); only the
    first P without ``reverse``. Percentile = rank within S over N (ties averaged), so a reversed one is
    1 + 1/N minus the scored one."""
    n = scores.shape[1]
    percentiles = stats.rankdata(scores, axis=1) / n
    if not reverse:
        return list(names), percentiles
    return names + ["-" + p for p in names], np.concatenate([percentiles, 1 + 1 / n - percentiles])


def _best(taus: np.ndarray) -> np.ndarray:
    """Index of the highest τ along axis 0, the earliest (params first) on ties; NaN never wins."""
    return np.argmax(np.where(np.isnan(taus), -np.inf, taus), axis=0)


def _fit(names: List[str], percentiles: np.ndarray, labelled: np.ndarray, acc: np.ndarray,
         alpha: float, resamples: int, seed: int) -> tuple:
    """The decision of the module docstring on the candidates' (C, N) percentiles (``_orderings``, params
    first), T's positions and accuracies: (candidate index, evidence)."""
    k = len(labelled)
    p_t = percentiles[:, labelled]  # (P, K)
    score_signs, acc_signs = _signs(p_t), _signs(acc)
    tau = weighted_tau_b(score_signs, acc_signs, np.ones((1, k)))[:, 0]  # (P,)
    chosen = _best(tau[:, None])[0]
    held_out = _best(weighted_tau_b(score_signs, acc_signs, 1.0 - np.eye(k)))  # (K,): proxy chosen without i
    pair = np.stack([p_t[held_out, np.arange(k)], p_t[0]])  # (2, K): held-out percentiles, params'
    pair_signs = _signs(pair)

    def difference(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        counts = (idx[..., :, None] == np.arange(k)).sum(-2).reshape(-1, k)  # (B, K)
        taus = weighted_tau_b(pair_signs, acc_signs, counts.astype(np.float64))
        return np.nan_to_num(taus[0] - taus[1]).reshape(idx.shape[:-1])  # NaN: a resample of one value, no evidence

    cv_tau, params_tau = weighted_tau_b(pair_signs, acc_signs, np.ones((1, k)))[:, 0]
    boot = stats.bootstrap((np.arange(k),), difference, vectorized=True, n_resamples=resamples,
                           confidence_level=1 - 2 * alpha, method="percentile",
                           random_state=np.random.default_rng(seed))
    lower = float(boot.confidence_interval.low)
    evidence = {"k": k, "tau": {n: float(t) for n, t in zip(names, tau)}, "params_tau": float(params_tau),
                "cv_tau": float(cv_tau), "cv_minus_params": float(cv_tau - params_tau), "lower_bound": lower}
    return (chosen if lower > 0 else 0), evidence


def _check_labels(truth: Mapping[str, float], ids: Sequence[str], failed_ids: Sequence[str] = ()) -> None:
    if not isinstance(truth, Mapping):
        raise TypeError(f"truth must be a dict of id -> accuracy, got {type(truth).__name__}")
    missing, failed = [i for i in truth if i not in ids], set(failed_ids)
    lost = [i for i in missing if i in failed]
    if lost:
        raise ValueError(f"{len(lost)} labelled architectures failed in S, so no proxy scored them (first: "
                         f"{lost[0]}): leave them out of T, or score them again (vitcore score --resume retries "
                         "failed architectures)")
    if missing:
        raise ValueError(f"{len(missing)} labelled architectures are not among the {len(ids)} scored ones "
                         f"(first: {missing[0]}): T must be a subset of S")
    bad = {i: a for i, a in truth.items() if not _real(a) or not math.isfinite(_float(a))}
    if bad:
        i = next(iter(bad))
        raise ValueError(f"accuracy of {i} is {bad[i]!r:.40}: every accuracy of T must be a finite number")
    if len(truth) < MIN_K:
        raise ValueError(f"K = {len(truth)} labelled architectures; calibration needs K >= {MIN_K}")
    if len(set(truth.values())) == 1:
        raise ValueError(f"all {len(truth)} accuracies of T are {next(iter(truth.values()))}: they rank nothing")


def fit_rule(records: Sequence[dict], truth: Mapping[str, float], *, alpha: float = ALPHA,
             resamples: int = RESAMPLES, seed: int = 0, reverse: bool = True,
             inputs: Optional[dict] = None) -> Rule:
    """Fit a ranking rule from S (``records`` of ``vitcore score``) and T (``truth``, {id: accuracy} of
    K >= 5 architectures of S), as the module docstring says; the same inputs and ``seed`` give the same
    rule. ``reverse=False`` offers the proxies as scored only (for a user who knows every proxy's
    direction holds on the task). ``inputs`` is recorded as given (paths, column).

    Raises TypeError for a truth that is not a dict; ValueError for K < 5, an id of T not scored in S, an
    accuracy that is not a finite number, accuracies of one value, no params score, a record without
    an "id", and for an ``alpha`` outside (0, 0.5), ``resamples`` < 100 or a ``seed`` that is not an
    integer >= 0; TypeError for a ``reverse`` that is not a bool or a record that is not a dict.
    """
    _check_test(alpha, resamples, seed, reverse)
    matrix = score_matrix(records)
    ids = list(dict.fromkeys(i for col in matrix.values() for i in col))
    _check_labels(truth, ids, [r["id"] for r in records if isinstance(r, dict) and "scores" not in r])
    names, scores, excluded = _candidates(matrix, ids)
    labels, percentiles = _orderings(names, scores, reverse)  # (2P, N)
    position = {i: n for n, i in enumerate(ids)}
    labelled = np.array([position[i] for i in truth])
    acc = np.array([_float(truth[i]) for i in truth])
    chosen, evidence = _fit(labels, percentiles, labelled, acc, alpha, resamples, seed)
    evidence["excluded"] = excluded
    return _rule(labels[chosen], bool(chosen >= len(names)), evidence,
                 {"alpha": alpha, "resamples": resamples, "seed": seed, "reverse": reverse},
                 dict(inputs or {}, labelled=list(truth)))


def _rule(label: str, reversed_: bool, evidence: dict, parameters: dict, inputs: dict) -> Rule:
    e = evidence
    lo = "nan" if math.isnan(e["lower_bound"]) else f"{e['lower_bound']:+.3f}"
    numbers = (f"K = {e['k']}: leave-one-out τ of choosing the best proxy {e['cv_tau']:.3f}, params' τ "
               f"{e['params_tau']:.3f}, one-sided {1 - parameters['alpha']:.0%} bootstrap lower bound of the "
               f"difference {lo}")
    if label == BASELINE:
        reason = f"kept params: the labels do not show that any proxy beats it ({numbers})"
    else:
        order = f"{label[1:]} reversed, lower first" if reversed_ else label
        reason = f"{order} (τ {e['tau'][label]:.3f} on T) beats params on held-out labels ({numbers})"
    return Rule(proxy=label[1:] if reversed_ else label, fallback=label == BASELINE, reason=reason,
                evidence=evidence, parameters=parameters, inputs=inputs, reversed=reversed_)


def apply_rule(rule: Rule, records: Sequence[dict]) -> List[dict]:
    """[{"id", "score"}] of the scored records, ranked by the rule, best first: "score" is the rule's
    score, the proxy's or, when reversed, its negation (NaN last, then failed records with score NaN).
    ValueError when no record holds the rule's proxy, or it is NaN on all of them, or one value on all it
    is not NaN on (nothing to rank by); TypeError for a ``rule`` that is not a Rule."""
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a vitcore.calibrate.Rule (Rule.from_dict reads a rule file's dict), "
                        f"got {type(rule).__name__}")
    matrix = score_matrix(records)
    if rule.proxy not in matrix:
        raise ValueError(f"the rule ranks by {rule.proxy!r}, which these scores do not hold; they have "
                         f"{', '.join(matrix) or 'no scores'}")
    column, sign = matrix[rule.proxy], -1.0 if rule.reversed else 1.0
    scored = [v for v in column.values() if not math.isnan(v)]
    if not scored:
        raise ValueError(f"the rule ranks by {rule.proxy!r}, which is NaN on all {len(column)} of these "
                         "architectures")
    if len(scored) > 1 and min(scored) == max(scored):
        raise ValueError(f"the rule ranks by {rule.proxy!r}, which is {scored[0]!r} on all {len(scored)} "
                         f"architectures it scored ({len(column)} in all): it ranks nothing")
    ranked = [{"id": r["id"], "score": sign * column.get(r["id"], math.nan)} for r in records]
    return sorted(ranked, key=lambda r: (math.isnan(r["score"]), -r["score"] if not math.isnan(r["score"]) else 0))


def _mean_ci(values: np.ndarray, seed: int) -> List[float]:
    """95% percentile bootstrap interval of the mean of ``values`` (scipy.stats.bootstrap); [v, v] when
    every value is v (a rule that kept params on every draw)."""
    if np.ptp(values) == 0:
        return [float(values[0])] * 2
    boot = stats.bootstrap((values,), np.mean, n_resamples=RESAMPLES, confidence_level=0.95, method="percentile",
                           random_state=np.random.default_rng(seed))
    return [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]


def few_shot(records: Sequence[dict], columns: Mapping[str, Mapping[str, float]], k: int, draws: int = 200,
             seed: int = 0, alpha: float = ALPHA, resamples: int = RESAMPLES, reverse: bool = True) -> dict:
    """The few-shot protocol: per column, ``draws`` seeded draws of ``k`` labelled architectures T among
    those the column holds and S scored; ``fit_rule``'s decision fitted on T alone; Kendall τ-b on the
    rest of the column of the rule, of params and of every candidate proxy; ``reverse`` as for ``fit_rule``.

    ``records``: S (``vitcore.runs.read_results``); ``columns``: {column: {id: accuracy}}. Returns the
    ``few-shot.json`` object: {"k", "draws", "seed", "alpha", "reverse", "columns": {column: {"rule_tau", "params_tau",
    "best_proxy", "best_proxy_tau" (the proxy with the highest mean τ on the rests, an oracle no user
    has, among the proxies as scored that rank S otherwise than params: flops ranks a ViT space as
    params does), "gain" (mean of rule − params), "gain_ci" (its 95% bootstrap interval over the draws),
    "fallback_share" (draws that kept params), "chosen" ({rule: draws}), "proxy_tau" ({candidate: mean
    τ}), "n" (architectures), "rules" (the rule of each draw, in order)}}, "mean_gain"}; rules and
    candidates are named by their label ("-zico": zico reversed); τ means are over the draws.
    ValueError for k < 5, a column with fewer than k + 2 scored architectures or an accuracy that is not
    a finite number, a draw whose T or rest holds one accuracy value (τ undefined), draws outside 1 to
    ``MAX_DRAWS``, and the checks of ``fit_rule``; TypeError for columns that are not a dict of dicts
    and a ``reverse`` that is not a bool.
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < MIN_K:
        raise ValueError(f"k={k!r:.40}: calibration needs K >= {MIN_K} labelled architectures")
    k, draws = int(k), _check_int(draws, "draws", 1, MAX_DRAWS)
    _check_test(alpha, resamples, seed, reverse)
    if not isinstance(columns, Mapping) or not all(isinstance(c, Mapping) for c in columns.values()):
        raise TypeError(f"columns must be a dict of column -> {{id: accuracy}}, got {type(columns).__name__}")
    if not columns:
        raise ValueError("few_shot needs at least one accuracy column")
    matrix = score_matrix(records)
    ids = list(dict.fromkeys(i for col in matrix.values() for i in col))
    names, scores, _ = _candidates(matrix, ids)
    labels, percentiles = _orderings(names, scores, reverse)  # (2P, N)
    out = {"k": k, "draws": draws, "seed": seed, "alpha": alpha, "reverse": reverse, "columns": {}}
    for c_index, (column, acc_of) in enumerate(columns.items()):
        held = [n for n, i in enumerate(ids) if i in acc_of]  # positions in S with an accuracy
        if len(held) < k + 2:
            raise ValueError(f"column {column!r}: {len(held)} scored architectures have an accuracy; "
                             f"K = {k} needs at least {k + 2} (K labelled, 2 or more to rank)")
        try:
            _check_labels({ids[n]: acc_of[ids[n]] for n in held}, ids)
        except ValueError as e:
            raise ValueError(f"column {column!r}: {e}") from None
        acc = np.array([_float(acc_of[ids[n]]) for n in held])
        all_signs, acc_signs = _signs(percentiles[:, held]), _signs(acc)  # (P, L, L), (L, L)
        rng = np.random.default_rng([seed, c_index])
        taus, rules = np.empty((draws, len(labels))), []
        for d in range(draws):
            t = np.sort(rng.choice(len(held), size=k, replace=False))  # positions in ``held``
            one_value = [part for part, a in (("T", acc[t]), ("the rest", np.delete(acc, t))) if np.ptp(a) == 0]
            if one_value:
                raise ValueError(f"column {column!r}: draw {d + 1} holds one accuracy value in {one_value[0]} "
                                 f"({len(set(acc.tolist()))} distinct accuracies among {len(held)}): τ is "
                                 "undefined there; use a column with more distinct accuracies")
            chosen, _ = _fit(labels, percentiles, np.asarray(held)[t], acc[t], alpha, resamples,
                             int(rng.integers(2**32)))
            rest = np.ones((1, len(held)))
            rest[0, t] = 0.0
            taus[d] = weighted_tau_b(all_signs, acc_signs, rest)[:, 0]
            rules.append(labels[chosen])
        rule_tau = taus[np.arange(draws), [labels.index(r) for r in rules]]
        gains = rule_tau - taus[:, 0]
        mean_tau = dict(zip(labels, taus.mean(0).tolist()))
        others = [n for n, row in zip(names, percentiles) if not np.array_equal(row, percentiles[0])]  # as scored
        best = max(others, key=lambda n: mean_tau[n]) if others else BASELINE
        out["columns"][column] = {
            "rule_tau": float(rule_tau.mean()), "params_tau": mean_tau[BASELINE], "best_proxy": best,
            "best_proxy_tau": mean_tau[best], "gain": float(gains.mean()), "gain_ci": _mean_ci(gains, seed),
            "fallback_share": rules.count(BASELINE) / draws, "chosen": {n: rules.count(n) for n in sorted(set(rules))},
            "proxy_tau": mean_tau, "n": len(held), "rules": rules}
    out["mean_gain"] = float(np.mean([c["gain"] for c in out["columns"].values()]))
    return out

"""How well a proxy ranks architectures: rank correlation with trained accuracy, top-k overlap.

A NaN score (a proxy that failed on an architecture) is ranked below every real score, tied with
the other NaNs, and counted in the result, so a proxy cannot look better by failing.

With a few dozen architectures τ is uncertain by about ±0.2, so Kendall's τ comes with its p-value
(scipy's test of τ = 0) and a bootstrap confidence interval over the architectures (scipy.stats.bootstrap,
percentile method, fixed seed): two proxies whose intervals overlap widely are not shown apart.

When a proxy is judged by its mean τ over several accuracy columns that disagree with each other,
``mean_tau_ceiling`` says how high that mean can go at all, for any ranking of the architectures.
"""
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Sequence, Tuple

import numpy as np
from scipy import stats


CI_LEVEL = 0.95  # confidence of the bootstrap interval of τ
CI_RESAMPLES = 2000  # bootstrap resamples of the architectures
# scipy's Kendall τ-b without the axis/NaN-policy wrapper scipy puts around it: the wrapper inspects the
# call's signature every time, 60% of each call (413 vs 168 µs at n = 100, scipy 1.17) and so of
# evaluate's bootstrap; the resamples are 1-D and hold no NaN, which is all the wrapper handles
_KENDALL_1D = getattr(stats.kendalltau, "__wrapped__", stats.kendalltau)
CI_SEED = 0  # fixed: the same scores always give the same interval
# up to this many architectures a bootstrap takes every resample at once through n x n sign matrices
# (8 n² bytes each: 32 MB at 2000); above, scipy's τ one resample at a time (the same values, slower)
VECTOR_MAX_N = 2000


@dataclass(frozen=True)
class RankQuality:
    kendall_tau: float
    kendall_p: float  # two-sided p-value of τ = 0 (scipy.stats.kendalltau)
    kendall_ci: Tuple[float, float]  # CI_LEVEL bootstrap interval of τ over the architectures
    spearman_rho: float
    top_overlap: float  # share of the truly best k that the proxy also puts in its top k
    top_k: int
    n: int  # architectures compared
    n_nan: int  # of which the proxy scored NaN


def _as_numbers(values, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes, dict)) or values is None:
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r:.80}") from None


def _scores(scores: Sequence[float], truth: Sequence[float]):
    s, t = _as_numbers(scores, "scores"), _as_numbers(truth, "truth")
    if s.ndim != 1 or s.shape != t.shape:
        raise ValueError(f"scores has shape {s.shape} and truth {t.shape}: need two equal-length 1-D sequences")
    if len(s) < 2:
        raise ValueError(f"ranking needs at least 2 architectures, got {len(s)}")
    if np.isnan(t).any():
        raise ValueError(f"truth holds NaN at positions {np.flatnonzero(np.isnan(t)).tolist()}")
    return np.where(np.isnan(s), -np.inf, s), t  # NaN ranks last, tied


def kendall_tau(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Kendall's τ-b (scipy.stats.kendalltau), NaN scores ranked last."""
    s, t = _scores(scores, truth)
    return float(stats.kendalltau(stats.rankdata(s), t).statistic)


def kendall_test(scores: Sequence[float], truth: Sequence[float]) -> Tuple[float, Tuple[float, float]]:
    """(p-value of τ = 0, bootstrap CI of τ), NaN scores ranked last.

    The interval resamples architectures (score and accuracy together) CI_RESAMPLES times; it is NaN
    when resamples are degenerate (too few architectures to vary, e.g. all of one value).
    """
    s, t = _scores(scores, truth)
    r = stats.rankdata(s)
    p = float(stats.kendalltau(r, t).pvalue)
    return p, _bootstrap(lambda w: weighted_tau_b(_signs(r)[None], _signs(t), w)[0],
                         lambda i: _KENDALL_1D(r[i], t[i]).statistic, len(r))


def spearman_rho(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman's ρ (scipy.stats.spearmanr), NaN scores ranked last; NaN, without scipy's warning, when
    either side is one value throughout (as τ is)."""
    s, t = _scores(scores, truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(stats.rankdata(s), t).statistic)


def top_k_overlap(scores: Sequence[float], truth: Sequence[float], k: int) -> float:
    """|proxy's top k ∩ true top k| / k; ties broken by position, which is stable and documented; NaN
    scores rank last, and a proxy NaN on every architecture has no top k (NaN, not the file's order)."""
    s, t = _scores(scores, truth)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(s):
        raise ValueError(f"k={k!r} must be an int in 1..{len(s)}")
    if np.isnan(_as_numbers(scores, "scores")).all():
        return math.nan
    best = set(np.argsort(-s, kind="stable")[:k]) & set(np.argsort(-t, kind="stable")[:k])
    return len(best) / k


def rank_quality(scores: Sequence[float], truth: Sequence[float], top_fraction: float = 0.1) -> RankQuality:
    """All the measures at once; top_k = ceil(top_fraction · n).

    Raises TypeError for scores, truth or top_fraction that are not numbers, ValueError for a
    top_fraction outside (0, 1] (NaN included) and for the inputs the measures refuse.
    """
    if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float, np.floating, np.integer)):
        raise TypeError(f"top_fraction={top_fraction!r} must be a number in (0, 1]")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction={top_fraction} must be in (0, 1]")
    s = _as_numbers(scores, "scores")
    k = max(1, math.ceil(top_fraction * len(s) - 1e-9))  # 0.07 · 100 is 7.000000000000001 in floats
    p, ci = kendall_test(scores, truth)
    return RankQuality(
        kendall_tau=kendall_tau(scores, truth),
        kendall_p=p,
        kendall_ci=ci,
        spearman_rho=spearman_rho(scores, truth),
        top_overlap=top_k_overlap(scores, truth, k),
        top_k=k,
        n=len(s),
        n_nan=int(np.isnan(s).sum()),
    )


def _signs(x: np.ndarray) -> np.ndarray:
    """(..., K, K) sign(x_i - x_j) of (..., K) values, by comparison (two equal infinities tie, as in scipy)."""
    a, b = x[..., :, None], x[..., None, :]
    return (a > b).astype(np.float64) - (a < b)


def weighted_tau_b(score_signs: np.ndarray, acc_signs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of P rankings with one accuracy column over B weighted samples of K architectures.

    ``score_signs`` (P, K, K) and ``acc_signs`` (K, K) are sign(x_i - x_j); ``weights`` (B, K) how often
    each architecture occurs (a bootstrap resample's counts, or 0/1 to leave some out). A sample that holds
    architecture i w_i times is the list with i repeated: its τ-b (scipy.stats.kendalltau's variant b:
    concordant minus discordant pairs over sqrt of the pairs untied in each) is Σ w_i w_j s_ij a_ij /
    sqrt(Σ w_i w_j |s_ij| · Σ w_i w_j |a_ij|), copies of one architecture being tied in both. Returns
    (P, B) float64, NaN where either side is one value throughout.
    """
    both = np.einsum("bi,pij,bj->pb", weights, score_signs * acc_signs, weights, optimize=True)
    untied_s = np.einsum("bi,pij,bj->pb", weights, np.abs(score_signs), weights, optimize=True)
    untied_a = np.einsum("bi,ij,bj->b", weights, np.abs(acc_signs), weights, optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return both / np.sqrt(untied_s * untied_a)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) float64: how often each of n architectures occurs in each of B resamples of indices (B, n)."""
    idx = np.atleast_2d(idx)
    rows = np.arange(idx.shape[0])[:, None] * n
    return np.bincount((rows + idx).ravel(), minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)


def _bootstrap(of_weights, of_indices, n: int) -> Tuple[float, float]:
    """The CI_LEVEL percentile interval of a statistic over CI_RESAMPLES resamples of n architectures
    (scipy.stats.bootstrap, CI_SEED; NaN bounds where a resample's statistic is NaN). Up to VECTOR_MAX_N
    architectures every resample is taken at once, as occurrence counts (``of_weights``: (B, n) -> (B,));
    above, where the n x n sign matrices that takes would be large, one at a time (``of_indices``:
    (n,) -> float). The two are the same statistic of the same resamples."""
    vectorized = n <= VECTOR_MAX_N
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # the NaN interval says it
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with too few of a column's rows: NaN
        boot = stats.bootstrap((np.arange(n),), (lambda idx, axis=-1: of_weights(_counts(idx, n)).reshape(
            np.shape(idx)[:-1])) if vectorized else of_indices, vectorized=vectorized, n_resamples=CI_RESAMPLES,
            confidence_level=CI_LEVEL, method="percentile", random_state=CI_SEED)
    return float(boot.confidence_interval.low), float(boot.confidence_interval.high)


class Difference(NamedTuple):
    """What ``mean_tau_difference`` found: mean τ of one proxy minus another's, with its interval."""

    value: float  # mean over the columns of τ(scores, column) - τ(baseline, column)
    ci: Tuple[float, float]  # CI_LEVEL bootstrap interval, architectures resampled with all their values


def mean_tau_difference(scores: Sequence[float], baseline: Sequence[float],
                        columns: Sequence[Sequence[float]]) -> Difference:
    """How much higher a proxy's mean Kendall τ-b over k accuracy columns is than a baseline's (the
    parameter count, say), with a bootstrap interval that resamples the architectures once for both
    proxies and every column: the two proxies' τ share their architectures, so where they rank alike
    the paired interval is much narrower than two separate ones would suggest, and it is the one that
    says whether they differ.

    ``scores``, ``baseline``: n scores (NaN ranked last, as everywhere here); ``columns``: k ≥ 1 sequences
    of n accuracies, NaN where an architecture lacks that column (each column's τ is taken over the
    architectures it holds, as ``evaluate`` does). Percentile interval, CI_RESAMPLES resamples, fixed
    seed; NaN when a resample leaves a column with one value (too few architectures). ``value`` is NaN
    where a τ is undefined: a proxy with one score throughout, a column with one accuracy throughout.
    Raises TypeError for values that are not numbers or ``columns`` that is not a sequence of columns,
    ValueError for unequal lengths, k = 0, a column that is not 1-D or one with fewer than 2 architectures.
    """
    if isinstance(columns, (str, bytes, dict)) or not hasattr(columns, "__len__"):
        raise TypeError(f"columns must be a sequence of accuracy columns, got {columns!r:.80}")
    if len(columns) == 0:
        raise ValueError(f"mean_tau_difference needs at least one column, got {columns!r:.80}")
    a, b = _as_numbers(scores, "scores"), _as_numbers(baseline, "baseline")
    cols = [_as_numbers(c, f"column {i}") for i, c in enumerate(columns)]
    flat = next((i for i, c in enumerate(cols) if c.ndim != 1), None)
    if flat is not None:
        raise ValueError(f"column {flat} has shape {cols[flat].shape}: each column is a 1-D sequence of the n "
                         f"architectures' accuracies (one column: [column]), got {columns!r:.80}")
    if any(v.ndim != 1 or v.shape != a.shape for v in [b, *cols]):
        raise ValueError(f"scores {a.shape}, baseline {b.shape} and columns {[c.shape for c in cols]} need one "
                         "equal length")
    held = [np.flatnonzero(~np.isnan(c)) for c in cols]
    short = [i for i, h in enumerate(held) if len(h) < 2]
    if short:
        raise ValueError(f"columns {short} hold fewer than 2 architectures")
    ra = stats.rankdata(np.where(np.isnan(a), -np.inf, a))
    rb = stats.rankdata(np.where(np.isnan(b), -np.inf, b))

    def difference(rows: np.ndarray) -> float:
        total = 0.0
        for c in cols:
            kept = rows[~np.isnan(c[rows])]
            total += _KENDALL_1D(ra[kept], c[kept]).statistic - _KENDALL_1D(rb[kept], c[kept]).statistic
        return total / len(cols)

    def difference_of_weights(weights: np.ndarray) -> np.ndarray:  # (B, n) counts -> (B,)
        total = 0.0
        for c, h in zip(cols, held):
            taus = weighted_tau_b(np.stack([_signs(ra[h]), _signs(rb[h])]), _signs(c[h]), weights[:, h])
            total = total + taus[0] - taus[1]
        return total / len(cols)

    value = difference(np.arange(len(a)))
    return Difference(float(value), _bootstrap(difference_of_weights, difference, len(a)))


class Ceiling(NamedTuple):
    """What ``mean_tau_ceiling`` found: the mean τ over the columns that a ranking reaches, and a bound."""

    reached: float  # mean τ-b of ``ranking``: some ranking reaches it
    bound: float  # no ranking without ties exceeds it
    ranking: np.ndarray  # (n,) float64 scores of the ranking found (higher = ranked higher), no ties


def mean_tau_ceiling(columns: Sequence[Sequence[float]]) -> Ceiling:
    """How high the mean Kendall τ-b over k accuracy columns can go, for any ranking of the n architectures.

    ``columns``: k ≥ 1 sequences of n ≥ 2 accuracies, the same architectures in the same order. For a
    ranking π without ties, τ-b(π, c) = Σ_{i<j} sign(π_i - π_j)·sign(c_i - c_j) / sqrt(P·(P - T_c)), P =
    n(n-1)/2 pairs, T_c the pairs that c ties (scipy.stats.kendalltau's τ-b). The mean over the columns is
    then Σ_{pairs} sign(π_i - π_j)·w_ij with w_ij the columns' mean normalised sign, so
      bound = Σ_{pairs} |w_ij| (every pair ordered as the columns' weighted majority orders it; a true
              upper bound because it drops only the need for the pairs to form one order), and
      reached = the mean of a consensus ranking (Kemeny's problem): Borda's mean rank of the columns, then
              single moves of one architecture to another place while one raises the mean (local search,
              deterministic).
    With k = 1 and no ties both are 1. A proxy scored with ties (a size count, say) is not covered by the
    bound. Raises TypeError for columns that are not a sequence of columns of numbers, ValueError for
    k = 0, unequal lengths, n < 2, a NaN accuracy or a column with one value throughout (its τ is
    undefined).
    """
    if isinstance(columns, (str, bytes, dict)) or not hasattr(columns, "__len__"):
        raise TypeError(f"columns must be a sequence of accuracy columns, got {columns!r:.80}")
    if len(columns) == 0:
        raise ValueError(f"mean_tau_ceiling needs at least one column, got {columns!r:.80}")
    cols = [_as_numbers(c, f"column {i}") for i, c in enumerate(columns)]
    if any(c.ndim != 1 for c in cols) or len({c.shape for c in cols}) != 1:
        raise ValueError(f"columns need to be 1-D of equal lengths, got shapes {[c.shape for c in cols]}")
    A = np.stack(cols)  # (k, n)
    k, n = A.shape
    if n < 2:
        raise ValueError(f"ranking needs at least 2 architectures, got {n}")
    if np.isnan(A).any():
        raise ValueError(f"columns hold NaN at (column, position) {np.argwhere(np.isnan(A)).tolist()[:5]}")
    pairs = n * (n - 1) / 2
    w = np.zeros((n, n))  # w[i, j]: the columns' mean normalised sign(c_i - c_j), antisymmetric
    for c, a in enumerate(A):  # one column at a time: (n, n) memory, not (k, n, n)
        counts = np.unique(a, return_counts=True)[1]
        tied = float((counts * (counts - 1) / 2).sum())  # T_c
        if tied == pairs:
            raise ValueError(f"column {c} has one value throughout: its τ is undefined")
        w += np.sign(a[:, None] - a[None, :]) / (k * np.sqrt(pairs * (pairs - tied)))
    order = list(np.argsort(np.mean([stats.rankdata(a) for a in A], 0), kind="stable"))  # lowest first
    while _improve(order, w):
        pass
    ranking = np.empty(n)
    ranking[order] = np.arange(n)
    reached = float(np.mean([stats.kendalltau(ranking, a).statistic for a in A]))
    return Ceiling(reached, float(np.abs(np.triu(w, 1)).sum()), ranking)


def _improve(order: list, w: np.ndarray) -> bool:
    """One sweep of single moves over ``order`` (lowest first), each taken when it raises Σ_{x above y} w[x, y]
    by more than rounding; True when one was taken. Moving x up over the architectures y it passes adds
    2·Σ_y w[x, y]; moving it down subtracts 2·Σ_y w[x, y] over those it falls below."""
    moved = False
    for x in list(order):
        i = order.index(x)
        row = w[x, order]  # (n,) w[x, y] along the current order
        up = np.cumsum(row[i + 1:])  # gain / 2 for ending just above order[i+1..]
        down = np.cumsum(row[:i][::-1])  # loss / 2 for ending just below order[i-1..0]
        best_up = int(np.argmax(up)) if len(up) else -1
        best_down = int(np.argmin(down)) if len(down) else -1
        gain_up = up[best_up] if len(up) else 0.0
        gain_down = -down[best_down] if len(down) else 0.0
        if max(gain_up, gain_down) <= 1e-12:  # rounding of sums of w, each at most 1 in size
            continue
        order.pop(i)
        order.insert(i + best_up + 1 if gain_up >= gain_down else i - best_down - 1, x)
        moved = True
    return moved

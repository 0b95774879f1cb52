"""How well a proxy ranks architectures: rank correlation with trained accuracy, top-k overlap.

A NaN score (a proxy that failed on an architecture) is ranked below every real score, tied with
the other NaNs, and counted in the result, so a proxy cannot look better by failing.
"""
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class RankQuality:
    kendall_tau: float
    spearman_rho: float
    top_overlap: float  # share of the truly best k that the proxy also puts in its top k
    top_k: int
    n: int  # architectures compared
    n_nan: int  # of which the proxy scored NaN


def _scores(scores: Sequence[float], truth: Sequence[float]):
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
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


def spearman_rho(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman's ρ (scipy.stats.spearmanr), NaN scores ranked last."""
    s, t = _scores(scores, truth)
    return float(stats.spearmanr(stats.rankdata(s), t).statistic)


def top_k_overlap(scores: Sequence[float], truth: Sequence[float], k: int) -> float:
    """|proxy's top k ∩ true top k| / k; ties broken by position, which is stable and documented."""
    s, t = _scores(scores, truth)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(s):
        raise ValueError(f"k={k!r} must be an int in 1..{len(s)}")
    best = set(np.argsort(-s, kind="stable")[:k]) & set(np.argsort(-t, kind="stable")[:k])
    return len(best) / k


def rank_quality(scores: Sequence[float], truth: Sequence[float], top_fraction: float = 0.1) -> RankQuality:
    """All the measures at once; top_k = ceil(top_fraction · n)."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction={top_fraction} must be in (0, 1]")
    s = np.asarray(scores, dtype=np.float64)
    k = max(1, math.ceil(top_fraction * len(s) - 1e-9))  # 0.1 · 30 is 3.0000000000000004 in floats
    return RankQuality(
        kendall_tau=kendall_tau(scores, truth),
        spearman_rho=spearman_rho(scores, truth),
        top_overlap=top_k_overlap(scores, truth, k),
        top_k=k,
        n=len(s),
        n_nan=int(np.isnan(s).sum()),
    )

"""A rank vote of proxies: each architecture's mean rank over a fixed set of proxies.

``VIT_VOTE`` is vitcore's combined proxy for ViTs. Its form was fixed, and committed, before any of
the new proxies (DSS, SWAP, MeCo, L-SWAG) had been evaluated on a ground truth; the dev set's README
already reported τ for params, nwot, zico, snip and grad_norm, so those numbers were known. Nothing
in it is fitted: equal weights, no thresholds.

Why these three (one per family that the L-SWAG paper, Casarin et al., CVPR 2025, names as
complementary: trainability from gradients, expressivity from activations; and size, which the
dev set's README shows to carry most of the ranking on ViTs):
- ``params``: capacity. Trained ViT accuracy within one space grows with size; a vote that leaves
  size out has to rediscover it from noisier signals.
- ``nwot``: expressivity, how differently the batch's examples switch the GELUs (NASWOT's kernel).
  SWAP measures the same thing but saturates at 2^B patterns (256 for a batch of 8; measured on a
  dev-set network), so it cannot separate networks at the batch sizes used here.
- ``lswag``: trainability, the gradient-noise term that L-SWAG proposes for ViTs (ZiCo without the
  gradient mean) times its activation-pattern count.
Ranks rather than values, because the three are on unrelated scales (a count, a log-determinant, a
product of logs and counts) and a rank is invariant to any monotone rescaling of each; a mean rank is
Borda's count, the simplest vote that gives each member the same say.

A vote depends on the set of architectures ranked together (like every rank statistic), so it is
computed over a population of scored records, not for one network.
"""
from typing import List, Sequence

import numpy as np
from scipy import stats

VIT_VOTE = ("params", "nwot", "lswag")


def vote(records: Sequence[dict], members: Sequence[str] = VIT_VOTE) -> List[float]:
    """Mean rank (1 = lowest score) of each record over ``members``; NaN where a record lacks scores.

    A NaN member score ranks below every real score (tied), as ``vitcore.ranking`` treats a failed
    proxy. Raises ValueError naming a member that no record has.
    """
    if not members:
        raise ValueError("a vote needs at least one proxy")
    scored = [i for i, r in enumerate(records) if "scores" in r]
    for m in members:
        if not any(m in records[i]["scores"] for i in scored):
            raise ValueError(f"no record has a score for vote member {m!r}")
    ranks = []
    for m in members:
        s = np.array([records[i]["scores"].get(m, np.nan) for i in scored], dtype=np.float64)
        ranks.append(stats.rankdata(np.where(np.isnan(s), -np.inf, s)))  # NaN ranks last, tied
    mean = np.mean(ranks, axis=0) if ranks and scored else []
    out = [float("nan")] * len(records)
    for i, v in zip(scored, mean):
        out[i] = float(v)
    return out

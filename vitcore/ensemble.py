"""Proxies combined by their ranks: ``vit_vote`` (a mean rank) and ``az_nas`` (a sum of log ranks).

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

``AZ_NAS`` is AZ-NAS (Lee and Ham, "AZ-NAS: Assembling Zero-Cost Proxies for Network Architecture
Search", CVPR 2024) as its authors run it on ViTs (cvlab-yonsei/AZ-NAS, ``ImageNet_AutoFormer``,
``search_autoformer_az.py``): expressivity, trainability and complexity (FLOPs; vitcore's ``flops``
counts the matrix products and convolutions, theirs adds the LayerNorms' and biases' few terms), each
ranked over the population (1 = lowest), combined as Σ_k log(rank_k / N). A log rank punishes a low
rank on any one proxy more than a mean rank does: an architecture must do well on all three. The form
and the members are the paper's, taken as they are and fixed before vitcore evaluated them on any
ground truth.
"""
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from scipy import stats

VIT_VOTE = ("params", "nwot", "lswag")
AZ_NAS = ("az_expressivity", "az_trainability", "flops")


def _ranks(records: Sequence[dict], members: Sequence[str]) -> Tuple[List[int], np.ndarray]:
    """(indices of the scored records, (members, scored) ranks, 1 = lowest score). A NaN member score
    ranks below every real score (tied), as ``vitcore.ranking`` treats a failed proxy. Raises
    ValueError naming a member that no record has, or for no members."""
    if not members:
        raise ValueError("a combination needs at least one proxy")
    scored = [i for i, r in enumerate(records) if "scores" in r]
    for m in members:
        if not any(m in records[i]["scores"] for i in scored):
            raise ValueError(f"no record has a score for member {m!r}")
    ranks = []
    for m in members:
        s = np.array([records[i]["scores"].get(m, np.nan) for i in scored], dtype=np.float64)
        ranks.append(stats.rankdata(np.where(np.isnan(s), -np.inf, s)))
    return scored, np.array(ranks, dtype=np.float64).reshape(len(members), len(scored))


def _per_record(records: Sequence[dict], scored: List[int], values: np.ndarray) -> List[float]:
    out = [float("nan")] * len(records)
    for i, v in zip(scored, values):
        out[i] = float(v)
    return out


def vote(records: Sequence[dict], members: Sequence[str] = VIT_VOTE) -> List[float]:
    """Mean rank (1 = lowest score) of each record over ``members``; NaN where a record lacks scores."""
    scored, ranks = _ranks(records, members)
    return _per_record(records, scored, ranks.mean(axis=0))


def log_rank_sum(records: Sequence[dict], members: Sequence[str] = AZ_NAS) -> List[float]:
    """AZ-NAS's non-linear rank aggregation: Σ_k log(rank_k / N) over ``members`` for each record, N the
    number of scored records (0 at the top of every member, more negative lower down); NaN where a
    record lacks scores."""
    scored, ranks = _ranks(records, members)
    return _per_record(records, scored, np.log(ranks / max(len(scored), 1)).sum(axis=0))


COMBINED: Dict[str, Tuple[Callable[[Sequence[dict], Sequence[str]], List[float]], Tuple[str, ...]]] = {
    "vit_vote": (vote, VIT_VOTE),
    "az_nas": (log_rank_sum, AZ_NAS),
}

import math

import numpy as np
import pytest

from vitcore.ensemble import VIT_VOTE, vote


def _borda(columns):
    """Mean rank by counting: rank = 1 + #smaller + (#equal - 1) / 2, NaN lowest."""
    out = []
    n = len(columns[0])
    for i in range(n):
        ranks = []
        for col in columns:
            v = -math.inf if math.isnan(col[i]) else col[i]
            vals = [-math.inf if math.isnan(c) else c for c in col]
            ranks.append(1 + sum(c < v for c in vals) + (sum(c == v for c in vals) - 1) / 2)
        out.append(sum(ranks) / len(ranks))
    return out


@pytest.mark.parametrize("n", [2, 7, 31])
def test_vote_is_the_mean_rank(n):
    rng = np.random.default_rng(n)
    cols = {m: rng.standard_normal(n).round(1).tolist() for m in VIT_VOTE}  # rounding makes ties
    cols["nwot"][0] = math.nan
    records = [{"id": str(i), "scores": {m: cols[m][i] for m in VIT_VOTE}} for i in range(n)]
    records.insert(1, {"id": "failed", "error": "RuntimeError: out of memory"})
    got = vote(records)
    assert math.isnan(got[1])
    expected = _borda([cols[m] for m in VIT_VOTE])
    assert [g for i, g in enumerate(got) if i != 1] == pytest.approx(expected, abs=1e-12)


def test_vote_is_invariant_to_monotone_rescaling():
    rng = np.random.default_rng(0)
    a, b = rng.random(9), rng.random(9)
    r1 = [{"id": str(i), "scores": {"x": a[i], "y": b[i]}} for i in range(9)]
    r2 = [{"id": str(i), "scores": {"x": math.exp(50 * a[i]), "y": -1 / b[i]}} for i in range(9)]
    assert vote(r1, ("x", "y")) == vote(r2, ("x", "y"))


def test_vote_refuses_an_unknown_member_and_an_empty_set():
    records = [{"id": "a", "scores": {"params": 1.0}}, {"id": "b", "scores": {"params": 2.0}}]
    with pytest.raises(ValueError, match="'lswag'"):
        vote(records, ("params", "lswag"))
    with pytest.raises(ValueError, match="at least one"):
        vote(records, ())

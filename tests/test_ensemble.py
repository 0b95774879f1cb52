import math

import numpy as np
import pytest

from vitcore.ensemble import AZ_NAS, VIT_VOTE, log_rank_sum, vote


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


@pytest.mark.parametrize("n", [2, 5, 23])
def test_log_rank_sum_is_az_nas_aggregation(n):
    rng = np.random.default_rng(100 + n)
    cols = {m: rng.standard_normal(n).round(1).tolist() for m in AZ_NAS}  # rounding makes ties
    cols["az_trainability"][-1] = math.nan
    records = [{"id": str(i), "scores": {m: cols[m][i] for m in AZ_NAS}} for i in range(n)]
    records.append({"id": "failed", "error": "RuntimeError"})
    got = log_rank_sum(records)
    assert math.isnan(got[-1])
    # Borda's mean rank times the members is the rank sum; here each member's rank enters as log(rank / n)
    per_member = [[r * len(AZ_NAS) for r in _borda([cols[m]])] for m in AZ_NAS]
    expected = [sum(math.log(per_member[k][i] / len(AZ_NAS) / n) for k in range(len(AZ_NAS))) for i in range(n)]
    assert got[:-1] == pytest.approx(expected, abs=1e-12)
    best = [i for i in range(n) if all(cols[m][i] == max(c for c in cols[m] if not math.isnan(c)) for m in AZ_NAS)]
    for i in best:  # the top of every member: log 1 each (unless tied at the top)
        assert got[i] <= 0


def test_log_rank_sum_punishes_one_low_rank_more_than_the_mean_rank():
    # ranks of 4 over x, y, z: a (4, 4, 1), mean 3; b (3, 2, 3), mean 8/3. The vote prefers a;
    # AZ-NAS prefers b: log(3/4) + log(2/4) + log(3/4) > log(1/4)
    ranks = {"a": (4, 4, 1), "b": (3, 2, 3), "c": (2, 3, 2), "d": (1, 1, 4)}
    records = [{"id": k, "scores": dict(zip("xyz", map(float, v)))} for k, v in ranks.items()]
    members = ("x", "y", "z")
    votes, logs = vote(records, members), log_rank_sum(records, members)
    assert votes[0] > votes[1] and logs[0] < logs[1]
    assert logs[0] == pytest.approx(math.log(1 / 4)) and logs[1] == pytest.approx(math.log(3 / 4 * 2 / 4 * 3 / 4))

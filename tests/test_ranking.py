import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from vitcore.ranking import (kendall_tau, kendall_test, mean_tau_ceiling, mean_tau_difference, rank_quality,
                            spearman_rho, top_k_overlap)


def test_against_scipy_on_random_data():
    rng = np.random.default_rng(0)
    s, t = rng.random(37), rng.random(37)
    assert kendall_tau(s, t) == pytest.approx(stats.kendalltau(s, t).statistic, abs=1e-12)
    assert spearman_rho(s, t) == pytest.approx(stats.spearmanr(s, t).statistic, abs=1e-12)


def test_kendall_p_value_and_bootstrap_interval():
    rng = np.random.default_rng(3)
    truth = rng.random(50)
    related, unrelated = truth + 0.3 * rng.random(50), rng.random(50)
    results = {}
    for name, s in (("related", related), ("unrelated", unrelated)):
        p, (lo, hi) = results[name] = kendall_test(s, truth)
        assert p == pytest.approx(stats.kendalltau(s, truth).pvalue, rel=1e-12)
        assert -1 <= lo < kendall_tau(s, truth) < hi <= 1
    assert kendall_test(unrelated, truth) == results["unrelated"]  # fixed seed: reproducible
    assert results["related"][0] < 1e-6 and results["related"][1][0] > 0.3
    p, (lo, hi) = results["unrelated"]
    assert p > 0.05 and lo < 0 < hi
    assert kendall_test(truth * 2, truth)[1] == pytest.approx((1.0, 1.0))  # perfect in every resample
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny = rank_quality([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4])
    assert tiny.kendall_tau == 1.0 and all(math.isnan(x) for x in tiny.kendall_ci)  # degenerate resamples


def test_bootstrap_interval_matches_a_plain_numpy_bootstrap():
    """The interval against a hand-written percentile bootstrap (resample architectures, τ of each,
    the 2.5% and 97.5% quantiles) with many resamples: the two agree to their Monte-Carlo error."""
    rng = np.random.default_rng(6)
    truth = rng.random(40)
    scores = truth + 0.2 * rng.standard_normal(40)  # τ ≈ 0.7: a skewed τ distribution, where the
    taus = []  # "basic" interval sits 0.02 from the percentile one
    for _ in range(10000):
        i = rng.integers(0, 40, 40)
        taus.append(stats.kendalltau(scores[i], truth[i]).statistic)
    expected = np.percentile(taus, [2.5, 97.5])
    _, ci = kendall_test(scores, truth)
    assert ci == pytest.approx(tuple(expected), abs=0.01)  # 0.002 measured


def test_top_k_is_the_ceiling_of_the_fraction():
    truth = np.arange(100) / 100
    assert rank_quality(truth, truth, 0.07).top_k == 7  # 0.07 · 100 is 7.000000000000001 in floats
    assert rank_quality(truth, truth, 0.071).top_k == 8
    assert rank_quality(truth[:7], truth[:7], 0.01).top_k == 1


def test_known_values():
    truth = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert kendall_tau([1, 2, 3, 4, 5], truth) == pytest.approx(1.0)
    assert spearman_rho([5, 4, 3, 2, 1], truth) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 5, 4], truth) == pytest.approx(0.8)  # one discordant pair of 10
    assert top_k_overlap([9, 8, 1, 2, 3], truth, 2) == 0.0
    assert top_k_overlap([1, 2, 3, 9, 8], truth, 2) == 1.0
    assert top_k_overlap([1, 2, 9, 3, 8], truth, 2) == 0.5
    nan = float("nan")
    assert math.isnan(top_k_overlap([nan] * 5, [0.5, 0.4, 0.3, 0.2, 0.1], 2))  # was 1.0: the file's order
    assert top_k_overlap([nan, nan, nan, 1, 2], truth, 2) == 1.0  # NaN last


def test_nan_scores_rank_last_and_are_counted():
    truth = [0.1, 0.2, 0.3, 0.4]
    q = rank_quality([math.nan, 2.0, 3.0, 4.0], truth, top_fraction=0.5)
    assert q.kendall_tau == pytest.approx(1.0) and q.n_nan == 1 and q.n == 4 and q.top_k == 2
    worse = rank_quality([1.0, 2.0, math.nan, 4.0], truth)
    assert worse.kendall_tau < 1.0 and worse.n_nan == 1
    assert worse.kendall_tau == pytest.approx(stats.kendalltau([1, 2, 0, 4], truth).statistic)


def test_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="k=0"):
        top_k_overlap([1, 2], [1, 2], 0)
    with pytest.raises(ValueError, match="truth holds NaN at positions \\[1\\]"):
        spearman_rho([1, 2], [1, math.nan])
    with pytest.raises(ValueError, match="top_fraction=0"):
        rank_quality([1, 2], [1, 2], 0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: kendall_tau(None, [1, 2]), TypeError, "scores must be a sequence of numbers, got NoneType"),
    (lambda: spearman_rho([1, 2], "ab"), TypeError, "truth must be a sequence of numbers, got str"),
    (lambda: kendall_test(["a", "b"], [1, 2]), TypeError, r"scores must be a sequence of numbers, got \['a', 'b'\]"),
    (lambda: top_k_overlap([1, 2], [1, 2], 1.0), ValueError, "k=1.0 must be an int in 1..2"),
    (lambda: rank_quality([1, 2], [1, 2], "0.5"), TypeError, "top_fraction='0.5' must be a number"),
    (lambda: rank_quality([1, 2], [1, 2], math.nan), ValueError, "top_fraction=nan must be in"),
    (lambda: rank_quality({"a": 1}, [1, 2]), TypeError, "scores must be a sequence of numbers, got dict"),
])
def test_inputs_of_the_wrong_kind_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def _best_mean_tau(A):
    """The highest mean τ-b over the columns of A among all rankings without ties, by enumeration."""
    return max(np.mean([stats.kendalltau(p, a).statistic for a in A]) for p in itertools.permutations(range(A.shape[1])))


@pytest.mark.parametrize("seed", range(12))
def test_mean_tau_ceiling_brackets_the_best_ranking(seed):
    """Fresh columns, with ties (integer accuracies) in half the cases: the ranking found reaches its
    stated mean, no ranking beats the bound, and the best ranking lies between the two."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(3, 7)), int(rng.integers(1, 5))
    A = rng.integers(0, 3, (k, n)).astype(float) if seed % 2 else rng.standard_normal((k, n))
    A[:, :2] = [[0.0, 1.0]] * k  # no column is one value throughout
    got = mean_tau_ceiling(A)
    assert len(set(got.ranking)) == n
    assert got.reached == pytest.approx(np.mean([stats.kendalltau(got.ranking, a).statistic for a in A]), abs=1e-12)
    best = _best_mean_tau(A)
    assert got.reached <= best + 1e-12 <= got.bound + 2e-12


def test_mean_tau_ceiling_on_agreeing_reversed_and_cyclic_columns():
    x = np.array([0.3, 0.1, 0.7, 0.5, 0.9])
    assert mean_tau_ceiling([x]) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(stats.rankdata(x) - 1))
    reversed_ = mean_tau_ceiling([x, -x])
    assert reversed_.reached == pytest.approx(0.0, abs=1e-12) and reversed_.bound == pytest.approx(0.0, abs=1e-12)
    # Condorcet's cycle a > b > c, b > c > a, c > a > b: every pair has a 2-1 majority, no order keeps all
    cyclic = mean_tau_ceiling([[3, 2, 1], [1, 3, 2], [2, 1, 3]])
    assert cyclic.reached == pytest.approx(1 / 9) and cyclic.bound == pytest.approx(1 / 3)


@pytest.mark.parametrize("columns, error, message", [
    ([], ValueError, "at least one column"),
    ([[1, 2, 3], [1, 2]], ValueError, "equal lengths"),
    ([[1.0]], ValueError, "at least 2 architectures"),
    ([[1, 2, float("nan")]], ValueError, r"NaN at \(column, position\) \[\[0, 2\]\]"),
    ([[1, 2, 3], [4, 4, 4]], ValueError, "column 1 has one value throughout"),
    ([["a", "b"]], TypeError, "column 0 must be a sequence of numbers"),
    (5, TypeError, "columns must be a sequence of accuracy columns, got 5"),
    ("acc", TypeError, "columns must be a sequence of accuracy columns, got 'acc'"),
    (None, TypeError, "columns must be a sequence of accuracy columns, got None"),
])
def test_mean_tau_ceiling_refuses_bad_columns(columns, error, message):
    with pytest.raises(error, match=message):
        mean_tau_ceiling(columns)


def test_a_constant_side_gives_nan_without_scipys_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman_rho([2.0, 2.0, 2.0], [1.0, 3.0, 2.0]))
        assert math.isnan(spearman_rho([1.0, 3.0, 2.0], [5.0, 5.0, 5.0]))


def test_the_bootstrap_interval_is_scipys_kendall_tau_of_each_resample(monkeypatch):
    """The interval is scipy's paired bootstrap of scipy's τ-b, resample for resample (same seed), ties and a
    NaN score included: to the bit on the one-at-a-time path (scipy's τ past its axis/NaN wrapper), and
    within a few ulps of τ on the vectorised one (exact integer sums, then a square root and a division)."""
    from vitcore import ranking
    from vitcore.ranking import CI_LEVEL, CI_RESAMPLES, CI_SEED

    rng = np.random.default_rng(7)
    scores = rng.standard_normal(23).round(1)
    scores[4] = math.nan
    truth = scores + rng.standard_normal(23)
    truth[4] = 0.0
    _, got = kendall_test(scores, truth)
    r = stats.rankdata(np.where(np.isnan(scores), -np.inf, scores))
    want = stats.bootstrap((r, truth), lambda a, b: stats.kendalltau(a, b).statistic, paired=True, vectorized=False,
                           n_resamples=CI_RESAMPLES, confidence_level=CI_LEVEL, method="percentile",
                           random_state=CI_SEED).confidence_interval
    assert got == pytest.approx((want.low, want.high), rel=0, abs=8 * np.finfo(float).eps)
    monkeypatch.setattr(ranking, "VECTOR_MAX_N", 22)  # 23 architectures: one resample at a time
    assert kendall_test(scores, truth)[1] == (want.low, want.high)


def _mean_tau(scores, columns):
    """Mean over the columns of scipy's τ-b over the rows each column holds (NaN: not held)."""
    return np.mean([stats.kendalltau(scores[~np.isnan(c)], c[~np.isnan(c)]).statistic for c in columns])


def test_mean_tau_difference_matches_a_plain_numpy_bootstrap():
    """The difference of two proxies' mean τ over two columns (one lacking some architectures), against a
    hand-written paired bootstrap: resample architectures once for both proxies and both columns."""
    rng = np.random.default_rng(11)
    n = 30
    columns = [rng.random(n), rng.random(n)]
    columns[1][[2, 7, 19]] = math.nan
    a = columns[0] + np.nan_to_num(columns[1]) + 0.3 * rng.standard_normal(n)
    b = columns[0] + 0.6 * rng.standard_normal(n)
    got = mean_tau_difference(a, b, columns)
    assert got.value == pytest.approx(_mean_tau(a, columns) - _mean_tau(b, columns), abs=1e-12)
    diffs = []
    for _ in range(4000):
        i = rng.integers(0, n, n)
        diffs.append(_mean_tau(a[i], [c[i] for c in columns]) - _mean_tau(b[i], [c[i] for c in columns]))
    expected = np.percentile(diffs, [2.5, 97.5])
    assert got.ci == pytest.approx(tuple(expected), abs=0.02)  # 0.004 measured
    assert got.ci[0] < got.value < got.ci[1]
    assert mean_tau_difference(a, b, columns) == got  # fixed seed: reproducible


def test_the_vectorised_bootstrap_is_the_one_at_a_time_bootstrap(monkeypatch):
    """Up to VECTOR_MAX_N architectures the resamples are taken at once as occurrence counts; above, one at a
    time through scipy's τ: the same resamples, so intervals equal within a few ulps of τ (a column that
    lacks architectures and a resample that leaves one with a single value, NaN, included)."""
    from vitcore import ranking

    rng = np.random.default_rng(13)
    n = 12
    columns = [rng.random(n), rng.random(n)]
    columns[1][rng.permutation(n)[:9]] = math.nan  # 3 architectures: some resamples hold one of them only
    a, b = rng.standard_normal(n).round(1), rng.standard_normal(n)
    at_once = mean_tau_difference(a, b, columns), mean_tau_difference(a, b, columns[:1]), kendall_test(a, columns[0])
    monkeypatch.setattr(ranking, "VECTOR_MAX_N", 0)
    one_by_one = mean_tau_difference(a, b, columns), mean_tau_difference(a, b, columns[:1]), kendall_test(a, columns[0])
    assert math.isnan(at_once[0].ci[0]) and math.isnan(one_by_one[0].ci[0])
    for x, y in zip([at_once[1].ci, at_once[2][1]], [one_by_one[1].ci, one_by_one[2][1]]):
        assert x == pytest.approx(y, rel=0, abs=8 * np.finfo(float).eps)


def test_the_paired_interval_is_narrow_where_two_proxies_rank_alike():
    """Two proxies that differ in one neighbouring pair have τ intervals about 0.3 wide each, but the
    interval of their difference is a few times that one pair's weight: the pairing is what tells them apart."""
    rng = np.random.default_rng(12)
    truth = rng.random(40)
    a = truth + 0.5 * rng.standard_normal(40)
    order = np.argsort(a)
    b = a.copy()
    b[order[[19, 20]]] = b[order[[20, 19]]]
    d = mean_tau_difference(a, b, [truth])
    assert abs(d.value) == pytest.approx(2 / (40 * 39 / 2))
    assert d.ci[1] - d.ci[0] < 0.03
    _, (lo, hi) = kendall_test(a, truth)
    assert hi - lo > 0.2
    assert mean_tau_difference(a, a, [truth, 1 - truth]) == (0.0, (0.0, 0.0))


def test_mean_tau_difference_ranks_nan_scores_last_and_refuses_bad_input():
    rng = np.random.default_rng(13)
    truth, b = rng.random(12), rng.random(12)
    a = truth.copy()
    a[3] = math.nan
    lowest = a.copy()
    lowest[3] = np.nanmin(a) - 1
    assert mean_tau_difference(a, b, [truth]) == mean_tau_difference(lowest, b, [truth])
    with pytest.raises(ValueError, match="need one equal length"):
        mean_tau_difference(a[:-1], b, [truth])
    with pytest.raises(ValueError, match="at least one column"):
        mean_tau_difference(a, b, [])
    lone = np.full(12, math.nan)
    lone[0] = 1.0
    with pytest.raises(ValueError, match=r"columns \[1\] hold fewer than 2 architectures"):
        mean_tau_difference(a, b, [truth, lone])
    with pytest.raises(TypeError, match="baseline must be a sequence of numbers"):
        mean_tau_difference(a, "params", [truth])
    for columns in (5, None, "acc"):  # len() of an int raised its own TypeError, naming no value
        with pytest.raises(TypeError, match=f"columns must be a sequence of accuracy columns, got {columns!r}"):
            mean_tau_difference(a, b, columns)
    with pytest.raises(ValueError, match=r"column 0 has shape \(\): each column is a 1-D sequence"):
        mean_tau_difference(a, b, list(truth))  # one column, not wrapped: was a list of 12 shapes ()


def test_equal_infinities_tie_in_the_vectorised_bootstrap_as_in_scipy(monkeypatch):
    from vitcore import ranking

    truth = np.array([1, 2, 3, math.inf, math.inf, 0.5, 4, 5])
    at_once = kendall_test(np.arange(8.0), truth)[1]
    monkeypatch.setattr(ranking, "VECTOR_MAX_N", 0)
    assert not math.isnan(at_once[0])
    assert at_once == pytest.approx(kendall_test(np.arange(8.0), truth)[1], rel=0, abs=8 * np.finfo(float).eps)

"""bench/few_shot_many_labels.py: held-out scores never see their own accuracies; ridge and selection do
what they say on planted data; the report runs on the dev set."""
import numpy as np
import pytest
from scipy import stats
from sklearn.model_selection import KFold

from bench import few_shot_many_labels as many


def _features(n, seed, mixed):
    """(n, 6) percentiles, params first, and accuracies tracking candidate 2, or (``mixed``) the sum of
    candidates 2 and 3, which a ridge ranks better than either alone."""
    gen = np.random.default_rng(seed)
    scores = gen.standard_normal((6, n))
    acc = scores[2] + (scores[3] if mixed else 0.0) + 0.2 * gen.standard_normal(n)
    return (stats.rankdata(scores, axis=1) / n).T, acc


@pytest.mark.parametrize("n, folds", [(37, 3), (60, 10)])
def test_a_fold_never_reads_its_own_accuracies(n, folds):
    features, acc = _features(n, seed=n, mixed=True)
    clean = many.held_out_scores(features, acc, folds, seed=5, n_candidates=4)
    train, test = next(KFold(folds, shuffle=True, random_state=5).split(features))
    poisoned = acc.copy()
    poisoned[test] = 1e3 * np.random.default_rng(1).standard_normal(len(test))
    dirty = many.held_out_scores(features, poisoned, folds, seed=5, n_candidates=4)
    for method in many.METHODS:
        np.testing.assert_array_equal(dirty[method][test], clean[method][test])
    for method in ("ridge", "ridge + fields"):  # the other folds' ridges train on the poisoned ranks
        assert not np.array_equal(dirty[method][train], clean[method][train])


def test_selection_picks_the_tracking_candidate_and_ridge_combines():
    features, acc = _features(81, seed=2, mixed=False)
    single = many.held_out_scores(features, acc, 9, seed=0, n_candidates=4)
    np.testing.assert_array_equal(single["selection"], features[:, 2])
    features, acc = _features(81, seed=3, mixed=True)
    result = many.column_taus(features, acc, 9, repeats=2, seed=0, n_candidates=4)
    best_single = max(stats.kendalltau(features[:, j], acc).statistic for j in range(4))
    assert result["ridge"] > best_single + 0.1 > result["params"] + 0.1
    assert result["ridge + fields"] > best_single  # features 4, 5 are noise: the penalty keeps them small


def test_the_report_runs_on_the_dev_set(tmp_path):
    out = tmp_path / "many.md"
    assert many.main(["--scores", "bench/results/cpu-2026-11-29-autoformer-dev-100-scores.jsonl",
                         "--truth", "../shared/data/autoformer-tiny-100.jsonl", "--columns", "c100_kd,flower_kd",
                         "--folds", "3", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| c100_kd | 0.548 |" in text and "| flower_kd | 0.700 |" in text and "| perfect gate |" in text


def test_a_candidate_of_undefined_tau_is_never_selected():
    """A candidate of one value on the training folds has no τ (NaN): the selection passes it over, as
    vitcore.calibrate does, where argmax would take it."""
    features, acc = _features(40, seed=4, mixed=False)
    features[:, 1] = 0.5
    chosen = many.held_out_scores(features, acc, 4, seed=0, n_candidates=4)["selection"]
    np.testing.assert_array_equal(chosen, features[:, 2])

"""bench/few_shot_tried.py: the tried candidate against sklearn refits, its gate reads only T, its report."""
import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge

from bench import few_shot_tried as tried
from vitcore import calibrate


def _percentiles(n, seed, p=5, mixed=False):
    """(P, N) percentiles within S of params and P - 1 proxies, and accuracies that one proxy tracks,
    or (``mixed``) the sum of two proxies, which a ridge can rank better than any single proxy."""
    gen = np.random.default_rng(seed)
    scores = gen.standard_normal((p, n))
    acc = scores[2] + (scores[3] if mixed else 0.0) + 0.3 * gen.standard_normal(n)
    scores[4] = scores[2] + 0.5 * gen.standard_normal(n)  # correlated features: the ridge's penalty matters
    return stats.rankdata(scores, axis=1) / n, acc


def _kendall(x, y):
    return stats.kendalltau(x, y).statistic


@pytest.mark.parametrize("n, k, mixed", [(31, 7, False), (50, 13, False), (97, 24, True), (61, 17, True)])
def test_the_procedure_is_its_definition_with_refitted_ridges(n, k, mixed):
    """Choice and score against a float64 reference that refits sklearn's Ridge on every T without i."""
    percentiles, acc_all = _percentiles(n, seed=n + k, mixed=mixed)
    rows = np.random.default_rng(k).choice(n, k, replace=False)
    acc = acc_all[rows]
    score, is_ridge = tried.procedure(percentiles, rows, acc)
    x, offset = percentiles[:, rows].T, percentiles[0, rows]  # (K, P), (K,)
    target = stats.rankdata(acc) / k - offset
    loo = np.array([[Ridge(alpha=a).fit(np.delete(x, i, 0), np.delete(target, i)).predict(x[i:i + 1])[0]
                     for i in range(k)] for a in tried.PENALTIES])  # (penalties, K)
    alpha = tried.PENALTIES[np.argmin(((loo - target) ** 2).mean(1))]
    ridge_cv = _kendall(offset + loo[list(tried.PENALTIES).index(alpha)], acc)
    taus = [_kendall(p, acc) for p in percentiles[:, rows]]
    chosen_without = [int(np.argmax([_kendall(np.delete(p, i), np.delete(acc, i)) for p in percentiles[:, rows]]))
                      for i in range(k)]
    selection_cv = _kendall(percentiles[chosen_without, rows], acc)
    assert is_ridge == (ridge_cv > selection_cv) == mixed  # the cases cover both branches
    if is_ridge:
        want = percentiles[0] + Ridge(alpha=alpha).fit(x, target).predict(percentiles.T)
        np.testing.assert_allclose(score, want, rtol=0, atol=1e-10)
    else:
        np.testing.assert_array_equal(score, percentiles[int(np.argmax(taus))])


def test_the_gate_never_reads_accuracies_outside_t(monkeypatch):
    """Poison every accuracy outside the draws' T: the same labels reach every fit, the same decisions."""
    percentiles, acc = _percentiles(40, seed=3)
    seen = []
    procedure, fit = tried.procedure, calibrate._fit
    monkeypatch.setattr(tried, "procedure", lambda p, r, a: seen.append((r.copy(), a.copy())) or procedure(p, r, a))
    monkeypatch.setattr(calibrate, "_fit", lambda *a: seen.append((a[2].copy(), a[3].copy())) or fit(*a))
    fields = stats.rankdata(np.random.default_rng(4).standard_normal((2, 40)), axis=1) / 40
    task = ["task", 0, 8, 3, 1, percentiles, fields, np.arange(40), acc]
    clean, clean_seen = tried.run_column(tuple(task)), list(seen)
    labelled = np.unique(np.concatenate([r for r, _ in clean_seen]))
    poisoned = np.where(np.isin(np.arange(40), labelled), acc, -1e3 * np.random.default_rng(9).standard_normal(40))
    seen.clear()
    dirty = tried.run_column(tuple(task[:8] + [poisoned]))
    assert len(seen) == len(clean_seen)
    for (r0, a0), (r1, a1) in zip(clean_seen, seen):
        np.testing.assert_array_equal(r0, r1)
        np.testing.assert_array_equal(a0, a1)
    assert [dirty[n] for n in ("ridge", "kept", "field_chosen")] == [clean[n] for n in ("ridge", "kept", "field_chosen")]
    assert dirty["shipped"] != clean["shipped"]  # the τ on the rest does read the poisoned accuracies


def test_field_scores_are_the_numeric_arch_fields_that_vary():
    """Numbers as they are, lists of numbers by sum and mean; constant, boolean, non-numeric, missing or
    non-finite fields left out; values in S's id order."""
    records = [{"id": "b", "arch": {"depth": 12, "heads": [3, 4], "patch": 16, "name": "x", "flag": True}},
               {"id": "a", "arch": {"depth": 14, "heads": [4, 4, 4], "patch": 16, "name": "y", "flag": False,
                                    "drop": float("nan")}},
               {"id": "c", "arch": {"depth": 13, "heads": [3, 3], "patch": 16, "drop": 0.1}}]
    names, values = tried.field_scores(records, ["a", "b", "c"])
    assert names == ["depth", "heads (sum)", "heads (mean)"]
    np.testing.assert_array_equal(values, [[14, 12, 13], [12, 7, 6], [4, 3.5, 3]])


def test_the_report_runs_on_the_dev_set(tmp_path):
    out = tmp_path / "tried.md"
    assert tried.main(["--scores", "bench/results/cpu-2026-11-29-autoformer-dev-100-scores.jsonl",
                       "--truth", "../shared/data/autoformer-tiny-100.jsonl", "--columns", "c100_kd",
                       "--k", "6", "--draws", "2", "--jobs", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 6 | c100_kd |" in text and "| 6 | " in text.split("Mean over the columns")[1]

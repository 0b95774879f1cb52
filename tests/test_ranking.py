import csv
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from vitcore.cli import main
from vitcore.evaluate import read_truth
from vitcore.ranking import kendall_tau, kendall_test, rank_quality, spearman_rho, top_k_overlap
from vitcore.space import SPACES, sample


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


def test_evaluate_cli_table_and_plots(tmp_path, capsys):
    scores = tmp_path / "scores.jsonl"
    main(["score", "--n", "8", "--batch-size", "16", "--proxies", "grad_norm,params,synflow", "--out", str(scores)])
    records = [json.loads(line) for line in scores.read_text().splitlines()]
    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "acc_mean"])
        for r in records:
            w.writerow([r["id"], r["params"] / 1e6])  # accuracy = size: params must rank perfectly
    capsys.readouterr()
    main(["evaluate", "--scores", str(scores), "--truth", str(truth), "--out", str(tmp_path / "ev")])
    table = capsys.readouterr().out
    assert "| params | 1.000 | [1.00, 1.00] | " in table and "| 1.000 | 1.00 | 8 | 0 |" in table
    assert "| grad_norm |" in table and "| synflow |" in table
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "evaluation.md", "scatter-grad_norm.png", "scatter-params.png", "scatter-synflow.png"]


def test_evaluate_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--scores", str(tmp_path / "none.jsonl"), "--truth", str(tmp_path / "t.csv")])
    assert "ground-truth file" in capsys.readouterr().err  # checked first: before any scoring
    good = tmp_path / "good.csv"
    good.write_text("id,acc_mean\nx,1\n")
    with pytest.raises(SystemExit):
        main(["evaluate", "--scores", str(tmp_path / "none.jsonl"), "--truth", str(good)])
    assert "scores file" in capsys.readouterr().err
    bad = tmp_path / "t.csv"
    bad.write_text("name,acc\nx,1\n")
    scores = tmp_path / "s.jsonl"
    scores.write_text(json.dumps({"id": sample(SPACES["small"], 1)[0].id, "scores": {"snip": 1.0}}) + "\n")
    with pytest.raises(SystemExit):
        main(["evaluate", "--scores", str(scores), "--truth", str(bad)])
    assert "needs columns 'id' and 'acc_mean'" in capsys.readouterr().err


@pytest.mark.parametrize("csv_text, message", [
    ("id,acc_mean\na,0.5\nb,\n", "line 3: acc_mean='' is not a number"),
    ("id,acc_mean\na,0.5\nb\n", "line 3: acc_mean=None is not a number"),
    ("id,acc_mean\na,inf\n", "line 2: acc_mean='inf' is not finite"),
    ("id,acc_mean\na,0.5\nb,0.7\na,0.6\n", "line 4: id 'a' appears twice"),
])
def test_bad_truth_rows_name_file_and_line(tmp_path, csv_text, message):
    path = tmp_path / "t.csv"
    path.write_text(csv_text)
    with pytest.raises(ValueError, match=f"{path}, {message}"):
        read_truth(str(path))


def test_truth_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("id,acc_mean\na,0.5\n".encode("utf-8-sig"))
    assert read_truth(str(path)) == {"a": 0.5}


def test_evaluate_checks_its_options_before_scoring(tmp_path, capsys, monkeypatch):
    import vitcore.cli

    monkeypatch.setattr(vitcore.cli, "run_scoring", lambda args: pytest.fail("scored before checking"))
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv, message in [(["--top-fraction", "0"], "--top-fraction 0.0: expected a share in (0, 1]"),
                          (["--out", str(afile)], "is a file; evaluate writes a folder")]:
        with pytest.raises(SystemExit):
            main(["evaluate"] + argv)
        assert message in capsys.readouterr().err

"""bench.autoformer_dev_report: the dev-set report from results files and a JSON-lines truth."""
import json

import pytest

from bench import autoformer_dev_report
from vitcore.space import Arch

ARCHS = [dict(embed_dim=24, depth=d, num_heads=[2] * d, mlp_ratio=[2.0] * d, patch_size=4) for d in (1, 2, 3, 4)]
ACC = [{"a_kd": 1.0, "b_kd": 4.0}, {"a_kd": 2.0, "b_kd": 3.0}, {"a_kd": 3.0, "b_kd": 2.0}, {"a_kd": 4.0, "b_kd": 1.0}]
SETTINGS = {"space": "autoformer", "data": "synthetic", "batch_size": 5, "input_shape": [3, 8, 8], "seed": 2,
            "proxies": ["params", "nwot", "lswag"], "dtype": "fp32", "device": "cpu"}


def _write(tmp_path):
    truth, scores = tmp_path / "truth.jsonl", tmp_path / "scores.jsonl"
    truth.write_text("".join(json.dumps({**a, "acc": acc}) + "\n" for a, acc in zip(ARCHS, ACC)))
    with open(scores, "w") as f:
        for i, a in enumerate(ARCHS):  # params ranks like a_kd, nwot against it, lswag like params
            record = {"id": Arch.from_dict(a).id, "arch": a, "settings": SETTINGS, "time_s": 1.5,
                      "scores": {"params": float(i), "nwot": float(-i), "lswag": float(i) + 0.5}}
            f.write(json.dumps(record) + "\n")
    return str(truth), str(scores)


def test_report_has_every_proxy_and_column_and_the_run_settings(tmp_path):
    truth, scores = _write(tmp_path)
    out = tmp_path / "report.md"
    assert autoformer_dev_report.main(["--scores", scores, "--truth", truth, "--columns", "a_kd,b_kd",
                                       "--out", str(out)]) == 0
    text = out.read_text()
    assert "--batch-size 5 --seed 2 --device cpu" in text and "input 3x8x8" in text
    rows = {}  # the first table's row of each proxy: τ per column and the mean
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    assert rows["params"].startswith("| params | 1.000 | -1.000 | 0.000 |")  # τ a_kd, τ b_kd, mean
    assert rows["nwot"].startswith("| nwot | -1.000 | 1.000 | 0.000 |")
    assert "vit_vote" in rows  # the vote joins when params, nwot and lswag were all scored
    assert "| scores.jsonl | 4 | 5 | params, nwot, lswag | 1.5 (median 1.5, max 1.5) | 0 |" in text
    assert ("vit_vote 0.000, params 0.000, difference +0.000 (95% CI of the difference [nan, nan], paired "
            "bootstrap over the architectures; target +0.10: not met)") in text  # 4 architectures: no interval


def test_report_says_how_high_the_mean_tau_can_go(tmp_path):
    """a_kd and b_kd rank the four architectures in opposite orders: any ranking's mean τ is 0."""
    truth, scores = _write(tmp_path)
    out = tmp_path / "report.md"
    autoformer_dev_report.main(["--scores", scores, "--truth", truth, "--columns", "a_kd,b_kd", "--out", str(out)])
    text = out.read_text()
    assert "| a_kd | 1.000 | -1.000 | 0.000 |" in text and "| b_kd | -1.000 | 1.000 | 0.000 |" in text
    assert "reaches mean τ 0.000; no ranking without ties exceeds 0.000." in text
    assert "params + 0.10 = 0.100." in text


def test_a_column_of_one_value_is_refused_naming_it(tmp_path):
    """b_kd of one value throughout has no τ. The report used to stand, saying so where the ceiling would be;
    the truth reader now sets such a column aside (``Truth.flat``), so naming it is refused, as by evaluate."""
    truth, scores = _write(tmp_path)
    with open(truth) as f:
        rows = [json.loads(line) for line in f]
    with open(truth, "w") as f:
        f.writelines(json.dumps({**r, "acc": {**r["acc"], "b_kd": 2.0}}) + "\n" for r in rows)
    out = tmp_path / "report.md"
    with pytest.raises(ValueError, match="--columns: 'b_kd' of .* ranks nothing: all 4 accuracies are 2"):
        autoformer_dev_report.main(["--scores", scores, "--truth", truth, "--columns", "a_kd,b_kd", "--out", str(out)])
    assert not out.exists()


def test_a_constant_proxy_listed_first_is_not_the_highest_mean(tmp_path):
    """SWAP is 2^B for every network on a small batch: its τ is NaN, and max() over the means kept a
    NaN listed first, naming it the highest."""
    truth, scores = _write(tmp_path)
    with open(scores) as f:
        records = [json.loads(line) for line in f]
    with open(scores, "w") as f:
        f.writelines(json.dumps({**r, "scores": {"swap": 32.0, **r["scores"]}}) + "\n" for r in records)
    out = tmp_path / "report.md"
    autoformer_dev_report.main(["--scores", scores, "--truth", truth, "--columns", "a_kd", "--out", str(out)])
    text = out.read_text()
    assert "| swap | nan |" in text
    assert "Highest mean τ of any proxy here: params 1.000." in text  # tied with lswag and the vote: first

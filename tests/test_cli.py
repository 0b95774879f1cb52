import json
import subprocess
import sys

import numpy as np
import pytest

from vitcore.cli import main, read_results
from vitcore.data import load_batch
from vitcore.space import SPACES, sample


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_default_run_scores_and_ranks_50_architectures(tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    records = _lines(out)
    assert len(records) == 50 and all("scores" in r for r in records)
    assert [r["id"] for r in records] == [a.id for a in sample(SPACES["small"], 50, 0)]
    assert table[-1] == "50 scored, 0 failed; ranked by grad_norm"
    ranked = [float(line.split()[-2]) for line in table[1:-1]]  # the grad_norm column
    assert len(ranked) == 50 and ranked == sorted(ranked, reverse=True)


def test_resume_skips_finished_and_repairs_a_cut_line(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    args = ["score", "--n", "6", "--batch-size", "16", "--out", str(out)]
    main(args[:2] + ["3"] + args[3:])  # the first 3 of the same sample
    first = _lines(out)
    with open(out, "a") as f:
        f.write('{"id": "cut-off')  # an interrupted write
    main(args + ["--resume"])
    records = _lines(out)
    assert records[:3] == first and len(records) == 6
    assert [r["id"] for r in records] == [a.id for a in sample(SPACES["small"], 6, 0)]
    main(args + ["--resume"])  # nothing left to do
    assert len(_lines(out)) == 6
    with pytest.raises(SystemExit):
        main(args + ["--resume", "--batch-size", "8"])
    assert "holds results for settings" in capsys.readouterr().err
    main(args)  # a fresh run keeps the old file beside it
    assert len(_lines(tmp_path / "s.jsonl.bak")) == 6
    main(args[:2] + ["2"] + args[3:])  # and another: the first backup stays
    assert len(_lines(tmp_path / "s.jsonl.bak")) == 6 and len(_lines(tmp_path / "s.jsonl.bak-2")) == 6


def test_every_architecture_failing_exits_nonzero(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["score", "--space", "imagenet", "--n", "2", "--batch-size", "4", "--out", str(out)]) == 1
    assert "0 scored, 2 failed" in capsys.readouterr().out


def test_repeated_architectures_are_scored_once(tmp_path, capsys):
    first = tmp_path / "r.jsonl"
    main(["score", "--n", "2", "--batch-size", "4", "--out", str(first)])
    lines = first.read_text().splitlines()
    archs = tmp_path / "archs.jsonl"
    archs.write_text("\n".join(lines + lines[:1]) + "\n")  # a retried id appears twice
    again = tmp_path / "again.jsonl"
    main(["score", "--archs", str(archs), "--batch-size", "4", "--out", str(again)])
    assert [r["id"] for r in _lines(again)] == [r["id"] for r in _lines(first)]
    assert "1 repeated architectures scored once" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "scores": {}}\n[1, 2]\n', 'line 2: expected a JSON object with a string "id"'),
    ('{"scores": {}}\n', 'line 1: expected a JSON object with a string "id"'),
    ('{"id": "a", "scores": null}\n', 'line 1: "scores" is None, not an object'),
    ('{"id": "a"\n', "line 1: not JSON"),
])
def test_malformed_results_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{path}, {message}".replace("[", r"\[")):
        read_results(str(path))


def test_failed_architecture_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    data = tmp_path / "six.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((20, 6, 6)), y=rng.integers(0, 3, 20))
    archs = tmp_path / "archs.json"
    small = [a.to_dict() for a in sample(SPACES["small"], 8, 0)]
    patches = {d["patch_size"] for d in small}
    assert patches == {2, 4}  # 6x6 images: patch 2 works, patch 4 does not
    archs.write_text(json.dumps(small))
    out = tmp_path / "r.jsonl"
    main(["score", "--archs", str(archs), "--data", str(data), "--batch-size", "8", "--out", str(out)])
    records = read_results(str(out))
    for r in records:
        if r["arch"]["patch_size"] == 4:
            assert r["error"] == "ValueError: img_size=6 is not divisible by patch_size=4"
        else:
            assert set(r["scores"]) == {"grad_norm", "snip"}
    assert "failed: ValueError" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--proxies", "grad_norm,synflo"], "unknown proxy 'synflo'; valid: grad_norm, snip, plain"),
        (["--space", "huge"], "unknown search space 'huge'; valid: autoformer, imagenet, small"),
        (["--archs", "/no/such.json"], "architectures file '/no/such.json' does not exist"),
        (["--data", "/no/such.npz"], "data file '/no/such.npz' does not exist"),
        (["--data", "mnist"], "unknown data 'mnist'; valid: digits, synthetic, PATH.npz"),
        (["--batch-size", "5000"], "batch_size=5000 is larger than the 1797 examples"),
        (["--rank-by", "plain"], "--rank-by 'plain' is not among --proxies grad_norm,snip"),
        (["--seed", "-1"], "--seed -1: expected a non-negative integer"),
        (["--out", "{tmp}"], "is a folder; name a file such as"),
        (["--out", "{tmp}/afile/x.jsonl"], "afile' is a file, not a folder"),
    ],
)
def test_bad_options_say_what_is_wrong(argv, message, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--n", "2", "--out", str(tmp_path / "x.jsonl")] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_synthetic_data_and_module_entry_point(tmp_path):
    out = tmp_path / "syn.jsonl"
    cmd = [sys.executable, "-m", "vitcore", "score", "--n", "3", "--data", "synthetic", "--batch-size", "4",
           "--proxies", "snip,plain", "--mode", "per_layer", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "3 scored, 0 failed; ranked by snip" in result.stdout
    assert all(set(r["scores"]) == {"snip", "plain"} for r in _lines(out))


def test_digits_batch_is_deterministic_and_normalised():
    a, b = load_batch("digits", 32, seed=1), load_batch("digits", 32, seed=1)
    assert a.inputs.shape == (32, 1, 8, 8) and a.num_classes == 10
    assert (a.inputs == b.inputs).all() and (a.targets == b.targets).all()
    assert abs(a.inputs.mean().item()) < 1e-5 and abs(a.inputs.std().item() - 1) < 0.05


def test_ranked_table_puts_nan_last(capsys):
    from vitcore.cli import _print_table

    arch = sample(SPACES["small"], 1)[0].to_dict()
    records = [{"id": f"a{i}", "arch": arch, "params": 1, "scores": {"jacob_cov": v}}
               for i, v in enumerate([3.0, float("nan"), 5.0, 1.0, 4.0])]
    _print_table(records, ["jacob_cov"], "jacob_cov")
    rows = capsys.readouterr().out.splitlines()[1:-1]
    assert [r.split()[1] for r in rows] == ["a2", "a4", "a0", "a3", "a1"]


def test_evaluate_leaves_a_cut_off_scores_file_alone(tmp_path, capsys):
    scores = tmp_path / "s.jsonl"
    main(["score", "--n", "3", "--batch-size", "8", "--out", str(scores)])
    with open(scores, "a") as f:
        f.write('{"id": "still-being-writ')
    before = scores.read_text()
    truth = tmp_path / "t.csv"
    truth.write_text("id,acc_mean\n" + "".join(f"{json.loads(l)['id']},0.{i}\n"
                                             for i, l in enumerate(before.splitlines()[:3])))
    main(["evaluate", "--scores", str(scores), "--truth", str(truth), "--out", str(tmp_path / "ev")])
    assert scores.read_text() == before


def test_npz_data_with_nan_is_refused(tmp_path, capsys):
    data = tmp_path / "nan.npz"
    x = np.zeros((4, 8, 8), dtype=np.float32)
    x[1, 2, 3] = np.nan
    np.savez(data, x=x, y=np.arange(4))
    with pytest.raises(SystemExit):
        main(["score", "--data", str(data), "--batch-size", "2", "--out", str(tmp_path / "r.jsonl")])
    assert "images hold 1 NaN or infinite values" in capsys.readouterr().err

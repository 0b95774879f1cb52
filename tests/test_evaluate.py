"""vitcore evaluate: the ground truth, the table of rank quality per proxy, the scatter plots."""
import csv
import json
import os
import re
import warnings

import pytest

import vitcore
from vitcore.cli import main
from vitcore.evaluate import DEFAULT_TRUTH, evaluate, read_truth
from vitcore.space import SPACES, sample


def test_builtin_truth_is_package_data_for_the_default_50():
    package = os.path.dirname(os.path.abspath(vitcore.__file__))
    assert os.path.commonpath([package, DEFAULT_TRUTH]) == package
    truth = read_truth(DEFAULT_TRUTH)
    assert list(truth) == [a.id for a in sample(SPACES["small"], 50, 0)]
    assert all(0 < acc <= 1 for acc in truth.values())
    assert os.path.isfile(os.path.join(os.path.dirname(DEFAULT_TRUTH), "digits-small-50.md"))  # its provenance


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
    # again into that folder with fewer proxies: synflow's plot goes, a file of the user's stays
    (tmp_path / "ev" / "scatter-mine.png").write_bytes(b"mine")
    fewer = tmp_path / "fewer.jsonl"
    main(["score", "--n", "8", "--batch-size", "16", "--proxies", "grad_norm,params", "--out", str(fewer)])
    main(["evaluate", "--scores", str(fewer), "--truth", str(truth), "--out", str(tmp_path / "ev")])
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "evaluation.md", "scatter-grad_norm.png", "scatter-mine.png", "scatter-params.png"]


def test_evaluate_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--scores", str(tmp_path / "none.jsonl"), "--truth", str(tmp_path / "t.csv")])
    assert "ground-truth file" in capsys.readouterr().err  # checked first: before any scoring
    good = tmp_path / "good.csv"
    good.write_text("id,acc_mean\nx,1\ny,2\n")  # two accuracies: a truth that ranks
    with pytest.raises(SystemExit):
        main(["evaluate", "--scores", str(tmp_path / "none.jsonl"), "--truth", str(good)])
    assert "scores file" in capsys.readouterr().err
    bad = tmp_path / "t.csv"
    bad.write_text("name,acc\nx,1\n")
    scores = tmp_path / "s.jsonl"
    scores.write_text(json.dumps({"id": sample(SPACES["small"], 1)[0].id, "scores": {"snip": 1.0}}) + "\n")
    with pytest.raises(SystemExit):
        main(["evaluate", "--scores", str(scores), "--truth", str(bad)])
    assert "needs a header naming columns 'id' and 'acc_mean' (or 'accuracy') as its first line; its first line " \
           "has ['name', 'acc']" in capsys.readouterr().err


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


@pytest.mark.parametrize("header", ["id,acc_mean,acc_mean", "id,id,acc_mean"])
def test_a_truth_header_naming_its_column_twice_is_refused(tmp_path, header):
    """csv.DictReader keeps the last of two equal names: the other column's values were lost unsaid."""
    path = tmp_path / "t.csv"
    path.write_text(f"{header}\na,0.5,0.9\nb,0.7,0.1\n")
    with pytest.raises(ValueError, match=f"{path}: the header names '(acc_mean|id)' twice"):
        read_truth(str(path))


def test_truth_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("id,acc_mean\na,0.5\n".encode("utf-8-sig"))
    assert read_truth(str(path)) == {"a": 0.5}


def test_evaluate_checks_its_options_before_scoring(tmp_path, capsys, monkeypatch):
    import vitcore.cli

    monkeypatch.setattr(vitcore.cli, "run_scoring", lambda *a, **k: pytest.fail("scored before checking"))
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv, message in [(["--top-fraction", "0"], "--top-fraction 0.0: expected a share in (0, 1]"),
                          (["--out", str(afile)], "is a file; evaluate writes a folder"),
                          (["--out", ""], "--out is empty: name the folder")]:  # wrote into the current folder
        with pytest.raises(SystemExit):
            main(["evaluate"] + argv)
        assert message in capsys.readouterr().err


def test_directories_are_reported_as_directories(tmp_path, capsys):
    good = tmp_path / "t.csv"
    good.write_text("id,acc_mean\nx,1\ny,2\n")  # two accuracies: a truth that ranks
    for argv, message in [(["--truth", str(tmp_path)], f"ground-truth file '{tmp_path}' is a directory"),
                          (["--truth", str(good), "--scores", str(tmp_path)], f"scores file '{tmp_path}' is a directory")]:
        with pytest.raises(SystemExit):
            main(["evaluate", "--out", str(tmp_path / "ev")] + argv)
        assert message in capsys.readouterr().err


def test_a_truth_file_that_is_not_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,acc_mean\n\xff\xfe,1\n")
    with pytest.raises(ValueError, match=f"ground-truth file '{path}' is not UTF-8 text"):
        read_truth(str(path))


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's /sys, read-only even for root")
def test_an_unwritable_out_fails_before_scoring(capsys, monkeypatch):
    import vitcore.cli

    monkeypatch.setattr(vitcore.cli, "run_scoring", lambda *a, **k: pytest.fail("scored before checking"))
    for out in ("/sys/vitcore-test", "/sys"):
        with pytest.raises(SystemExit):
            main(["evaluate", "--out", out])
        assert f"--out '{out}' cannot be written" in capsys.readouterr().err


def test_a_pipe_in_the_out_folder_is_never_written(tmp_path, capsys, monkeypatch):
    import vitcore.cli

    monkeypatch.setattr(vitcore.cli, "run_scoring", lambda *a, **k: pytest.fail("scored before checking"))
    os.mkfifo(tmp_path / "evaluation.md")  # writing it would wait for a reader forever
    with pytest.raises(SystemExit):
        main(["evaluate", "--out", str(tmp_path)])
    assert "evaluation.md' is not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("records, truth, message", [
    (None, {}, "records must be a list of result dicts"),
    ("scores.jsonl", {}, "records must be a list of result dicts"),
    ([{"scores": {}}], {}, "records must be dicts with a string 'id'"),
    ([{"id": "a"}], "truth.csv", "truth must be a dict"),
])
def test_evaluate_names_inputs_of_the_wrong_kind(records, truth, message):
    with pytest.raises(TypeError, match=message):
        evaluate(records, truth)


@pytest.mark.parametrize("argv, message", [
    (["--n", "51"], "--n 51: the built-in truth has 50 architectures; score 2 to 50"),
    (["--n", "1"], "--n 1: the built-in truth has 50 architectures"),
    (["--proxies", "grad_norm,synflo"], "unknown proxy 'synflo'"),
])
def test_options_of_the_built_in_run_are_checked_first(argv, message, tmp_path, capsys, monkeypatch):
    import vitcore.cli

    monkeypatch.setattr(vitcore.cli, "run_scoring", lambda *a, **k: pytest.fail("scored before checking"))
    with pytest.raises(SystemExit):
        main(["evaluate", "--out", str(tmp_path / "ev")] + argv)
    assert message in capsys.readouterr().err


def test_a_column_mixing_fractions_and_percentages_warns(tmp_path):
    """0.91 and 85.0 in one column ranked as they are (round four, case 6): warned, since a percent column
    may hold a diverged network's 0.5 legitimately."""
    from vitcore.evaluate import read_truth_any

    mixed = tmp_path / "mixed.csv"
    mixed.write_text("id,acc_mean\na,0.91\nb,81.0\nc,0.85\nd,88.5\n")
    with pytest.warns(UserWarning, match=r"column 'acc': 2 accuracies are in \[0, 1\] and 2 above 1"):
        read_truth_any(str(mixed))
    for name, text in (("pct.csv", "id,acc_mean\na,0.5\nb,81.0\nc,85.0\nd,88.5\n"),
                       ("frac.csv", "id,acc_mean\na,0.91\nb,0.81\nc,0.85\n")):
        (tmp_path / name).write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read_truth_any(str(tmp_path / name))


def test_ids_written_otherwise_are_named_when_nothing_matches():
    records = [{"id": f"a{i}", "scores": {"params": float(i)}} for i in range(3)]
    with pytest.raises(ValueError, match=r"only 0 scored architectures .* \(3 would match ignoring case and blanks"):
        evaluate(records, {f" A{i}": float(i) for i in range(3)})
    with pytest.raises(ValueError, match=r"only 0 scored .* \(first scored id 'a0', first truth id 'z'\)"):
        evaluate(records, {"z": 1.0, "y": 2.0})


@pytest.mark.parametrize("text, message", [
    ("id,acc_mean\na,91_0\nb,1\n", "line 2: acc_mean='91_0' is not a number"),  # float() read 910.0
    ("\nid,acc_mean\na,1\nb,2\n", "as its first line; its first line is empty"),
    ("# accuracies\nid,acc_mean\na,1\n", "as its first line; its first line has ['# accuracies']"),
])
def test_a_csv_truth_that_is_not_plain_is_named(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_truth(str(path))

"""JSON-lines ground truth with several accuracy columns: reading, per-column ranking, mean τ, the vote."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from vitcore.evaluate import (columns_ceiling, evaluate_columns, format_columns, mean_tau, mean_tau_vs, read_truth_any,
                              read_truth_jsonl, with_combined)
from vitcore.ranking import mean_tau_ceiling, mean_tau_difference
from vitcore.space import Arch, PiTArch


def _arch(depth, heads, head_dim=None):
    return {"embed_dim": 24, "depth": depth, "num_heads": [heads] * depth, "mlp_ratio": [2.0] * depth,
            "patch_size": 4, **({"head_dim": head_dim} if head_dim else {})}


ROWS = [
    (_arch(1, 1), {"a": 50.0, "b": 61.5}),
    (_arch(2, 2), {"a": 52.5, "b": 60.0}),
    (_arch(3, 3), {"a": 51.0, "b": 63.25}),
    (_arch(2, 4, head_dim=16), {"a": 55.0}),  # no column b
    (_arch(1, 2), {"a": 49.0, "b": 59.0}),
]


def _write(tmp_path, rows, name="truth.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps({**arch, "acc": acc}) for arch, acc in rows) + "\n\n")
    return str(path)


def test_reads_architectures_and_every_column(tmp_path):
    truth = read_truth_jsonl(_write(tmp_path, ROWS))
    ids = [Arch.from_dict(arch).id for arch, _ in ROWS]
    assert list(truth.archs) == ids
    assert truth.archs[ids[0]].head_dim is None and truth.archs[ids[3]].head_dim == 16
    assert truth.columns["a"] == {i: acc["a"] for i, (_, acc) in zip(ids, ROWS)}
    assert set(truth.columns["b"]) == set(ids) - {ids[3]}
    assert read_truth_any(_write(tmp_path, ROWS)).columns == truth.columns


def test_null_accuracies_pit_rows_and_nested_archs(tmp_path):
    """Auto-Prox's files leave a column untrained (null) on some lines or on all; PiTs and ViTs mix; an
    architecture may sit under "arch"."""
    pit = {"base_dim": 16, "mlp_ratio": 6, "depth": [2, 8, 4], "num_heads": [2, 4, 4]}
    lines = [{**_arch(1, 1), "acc": {"a": 50.0, "b": None, "never": None}},
             {"arch": pit, "acc": {"a": 52.0, "b": 61.0, "never": None}},
             {**_arch(2, 2), "acc": {"a": None, "b": 60.0, "never": None}}]
    path = tmp_path / "truth.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    truth = read_truth_jsonl(str(path))
    ids = [Arch.from_dict(_arch(1, 1)).id, PiTArch.from_dict(pit).id, Arch.from_dict(_arch(2, 2)).id]
    assert list(truth.archs) == ids and isinstance(truth.archs[ids[1]], PiTArch)
    assert truth.columns == {"a": {ids[0]: 50.0, ids[1]: 52.0}, "b": {ids[1]: 61.0, ids[2]: 60.0}}
    assert truth.empty == ["never"]
    path.write_text(json.dumps({**_arch(1, 1), "acc": {"a": None}}) + "\n")
    with pytest.raises(ValueError, match="every accuracy is null"):
        read_truth_jsonl(str(path))


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 1: not JSON"),
    (json.dumps(_arch(1, 1)), "line 1: expected an architecture with an \"acc\" object"),
    (json.dumps({**_arch(1, 1), "acc": {"a": "high"}}), "line 1: a='high' is not a number"),
    (json.dumps({**_arch(1, 1), "acc": {"a": float("nan")}}), "line 1: a=nan is not finite"),
    (json.dumps({**_arch(1, 1), "acc": {"a": 10**400}}), "line 1: a=1" + "0" * 39 + " is not finite"),  # beyond float
    (json.dumps({**_arch(1, 1), "depth": 2, "acc": {"a": 1.0}}), "line 1: num_heads="),
    (json.dumps({"base_dim": 8, "depth": [1, 1], "num_heads": [2, 3], "mlp_ratio": 2, "acc": {"a": 1.0}}),
     "line 1: num_heads=(2, 3): 3 heads after 2"),
    # an architecture under "arch" beside other fields: the message listed a ViT's fields
    (json.dumps({"arch": {"base_dim": 8, "depth": [1], "num_heads": [2], "mlp_ratio": 2}, "name": "x",
                 "acc": {"a": 1.0}}),
     "line 1: an architecture under \"arch\" takes no other field beside \"acc\" and \"id\"; found name"),
    # an id of the form of vitcore's is checked, beside "arch" too; other ids are the file's labels
    (json.dumps({**_arch(1, 1), "id": "0" * 12, "acc": {"a": 1.0}}), "line 1: architecture id '000000000000' does"),
    (json.dumps({"arch": _arch(1, 1), "id": "0" * 12, "acc": {"a": 1.0}}), "line 1: architecture id '000000000000'"),
])
def test_bad_lines_name_file_line_and_value(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_truth_jsonl(str(path))


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({**_arch(1, 1), "acc": {"a": 1.0}}).encode()
    path.write_bytes(good + b"\n\n" + good.replace(b"1.0", b"\xff") + b"\n")
    with pytest.raises(ValueError, match=f"{path}, line 3: not UTF-8 text"):
        read_truth_jsonl(str(path))


def test_the_same_architecture_twice_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="line 2: architecture .* appears twice"):
        read_truth_jsonl(_write(tmp_path, [ROWS[0], ROWS[0]]))
    # two trainings of one network, the second with other accuracies and whole numbers written as floats
    again = ({**ROWS[0][0], "embed_dim": 24.0, "num_heads": [1.0]}, {"a": 48.0, "b": 60.0})
    with pytest.raises(ValueError, match=r"line 3: architecture \w+ appears twice \(line 1 has the same fields\)"):
        read_truth_jsonl(_write(tmp_path, [ROWS[0], ROWS[1], again]))


def test_a_files_own_id_labels_are_not_read_as_vitcores_ids(tmp_path):
    """A judge's truth names its lines ("pit_017", 3): each was refused as an id not matching the fields."""
    path = tmp_path / "labelled.jsonl"
    lines = [{"id": "pit_000", **ROWS[0][0], "acc": ROWS[0][1]}, {"id": 7, "arch": ROWS[1][0], "acc": ROWS[1][1]},
             {"id": Arch.from_dict(ROWS[2][0]).id, **ROWS[2][0], "acc": ROWS[2][1]}]  # vitcore's own id: checked
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    truth = read_truth_jsonl(str(path))
    assert list(truth.archs) == [Arch.from_dict(arch).id for arch, _ in ROWS[:3]]
    assert truth.columns["a"] == {Arch.from_dict(arch).id: acc["a"] for arch, acc in ROWS[:3]}
    from vitcore.runs import read_archs  # vitcore score --archs reads the same file

    assert [a.id for a in read_archs(str(path))] == list(truth.archs)


def test_a_column_that_cannot_rank_is_set_aside_and_named(tmp_path, capsys):
    """One accuracy everywhere (or on one line only): τ was NaN beside a meaningless top-k overlap, or
    evaluate raised after the scoring without naming the column."""
    from vitcore.cli import main

    rows = [(arch, {**acc, "same": 70, "one": None}) for arch, acc in ROWS]
    rows[1][1]["one"] = 80.0
    truth = read_truth_jsonl(_write(tmp_path, rows))
    assert truth.flat == {"same": "all 5 accuracies are 70", "one": "only 1 architecture has an accuracy"}
    assert set(truth.columns) == {"a", "b"}
    with pytest.raises(ValueError, match="no column ranks two architectures apart \\(a: all 2 accuracies are 1"):
        read_truth_jsonl(_write(tmp_path, [(ROWS[0][0], {"a": 1.0}), (ROWS[1][0], {"a": 1})], "flat.jsonl"))
    csv = tmp_path / "flat.csv"
    csv.write_text("id,acc_mean\nx,0.5\ny,0.5\n")
    with pytest.raises(ValueError, match="acc: all 2 accuracies are 0.5"):
        read_truth_any(str(csv))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--truth", _write(tmp_path, rows), "--columns", "a,same", "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    assert "--columns: 'same' of" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # spaces after the commas are not part of the names
        main(["evaluate", "--truth", _write(tmp_path, rows), "--columns", "a, same", "--out", str(tmp_path / "e")])
    assert "--columns: 'same' of" in capsys.readouterr().err
    out = tmp_path / "e"
    assert main(["evaluate", "--truth", _write(tmp_path, rows), "--columns", "a,b", "--proxies", "params",
                 "--space", "small", "--data", "synthetic", "--batch-size", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "left out, same ranks nothing: all 5 accuracies are 70" in captured.err
    assert "left out, one ranks nothing: only 1 architecture has an accuracy" in captured.err
    assert "τ same" not in captured.out and "τ a" in captured.out


def test_each_column_is_ranked_on_its_own_and_averaged(tmp_path):
    truth = read_truth_jsonl(_write(tmp_path, ROWS))
    ids = list(truth.archs)
    scores = [3.0, 1.0, 4.0, 1.5, 9.0]
    records = [{"id": i, "scores": {"x": s, "y": -s}} for i, s in zip(ids, scores)]
    results = evaluate_columns(records, truth)
    for column, acc in truth.columns.items():
        common = [k for k, i in enumerate(ids) if i in acc]
        tau = stats.kendalltau([scores[k] for k in common], [acc[ids[k]] for k in common]).statistic
        assert results[column]["x"].kendall_tau == pytest.approx(tau)
        assert results[column]["x"].n == len(common)
    means = mean_tau(results, ["a", "b"])
    assert means["x"] == pytest.approx((results["a"]["x"].kendall_tau + results["b"]["x"].kendall_tau) / 2)
    table = format_columns(results, ["a", "b"])
    assert "mean τ (a, b)" in table and "### a" in table and "### b" in table
    with pytest.raises(ValueError, match="column 'c' is not in the truth"):
        mean_tau(results, ["a", "c"])


def test_each_proxy_against_params_is_the_difference_of_the_means_with_a_paired_interval(tmp_path):
    truth = read_truth_jsonl(_write(tmp_path, ROWS))
    ids = list(truth.archs)
    sizes, scores = [1.0, 2.0, 3.0, 2.5, 0.5], [3.0, 1.0, 4.0, 1.5, 9.0]
    records = [{"id": i, "scores": {"params": p, "x": s}} for i, p, s in zip(ids, sizes, scores)]
    records.append({"id": "unknown", "scores": {"params": 7.0, "x": 7.0}})  # not in the truth: left out
    results = evaluate_columns(records, truth)
    means = mean_tau(results, ["a", "b"])
    versus = mean_tau_vs(records, truth, ["a", "b"])
    assert list(versus) == ["x"] and versus["x"].value == pytest.approx(means["x"] - means["params"], abs=1e-12)
    acc = [[truth.columns[c].get(i, math.nan) for i in ids] for c in ["a", "b"]]
    np.testing.assert_equal(tuple(versus["x"]), tuple(mean_tau_difference(scores, sizes, acc)))
    table = format_columns(results, ["a", "b"], versus)
    d = versus["x"]
    assert "mean τ minus that of params [95% CI] |" in table
    assert f"| x | {results['a']['x'].kendall_tau:.3f} | {results['b']['x'].kendall_tau:.3f} | {means['x']:.3f} | " \
           f"{d.value:+.3f} [nan, nan] |" in table  # 5 architectures: too few for an interval
    assert "[nan, nan]: some bootstrap resamples leave a column one value throughout" in table
    assert mean_tau_vs([{"id": ids[0], "scores": {"x": 1.0}}, {"id": ids[1], "scores": {"x": 2.0}}], truth, ["a"]) == {}
    with pytest.raises(ValueError, match="column 'c' is not in the truth"):
        mean_tau_vs(records, truth, ["c"])
    for call in (lambda: mean_tau_vs(records, truth, "ab"), lambda: mean_tau(results, "ab")):
        with pytest.raises(TypeError, match="columns='ab' must be a list of column names"):
            call()


def test_columns_ceiling_uses_the_architectures_every_named_column_holds(tmp_path):
    truth = read_truth_jsonl(_write(tmp_path, ROWS))
    got = columns_ceiling(truth, ["a", "b"])
    want = mean_tau_ceiling([[50.0, 52.5, 51.0, 49.0], [61.5, 60.0, 63.25, 59.0]])  # row 4 has no b
    assert (got.reached, got.bound) == (pytest.approx(want.reached), pytest.approx(want.bound))
    assert columns_ceiling(truth, ["a"]).reached == pytest.approx(1.0)
    with pytest.raises(ValueError, match="column 'c' is not in the truth"):
        columns_ceiling(truth, ["a", "c"])
    # b on one more line: a column of one accuracy is set aside when the truth is read
    lone = read_truth_jsonl(_write(tmp_path, [ROWS[0], (ROWS[1][0], {"a": 1.0}), (ROWS[2][0], {"b": 2.0})],
                                   "lone.jsonl"))
    with pytest.raises(ValueError, match="columns a, b share 1 architectures: need at least 2"):
        columns_ceiling(lone, ["a", "b"])


def test_the_vote_joins_when_its_members_were_scored():
    records = [{"id": str(i), "scores": {"params": p, "nwot": n, "lswag": s}}
               for i, (p, n, s) in enumerate([(1, 5, 2), (2, 4, 3), (3, 6, 1)])]
    voted = with_combined(records + [{"id": "x", "error": "RuntimeError"}])
    assert [r["scores"]["vit_vote"] for r in voted[:3]] == pytest.approx([(1 + 2 + 2) / 3, (2 + 1 + 3) / 3,
                                                                           (3 + 3 + 1) / 3])
    assert "scores" not in voted[3]
    partial = [{"id": "a", "scores": {"params": 1.0}}, {"id": "b", "scores": {"params": 2.0}}]
    assert with_combined(partial) == partial
    assert not any(math.isnan(r["scores"]["vit_vote"]) for r in voted[:3])
    az = [{"id": str(i), "scores": {"az_expressivity": e, "az_trainability": t, "flops": f, "params": 1.0}}
          for i, (e, t, f) in enumerate([(1, 2, 3), (2, 1, 1), (3, 3, 2)])]
    joined = with_combined(az)
    assert [r["scores"]["az_nas"] for r in joined] == pytest.approx(
        [math.log(1 / 3 * 2 / 3 * 3 / 3), math.log(2 / 3 * 1 / 3 * 1 / 3), math.log(3 / 3 * 3 / 3 * 2 / 3)])
    assert all("vit_vote" not in r["scores"] for r in joined)  # nwot and lswag were not scored


def test_cli_scores_a_jsonl_truths_architectures_and_reports_every_column(tmp_path, capsys):
    from vitcore.cli import main
    from vitcore.runs import read_results

    truth = _write(tmp_path, ROWS)
    out = tmp_path / "eval"
    argv = ["evaluate", "--truth", truth, "--columns", "a,b", "--proxies", "params,nwot,lswag",
            "--space", "small", "--data", "synthetic", "--batch-size", "4", "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    records = read_results(str(out / "scores.jsonl"))
    assert len(records) == len(ROWS) and all("scores" in r for r in records)
    assert {(r["settings"]["batch_size"], r["settings"]["data"], r["settings"]["seed"]) for r in records} == {
        (4, "synthetic", 3)}
    report = (out / "evaluation.md").read_text()
    assert "batch of 4 from 'synthetic', seed 3" in report
    assert "mean τ (a, b)" in report and "| vit_vote |" in report and "### b" in report
    assert "highest mean τ over a, b:" in printed
    assert "mean τ minus that of params [95% CI]" in report
    ceiling = mean_tau_ceiling([[50.0, 52.5, 51.0, 49.0], [61.5, 60.0, 63.25, 59.0]])  # the rows with both
    assert f"mean τ any ranking reaches over a, b: {ceiling.reached:.3f} (bound {ceiling.bound:.3f})" in printed
    assert f"reaches mean τ {ceiling.reached:.3f}, and no ranking without ties exceeds {ceiling.bound:.3f}" in report
    assert sorted(p.name for p in (out / "a").iterdir()) == ["scatter-lswag.png", "scatter-nwot.png",
                                                             "scatter-params.png", "scatter-vit_vote.png"]
    assert main(argv) == 0  # a second run resumes: nothing is scored again
    assert read_results(str(out / "scores.jsonl")) == records


def test_cli_scores_a_pit_truth_with_null_accuracies_end_to_end(tmp_path, capsys):
    """PiT rows (4-pixel patches, stride 2, on a 12x12 .npz: 5x5 then 3x3 grids), an untrained column
    (null on every line) and a null on one line: every PiT is scored, each column ranks what it holds."""
    import numpy as np

    from vitcore.cli import main
    from vitcore.runs import read_results

    data = tmp_path / "twelve.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((8, 3, 12, 12)), y=np.arange(8) % 4)
    pit = {"mlp_ratio": 2, "depth": [1, 1], "num_heads": [1, 2], "patch_size": 4, "stride": 2}
    rows = [({**pit, "base_dim": d}, {"kd": kd, "base": None, "other": other})
            for d, kd, other in ((2, 60.0, 1.0), (3, 61.0, None), (4, 63.0, 2.0), (5, 62.0, 3.0))]
    out = tmp_path / "eval"
    argv = ["evaluate", "--truth", _write(tmp_path, rows), "--columns", "kd,other", "--proxies", "params,nwot",
            "--data", str(data), "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "left out, null on every line: base" in captured.err
    records = read_results(str(out / "scores.jsonl"))
    assert len(records) == 4 and all("scores" in r and "base_dim" in r["arch"] for r in records)
    assert records[0]["settings"]["space"] is None and records[0]["settings"]["input_shape"] == [3, 12, 12]
    params = [r["scores"]["params"] for r in records]
    assert params == sorted(params)  # wider PiTs, more parameters
    tau_kd = stats.kendalltau(params, [60.0, 61.0, 63.0, 62.0]).statistic
    assert f"| params | {tau_kd:.3f} | 1.000 |" in captured.out  # "other" holds 3 rows, ranked by size too


def test_cli_keeps_its_tables_when_the_columns_have_no_ceiling(tmp_path, capsys):
    """Columns a and b (of 3 and 2 architectures) share one: τ per column is reported, the ceiling is said to
    be undefined
    (it raised after the scoring, and evaluation.md was never written)."""
    from vitcore.cli import main
    from vitcore.runs import read_results

    scores = tmp_path / "scores.jsonl"
    out = tmp_path / "first"
    main(["evaluate", "--truth", _write(tmp_path, ROWS), "--columns", "a", "--proxies", "params", "--space", "small",
          "--data", "synthetic", "--batch-size", "2", "--out", str(out)])
    scores.write_text("".join(json.dumps(r) + "\n" for r in read_results(str(out / "scores.jsonl"))))
    lone = [ROWS[0], (ROWS[1][0], {"a": 52.5}), (ROWS[2][0], {"a": 51.0}), (ROWS[3][0], {"b": 55.0})]
    assert main(["evaluate", "--scores", str(scores), "--truth", _write(tmp_path, lone, "lone.jsonl"),
                 "--columns", "a,b", "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out
    assert "mean τ any ranking reaches over a, b: not defined (columns a, b share 1 architectures" in printed
    assert "not defined (columns a, b share 1" in (tmp_path / "e" / "evaluation.md").read_text()


def test_cli_names_a_column_the_truth_does_not_have(tmp_path, capsys):
    from vitcore.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--truth", _write(tmp_path, ROWS), "--columns", "a,c", "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    assert "--columns: 'c' is not a column of" in capsys.readouterr().err


def test_cli_reports_a_truth_left_with_one_column_under_its_own_name(tmp_path, capsys):
    """Column b is null on every line: the one column left is a, not the CSV truth's "acc" (a KeyError)."""
    from vitcore.cli import main
    from vitcore.runs import read_results

    rows = [(arch, {"a": acc["a"], "b": None}) for arch, acc in ROWS]
    out = tmp_path / "e"
    assert main(["evaluate", "--truth", _write(tmp_path, rows), "--proxies", "params", "--space", "small",
                 "--data", "synthetic", "--batch-size", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "left out, null on every line: b" in captured.err
    params = {r["id"]: r["scores"]["params"] for r in read_results(str(out / "scores.jsonl"))}
    ids = [Arch.from_dict(arch).id for arch, _ in ROWS]
    tau = stats.kendalltau([acc["a"] for _, acc in ROWS], [params[i] for i in ids])[0]
    assert f"| params | {tau:.3f} |" in captured.out and "τ a" not in captured.out  # one column: its full table
    assert "scatter-params.png" in {p.name for p in out.iterdir()}


@pytest.mark.parametrize("options, named", [
    (["--space", "small"], "--space small, --data synthetic"),
    (["--data", "digits"], "--space pit, --data digits"),  # the default space of a PiT-only truth
])
def test_cli_refuses_a_batch_its_architectures_cannot_take_before_scoring(tmp_path, capsys, options, named):
    """PiTs (patch 16) on 8x8 images: every architecture failed, and evaluate printed an empty table."""
    from vitcore.cli import main

    pit = {"base_dim": 4, "depth": [1, 1], "num_heads": [1, 2], "mlp_ratio": 2}
    rows = [({**pit, "base_dim": d}, {"a": float(d)}) for d in (4, 6)]
    out = tmp_path / "e"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--truth", _write(tmp_path, rows), "--proxies", "params", "--batch-size", "2",
              "--out", str(out), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot be built for the batch's 1x8x8 images ({named})" in err
    assert "patch_size=16 is larger than img_size=8" in err
    assert not (out / "scores.jsonl").exists()  # refused before scoring


def test_evaluate_refuses_records_none_of_which_was_scored():
    """Every architecture failed: no proxy to rank (an empty table was returned)."""
    from vitcore.evaluate import evaluate

    records = [{"id": "x", "error": "ValueError: patch_size=16 is larger than img_size=8"}, {"id": "y", "error": "E"}]
    with pytest.raises(ValueError, match=r"none of the 2 architectures .* was scored; the first error: "
                                         r"ValueError: patch_size=16"):
        evaluate(records, {"x": 1.0, "y": 2.0})
    assert set(evaluate(records + [{"id": "z", "scores": {"params": 3.0}}], {"x": 1.0, "y": 2.0, "z": 3.0})) == {
        "params"}


def test_cli_says_when_the_batch_is_not_the_spaces_shape(tmp_path, capsys):
    """The networks are built for the batch (--data), not for --space: a 12x12 .npz of 3 classes gives other
    networks than the space's 8x8 of 10 classes, and evaluate says so."""
    import numpy as np

    from vitcore.cli import main

    data = tmp_path / "twelve.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((6, 12, 12)), y=np.arange(6) % 3)
    argv = ["evaluate", "--truth", _write(tmp_path, ROWS[:3]), "--proxies", "params", "--space", "small",
            "--batch-size", "2"]
    assert main(argv + ["--data", str(data), "--out", str(tmp_path / "e")]) == 0
    assert ("the batch (1x12x12 images, 3 classes) is not the small space's (1x8x8, 10 classes): the "
            "architectures are built for the batch") in capsys.readouterr().err
    assert main(argv + ["--data", "synthetic", "--out", str(tmp_path / "f")]) == 0
    assert "is not the small space's" not in capsys.readouterr().err


def test_cli_names_a_column_that_is_null_on_every_line(tmp_path, capsys):
    from vitcore.cli import main

    rows = [(arch, {**acc, "never": None}) for arch, acc in ROWS]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--truth", _write(tmp_path, rows), "--columns", "a,never", "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    assert "--columns: 'never' is null on every line of" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # refused before scoring


def test_a_proxy_with_one_score_everywhere_is_named_not_a_bare_nan(tmp_path, capsys):
    """SWAP at the default batch of 8 is 256 on every network: its row read nan, with scipy's
    ConstantInputWarning (a file path and a source line) as the only explanation."""
    import warnings

    from vitcore.cli import main
    from vitcore.evaluate import constant_proxies

    truth = read_truth_jsonl(_write(tmp_path, ROWS))
    records = [{"id": i, "scores": {"swap": 256.0, "params": float(k), "flops": 2.0 * k, "nan": math.nan}}
               for k, i in enumerate(truth.archs)]
    assert constant_proxies(records) == {"swap": 256.0}
    assert constant_proxies(records[:1]) == {}  # one architecture: nothing to rank anyway
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy warning reaches the user
        assert main(["evaluate", "--scores", str(scores), "--truth", _write(tmp_path, ROWS), "--columns", "a,b",
                     "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out
    assert "| swap | nan | nan | nan |" in printed
    note = "swap gave every architecture the same score (256): its τ and ρ are undefined (nan)"
    assert note in printed and note in (tmp_path / "e" / "evaluation.md").read_text()
    assert "params gave" not in printed and "nan gave" not in printed
    # the first proxy's NaN mean does not win the max, and proxies tied at the top are all named
    assert "highest mean τ over a, b: params, flops " in printed


def test_the_highest_mean_line_gives_the_difference_from_params(tmp_path, capsys):
    """Five architectures: the interval is undefined, and the line said [+nan, +nan] for it."""
    from vitcore.cli import main

    truth = read_truth_jsonl(_write(tmp_path, ROWS))
    records = [{"id": i, "scores": {"params": float(k % 3), "x": truth.columns["a"][i]}}
               for k, i in enumerate(truth.archs)]
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["evaluate", "--scores", str(scores), "--truth", _write(tmp_path, ROWS), "--columns", "a,b",
                 "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out
    means, d = mean_tau(evaluate_columns(records, truth), ["a", "b"]), mean_tau_vs(records, truth, ["a", "b"])["x"]
    assert means["x"] > means["params"] and math.isnan(d.ci[0])
    assert (f"highest mean τ over a, b: x {means['x']:.3f} (params {means['params']:.3f}; difference "
            f"{d.value:+.3f}, 95% CI [nan, nan])") in printed


def test_an_undefined_bootstrap_interval_is_explained():
    """Three architectures: every τ interval read [nan, nan], explained nowhere."""
    from vitcore.evaluate import evaluate, format_table

    records = [{"id": str(i), "scores": {"x": float(i), "y": float(-i)}} for i in range(3)]
    table = format_table(evaluate(records, {"0": 1.0, "1": 3.0, "2": 2.0}))
    assert "| x | 0.333 | [nan, nan] |" in table
    assert "[nan, nan]: some bootstrap resamples of these 3 architectures hold one value throughout" in table
    many = [{"id": str(i), "scores": {"x": float(i * 7 % 30)}} for i in range(30)]
    assert "[nan, nan]" not in format_table(evaluate(many, {str(i): float(i) for i in range(30)}))


def test_column_names_never_reach_outside_out(tmp_path, capsys):
    """Each column's plots go to a subfolder of --out named after it; a name that is not a plain file name
    ("..", an absolute path, evaluate's own file, a NUL) wrote outside --out or failed after the report
    (round four, case 2): it is made plain, with a digest that keeps two columns apart."""
    from vitcore.cli import column_folder, column_folders, main

    names = ["../up", str(tmp_path / "abs"), "evaluation.md", "a\0b", "ok_1.5", "x" * 300]
    rows = [(arch, {n: acc["a"] + k for k, n in enumerate(names)}) for arch, acc in ROWS]
    out = tmp_path / "deep" / "eval"
    assert main(["evaluate", "--truth", _write(tmp_path, rows), "--proxies", "params,nwot", "--space", "small",
                 "--data", "synthetic", "--batch-size", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["eval"]  # nothing beside --out
    assert not (tmp_path / "abs").exists() and (out / "evaluation.md").is_file()
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(column_folder(n) for n in names) and len(set(folders)) == len(names)
    assert column_folder("ok_1.5") == "ok_1.5" and all(len(f) <= 80 for f in folders)
    assert column_folder("a/b") != column_folder("a_b") == "a_b"
    for reserved in ("CON", "nul", "com1.txt", "a.", "SCORES.jsonl"):  # refused by Windows, or evaluate's own
        assert column_folder(reserved) != reserved
    apart = column_folders(["Top1", "top1", "top5"])  # one folder where case does not count (macOS, Windows)
    assert len({f.casefold() for f in apart.values()}) == 3 and apart["top5"] == "top5"
    for folder in folders:
        assert sorted(p.name for p in (out / folder).iterdir()) == ["scatter-nwot.png", "scatter-params.png"]

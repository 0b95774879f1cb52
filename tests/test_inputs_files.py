"""Every file and option the CLI reads, checked where it is read: results records (one validator for every
reader), data files (one check of labels and images), ground-truth formats, shard names, --n, --workers,
--out, the encoding of what evaluate prints and writes. Each error names the bad value (file and line for
files) and comes before any scoring."""
import io
import json
import math
import os
import random
import re
import sys
import warnings

import numpy as np
import pytest

import vitcore.distributed
from vitcore.cli import _print_table, main
from vitcore.data import MAX_CLASSES, load_batch
from vitcore.distributed import shard_path, shard_paths
from vitcore.evaluate import evaluate, read_truth_any
from vitcore.model import ViTConfig
from vitcore.paths import lock
from vitcore.proxies import check_proxies
from vitcore.runs import read_results, run_scoring
from vitcore.space import SPACES, Arch, sample

SETTINGS = {"space": "small", "data": "digits", "batch_size": 8, "seed": 0, "proxies": ["grad_norm", "params"]}


def _records(n=6, settings=SETTINGS, proxies=("grad_norm", "params")):
    """Results records as `vitcore score` writes them, scores made up: grad_norm i, params 10·i."""
    return [{"id": a.id, "arch": a.to_dict(), "settings": settings, "params": 100 + i,
             "scores": {p: float(i * (10 if p == "params" else 1)) for p in proxies}}
            for i, a in enumerate(sample(SPACES["small"], n, 0))]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _truth(path, ids):
    path.write_text("id,acc_mean\n" + "".join(f"{i},0.{k + 1}\n" for k, i in enumerate(ids)))
    return str(path)


def _exit_error(argv, capsys):
    """The one-line error and exit status 2 of `vitcore argv`."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# -- results files: one check wherever results are read -------------------------------------------------

def test_evaluate_refuses_scores_of_two_settings_naming_file_and_line(tmp_path, capsys):
    """Two runs' files concatenated (seeds 0 and 1): τ would mix scores of two batches and initialisations."""
    records = _records(3) + _records(3, settings={**SETTINGS, "seed": 1})[1:]
    scores = _write(tmp_path / "s.jsonl", records)
    truth = _truth(tmp_path / "t.csv", [r["id"] for r in records[:3]])
    err = _exit_error(["evaluate", "--scores", scores, "--truth", truth, "--out", str(tmp_path / "ev")], capsys)
    assert f"{scores}, line 4: made with other settings than line 1 (seed 1 here, 0 there)" in err
    assert not (tmp_path / "ev" / "evaluation.md").exists()


def test_one_architecture_scored_twice_with_other_scores_is_refused(tmp_path, capsys):
    """One run's file joined with the same run's, grad_norm negated: the last line per id won, and τ changed
    sign without a word. The same record twice, or a failure then its retried score, still reads."""
    records = _records(3)
    flipped = [dict(r, scores={**r["scores"], "grad_norm": -r["scores"]["grad_norm"] - 1}) for r in records]
    scores = _write(tmp_path / "s.jsonl", records + flipped)
    truth = _truth(tmp_path / "t.csv", [r["id"] for r in records])
    err = _exit_error(["evaluate", "--scores", scores, "--truth", truth, "--out", str(tmp_path / "ev")], capsys)
    assert f"{scores}, line 4: architecture {records[0]['id']} was scored at line 1 with other scores" in err
    failed = {k: v for k, v in records[0].items() if k not in ("scores", "params")}
    _write(tmp_path / "ok.jsonl", records + records[:1] + [dict(failed, error="RuntimeError: x")] + records[:1])
    assert len(read_results(str(tmp_path / "ok.jsonl"))) == 6


def test_a_bad_vitcore_triton_stops_the_run_before_it_scores(tmp_path, capsys, monkeypatch):
    """VITCORE_TRITON=yes failed every architecture (exit 1, a failure line each): now one error, exit 2."""
    monkeypatch.setenv("VITCORE_TRITON", "yes")
    err = _exit_error(["score", "--n", "2", "--out", str(tmp_path / "o.jsonl")], capsys)
    assert "VITCORE_TRITON='yes': expected '0', '1' or unset" in err and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("name", ["results", "archs", "rule"])
def test_a_json_key_given_twice_is_refused_naming_it(tmp_path, capsys, name):
    """Python's json keeps a repeated key's last value: "patch_size": 2, ..., "patch_size": 4 scored patch 4,
    and a rule naming "proxy" twice ranked by the second while printing the first's reason."""
    records = _records(2)
    text = json.dumps(records[1])
    doubled = text[:-1] + ', "id": "x"}'
    if name == "results":
        path = tmp_path / "s.jsonl"
        path.write_text(json.dumps(records[0]) + "\n" + doubled + "\n")
        argv = ["evaluate", "--scores", str(path), "--truth", _truth(tmp_path / "t.csv", ["a", "b"])]
        where = f"{path}, line 2: "
    elif name == "archs":
        path = tmp_path / "a.jsonl"
        arch = json.dumps(records[0]["arch"])
        path.write_text(json.dumps(records[1]["arch"]) + "\n" + arch[:-1] + ', "patch_size": 4}\n')
        argv = ["score", "--archs", str(path), "--out", str(tmp_path / "o.jsonl")]
        where, doubled = f"{path}, line 2: ", "patch_size"
    else:
        path = tmp_path / "rule.json"
        path.write_text('{"proxy": "params", "proxy": "snip", "reversed": false}')
        argv = ["rank", "--rule", str(path), "--scores", _write(tmp_path / "s.jsonl", records)]
        where, doubled = f"rule file {str(path)!r}: ", "proxy"
    key = "id" if name == "results" else doubled
    err = _exit_error(argv, capsys)
    assert f"{where}key {key!r} appears twice in one JSON object" in err


@pytest.mark.parametrize("change, message", [
    (lambda r: r["scores"].pop("params"), "line 3: scores other proxies than line 1 (lacks params)"),
    (lambda r: r["scores"].update(snip=1.0), "line 3: scores other proxies than line 1 (has snip too)"),
    (lambda r: r["scores"].update(params="12"), "line 3: score params='12' is not a number (null reads as NaN)"),
    (lambda r: r["scores"].update(params=True), "line 3: score params=True is not a number"),
    (lambda r: r.update(params=-1), 'line 3: "params" is -1, not a count of parameters'),
    (lambda r: r.update(settings=[1]), 'line 3: "settings" is [1], not an object'),
    (lambda r: r.pop("scores"), 'line 3: expected "scores" (an object) or "error" (a string)'),
    (lambda r: r.update(id="0123456789ab"), "line 3: id '0123456789ab' is not its architecture's"),
    (lambda r: r["arch"].update(depth=0), 'line 3: "arch" is not an architecture'),
])
def test_a_bad_results_record_is_named_with_file_and_line(tmp_path, capsys, change, message):
    records = _records(4, settings=None)
    for r in records:
        del r["settings"]  # a hand-made file: the proxies are compared record by record
    change(records[2])
    path = _write(tmp_path / "s.jsonl", records)
    with pytest.raises(ValueError, match=re.escape(f"{path}, {message}")):
        read_results(path)
    truth = _truth(tmp_path / "t.csv", [r["id"] for r in records])
    err = _exit_error(["evaluate", "--scores", path, "--truth", truth, "--out", str(tmp_path / "ev")], capsys)
    assert f"{path}, {message}" in err


def test_a_record_of_vitcore_score_lacking_its_arch_is_named(tmp_path):
    """`vitcore score --resume` prints the table from them: a KeyError where they lacked it."""
    records = _records(3)
    del records[1]["arch"]
    path = _write(tmp_path / "s.jsonl", records)
    with pytest.raises(ValueError, match=re.escape(f'{path}, line 2: a record with "settings" (written by vitcore '
                                                   'score) lacks its "arch"')):
        read_results(path)


def test_a_null_score_reads_as_nan(tmp_path, capsys):
    """jq and pandas write NaN as null: read back as the NaN vitcore wrote (ranked last, counted)."""
    records = _records(5)
    path = tmp_path / "s.jsonl"
    _write(path, records)
    path.write_text(path.read_text().replace('"grad_norm": 2.0', '"grad_norm": null'))
    back = read_results(str(path))
    assert math.isnan(back[2]["scores"]["grad_norm"]) and back[3]["scores"] == records[3]["scores"]
    truth = _truth(tmp_path / "t.csv", [r["id"] for r in records])
    assert main(["evaluate", "--scores", str(path), "--truth", truth, "--out", str(tmp_path / "ev")]) == 0
    assert re.search(r"\| grad_norm \| .* \| 5 \| 1 \|", capsys.readouterr().out)  # n 5, 1 NaN


def test_the_api_evaluate_checks_records_as_the_files_are(tmp_path):
    records = _records(4)
    records[1] = {**records[1], "scores": {"grad_norm": 1.0}}
    with pytest.raises(ValueError, match=re.escape("records[1]: scores other proxies than records[0] (lacks params)")):
        evaluate(records, {r["id"]: 0.1 * i for i, r in enumerate(records)})


def test_resume_refuses_a_results_file_with_a_bad_record(tmp_path):
    out = tmp_path / "r.jsonl"
    run_scoring(str(out), n=2, batch_size=4, proxies=["params"])
    out.write_text(out.read_text().replace('"scores": {"params": ', '"scores": {"params": "x", "old": ', 1))
    with pytest.raises(ValueError, match=re.escape(f"{out}, line 1: score params='x' is not a number")):
        run_scoring(str(out), n=2, batch_size=4, proxies=["params"], resume=True)


def test_evaluate_says_how_many_architectures_it_left_out(tmp_path, capsys):
    records = _records(6)
    scores = _write(tmp_path / "s.jsonl", records)
    truth = tmp_path / "t.csv"
    _truth(truth, [r["id"] for r in records[2:]] + ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"])
    assert main(["evaluate", "--scores", scores, "--truth", str(truth), "--out", str(tmp_path / "ev")]) == 0
    line = (f"left out of τ: 2 of the 6 architectures of {scores} have no accuracy in {truth}; 3 of the 7 "
            f"architectures of {truth} were not scored (τ is over the 4 in both)")
    assert line in capsys.readouterr().err
    assert line in (tmp_path / "ev" / "evaluation.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("extra", [["--seed", "3"], ["--proxies", "snip"], ["--n", "3"], ["--device", "cpu"],
                                   ["--data", "synthetic", "--batch-size", "4"]])
def test_evaluate_refuses_scoring_options_beside_scores(tmp_path, capsys, extra):
    scores = _write(tmp_path / "s.jsonl", _records(3))
    truth = _truth(tmp_path / "t.csv", [r["id"] for r in _records(3)])
    err = _exit_error(["evaluate", "--scores", scores, "--truth", truth, *extra], capsys)
    named = ", ".join(a for a in extra if a.startswith("--"))
    assert f"{named}: choose" in err or f"{named}: chooses" in err
    assert f"--scores {scores} holds scores already made" in err


# -- data files: one check of labels and images ---------------------------------------------------------

@pytest.mark.parametrize("x, y, message", [
    (np.zeros((4, 8, 8), np.float32), np.array([0, 2**63 + 5, 1, 2], np.uint64), "label y[1] = 9223372036854775813"),
    (np.zeros((4, 8, 8), np.float32), np.array([0, 1, 10**12, 2]), "label y[2] = 1000000000000"),
    (np.zeros((4, 8, 8), np.float32), np.array([0, -3, 1, 2]), "label y[1] = -3"),
    (np.zeros((4, 8, 8), np.float32), np.array([0, MAX_CLASSES, 1, 2]), f"label y[1] = {MAX_CLASSES}"),
    (np.zeros((4, 8, 8), np.float32), np.array([0.0, 1.0, 1.0, 2.0]), "labels 'y' have shape (4,) and dtype float64"),
    (np.zeros((4, 0, 0), np.float32), np.arange(4), "images 'x' have shape (4, 0, 0): no examples or no pixels"),
    (np.zeros((0, 8, 8), np.float32), np.arange(0), "images 'x' have shape (0, 8, 8): no examples or no pixels"),
    (np.zeros((4, 2, 0, 0), np.float32), np.arange(4), "images 'x' have shape (4, 2, 0, 0)"),
    (np.zeros((4, 8, 8), np.complex64), np.arange(4), "images 'x' have dtype complex64; expected real numbers"),
    (np.full((4, 8, 8), np.inf), np.arange(4),
     "images 'x' hold 256 NaN or infinite values, the first x[0, 0, 0] = inf"),
    (np.zeros((4, 8, 8), np.float32), np.zeros(4, np.int64), "every label y is 0, so the models get a one-class head"),
])
def test_a_data_file_is_checked_whole_naming_the_bad_value(tmp_path, capsys, x, y, message):
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    with pytest.raises(ValueError, match=re.escape(f"{data}: {message}")):
        load_batch(str(data), 2)
    out = tmp_path / "r.jsonl"
    assert f"{data}: {message}" in _exit_error(["score", "--data", str(data), "--batch-size", "2", "--out", str(out)],
                                               capsys)
    assert not out.exists()  # before any scoring


@pytest.mark.parametrize("dtype, big", [(np.float32, 3e38), (np.float64, 1e300), (np.float64, 1e-300),
                                        (np.int64, 2**62)])
def test_images_at_the_ends_of_their_dtype_normalise_exactly_without_warnings(tmp_path, dtype, big):
    """Finite float32 near its largest value overflowed the float32 std to NaN; float64 beyond float32's
    range leaked numpy's overflow warning and became infinite."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 1, 4, 4)) * big / 4).clip(-big, big).astype(dtype)
    data = tmp_path / "big.npz"
    np.savez(data, x=x, y=np.arange(6) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = load_batch(str(data), 6)
    ref = x[np.random.default_rng(0).choice(6, size=6, replace=False)].astype(np.float64) / big  # exact scaling
    ref = (ref - ref.mean()) / ref.std()
    assert np.isfinite(batch.inputs.numpy()).all()
    np.testing.assert_allclose(batch.inputs.numpy(), ref, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(ref).max())


@pytest.mark.parametrize("name", ["D.NPZ", "images.bin"])
def test_an_npz_by_any_name_is_read(tmp_path, name):
    data = tmp_path / name
    with open(data, "wb") as f:
        np.savez(f, x=np.random.default_rng(0).random((4, 8, 8)), y=np.arange(4))
    assert load_batch(str(data), 4).inputs.shape == (4, 1, 8, 8)


def test_a_data_file_that_is_no_npz_is_named(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("x,y\n")
    with pytest.raises(ValueError, match=re.escape(f"{data}: not a readable .npz of images and labels")):
        load_batch(str(data), 4)


# -- ground truths: told apart by content -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["t.json", "t.JSONL", "t.txt"])
def test_a_json_lines_truth_is_read_whatever_its_name(tmp_path, name):
    archs = sample(SPACES["small"], 3, 0)
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf\n" + "".join(json.dumps({**a.to_dict(), "acc": {"top1": 0.5 + i / 10}}) + "\n"
                                                 for i, a in enumerate(archs)).encode())
    truth = read_truth_any(str(path))
    assert truth.columns == {"top1": {a.id: 0.5 + i / 10 for i, a in enumerate(archs)}}


def test_a_csv_truth_named_jsonl_is_read_as_csv_and_a_json_list_is_refused(tmp_path):
    csv_named_jsonl = tmp_path / "t.jsonl"
    csv_named_jsonl.write_text("id,acc_mean\na,0.1\nb,0.2\n")
    assert read_truth_any(str(csv_named_jsonl)).columns == {"acc": {"a": 0.1, "b": 0.2}}
    listed = tmp_path / "t.json"
    listed.write_text(json.dumps([{"id": "a", "acc": {"top1": 0.1}}]))
    with pytest.raises(ValueError, match=re.escape(f"ground-truth file {str(listed)!r} is a JSON list; write one "
                                                   "architecture per line (JSON lines)")):
        read_truth_any(str(listed))


def test_evaluate_n_picks_the_first_architectures_of_a_json_lines_truth(tmp_path):
    archs = sample(SPACES["small"], 4, 0)
    truth = tmp_path / "t.jsonl"
    truth.write_text("".join(json.dumps({**a.to_dict(), "acc": {"top1": 0.5 + i / 10}}) + "\n"
                             for i, a in enumerate(archs)))
    out = tmp_path / "ev"
    argv = ["evaluate", "--truth", str(truth), "--space", "small", "--data", "digits", "--batch-size", "4",
            "--proxies", "params", "--device", "cpu", "--out", str(out)]
    assert main(argv + ["--n", "3"]) == 0
    assert [r["id"] for r in read_results(str(out / "scores.jsonl"))] == [a.id for a in archs[:3]]


# -- score: --n with --archs, --out, --proxies, --workers, shards --------------------------------------

def test_n_takes_the_first_architectures_of_an_archs_file(tmp_path, capsys):
    archs = tmp_path / "archs.json"
    archs.write_text(json.dumps([a.to_dict() for a in sample(SPACES["small"], 5, 0)]))
    out = tmp_path / "r.jsonl"
    assert main(["score", "--archs", str(archs), "--n", "3", "--batch-size", "4", "--proxies", "params",
                 "--out", str(out)]) == 0
    assert [r["id"] for r in read_results(str(out))] == [a.id for a in sample(SPACES["small"], 3, 0)]
    err = _exit_error(["score", "--archs", str(archs), "--n", "6", "--out", str(tmp_path / "x.jsonl")], capsys)
    assert f"--n 6: {archs} holds 5 architectures; ask for 1 to that many" in err


def test_an_out_ending_in_a_separator_names_a_folder(tmp_path, capsys):
    out = str(tmp_path / "newdir") + os.sep
    assert f"--out {out!r} is a folder; name a file such as" in _exit_error(["score", "--out", out], capsys)
    assert not os.path.exists(out)


def test_proxy_names_are_stripped_and_counted_once(tmp_path, capsys):
    assert check_proxies([" grad_norm", "snip ", "grad_norm"]) == ["grad_norm", "snip"]
    out = tmp_path / "r.jsonl"
    assert main(["score", "--n", "2", "--batch-size", "4", "--proxies", " params, grad_norm", "--rank-by", " params",
                 "--out", str(out)]) == 0
    assert list(read_results(str(out))[0]["scores"]) == ["params", "grad_norm"]


def test_workers_are_bounded_by_the_machine_and_the_architectures(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(vitcore.distributed, "launch", lambda workers, kwargs: started.append(workers) or [])
    monkeypatch.setattr(vitcore.distributed, "_cores", lambda: 4)
    with pytest.raises(ValueError, match=re.escape("--workers 100000: at most 4 on this machine")):
        run_scoring(str(tmp_path / "r.jsonl"), n=8, workers=100000, data="synthetic", batch_size=4)
    run_scoring(str(tmp_path / "r.jsonl"), n=2, workers=3, data="synthetic", batch_size=4)
    assert started == [2]  # one process per architecture


def test_workers_stop_at_once_on_a_locked_out(tmp_path, monkeypatch):
    """Each worker found the lock after starting, and the run advised --resume after 30-40 s."""
    def started(*args):
        raise AssertionError("the workers were started")

    monkeypatch.setattr(vitcore.distributed, "launch", started)
    out = tmp_path / "r.jsonl"
    with open(out, "a") as f:
        lock(f, str(out))
        with pytest.raises(ValueError, match="is being written by another run"):
            run_scoring(str(out), n=2, workers=2, data="synthetic", batch_size=4)


def test_a_users_file_named_like_a_shard_is_never_touched(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    mine = tmp_path / "r.jsonl.rank0-of-2.jsonl"
    run_scoring(str(mine), n=2, batch_size=4, proxies=["params"])  # the user's own results, by that name
    before = mine.read_bytes()
    assert shard_paths(str(out)) == []
    records = run_scoring(str(out), n=3, batch_size=4, proxies=["params"])  # one process: not merged
    assert len(records) == 3 and mine.read_bytes() == before

    monkeypatch.setattr(vitcore.distributed, "launch", lambda *args: pytest.fail("the workers were started"))
    with pytest.raises(ValueError, match=re.escape(f"{shard_path(str(out), 0, 2)} is not a shard of a vitcore run")):
        run_scoring(str(out), n=3, workers=2, batch_size=4, proxies=["params"])
    assert mine.read_bytes() == before


# -- evaluate's output in any encoding -------------------------------------------------------------------

def test_evaluate_finishes_with_a_non_utf8_out_and_a_cp1252_stdout(tmp_path, monkeypatch):
    records = _records(5)
    scores = _write(tmp_path / "s.jsonl", records)
    truth = _truth(tmp_path / os.fsdecode(b"t-\xff.csv"), [r["id"] for r in records])  # names that are not UTF-8
    out = os.path.join(str(tmp_path), os.fsdecode(b"ev-\xff"))
    raw = io.BytesIO()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(raw, encoding="cp1252"))  # a Windows redirect
    assert main(["evaluate", "--scores", scores, "--truth", truth, "--out", out]) == 0
    sys.stdout.flush()
    assert b"Kendall \\u03c4" in raw.getvalue()  # τ, escaped where cp1252 has none
    text = open(os.path.join(out, "evaluation.md"), encoding="utf-8").read()
    assert "Kendall τ" in text and "t-\\udcff.csv" in text and "| params | 1.000 |" in text
    assert os.path.isfile(os.path.join(out, "scatter-params.png"))


# -- the library: numpy scalars, negative seeds, the table, sampling ------------------------------------

def test_numpy_scalars_are_taken_by_vit_config_as_by_arch():
    ints = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2, head_dim=16)
    plain = ViTConfig(**ints, num_heads=(1, 2), mlp_ratio=(2.0, 4.0))
    numpy = ViTConfig(**{k: np.int64(v) for k, v in ints.items()}, num_heads=np.array([1, 2]),
                      mlp_ratio=(np.float32(2.0), np.float64(4.0)))
    assert numpy == plain and hash(numpy) == hash(plain) and type(numpy.embed_dim) is int
    arch = Arch(embed_dim=np.int64(32), depth=np.int64(2), num_heads=np.array([1, 2]), mlp_ratio=(2.0, 4.0),
                head_dim=np.int64(16), patch_size=np.int32(2))
    assert arch.config(8, 1, 10) == plain
    with pytest.raises(TypeError, match="embed_dim=32.0 must be an int"):
        ViTConfig(**{**ints, "embed_dim": 32.0})


def test_sample_refuses_a_negative_seed_as_the_cli_does_and_takes_numpy_ints():
    with pytest.raises(ValueError, match="seed=-5: expected a non-negative int"):
        sample(SPACES["small"], 3, seed=-5)
    assert sample(SPACES["small"], np.int64(3), seed=np.uint8(2)) == sample(SPACES["small"], 3, seed=2)


def test_sampling_keeps_its_architectures():
    """Distinct fields are compared before any Arch is built (fast near the space's size); the list is
    the one drawing Arch objects and keeping distinct ids gives."""
    for name, n, seed in (("small", 200, 3), ("pit", 100, 1), ("imagenet", 20, 0)):
        space, rng, by_id = SPACES[name], random.Random(f"{name}:{seed}"), {}
        while len(by_id) < n:
            arch = space.draw(rng)
            by_id.setdefault(arch.id, arch)
        assert sample(space, n, seed) == list(by_id.values())


def test_the_table_aligns_deep_vits(capsys):
    deep = Arch(embed_dim=192, depth=14, num_heads=(3, 4) * 7, mlp_ratio=(4.0,) * 14, head_dim=64, patch_size=16)
    small = sample(SPACES["small"], 1, 0)[0]
    records = [{"id": a.id, "arch": a.to_dict(), "params": p, "scores": {"params": float(p)}}
               for a, p in ((deep, 5_000_000), (small, 1000))]
    del records[1]["params"]  # a hand-made record, resumed: "-" in the table
    _print_table(records, ["params"], "params")
    lines = capsys.readouterr().out.splitlines()[:3]
    assert "3-4-3-4-3-4-3-4-3-4-3-4-3-4" in lines[1] and f"  {'-':>9}  " in lines[2]
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header: the scores line up


@pytest.mark.parametrize("scored", [False, True])
def test_a_workers_run_that_failed_before_scoring_says_so_without_advising_resume(tmp_path, monkeypatch, scored):
    """The one-line error a one-process run gives; --resume is advised only when a shard holds a record."""
    import torch.distributed.launcher.api as launcher
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    out = str(tmp_path / "r.jsonl")
    if scored:  # rank 0 of 2 wrote one record before rank 1 failed
        archs = sample(SPACES["small"], 1, 0)
        from vitcore.runs import score_archs

        score_archs(archs, load_batch("digits", 4), shard_path(out, 0, 2), proxies=["params"],
                    first_line=vitcore.distributed.shard_header(0, 2))
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=1, error_file=str(tmp_path / "none.json"))
    failure.message = {"message": "ValueError: --out cannot be written"}  # as a worker's error file gives it

    def failing(config, entrypoint):
        def run(*args):
            raise ChildFailedError("vitcore", {1: failure})
        return run

    monkeypatch.setattr(launcher, "elastic_launch", failing)
    with pytest.raises(vitcore.distributed.RankFailed) as failed:
        vitcore.distributed.launch(2, {"out": out})
    if scored:
        assert "rank 1 of 2 failed (ValueError: --out cannot be written); the finished" in str(failed.value)
        assert "rerun with --resume" in str(failed.value)
    else:
        assert str(failed.value) == ("rank 1 of 2 failed before any architecture was scored: "
                                     "ValueError: --out cannot be written")


def test_a_workers_resume_of_other_settings_is_refused_before_they_start(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    run_scoring(str(out), n=2, batch_size=4, proxies=["params"])
    monkeypatch.setattr(vitcore.distributed, "launch", lambda *args: pytest.fail("the workers were started"))
    with pytest.raises(ValueError, match=re.escape(f"--resume: {out} holds results for settings other than this "
                                                   "run's (batch_sha256 '")) as refused:
        run_scoring(str(out), n=2, batch_size=4, proxies=["params"], seed=1, workers=2, resume=True)
    assert "; seed 1 this run, 0 the file); use another --out" in str(refused.value)


def test_a_column_named_twice_counts_once_in_the_mean(tmp_path, capsys):
    records = _records(5)
    scores = _write(tmp_path / "s.jsonl", records)
    truth = tmp_path / "t.jsonl"
    truth.write_text("".join(json.dumps({**r["arch"], "acc": {"a": i / 10, "b": (i * 3 % 5) / 10}}) + "\n"
                             for i, r in enumerate(records)))
    assert main(["evaluate", "--scores", scores, "--truth", str(truth), "--columns", "a, a,b",
                 "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "| mean τ (a, b) |" in out and "highest mean τ over a, b:" in out


def test_workers_stop_at_once_on_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    """A read-only folder (simulated: the tests may run as root, whom permissions do not stop)."""
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(vitcore.distributed, "launch", lambda *args: pytest.fail("the workers were started"))
    monkeypatch.setattr(vitcore.distributed.tempfile, "TemporaryFile", read_only)
    out = str(tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match=re.escape(f"--out {out!r} cannot be written: Permission denied")):
        run_scoring(out, n=2, workers=2, data="synthetic", batch_size=4)

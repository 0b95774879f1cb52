"""Scoring runs (vitcore.runs): the records, the resume key, backups, the lock, the readers."""
import hashlib
import itertools
import json
import os
import random
import re
import stat

import numpy as np
import pytest
import torch

import vitcore.model
import vitcore.runs
from vitcore.data import load_batch
from vitcore.runs import read_archs, read_results, run_scoring, score_archs
from vitcore.space import SPACES, Arch, SearchSpace, sample

try:
    import fcntl
except ImportError:
    fcntl = None


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_archs_records_in_arch_order(tmp_path):
    archs = sample(SPACES["small"], 3, 5)
    batch = load_batch("digits", 8, seed=5)
    out = tmp_path / "r.jsonl"
    records = score_archs(archs, batch, str(out), proxies=["snip", "params"], seed=5)
    assert [r["id"] for r in records] == [a.id for a in archs] == [r["id"] for r in _lines(out)]
    assert records == _lines(out)
    for r, a in zip(records, archs):
        assert r["arch"] == a.to_dict() and set(r["scores"]) == {"snip", "params"}
        assert r["scores"]["params"] == r["params"] > 0
        digest = hashlib.sha256(batch.inputs.numpy().tobytes() + batch.targets.numpy().tobytes()).hexdigest()[:16]
        assert r["settings"] == {"space": None, "data": "digits", "batch_size": 8, "input_shape": [1, 8, 8],
                                 "num_classes": 10, "batch_sha256": digest, "seed": 5, "proxies": ["snip", "params"],
                                 "mode": "global", "params": "all", "dtype": "fp32", "device": "cpu",
                                 "attention": "auto", "init": vitcore.model.INIT_SCHEME}
        assert r["versions"]["torch"] == torch.__version__ and r["versions"]["vitcore"]
        timing = r["timing"]
        assert set(timing) == {"build_s", "passes_s", "read_s"} and min(timing.values()) >= 0
        assert r["time_s"] == pytest.approx(timing["passes_s"] + timing["read_s"], abs=2e-6)  # rounded to 1 µs
    again = score_archs(archs[:1], batch, str(tmp_path / "again.jsonl"), proxies=["snip", "params"], seed=5)
    assert again[0]["scores"] == records[0]["scores"]  # same arch and seed, same weights and batch


@pytest.mark.parametrize("attention", ["sdpa", "eager", "vitcore"])
def test_attention_choices_score_alike(attention, tmp_path):
    """Every attention choice scores the same weights (fp32 rounding apart) and is a setting of the run."""
    archs, batch = sample(SPACES["small"], 2, 1), load_batch("digits", 8, seed=1)
    base = score_archs(archs, batch, str(tmp_path / "auto.jsonl"), seed=1)
    other = score_archs(archs, batch, str(tmp_path / "other.jsonl"), seed=1, attention=attention)
    for r, o in zip(base, other):
        assert o["settings"]["attention"] == attention
        for name, value in r["scores"].items():
            assert o["scores"][name] == pytest.approx(value, rel=1e-5)
    with pytest.raises(ValueError, match="attention='flash'; valid"):
        score_archs(archs, batch, str(tmp_path / "bad.jsonl"), attention="flash")


def test_resume_skips_finished_and_repairs_a_cut_line(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    kwargs = dict(n=6, batch_size=16)
    run_scoring(str(out), n=3, batch_size=16)  # the first 3 of the same sample
    first = _lines(out)
    with open(out, "a") as f:
        f.write('{"id": "cut-off')  # an interrupted write
    run_scoring(str(out), resume=True, **kwargs)
    records = _lines(out)
    assert records[:3] == first and len(records) == 6
    assert [r["id"] for r in records] == [a.id for a in sample(SPACES["small"], 6, 0)]
    run_scoring(str(out), resume=True, **kwargs)  # nothing left to do
    assert len(_lines(out)) == 6
    with pytest.raises(ValueError, match="holds results for settings"):
        run_scoring(str(out), resume=True, n=6, batch_size=8)
    run_scoring(str(out), **kwargs)  # a fresh run keeps the old file beside it
    assert len(_lines(tmp_path / "s.jsonl.bak")) == 6
    run_scoring(str(out), n=2, batch_size=16)  # and another: the first backup stays
    assert len(_lines(tmp_path / "s.jsonl.bak")) == 6 and len(_lines(tmp_path / "s.jsonl.bak-2")) == 6
    assert "moved the previous" in capsys.readouterr().err


def test_a_whole_last_line_without_its_newline_is_a_record(tmp_path):
    """An editor's save or a cut just before the newline: the record is read, and a resumed run appends
    on a line of its own; a non-path is a TypeError."""
    out = tmp_path / "s.jsonl"
    run_scoring(str(out), n=3, batch_size=16)
    first = _lines(out)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    assert read_results(str(out)) == first
    run_scoring(str(out), resume=True, n=4, batch_size=16)
    records = _lines(out)
    assert records[:3] == first and len(records) == 4
    with pytest.raises(TypeError, match="results file 3 is not a path"):
        read_results(3)
    bad = out.read_bytes() + b"{}"  # a whole last line that is no record: named, the file left as it was
    out.write_bytes(bad)
    with pytest.raises(ValueError, match="line 5: expected a JSON object with a string \"id\""):
        read_results(str(out), repair=True)
    assert out.read_bytes() == bad
    out.write_bytes(bad[:-2] + b'{"id": "\xc3')  # a write cut inside a character: not UTF-8, a cut line
    assert read_results(str(out), repair=True) == records and out.read_bytes() == bad[:-2]


def test_repeated_architectures_are_read_once(tmp_path, capsys):
    first = tmp_path / "r.jsonl"
    run_scoring(str(first), n=2, batch_size=4)
    lines = first.read_text().splitlines()
    archs = tmp_path / "archs.jsonl"
    archs.write_text("\n".join(lines + lines[:1]) + "\n")  # a retried id appears twice
    assert [a.id for a in read_archs(str(archs))] == [r["id"] for r in _lines(first)]
    assert "1 repeated architectures scored once" in capsys.readouterr().err
    listed = tmp_path / "archs.json"
    listed.write_text(json.dumps([a.to_dict() for a in sample(SPACES["small"], 3, 1)]))
    assert [a.id for a in read_archs(str(listed))] == [a.id for a in sample(SPACES["small"], 3, 1)]


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "scores": {}}\n[1, 2]\n', 'line 2: expected a JSON object with a string "id"'),
    ('{"scores": {}}\n', 'line 1: expected a JSON object with a string "id"'),
    ('{"id": "a", "scores": null}\n', 'line 1: "scores" is None, not an object'),
    ('{"id": "a"\n', "line 1: not JSON"),
    ('{"id": "a", "scores": {}}\n{"id": "b", }\n',
     "line 2: not JSON (Expecting property name enclosed in double quotes, column 13)"),
])
def test_malformed_results_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}, {message}")):
        read_results(str(path))


def test_results_line_not_utf8_is_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a", "scores": {}}\n\n{"id": "\xff"}\n')
    with pytest.raises(ValueError, match=f"{path}, line 3: not UTF-8 text"):
        read_results(str(path))


def test_ground_truth_lines_are_read_as_their_architectures(tmp_path):
    vit = sample(SPACES["autoformer"], 1, seed=2)[0]
    pit = sample(SPACES["pit"], 1, seed=2)[0]
    path = tmp_path / "truth.jsonl"
    path.write_text("\n".join(json.dumps({**a.to_dict(), "acc": {"c100_kd": 70.0, "c100_base": None}})
                              for a in (vit, pit)) + "\n")
    assert read_archs(str(path)) == [vit, pit]


@pytest.mark.parametrize("head", [b"[\n", b""])  # a JSON list, JSON lines
def test_architectures_line_not_utf8_is_named(tmp_path, head):
    path = tmp_path / "archs.json"
    arch = json.dumps(SPACES["small"].draw(random.Random(0)).to_dict()).encode()
    path.write_bytes(head + arch + b"\n\n" + arch.replace(b"embed_dim", b"embed_\xe9dim") + b"\n")
    line = 3 + head.count(b"\n")
    with pytest.raises(ValueError, match=f"{path}, line {line}: not UTF-8 text"):
        read_archs(str(path))


def test_failed_architecture_is_recorded_and_the_run_goes_on(tmp_path):
    data = tmp_path / "six.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((20, 6, 6)), y=rng.integers(0, 3, 20))
    archs = tmp_path / "archs.json"
    small = [a.to_dict() for a in sample(SPACES["small"], 8, 0)]
    assert {d["patch_size"] for d in small} == {2, 4}  # 6x6 images: patch 2 works, patch 4 does not
    archs.write_text(json.dumps(small))
    out = tmp_path / "r.jsonl"
    records = run_scoring(str(out), archs=str(archs), data=str(data), batch_size=8)
    assert records == read_results(str(out))
    for r in records:
        if r["arch"]["patch_size"] == 4:
            assert r["error"] == "ValueError: img_size=6 is not divisible by patch_size=4"
        else:
            assert set(r["scores"]) == {"grad_norm", "snip"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-1), "--seed -1: expected a non-negative integer"),
    (dict(dtype="fp64"), "dtype='fp64'; valid: fp32, bf16, fp16"),
    (dict(proxies="grad_norm,snip"), "unknown proxy 'grad_norm,snip'"),
    # a batch of 1: every architecture failed, one by one, and evaluate said so only after all of them
    (dict(batch=1, proxies=["params", "zico", "jacob_cov"]),
     r"zico, jacob_cov need at least 2 examples; the batch holds 1"),
])
def test_score_archs_refuses_bad_settings(tmp_path, kwargs, message):
    kwargs = dict(kwargs)
    batch = load_batch("digits", kwargs.pop("batch", 4))
    with pytest.raises(ValueError, match=message):
        score_archs(sample(SPACES["small"], 1), batch, str(tmp_path / "r.jsonl"), **kwargs)
    assert not (tmp_path / "r.jsonl").exists()


BASE = dict(space="small", n=1, data="synthetic", batch_size=4, proxies=["grad_norm"])


@pytest.mark.parametrize("change", [
    dict(space="imagenet"), dict(data="digits"), dict(batch_size=3), dict(seed=1), dict(proxies=["snip"]),
    dict(proxies=["grad_norm", "snip"]), dict(mode="per_layer"), dict(params="weights"), dict(dtype="bf16"),
])
def test_every_setting_that_changes_a_score_is_in_the_resume_key(tmp_path, change):
    out = tmp_path / "r.jsonl"
    run_scoring(str(out), **BASE)
    before = out.read_text()
    with pytest.raises(ValueError, match="holds results for settings"):
        run_scoring(str(out), resume=True, **{**BASE, **change})
    assert out.read_text() == before


def test_records_of_another_initialisation_are_not_resumed(tmp_path, monkeypatch):
    """The same seed gives other weights after a change of ``ViT.reset_parameters``: ``--resume`` must
    refuse the old records rather than mix two initialisations in one results file."""
    out = tmp_path / "r.jsonl"
    run_scoring(str(out), **BASE)
    before = out.read_text()
    monkeypatch.setattr(vitcore.runs, "INIT_SCHEME", "another initialisation")
    with pytest.raises(ValueError, match="holds results for settings"):
        run_scoring(str(out), resume=True, **BASE)
    assert out.read_text() == before


def test_a_changed_data_file_is_not_resumed(tmp_path):
    data, out = tmp_path / "d.npz", tmp_path / "r.jsonl"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((6, 8, 8)), y=np.arange(6) % 3)
    run_scoring(str(out), n=1, data=str(data), batch_size=4)
    np.savez(data, x=rng.random((6, 8, 8)), y=np.arange(6) % 3)  # same name, other images
    with pytest.raises(ValueError, match="holds results for settings"):
        run_scoring(str(out), n=1, data=str(data), batch_size=4, resume=True)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_out_that_is_not_a_regular_file_is_never_moved(tmp_path, kind):
    if kind == "fifo":
        out = str(tmp_path / "pipe")
        os.mkfifo(out)
    else:
        out = os.devnull
        if not os.path.exists(out) or os.path.isfile(out):
            pytest.skip("no null device here")
    before = os.stat(out)
    for resume in (False, True):
        with pytest.raises(ValueError, match="is not a regular file"):
            run_scoring(out, **BASE, resume=resume)
    after = os.stat(out)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode) and not stat.S_ISREG(after.st_mode)
    assert not os.path.exists(out + ".bak")


@pytest.mark.skipif(fcntl is None, reason="no fcntl: results files are not locked here")
@pytest.mark.parametrize("resume", [False, True])
def test_a_second_writer_is_refused_and_changes_nothing(tmp_path, resume):
    out = tmp_path / "r.jsonl"
    run_scoring(str(out), **BASE)
    before = out.read_text()
    with open(out, "a") as held:  # another run writing it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="is being written by another run"):
            run_scoring(str(out), **{**BASE, "n": 2}, resume=resume)
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]
    run_scoring(str(out), **{**BASE, "n": 2}, resume=True)  # released: the next run goes ahead
    assert len(_lines(out)) == 2


def test_space_size_counts_every_architecture():
    tiny = SearchSpace(name="tiny", img_size=8, in_chans=1, num_classes=2, patch_sizes=(2, 4), embed_dims=(8,),
                       depths=(1, 3), num_heads=(1, 2), mlp_ratios=(2.0,), head_dim=4)
    every = {Arch(embed_dim=d, depth=L, num_heads=h, mlp_ratio=(2.0,) * L, head_dim=4, patch_size=p).id
             for p in tiny.patch_sizes for d in tiny.embed_dims for L in tiny.depths
             for h in itertools.product(tiny.num_heads, repeat=L)}
    assert tiny.size == len(every) == 2 * (2 + 8)
    assert {a.id for a in sample(tiny, len(every))} == every
    assert SPACES["small"].size == 44_280


@pytest.mark.parametrize("n", [44_281, 0])
def test_n_outside_the_space_fails_before_sampling(tmp_path, n):
    with pytest.raises(ValueError, match=f"--n {n}: the 'small' space holds 44,280 architectures"):
        run_scoring(str(tmp_path / "r.jsonl"), n=n)
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's /sys, read-only even for root")
def test_an_unwritable_out_is_a_clean_error():
    with pytest.raises(ValueError, match="--out '/sys/vitcore-test/r.jsonl' cannot be written"):
        run_scoring("/sys/vitcore-test/r.jsonl", **BASE)


@pytest.mark.parametrize("content, message", [
    ('{"depth": 1}\n\nnot json\n', "line 1: not an architecture"),
    ('{A}\n\n{B}\nnot json\n', "line 4: not JSON"),
    ('{A}\n\n[1]\n', "line 3: not an architecture"),
    ('[{A},\n {B},\n 7]', "entry 3: not an architecture"),
    ('[{A},\n {B}\n {A}]', "line 3: not JSON"),
    ('{"arch": {A}, "id": "x"}\n{"arch": 5}\n', "line 2: not an architecture"),
])
def test_a_bad_architecture_is_reported_with_file_and_line(tmp_path, content, message):
    a, b = (json.dumps(x.to_dict()) for x in sample(SPACES["small"], 2))
    path = tmp_path / "archs.jsonl"
    path.write_text(content.replace("{A}", a).replace("{B}", b))
    with pytest.raises(ValueError, match=f"{path}, {message}"):
        read_archs(str(path))


@pytest.mark.parametrize("reader", [read_archs, read_results])
def test_a_directory_is_reported_as_one(tmp_path, reader):
    with pytest.raises(ValueError, match="is a directory, not a file"):
        reader(str(tmp_path))


@pytest.mark.parametrize("call, error, message", [
    (lambda b, o: score_archs(None, b, o), TypeError, "archs must be a list of Arch"),
    (lambda b, o: score_archs(["x"], b, o), TypeError, "archs must be a list of Arch"),
    (lambda b, o: score_archs(sample(SPACES["small"], 1), "digits", o), TypeError, "batch must be a vitcore.data.Batch"),
    (lambda b, o: score_archs(sample(SPACES["small"], 1), b, None), TypeError, "--out must be a path"),
    (lambda b, o: score_archs(sample(SPACES["small"], 1), b, o, seed=1.5), TypeError, "--seed 1.5: expected an int"),
    (lambda b, o: score_archs(sample(SPACES["small"], 1), b, o, device="gpu"), ValueError, "device='gpu'"),
    (lambda b, o: score_archs(sample(SPACES["small"], 1), b, o, mode="max"), ValueError, "mode='max'"),
    (lambda b, o: score_archs(sample(SPACES["small"], 1), b, o, params="some"), ValueError, "params='some'"),
    (lambda b, o: score_archs(sample(SPACES["small"], 1), b, o, resume="yes"), TypeError, "resume='yes'"),
    (lambda b, o: run_scoring(o, n="5"), TypeError, "--n '5': expected an int"),
    (lambda b, o: run_scoring(o, space=None), TypeError, "space name must be a str"),
])
def test_api_inputs_of_the_wrong_kind_are_named(tmp_path, call, error, message):
    out = str(tmp_path / "r.jsonl")
    with pytest.raises(error, match=message):
        call(load_batch("digits", 4), out)
    assert not os.path.exists(out)


def test_json_nested_too_deeply_is_named_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    archs, results = tmp_path / "a.json", tmp_path / "r.jsonl"
    archs.write_text(deep)
    results.write_text(deep + "\n")
    with pytest.raises(ValueError, match="JSON nested too deeply to hold architectures"):
        read_archs(str(archs))
    with pytest.raises(ValueError, match="line 1: JSON nested too deeply to be read"):
        read_results(str(results))

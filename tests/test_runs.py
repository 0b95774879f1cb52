"""Scoring runs (vitcore.runs): the records, resume, backups, the readers of architectures and results."""
import json

import numpy as np
import pytest

from vitcore.data import load_batch
from vitcore.runs import read_archs, read_results, run_scoring, score_archs
from vitcore.space import SPACES, sample


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
        assert r["settings"] == {"data": "digits", "batch_size": 8, "seed": 5, "proxies": ["snip", "params"],
                                 "mode": "global", "params": "all", "dtype": "fp32", "device": "cpu"}
    again = score_archs(archs[:1], batch, str(tmp_path / "again.jsonl"), proxies=["snip", "params"], seed=5)
    assert again[0]["scores"] == records[0]["scores"]  # same arch and seed, same weights and batch


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
])
def test_malformed_results_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{path}, {message}".replace("[", r"\[")):
        read_results(str(path))


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
])
def test_score_archs_refuses_bad_settings(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        score_archs(sample(SPACES["small"], 1), load_batch("digits", 4), str(tmp_path / "r.jsonl"), **kwargs)
    assert not (tmp_path / "r.jsonl").exists()

"""Model families (``vitcore.families``): a user's builder (``--family package.module:function``) through
``vitcore score`` (results lines, --resume, --workers 2) and ``vitcore evaluate``; the checks made up
front; the resume key. The timm family's tests are in test_timm.py."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch
from scipy.stats import kendalltau
from torch import nn

from vitcore.cli import main
from vitcore.data import load_batch
from vitcore.distributed import TIMING_FIELDS
from vitcore.examples import cnn_family
from vitcore.families import Record, get_family
from vitcore.runs import read_archs, read_results, run_scoring, score_archs
from vitcore.space import get_space

CNN = "vitcore.examples.cnn_family:build"
PROXIES = "grad_norm,snip,synflow,nwot"
RECORDS = [{"id": "cnn-a", "widths": [4, 8], "kernel": 3}, {"id": "cnn-b", "widths": [8], "kernel": 5},
           {"widths": [6, 6, 6], "kernel": 3}]  # the last one unlabelled: its id hashes its fields


def _write_records(path, records=RECORDS):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _score(tmp_path, out, *extra):
    archs = _write_records(tmp_path / "cnn.jsonl")
    return main(["score", "--family", CNN, "--archs", archs, "--batch-size", "8", "--proxies", PROXIES,
                 "--device", "cpu", "--out", str(out), *extra])


# -- a user's builder --

def not_a_module(record, device, seed):
    return {"widths": record["widths"]}


def raises_on_b(record, device, seed):
    if record["widths"] == [8]:
        raise KeyError("depth")
    return cnn_family.build(record, device, seed)


NOT_CALLABLE = 3


class _Fails(nn.Module):
    """A model whose forward raises ``error`` (the shape asserts of timm's patch embedding, a user's
    indexing mistake, a wrong call)."""

    def __init__(self, error):
        super().__init__()
        self.w, self.error = nn.Parameter(torch.ones(1)), error

    def forward(self, x):
        raise self.error


def forward_fails_on_a_and_b(record, device, seed):
    """cnn-a's forward raises an AssertionError, cnn-b's a TypeError; the third builds as the example does."""
    errors = {(4, 8): AssertionError("Input height (8) doesn't match model (32)."),
              (8,): TypeError("forward() takes 2 positional arguments but 3 were given")}
    error = errors.get(tuple(record["widths"]))
    return _Fails(error).to(device) if error else cnn_family.build(record, device, seed)


def exits(record, device, seed):
    raise SystemExit(0)


def twelve_classes(record, device, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12)).to(device)


def test_example_builder_is_seeded_and_reads_its_fields():
    device = torch.device("cpu")
    a, b = (cnn_family.build(RECORDS[0], device, 7) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    other = cnn_family.build(RECORDS[0], device, 8)
    assert not torch.equal(a[0].weight, other[0].weight)
    assert [m.out_channels for m in a.modules() if isinstance(m, nn.Conv2d)] == [4, 8]
    assert a(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"widths=\[\]"):
        cnn_family.build({"widths": []}, device, 0)


def test_score_resume_evaluate_with_a_user_family(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert _score(tmp_path, out) == 0
    table = capsys.readouterr().out
    assert "3 scored, 0 failed" in table and "cnn-a" in table
    records = read_results(str(out))
    unlabelled = Record.from_dict(RECORDS[2]).id
    assert [r["id"] for r in records] == ["cnn-a", "cnn-b", unlabelled] and len(unlabelled) == 12
    for r, given in zip(records, RECORDS):
        assert r["arch"] == given
        assert r["settings"]["family"] == CNN and r["settings"]["builder"] == CNN
        assert r["params"] == sum(p.numel() for p in cnn_family.build(given, torch.device("cpu"), 0).parameters())
        assert all(math.isfinite(v) for v in r["scores"].values()) and set(r["scores"]) == set(PROXIES.split(","))
    assert records[0]["scores"] != records[1]["scores"]

    # --resume keeps the three lines and scores nothing
    before = out.read_text()
    assert _score(tmp_path, out, "--resume") == 0
    assert out.read_text() == before

    # a new record: scored alone on resume, the others kept as they were
    more = RECORDS + [{"id": "cnn-d", "widths": [2, 4], "kernel": 1}]
    _write_records(tmp_path / "cnn.jsonl", more)
    assert main(["score", "--family", CNN, "--archs", str(tmp_path / "cnn.jsonl"), "--batch-size", "8",
                 "--proxies", PROXIES, "--device", "cpu", "--out", str(out), "--resume"]) == 0
    lines = out.read_text().splitlines()
    assert lines[:3] == before.splitlines() and json.loads(lines[3])["id"] == "cnn-d"

    # evaluate on them, against a CSV truth naming the records' ids
    truth = tmp_path / "truth.csv"
    truth.write_text("id,acc_mean\ncnn-a,0.61\ncnn-b,0.55\n" f"{unlabelled},0.70\ncnn-d,0.40\n")
    assert main(["evaluate", "--scores", str(out), "--truth", str(truth), "--out", str(tmp_path / "ev")]) == 0
    text = (tmp_path / "ev" / "evaluation.md").read_text()
    acc = {"cnn-a": 0.61, "cnn-b": 0.55, unlabelled: 0.70, "cnn-d": 0.40}
    scored = read_results(str(out))
    for proxy in PROXIES.split(","):
        tau = kendalltau([r["scores"][proxy] for r in scored], [acc[r["id"]] for r in scored]).statistic
        assert f"| {proxy} | {tau:.3f} |" in text and text.count(f"| {proxy} |") == 1


def test_workers_2_equal_one_worker(tmp_path, threads_of_workers):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    threads_of_workers(2)  # the scores are the same to the bit with as many threads as each worker
    assert _score(tmp_path, one) == 0
    assert _score(tmp_path, two, "--workers", "2") == 0
    by_id = {r["id"]: r for r in read_results(str(two))}
    for r in read_results(str(one)):
        assert by_id[r["id"]]["scores"] == r["scores"] and by_id[r["id"]]["settings"] == r["settings"]
    assert len(by_id) == len(RECORDS)


def test_the_family_is_part_of_the_resume_key(tmp_path):
    batch = load_batch("digits", 8, 0)
    out = str(tmp_path / "r.jsonl")
    score_archs(RECORDS[:1], batch, out, proxies=["grad_norm"], device="cpu", family=CNN)
    other = f"{__name__}:raises_on_b"
    with pytest.raises(ValueError, match="holds results for settings"):
        score_archs(RECORDS[:1], batch, out, proxies=["grad_norm"], device="cpu", family=other, resume=True)


def test_a_record_the_builder_rejects_is_recorded_and_the_run_goes_on(tmp_path):
    records = run_scoring(str(tmp_path / "r.jsonl"), archs=_write_records(tmp_path / "a.jsonl"), batch_size=8,
                          proxies=["grad_norm"], device="cpu", family=f"{__name__}:raises_on_b")
    assert [("scores" in r) for r in records] == [True, False, True]
    assert records[1]["error"].startswith(f"ValueError: family {__name__}:raises_on_b could not build record "
                                          "cnn-b (KeyError: 'depth')")


def test_any_error_of_one_architectures_model_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    """An AssertionError or TypeError from a model's forward ended the run with a traceback or exit 2,
    leaving the later architectures unscored (round four, cases 9 and 10)."""
    archs = _write_records(tmp_path / "a.jsonl")
    records = run_scoring(str(tmp_path / "r.jsonl"), archs=archs, batch_size=8, proxies=["grad_norm", "snip"],
                          device="cpu", family=f"{__name__}:forward_fails_on_a_and_b")
    assert [("scores" in r) for r in records] == [False, False, True]
    assert records[0]["error"] == "AssertionError: Input height (8) doesn't match model (32)."
    assert records[1]["error"] == "TypeError: forward() takes 2 positional arguments but 3 were given"
    assert main(["score", "--family", f"{__name__}:forward_fails_on_a_and_b", "--archs", archs, "--batch-size",
                 "8", "--proxies", "grad_norm,synflow", "--out", str(tmp_path / "c.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "1 scored, 2 failed" in out
    assert "cnn-a         failed: AssertionError: Input height (8) doesn't match model (32)." in out


def test_a_builder_that_exits_is_an_error_of_its_record(tmp_path):
    (record,) = run_scoring(str(tmp_path / "r.jsonl"), archs=_write_records(tmp_path / "a.jsonl", RECORDS[:1]),
                            batch_size=8, proxies=["grad_norm"], device="cpu", family=f"{__name__}:exits")
    assert record["error"] == f"ValueError: family {__name__}:exits could not build record cnn-a (SystemExit: 0)"


def test_a_family_module_that_exits_on_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "train_script.py").write_text("import argparse\nargparse.ArgumentParser().parse_args(['--lr'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"family 'train_script:build': importing module 'train_script' exited "
                                         r"\(SystemExit 2\): put a script's argument parsing under if __name__"):
        get_family("train_script:build")


@pytest.mark.parametrize("family, error, message", [
    ("resnet", ValueError, "unknown family 'resnet'; valid: vitcore"),
    ("no_such_package_xyz.models:build", ValueError, "module 'no_such_package_xyz.models' does not import"),
    ("vitcore.examples.cnn_family:nope", ValueError, "vitcore.examples.cnn_family has no 'nope'"),
    (f"{__name__}:NOT_CALLABLE", TypeError, "NOT_CALLABLE is a int, not a function"),
    (":build", ValueError, "unknown family ':build'"),
    (3, TypeError, "family=3 must be a string"),
])
def test_bad_families_are_refused_up_front(tmp_path, family, error, message):
    with pytest.raises(error, match=message):
        get_family(family)
    with pytest.raises(error, match=message):
        run_scoring(str(tmp_path / "r.jsonl"), archs=_write_records(tmp_path / "a.jsonl"), batch_size=8,
                    proxies=["grad_norm"], device="cpu", family=family)
    assert not (tmp_path / "r.jsonl").exists()


def test_a_builder_returning_no_module_stops_the_run(tmp_path, capsys):
    family = f"{__name__}:not_a_module"
    with pytest.raises(TypeError, match=f"{family}: {__name__}:not_a_module returned a dict for record cnn-a, "
                                        "not a torch.nn.Module"):
        run_scoring(str(tmp_path / "r.jsonl"), archs=_write_records(tmp_path / "a.jsonl"), batch_size=8,
                    proxies=["grad_norm"], device="cpu", family=family)
    with pytest.raises(SystemExit) as stop:
        main(["score", "--family", family, "--archs", str(tmp_path / "a.jsonl"), "--batch-size", "8",
              "--out", str(tmp_path / "c.jsonl")])
    assert stop.value.code == 2 and "returned a dict for record cnn-a" in capsys.readouterr().err


def test_checks_before_scoring(tmp_path):
    with pytest.raises(ValueError, match=f"--family {CNN}: give its architectures with --archs FILE"):
        run_scoring(str(tmp_path / "r.jsonl"), family=CNN, device="cpu")
    with pytest.raises(ValueError, match=f"--attention sdpa: family {CNN} builds its own modules"):
        run_scoring(str(tmp_path / "r.jsonl"), archs=_write_records(tmp_path / "a.jsonl"), family=CNN,
                    attention="sdpa", device="cpu")
    clash = _write_records(tmp_path / "clash.jsonl", [RECORDS[0], {"id": "cnn-a", "widths": [2]}])
    with pytest.raises(ValueError, match=r"clash.jsonl, line 2: id 'cnn-a' names another architecture at "
                                         r".*clash.jsonl, line 1"):
        read_archs(clash, CNN)
    flag = _write_records(tmp_path / "flag.jsonl", [{**RECORDS[0], "flag": True}, {**RECORDS[0], "flag": 1}])
    with pytest.raises(ValueError, match=r"flag.jsonl, line 2: id 'cnn-a' names another architecture"):
        read_archs(flag, CNN)  # true and 1 are equal in Python, not to a builder reading JSON
    batch = load_batch("digits", 8, 0, get_space("small"))
    with pytest.raises(ValueError, match=r"archs\[2\]: id 'cnn-a' names another architecture at archs\[0\]"):
        score_archs([RECORDS[0], RECORDS[1], {"id": "cnn-a", "widths": [2]}], batch, str(tmp_path / "s.jsonl"),
                    family=CNN, device="cpu")
    assert not (tmp_path / "s.jsonl").exists()
    for bad, message in (([1, 2], "entry 1: not an architecture"), ([{"id": 5, "widths": [2]}], '"id" 5'),
                         ([{"widths": [2], "x": float("nan")}], "not JSON")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            read_archs(str(tmp_path / "bad.json"), CNN)
    with pytest.raises(TypeError, match=r"archs\[0\] is a int; family .* scores records"):
        score_archs([3], load_batch("digits", 8, 0), str(tmp_path / "s.jsonl"), family=CNN)
    assert not (tmp_path / "r.jsonl").exists()


def test_vitcore_family_records_are_unchanged(tmp_path):
    """The default family scores the spaces' architectures as before: no family in the settings, the
    same scores with ``family="vitcore"`` as without it."""
    space = get_space("small")
    from vitcore.space import sample

    archs, batch = sample(space, 2, 0), load_batch("digits", 8, 0)
    plain = score_archs(archs, batch, str(tmp_path / "a.jsonl"), proxies=["grad_norm", "dss"], device="cpu")
    named = score_archs(archs, batch, str(tmp_path / "b.jsonl"), proxies=["grad_norm", "dss"], device="cpu",
                        family="vitcore")
    assert [r["scores"] for r in plain] == [r["scores"] for r in named]
    assert "family" not in plain[0]["settings"] and plain[0]["settings"] == named[0]["settings"]


def test_evaluate_scores_a_json_lines_truth_of_a_users_records(tmp_path, capsys):
    """``vitcore evaluate --family F --truth T.jsonl``: the truth's records scored (on digits, as vitcore
    score does) and ranked against its columns; the same τ as scoring them first and passing --scores."""
    acc = {"cnn-a": {"top1": 0.61}, "cnn-b": {"top1": 0.55}, "cnn-c": {"top1": 0.70}}
    truth = tmp_path / "truth.jsonl"
    rows = [dict(r, id=i, acc=a) for (i, a), r in zip(acc.items(), RECORDS)]
    truth.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", "--family", CNN, "--truth", str(truth), "--proxies", "grad_norm,synflow",
                 "--device", "cpu", "--out", str(tmp_path / "ev")]) == 0
    scored = read_results(str(tmp_path / "ev" / "scores.jsonl"))
    assert [r["id"] for r in scored] == list(acc) and scored[0]["settings"]["data"] == "digits"
    text = (tmp_path / "ev" / "evaluation.md").read_text()
    for proxy in ("grad_norm", "synflow"):
        tau = kendalltau([r["scores"][proxy] for r in scored], [acc[r["id"]]["top1"] for r in scored]).statistic
        assert f"| {proxy} | {tau:.3f} |" in text
    # a CSV truth names ids, not records: without --scores there is nothing to score
    (tmp_path / "t.csv").write_text("id,acc_mean\ncnn-a,0.5\ncnn-b,0.6\n")
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--family", CNN, "--truth", str(tmp_path / "t.csv"), "--out", str(tmp_path / "e2")])
    assert stop.value.code == 2 and f"--family {CNN}: give --scores" in capsys.readouterr().err


def test_a_vit_native_proxy_on_a_users_cnn_names_what_it_needs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _score(tmp_path, tmp_path / "r.jsonl", "--proxies", "grad_norm,dss")
    assert stop.value.code == 2
    assert ("dss needs a vitcore ViT or PiT or a timm VisionTransformer (they read its blocks' attn.qkv, attn.proj, "
            "mlp.fc1, mlp.fc2, norm2), got Sequential") in capsys.readouterr().err


def test_an_architecture_every_proxy_failed_on_names_the_shared_reason_or_each():
    from vitcore.runs import _EveryProxyFailed

    same = {"grad_norm": "the data pass failed: KeyError: 'x'", "synflow": "the synflow pass failed: KeyError: 'x'"}
    assert str(_EveryProxyFailed(same)) == "KeyError: 'x'"
    apart = {"nwot": "ValueError: no codes", "synflow": "the synflow pass failed: KeyError: 'x'"}
    assert str(_EveryProxyFailed(apart)) == ("every proxy failed; nwot: ValueError: no codes; synflow: the synflow "
                                             "pass failed: KeyError: 'x'")


@pytest.mark.parametrize("make, error, message", [
    (lambda: Record({"widths": [4]}, 5), TypeError, r'"id" 5 must be a string'),
    (lambda: Record([4], "a"), TypeError, "Record fields must be a dict of JSON values, got list"),
    (lambda: Record({"w": math.nan}, "a"), ValueError, "fields are not JSON"),
    (lambda: Record.from_dict({"id": "", "w": 1}), ValueError, '"id" is empty'),
    (lambda: Record.from_dict({"id": 3, "w": 1}), TypeError, '"id" 3 must be a string'),
])
def test_a_record_made_wrongly_is_named(make, error, message):
    """Record({"widths": [4]}, 5) reached score_archs and failed there with an AttributeError (round four)."""
    with pytest.raises(error, match=message):
        make()


def test_a_users_head_width_is_the_users(tmp_path):
    """A builder is not told the batch's classes (an .npz file's are its largest label + 1), so its head of
    12 on the 10 digits is scored, not refused as a timm or vitcore head of another width is."""
    (record,) = run_scoring(str(tmp_path / "r.jsonl"), archs=_write_records(tmp_path / "a.jsonl", RECORDS[:1]),
                            batch_size=8, proxies=["grad_norm"], device="cpu", family=f"{__name__}:twelve_classes")
    assert math.isfinite(record["scores"]["grad_norm"]), record


class _NoTimm:
    """A meta-path finder that makes timm uninstalled for the test's duration."""

    def find_spec(self, name, path=None, target=None):
        if name == "timm" or name.startswith("timm."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


def test_use_vitcore_attention_without_timm_routes_nothing(monkeypatch):
    """Without timm no model holds its attention: 0, the documented count for a model without any (it raised
    ModuleNotFoundError); the arguments are still checked."""
    import sys

    import vitcore

    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoTimm(), *sys.meta_path])
    assert vitcore.use_vitcore_attention(nn.Sequential(nn.Linear(2, 2))) == 0
    with pytest.raises(ValueError, match="attention='flash'"):
        vitcore.use_vitcore_attention(nn.Linear(2, 2), "flash")
    assert "timm" not in sys.modules


@pytest.mark.parametrize("name, shown", [("os:system", "system(command)"), ("json:dumps", "dumps(obj, *")])
def test_a_builder_that_cannot_take_record_device_seed_is_refused_up_front(name, shown, tmp_path, capsys):
    """It failed record by record and the run exited 1; now one line, exit 2, before any record."""
    with pytest.raises(TypeError, match=re.escape(f"family {name!r}: {shown}")):
        get_family(name)
    archs = tmp_path / "archs.jsonl"
    archs.write_text('{"width": 4}\n')
    with pytest.raises(SystemExit) as e:
        main(["score", "--family", name, "--archs", str(archs), "--out", str(tmp_path / "r.jsonl")])
    assert e.value.code == 2 and "cannot be called as (record, device, seed)" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_calibrate_and_rank_on_a_users_family(tmp_path, capsys):
    """A user's records scored, a rule fitted on five of them, and every record ranked by it: the records'
    ids (given or hashed) are those of the truth and the ranking, as for vitcore's ViTs."""
    records = [{"id": f"cnn-{i}", "widths": w, "kernel": k}
               for i, (w, k) in enumerate([([2], 3), ([4], 3), ([4, 8], 3), ([8], 5), ([6, 6], 3), ([8, 8], 5)])]
    out = tmp_path / "r.jsonl"
    assert main(["score", "--family", CNN, "--archs", _write_records(tmp_path / "cnn.jsonl", records),
                 "--batch-size", "8", "--proxies", "grad_norm,params", "--device", "cpu", "--out", str(out)]) == 0
    params = {r["id"]: r["params"] for r in read_results(str(out))}
    truth = tmp_path / "t.csv"  # accuracy follows the parameter count: the rule keeps params
    truth.write_text("id,acc_mean\n" + "".join(f"cnn-{i},{params[f'cnn-{i}'] / 1e4}\n" for i in range(5)))
    rule, ranked = tmp_path / "rule.json", tmp_path / "ranked.jsonl"
    assert main(["calibrate", "--scores", str(out), "--truth", str(truth), "--out", str(rule)]) == 0
    assert json.loads(rule.read_text())["proxy"] == "params"
    assert main(["rank", "--scores", str(out), "--rule", str(rule), "--out", str(ranked)]) == 0
    rows = [json.loads(line) for line in ranked.read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(params, key=params.get, reverse=True)


def test_torchrun_scores_a_users_family_as_one_process_does(tmp_path, monkeypatch):
    """docs/models.md: torchrun shares a user's records between its ranks as it does vitcore's spaces."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    common = ["score", "--family", CNN, "--archs", _write_records(tmp_path / "cnn.jsonl"), "--batch-size", "8",
              "--proxies", PROXIES, "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank computes
    try:
        assert main(common + ["--out", str(tmp_path / "one.jsonl")]) == 0
    finally:
        torch.set_num_threads(threads)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "vitcore",
                          *common, "--out", str(tmp_path / "two.jsonl")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = ([{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_results(str(tmp_path / f))]
                for f in ("one.jsonl", "two.jsonl"))
    assert sorted(two, key=lambda r: r["id"]) == sorted(one, key=lambda r: r["id"]) and len(one) == 3

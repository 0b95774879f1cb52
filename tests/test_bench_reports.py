"""The report scripts' writers and target rules on synthetic rows (their timing runs need a CUDA GPU):
a GPU run must not be lost to a formatting error, and each target must be judged from its numbers."""
import json
import re
import subprocess
import types

import pytest
import torch

from bench import attention_report, launch_overhead, param_stats_report, score_report
from bench.bench_attention import DTYPES, SHAPES
from vitcore.bench.env import environment


def _attention_rows(shape, dtype, N, ours_us, sdpa_us):
    return [{"shape": shape, "B": 64, "H": 12, "N": N, "dtype": dtype, "provider": p, "mode": m, "call_us": t,
             "host_us": 30.0, "gpu_us": t / 2} for p, t in (("vitcore", ours_us), ("sdpa", sdpa_us))
            for m in ("fwd", "fwd+bwd")]


def test_launch_overhead_judges_issue_12_targets_and_writes_its_report(tmp_path):
    doc = {"meta": environment("cpu"), "copy_gbps": 4000.0,
           "attention": _attention_rows("ViT-B", "bf16", 197, 90.0, 100.0)
           + _attention_rows("ViT-L", "fp16", 197, 110.0, 100.0) + _attention_rows("ViT-B N'=197", "fp32", 197, 50.0, 100.0)
           + _attention_rows("ViT-B N'=197", "fp32-tf32", 197, 40.0, 100.0),
           "param_stats": [{"model": "ViT-B", "n_tensors": 152, "bytes": 693e6, "floor_us": 173.25,
                            "vitcore_host_us": 12.0, "vitcore_gpu_us": 180.0, "vitcore_caller_us": 240.0,
                            "foreach_norm_host_us": 400.0, "foreach_norm_gpu_us": 300.0,
                            "foreach_norm_caller_us": 700.0}]}
    stem = str(tmp_path / "x-launch_overhead")
    launch_overhead.write(doc, stem)
    targets = {t["target"]: t for t in json.loads(open(stem + ".json").read())["targets"]}
    assert targets["flash_attention host time per fwd+bwd <= 60 µs"]["met"] is True
    limit = 1.3 * 173.25 + 20  # 245.2 µs
    assert targets[f"param_stats caller time, fresh grads, ViT-B <= 1.3 x floor + 20 µs = {limit:.1f} µs"]["met"]
    assert targets["bf16 fwd+bwd ViT-B: no slower than SDPA"]["met"] is True  # 100 / 90
    assert targets["fp16 fwd+bwd ViT-L: no slower than SDPA"]["met"] is False  # 100 / 110
    assert targets["fp32 fwd+bwd ViT-B N'=197: >= 1.5x SDPA fp32"]["met"] is True  # 2.0x
    assert targets["fp32-tf32 fwd+bwd ViT-B N'=197: >= 3.0x SDPA fp32"]["met"] is False  # 2.5x
    text = open(stem + ".md").read()
    assert "| fp16 fwd+bwd ViT-L: no slower than SDPA | 0.91x SDPA (110 vs 100 µs) | MISSED |" in text


def test_attention_report_writes_every_table(tmp_path):
    results = [{"shape": s, "dtype": d, "provider": p, "mode": m, "ms": 1.0 + (p == "vitcore"), "tflops": 10.0}
               for s in ("vit-b", "b-1025") for d in DTYPES for p in ("sdpa", "vitcore")
               for m in ("fwd", "fwd+bwd", "graph fwd+bwd")]
    checks = {("vit-b", "bf16"): {"vitcore": [1e-3] * 4, "torch": [1e-3] * 4, "ok": True},
              ("vit-b", "fp32"): {"error": "RuntimeError: x"}}
    path = tmp_path / "a.md"
    attention_report.write_report(str(path), environment("cpu"), results, checks, {}, {d: 100.0 for d in DTYPES})
    text = path.read_text()
    assert "## Targets" in text and f"vit-b {SHAPES['vit-b']}" in text and "error: RuntimeError: x" in text
    rows = attention_report.targets(results)
    assert rows and all(not met for *_, met in rows)  # vitcore at 2 ms against SDPA's 1 ms meets none


def test_param_stats_report_writes_rows_per_model(tmp_path):
    rows = [{"model": "ViT-Ti", "provider": p, "n_params": 5.7e6, "n_tensors": 152, "bytes": 45e6, "floor_ms": 0.015,
             "agrees": True, "sync_ms": t, "stream_ms": t, "graph_ms": t / 4}
            for p, t in (("loop", 17.0), ("foreach", 2.0), ("cat", 1.2), ("vitcore", 0.04), ("vitcore fresh g", 0.05))]
    meta = {**environment("cpu"), "rows": rows, "copy_GBps": 3000.0, "correctness": {"ok": True},
            "host_us": {"ViT-Ti": {"same_tensors": 10.0, "fresh_g_new_addresses": 12.0, "plan_lookup": 2.0,
                                   "pointer_maps": 3.0, "uncached_sync": 900.0}}}
    stem = str(tmp_path / "p")
    param_stats_report.write(meta, stem)
    text = open(stem + ".md").read()
    assert "ViT-Ti vitcore: sync 0.040 ms" in text and json.loads(open(stem + ".json").read())["rows"] == rows


def test_score_report_run_on_cpu_writes_both_files(tmp_path):
    """Loop and vitcore on a CPU build the same weights: their scores agree to fp32 rounding, τ against
    the float64 reference is taken on every architecture, and the CPU target is judged."""
    out = str(tmp_path / "score")
    result = score_report.run(out, n=3, batch_size=4, space_name="small", device="cpu", full_family_n=1, ref_n=3,
                              rounds=2)
    assert result["complete"] and len(result["rows"]) == 3 and result["speedup"] > 0
    providers = result["providers"]
    assert list(providers) == ["loop", "vitcore"] and providers["vitcore"]["max_rel_diff_vs_loop"] <= 1e-6
    assert all(len(r["reference"]["cpu"]) == 2 for r in result["rows"])
    assert set(providers["vitcore"]["mean_ms"]) == {"build_s", "passes_s", "read_s"}
    assert [t["target"].startswith("issue 13 (CPU)") for t in result["targets"]] == [True]
    assert set(result["family"]) == set(score_report.SETS)
    assert json.loads(open(out + ".json").read())["complete"] is True and open(out + ".md").read().startswith("#")
    for kwargs, message in ((dict(n=0), "n=0"), (dict(providers=["vitcore"]), "need 'loop'"),
                            (dict(space_name="nope"), "space 'nope'"), (dict(workers=[0]), r"workers=\[0\]"),
                            (dict(full_family_n=-1, n=1, space_name="small", batch_size=2, ref_n=1),
                             "full_family_n=-1 >= 0")):
        with pytest.raises(ValueError, match=message):
            score_report.run(out, device="cpu", **kwargs)
    for workers in (2, [2.0], [True]):
        with pytest.raises(TypeError, match=r"workers=.* must be a list of ints"):
            score_report.run(out, device="cpu", workers=workers)
    before = open(out + ".json").read()
    with pytest.raises(ValueError, match=re.escape(f"{out + '.json'!r} exists (an earlier run)")):
        score_report.run(out, n=1, batch_size=2, space_name="small", device="cpu", ref_n=1, rounds=1)
    assert open(out + ".json").read() == before  # the earlier run is kept


def test_score_report_workers_run_is_a_whole_vitcore_score_run(tmp_path):
    """``workers=[2]``: one ``vitcore score --workers 2`` process run (gloo ranks on this CPU) over the same
    architectures, batch and seed: its scores are the in-process vitcore provider's, and it is judged.
    The report's folder is made if missing."""
    out = str(tmp_path / "new" / "folder" / "score")
    result = score_report.run(out, n=3, batch_size=4, space_name="small", device="cpu", data="digits", ref_n=3,
                              rounds=1, workers=[2])
    row = result["workers"]["2"]
    assert row["seconds"] > 0 and row["archs_per_s"] == pytest.approx(3 / row["seconds"])
    assert all(row["tau"][q] is not None for q in score_report.PROXIES)
    assert row["max_rel_diff_vs_vitcore"] <= 1e-6  # same device, seed and batch: the same weights and scores
    text = open(out + ".md").read()
    assert "`vitcore score --workers K`" in text and "\n| 2 | " in text


def test_score_report_keeps_its_results_when_a_workers_run_fails(tmp_path, monkeypatch):
    """A ``vitcore score --workers K`` process that exits non-zero is recorded in the report, not raised
    after the providers were timed (a GPU run must not lose them)."""
    failed = subprocess.CompletedProcess([], 1, "", "Traceback ...\nRuntimeError: rank 3 lost\n")
    monkeypatch.setattr(score_report, "subprocess", types.SimpleNamespace(run=lambda *a, **k: failed))
    out = str(tmp_path / "score")
    result = score_report.run(out, n=2, batch_size=4, space_name="small", device="cpu", ref_n=2, rounds=1,
                              workers=[4])
    assert result["complete"] and result["workers"] == {"4": {"error": "exited with 1: Traceback ... / "
                                                                     "RuntimeError: rank 3 lost"}}
    assert "| 4 | failed: exited with 1:" in open(out + ".md").read()


def test_score_report_is_written_before_the_workers_runs(tmp_path, monkeypatch):
    """A run stopped during the workers runs (the GPU suite stops a part over its budget) keeps the
    in-process providers' report: written, marked incomplete, the workers runs named as not run."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(score_report, "workers_run", stopped)
    out = str(tmp_path / "score")
    with pytest.raises(KeyboardInterrupt):
        score_report.run(out, n=2, batch_size=4, space_name="small", device="cpu", ref_n=2, rounds=1, workers=[2, 4])
    doc = json.loads(open(out + ".json").read())
    assert doc["complete"] is False and set(doc["providers"]) == {"loop", "vitcore"} and doc["workers"] == {}
    text = open(out + ".md").read()
    assert "| loop (" in text and "`vitcore score --workers K` for K = 2, 4: not run yet" in text


def test_workers_targets_and_differences_judge_only_whole_runs():
    """A workers run that failed or left architectures unscored is not judged; the score differences are
    taken over the ids both runs scored, a zero base score giving 0 if matched, else inf."""
    def rec(g, s):
        return {"scores": {"grad_norm": g, "snip": s}}
    base = {"a": rec(2.0, 0.0), "b": rec(4.0, 1.0)}
    assert score_report._max_rel_diff({"a": rec(2.2, 0.0)}, base) == pytest.approx(0.1)
    assert score_report._max_rel_diff({"a": rec(2.0, 1e-9)}, base) == float("inf")
    assert score_report._max_rel_diff({"c": rec(1.0, 1.0)}, base) is None
    fast = {"seconds": 1.0, "speedup": 30.0, "tau": {"grad_norm": 1.0, "snip": 1.0}}
    workers = {"2": {"error": "exited with 1: boom"}, "4": {**fast, "missing": 3}}
    [row] = score_report._targets({}, workers, torch.device("cuda"))
    assert row["met"] is False and "2 workers not judged: failed (exited with 1: boom)" in row["measured"]
    assert "4 workers not judged: 3 not scored" in row["measured"]
    assert score_report._targets({}, {"8": {**fast, "missing": 0}}, torch.device("cuda"))[0]["met"] is True


@pytest.mark.parametrize("value", ["x", "2,x", "0", "-1", "2.5"])
def test_score_report_refuses_a_bad_workers_list_naming_it(value, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["score_report", "--device", "cpu", "--out", "unused", "--workers", value])
    with pytest.raises(SystemExit) as exit_info:
        score_report.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--workers" in err and repr(value) in err, err


def test_attention_logit_range_refuses_to_run_without_the_triton_path(triton_off, tmp_path):
    from bench import attention_logit_range

    with pytest.raises(SystemExit) as exit_info:
        attention_logit_range.main(["--out", str(tmp_path / "r.md"), "--device", "cpu"])
    assert exit_info.value.code == 2 and not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("on_eager", [False, True])
def test_attention_logit_range_errors_at_ordinary_logits_are_rounding(triton_on, on_eager):
    """At |logit| ~4 both paths are within fp32 rounding of float64: the report's small numbers are errors,
    not a broken comparison. Bound: each output sums N' products of d-term dots (a few u·(d + N') relative),
    and a logit's own rounding, |logit|·u, moves its probability by as much."""
    from bench import attention_logit_range

    e = attention_logit_range.errors(1.0, "cuda" if torch.cuda.is_available() else "cpu", on_eager)
    B, H, N, d = attention_logit_range.SHAPE
    bound = 8 * 2.0**-24 * (d + N) * max(1.0, e["logit"])
    assert 1 < e["logit"] < 10 and e["dq_norm"] == pytest.approx(e["dq64_norm"], rel=bound)
    assert all(0 < e[name] < bound for name in ("out", "dq", "dk", "dv")), (e, bound)

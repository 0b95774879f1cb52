"""bench.gpu_suite on a CPU: the dry run, the refusal without CUDA, and its machinery with stand-in parts."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import bench.gpu_suite as suite
from bench import suite_targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "bench.gpu_suite", *args], cwd=REPO, capture_output=True, text=True)


def test_dry_run_imports_every_part_and_lists_its_budget():
    done = _run("--dry-run")
    assert done.returncode == 0, done.stderr
    listed = dict(re.findall(r"^part (\w+): budget (\d+) s; imports;", done.stdout, re.M))
    assert listed == {p.name: str(p.budget_s) for p in suite.PARTS}
    assert {"setup", "tests", "launch_overhead", "attention", "param_stats", "msa_scaling", "score"} == set(listed)
    assert sum(map(int, listed.values())) <= suite.TOTAL_BUDGET_S < 8 * 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_with_a_clear_message(tmp_path):
    done = _run("--out", str(tmp_path / "suite"))
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr and not (tmp_path / "suite").exists()


def _python(code):
    return lambda work: [sys.executable, "-c", code]


def test_parts_over_budget_or_failing_are_marked_and_the_rest_kept(tmp_path, monkeypatch):
    report = "import os, sys; w = sys.argv[1] if len(sys.argv) > 1 else None"
    parts = [
        suite.Part("setup", 20, [], _python("import json; print(json.dumps({'device_name': 'stand-in'}))"), "", ""),
        suite.Part("tests", 5, [], _python("print('3 passed'); raise SystemExit(3)"), "", ""),
        suite.Part("launch_overhead", 1, [], _python("import time; time.sleep(30)"), "", ""),
        suite.Part("score", 20, [], lambda w: [sys.executable, "-c", report + "; import json; json.dump("
                   "{'rows': [{'loop_s': 2.0, 'vitcore_s': 1.0}]}, open(os.path.join(w, 'score.json'), 'w')); "
                   "open(os.path.join(w, 'score.md'), 'w').write('# score')", w], "score.md", "score.json"),
    ]
    monkeypatch.setattr(suite, "PARTS", parts)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "suite"
    assert suite.main(["--out", str(out)]) == 1
    files = sorted(os.listdir(out))
    assert files == ["results.json", "score.md", "summary.md", "tests.log"] and len(files) <= 8
    assert all((out / f).stat().st_size < suite.MAX_FILE_BYTES for f in files)
    text = (out / "summary.md").read_text()
    assert "stand-in" in text and "failed (exit 3)" in text and "stopped: over its budget of 1 s" in text
    assert "2.00x over 1 architectures" in text and "not run: part launch_overhead stopped" in text
    assert "not run: part msa_scaling did not run" in text
    assert "3 passed" in (out / "tests.log").read_text()
    doc = json.loads((out / "results.json").read_text())
    assert doc["parts"]["score"]["status"] == "ok" and doc["parts"]["launch_overhead"]["rc"] is None
    with pytest.raises(SystemExit) as e:  # a finished suite is never overwritten
        suite.main(["--out", str(out)])
    assert e.value.code == 2


def test_summary_judges_each_target_from_measured_data():
    fits = [{"dtype": dt, "mode": m, "provider": "vitcore", "base": {"r2": r2}, "floor": {"r2": r2}}
            for dt, r2 in (("fp32", 0.995), ("bf16", 0.9)) for m in ("fwd", "fwd+bwd")]
    doc = {"started": "now", "command": "python -m bench.gpu_suite", "parts": {
        "msa_scaling": {"status": "ok", "data": {"analysis": {"fits": fits}}},
        "tests": {"status": "ok", "data": {"tests": 10, "failures": 1, "errors": 0, "skipped": 2}},
        "launch_overhead": {"status": "ok", "data": {"targets": [
            {"target": "flash_attention host time per fwd+bwd <= 60 µs", "measured": "41.0 µs", "met": True}]}}}}
    rows = {r["target"]: r for r in suite_targets.msa_targets(doc) + suite_targets.suite_targets(doc)}
    assert rows["MSA scaling fit, vitcore, fp32 fwd (graph replay): R² >= 0.98"]["met"] is True
    assert rows["MSA scaling fit, vitcore, bf16 fwd+bwd (graph replay): R² >= 0.98"]["met"] is False
    tests = next(r for t, r in rows.items() if t.startswith("issue 16"))
    assert tests["measured"].startswith("7 passed, 1 failed") and tests["met"] is False
    for counts in ({"tests": 0, "failures": 0, "errors": 0, "skipped": 0},
                   {"tests": 3, "failures": 0, "errors": 0, "skipped": 3}):  # nothing ran: not met
        doc["parts"]["tests"]["data"] = counts
        assert not any(r["met"] is True for r in suite_targets.suite_targets(doc) if r["target"].startswith("issue 16"))
    doc["parts"]["tests"]["data"] = {"tests": 10, "failures": 1, "errors": 0, "skipped": 2}
    launch = suite_targets.launch_targets(doc)
    assert launch[0]["met"] is True and all("not run" in r["met"] for r in launch[1:])
    text = suite_targets.summary(doc, suite.PARTS)
    assert "| flash_attention host time per fwd+bwd <= 60 µs | 41.0 µs | met |" in text
    assert "R² 0.9000" in text and "MISSED" in text


def test_the_shim_maps_kernels_into_vitcore(tmp_path):
    shim = suite.shim_path(str(tmp_path))
    code = "import vitcore, vitcore.kernels.attention as a; print(vitcore.__file__); print(a.__file__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([shim, REPO])}
    done = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    init, kernel = done.stdout.split()
    assert init == os.path.join(REPO, "vitcore", "__init__.py")
    assert kernel == os.path.join(shim, "extra", "kernels", "attention.py")

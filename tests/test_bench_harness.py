"""The benchmark harness (``vitcore.bench``): timers, environment record, ceilings, device tag, writer."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vitcore.bench.ceilings import copy_gbps, matmul_precision, matmul_tflops
from vitcore.bench.env import device_tag, environment, header_lines
from vitcore.bench.timers import host_us, once_s, sync_ms, time_windows
from vitcore.bench.writer import result_stem, write_json


def test_cpu_timers_count_the_calls_they_time():
    calls = []
    times, reps = time_windows(lambda: calls.append(1), "cpu", budget_s=0.002, windows=3)
    assert len(times) == 3 and all(t > 0 for t in times) and len(calls) == 2 + 3 * reps
    calls.clear()
    assert host_us(lambda: calls.append(1), "cpu", n=7, warmup=2) > 0 and len(calls) == 9
    calls.clear()
    assert sync_ms(lambda: calls.append(1), "cpu", reps=4, min_reps=4, budget_s=0.0) > 0 and len(calls) == 4
    seconds, out = once_s(lambda: 42, "cpu")
    assert out == 42 and seconds >= 0


def test_environment_records_device_versions_command_and_precision():
    env = environment("cpu", command="vitcore bench --quick")
    assert env["device"] == "cpu" and env["command"] == "vitcore bench --quick" and env["date"]
    assert {"python", "torch", "triton", "cuda", "numpy", "vitcore", "git"} <= set(env["versions"])
    assert env["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert set(env["tf32"]) == {"matmul", "cudnn"} and "VITCORE_TRITON" in env["env"]
    text = "\n".join(header_lines(env))
    assert "vitcore bench --quick" in text and f"torch {torch.__version__}" in text
    assert device_tag("cpu") == "cpu" and device_tag(torch.device("cpu")) == "cpu"


def test_ceilings_are_measured_and_precision_is_restored():
    before = torch.get_float32_matmul_precision()
    with matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before
    assert matmul_tflops("cpu", "fp32", budget_s=0.01, windows=1) > 0
    copy = copy_gbps("cpu", budget_s=0.01, windows=1)
    assert copy["copy_gbps"] > 0 and copy["copy_bytes"] == 4 << 24


def test_result_stem_never_names_a_finished_run(tmp_path):
    out = tmp_path / "results"
    first = result_stem(str(out), "attention", "cpu")
    assert os.path.basename(first).startswith("cpu-") and first.endswith("-attention")
    write_json(first + ".json", {"done": True})
    second = result_stem(str(out), "attention", "cpu")
    assert second == first + "-2" and json.loads(open(first + ".json").read()) == {"done": True}
    assert not any(name.endswith(".tmp") for name in os.listdir(out))
    with pytest.raises(ValueError, match="is a file"):
        result_stem(first + ".json", "attention", "cpu")


def test_the_core_imports_nothing_from_the_harness():
    code = ("import sys, vitcore, vitcore.cli, vitcore.ops, vitcore.proxies, vitcore.ranking, vitcore.cost; "
            "print([m for m in sys.modules if m.startswith('vitcore.bench')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

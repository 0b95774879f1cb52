"""The kernels compiled for NVIDIA GPUs on this machine (no GPU needed): ``bench.compile_check`` on a
representative subset, run in a subprocess (this process's kernels are Triton's interpreted ones), and
its table logic on synthetic rows."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import requires_triton

pytest.importorskip("triton")
from bench import compile_check  # noqa: E402
from vitcore.kernels import attention  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every kernel's first listed config: for sm_86 (the tightest shared-memory limit, 99 KB) in fp32 with its
# TF32 rounding (inline PTX) and for sm_90 (Hopper's wgmma path) in every dtype and dot precision; d = 72
# in parts 64 + 16
SUBSET = [["--arch", "sm_86", "--variants", "float32/tf32", "--kernels", "fwd", "dq", "dkdv"],
          ["--arch", "sm_90", "--variants", "float16/tf32", "bfloat16/tf32", "float32/tf32", "float32/tf32x3"]]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(folder / "triton-cache")
    out = []
    for i, subset in enumerate(SUBSET):
        path = folder / f"rows{i}.json"
        cmd = [sys.executable, "-W", "ignore", "-m", "bench.compile_check", *subset, "--head-dims", "72",
               "--configs", "first", "--jobs", "2", "--json", str(path)]
        # its own process group: on a timeout the compile workers are ended with it
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        if not path.exists():
            pytest.fail(f"{' '.join(cmd)} wrote no rows:\n{stdout[-2000:]}\n{stderr[-4000:]}")
        out += json.loads(path.read_text())
    return out


@requires_triton
def test_every_kernel_compiles_for_every_target(rows):
    assert {(r["kernel"], r["arch"]) for r in rows} == {
        (k, a) for k in ("fwd", "dq", "dkdv") for a in ("sm_86", "sm_90")} | {("param_stats", "sm_90")}
    assert len(rows) == 3 + 3 * 4 + 2
    failed = [(r["kernel"], r["dtype"], r["arch"], r["config"], r["error"]) for r in rows if not r["compiled"]]
    assert not failed
    # ptxas's log was read (registers: at most 255 per thread) and Triton reported the shared memory
    assert all(r["registers"] is not None and 0 < r["registers"] <= 255 for r in rows)
    assert all(r["spill_stores"] is not None and r["stack_frame"] is not None for r in rows)
    for r in rows:
        assert r["shared"] > 0 and r["fits"] == (r["shared"] <= compile_check.TARGETS[r["arch"]][1])
        if r["kernel"] != "param_stats":
            assert r["d_parts"] == [64, 16] and r["padded_fraction"] == pytest.approx(8 / 80, abs=1e-4)


def _row(config, fits=True, stack=0, spills=0):
    return {"config": list(config), "fits": fits, "stack_frame": stack, "spill_stores": spills}


def test_uses_are_the_launchs_choice():
    """A table row's use is what ``attention.choose`` decides from the compiled facts."""
    order = attention.config_order("dkdv", 197, 4)
    listed = [c for c in order if c not in attention.FALLBACK_CONFIGS]
    rows = [_row(listed[0], fits=False), _row(listed[1], stack=16, spills=16), _row(listed[2]),
            _row(listed[3], fits=False), _row(listed[4])]
    compile_check._mark(rows, order)
    assert [r["use"] for r in rows] == ["", "", "default", "", "tuned"]
    spilling = [_row(c, stack=8, spills=8) for c in order]  # every config spills: the first one is used
    compile_check._mark(spilling, order)
    assert spilling[0]["use"] == "default" and all(r["use"] == "tuned" for r in spilling[1:len(listed)])
    over = [_row(c, fits=False) for c in order]  # nothing fits: nothing is launched
    compile_check._mark(over, order)
    assert all(r["use"] == "" for r in over)


def test_the_spaces_head_dims():
    # small 16, imagenet 64, autoformer D/H for D in (192, 216, 240) and H in (3, 4), PiT's base dims
    assert compile_check.space_head_dims() == [16, 24, 32, 40, 48, 54, 60, 64, 72, 80]


def test_limits_are_the_opt_in_maxima():
    assert {a: lim for a, (_, lim) in compile_check.TARGETS.items()} == {
        "sm_80": 166_912, "sm_86": 101_376, "sm_89": 101_376, "sm_90": 232_448}


def test_the_table_names_each_spilling_default_by_its_shape():
    """The list of spilling configs launched without autotuning tells param_stats' two tensor counts apart
    (T = 152 and 160), and gives attention rows their head dim."""
    from vitcore.bench.env import environment

    def row(kernel, d, n, stack, use=None):
        return {"kernel": kernel, "dtype": "float32", "precision": "tf32x3", "head_dim": d, "n_tensors": n,
                "arch": "sm_90", "config": [64, 16, 8, 1], "compiled": True, "fits": True, "use": use,
                "registers": 255, "stack_frame": stack, "spill_stores": stack, "shared": 1024,
                "smem_limit": 232448, "d_parts": None if kernel == "param_stats" else [64, 16],
                "padded_fraction": None if kernel == "param_stats" else 0.1}

    rows = [row("param_stats", 0, 152, 8), row("param_stats", 0, 160, 8), row("dkdv", 72, 0, 16, "default")]
    text = compile_check.render(rows, environment("cpu"))
    listed = text.split("this one least):")[1].split("\n\n")[1].splitlines()
    assert [line.split(" (")[0] for line in listed] == ["- param_stats float32/tf32x3 T=152 sm_90",
                                                       "- param_stats float32/tf32x3 T=160 sm_90",
                                                       "- dkdv float32/tf32x3 d=72 sm_90"]

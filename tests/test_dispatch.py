"""The Triton-or-eager switch: its settings, its errors, the interpreter's version check."""
import warnings

import pytest
import torch

from conftest import DEVICE
from vitcore.ops import dispatch


@pytest.mark.parametrize("setting, expected", [("0", False), ("", False)])
def test_settings_that_mean_eager_on_cpu(monkeypatch, setting, expected):
    monkeypatch.setenv("VITCORE_TRITON", setting)
    assert dispatch.use_triton(torch.zeros(1)) is expected


def test_eager_context_wins_over_the_setting(triton_on):
    x = torch.zeros(1, device=DEVICE)
    assert dispatch.use_triton(x)
    with dispatch.eager():
        assert not dispatch.use_triton(x)
    assert dispatch.use_triton(x)


@pytest.mark.parametrize("setting", ["yes", "2", "true"])
def test_bad_setting_is_named(monkeypatch, setting):
    monkeypatch.setenv("VITCORE_TRITON", setting)
    with pytest.raises(ValueError, match=repr(setting)):
        dispatch.use_triton(torch.zeros(1))


@pytest.mark.parametrize("triton_version, numpy_version, broken", [
    ("3.6.0", "2.4.1", True),
    ("3.5.1", "2.5.0rc1", True),
    ("3.6.0", "2.3.5", False),
    ("3.7.1", "2.4.1", False),
    ("3.9.0", "2.4.6", False),
    ("4.0.0", "1.26.4", False),
])
def test_interpreter_version_check(triton_version, numpy_version, broken):
    """Triton < 3.7's interpreter fails on NumPy >= 2.4; the check names both versions."""
    problem = dispatch.versions_problem(triton_version, numpy_version)
    if broken:
        assert triton_version in problem and numpy_version in problem
    else:
        assert problem is None


def test_forcing_the_interpreter_with_a_known_problem_says_so(monkeypatch):
    if not (dispatch.triton_available() and dispatch._interpreting()):
        pytest.skip("the check applies to CPU tensors run through Triton's interpreter")
    monkeypatch.setenv("VITCORE_TRITON", "1")
    monkeypatch.setattr(dispatch, "interpreter_problem", lambda: "Triton 3.6.0's interpreter fails with NumPy 2.4.1")
    with pytest.raises(RuntimeError, match="Triton 3.6.0's interpreter fails"):
        dispatch.use_triton(torch.zeros(1))


@pytest.mark.parametrize("dtype, dot_ok", [(torch.float32, True), (torch.float16, True), (torch.bfloat16, False)])
def test_interpreter_dot_dtypes(triton_on, monkeypatch, dtype, dot_ok):
    """On the interpreter an op built on tl.dot runs eager for bf16 (bit patterns multiplied), and says
    so once; an op without tl.dot (param_stats) keeps its kernel."""
    if DEVICE != "cpu":
        pytest.skip("compiled kernels compute every dtype")
    monkeypatch.setattr(dispatch, "_warned_dtypes", set())
    x = torch.zeros(2, dtype=dtype)
    assert dispatch.use_triton(x)
    if dot_ok:
        assert dispatch.use_triton(x, uses_dot=True)
        return
    with pytest.warns(UserWarning, match="bfloat16"):
        assert not dispatch.use_triton(x, uses_dot=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is quiet
        assert not dispatch.use_triton(x, uses_dot=True)


@pytest.mark.parametrize("value", [None, [0.0], 3.0])
def test_use_triton_needs_a_tensor(value):
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        dispatch.use_triton(value)


@pytest.mark.parametrize("text, expected", [("1", True), ("true", True), ("ON", True), (" 1 ", True), ("0", False),
                                            ("False", False), ("off", False), ("", None)])
def test_env_flags_read_as_triton_reads_them(monkeypatch, text, expected):
    monkeypatch.setenv("VITCORE_SOME_FLAG", text)
    assert dispatch.env_flag("VITCORE_SOME_FLAG", None) is expected


@pytest.mark.parametrize("text", ["yes", "2", "enable"])
def test_env_flags_triton_would_read_otherwise_are_named(monkeypatch, text):
    """Triton reads TRITON_INTERPRET=yes or =2 as off, where vitcore read any value but '0' as on: the kernels
    then ran uninterpreted on CPU tensors. A value outside 1/true/on and 0/false/off is refused, named."""
    monkeypatch.setenv("VITCORE_SOME_FLAG", text)
    with pytest.raises(ValueError, match=f"VITCORE_SOME_FLAG={text!r}: expected '1' or '0'"):
        dispatch.env_flag("VITCORE_SOME_FLAG", False)


@pytest.mark.parametrize("env, message", [
    ({"TRITON_INTERPRET": "yes"}, "TRITON_INTERPRET='yes': expected '1' or '0'"),
    ({"VITCORE_AUTOTUNE": "maybe"}, "VITCORE_AUTOTUNE='maybe': expected '1' or '0'"),
    ({"VITCORE_TUNED": "."}, "VITCORE_TUNED='.': expected a file path in an existing folder"),
    ({"VITCORE_TUNED": "no-such-folder/tuned.json"}, "VITCORE_TUNED='no-such-folder/tuned.json': expected a file"),
])
def test_bad_kernel_environment_is_named_at_the_first_kernel_call(tmp_path, env, message):
    """Read once when the kernels are imported (a fresh process): the first flash_attention names the variable."""
    import os
    import subprocess
    import sys

    code = ("import torch\nfrom vitcore.ops import flash_attention\nq = torch.randn(1, 1, 5, 16)\n"
            "try:\n    flash_attention(q, q, q)\nexcept ValueError as e:\n    print(e)\n")
    run_env = {**os.environ, "VITCORE_TRITON": "1", "TRITON_INTERPRET": "1", **env}
    run = subprocess.run([sys.executable, "-c", code], env=run_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and message in run.stdout, run.stderr

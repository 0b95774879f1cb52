"""The one place that decides between an op's Triton kernel and its eager reference.

``VITCORE_TRITON=0``  eager everywhere.
``VITCORE_TRITON=1``  Triton everywhere; a CPU tensor then needs ``TRITON_INTERPRET=1``
                      (how the tests run kernels without a GPU).
unset                 Triton for CUDA tensors when Triton imports, eager otherwise.

Any other ``VITCORE_TRITON`` value is a ValueError naming it. ``TRITON_INTERPRET`` and
``VITCORE_AUTOTUNE`` are on/off switches read as Triton reads its own (``env_flag``: 1 / true / on,
0 / false / off); another value (Triton would take 'yes' for off) is a ValueError naming it.

Triton's interpreter has no bfloat16 arithmetic of its own (NumPy has no bf16): its ``tl.dot`` on
bf16 tiles multiplies the bit patterns (Triton 3.9: flash attention off by 8e8), so an op whose kernel
has a bf16 ``tl.dot`` (``uses_dot=True``) runs its eager reference for bf16 CPU tensors, with one
warning per process. Loads and conversions of bf16 are right there (param_stats, checked in its tests).

``with eager():`` forces the eager references for a region whatever the setting: passes that
differentiate twice (GraSP's Hessian-gradient product) or run in float64 (synflow) need them,
since the kernels' backward passes are not differentiable and the kernels take no float64.
"""
import contextlib
import contextvars
import importlib.util
import os
import warnings
from typing import Optional

import torch

_ENV = "VITCORE_TRITON"
_FORCE_EAGER = contextvars.ContextVar("vitcore_force_eager", default=False)


# The same state as a plain global, read while torch.compile traces (Dynamo cannot read a ContextVar;
# it guards a global's value, so entering ``eager()`` recompiles). Per process, not per thread.
_eager_depth = 0


@contextlib.contextmanager
def eager():
    """Run every vitcore op through its eager reference inside the ``with`` block."""
    global _eager_depth
    token = _FORCE_EAGER.set(True)
    _eager_depth += 1
    try:
        yield
    finally:
        _FORCE_EAGER.reset(token)
        _eager_depth -= 1


def eager_forced() -> bool:
    """True inside a ``with eager():`` block (also while torch.compile traces)."""
    return _eager_depth > 0 if torch.compiler.is_compiling() else _FORCE_EAGER.get()


_FIXED: dict = {}  # per-process facts (installed packages), computed once


@torch.compiler.assume_constant_result  # fixed per process: torch.compile reads it once, untraced
def triton_available() -> bool:
    """True when the ``triton`` package is installed (checked once, without importing it)."""
    if "triton" not in _FIXED:
        _FIXED["triton"] = importlib.util.find_spec("triton") is not None
    return _FIXED["triton"]


def env_flag(name: str, default: bool) -> bool:
    """The on/off environment switch ``name`` read as Triton reads its own (``TRITON_INTERPRET``): '1',
    'true', 'on' are on, '0', 'false', 'off' off (any case), unset or empty ``default``. Anything else is a
    ValueError naming it: Triton takes 'yes' or '2' for off, so guessing could run a kernel uninterpreted."""
    text = os.environ.get(name, "")
    value = text.strip().lower()
    if not value:
        return default
    if value in ("1", "true", "on"):
        return True
    if value in ("0", "false", "off"):
        return False
    raise ValueError(f"{name}={text!r}: expected '1' or '0' (or 'true' / 'on', 'false' / 'off'), or unset")


def _interpreting() -> bool:
    return env_flag("TRITON_INTERPRET", False)


def _release(version: str) -> tuple:
    """(major, minor) of a version string such as '3.6.0' or '2.4.0rc1'."""
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@torch.compiler.assume_constant_result
def interpreter_problem() -> Optional[str]:
    """Why Triton's interpreter cannot run vitcore's kernels with the installed versions, or None."""
    if "interpreter" not in _FIXED:
        import numpy
        import triton

        _FIXED["interpreter"] = versions_problem(triton.__version__, numpy.__version__)
    return _FIXED["interpreter"]


def versions_problem(triton_version: str, numpy_version: str) -> Optional[str]:
    """Triton 3.6's interpreter evaluates a loop bound held in a tensor with ``int()`` of a
    one-element array, which NumPy 2.4 made an error (Triton 3.7 squeezes the array first), so
    every kernel with a runtime loop bound fails there."""
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter fails with NumPy {numpy_version}: install "
                "'numpy<2.4' or 'triton>=3.7' to run the kernels on CPU")
    return None


_INTERPRETER_DOT_DTYPES = (torch.float32, torch.float16)  # what the interpreter's tl.dot computes right
_warned_dtypes = set()


def _interpreter_cannot(dtype: torch.dtype) -> bool:
    """True (with one warning per dtype) when the interpreter's tl.dot gets ``dtype`` wrong."""
    if dtype in _INTERPRETER_DOT_DTYPES:
        return False
    if dtype not in _warned_dtypes:
        _warned_dtypes.add(dtype)
        warnings.warn(f"Triton's interpreter computes tl.dot on {dtype} wrongly (it multiplies bit patterns): "
                      f"{dtype} CPU tensors run the eager references of ops built on tl.dot", stacklevel=3)
    return True


def check_dispatch(device: torch.device) -> None:
    """``use_triton``'s checks for tensors on ``device``, up front (before a run scores anything):
    ValueError naming a bad ``VITCORE_TRITON`` or a setting that cannot be honoured there."""
    try:
        use_triton(torch.empty(0, device=device))
    except RuntimeError as e:
        raise ValueError(str(e)) from None


def use_triton(tensor: torch.Tensor, uses_dot: bool = False) -> bool:
    """Whether ops on ``tensor`` run their Triton kernel (True) or eager reference (False).

    ``uses_dot``: the op's kernel multiplies ``tensor.dtype`` tiles with ``tl.dot``, which Triton's
    interpreter computes right for fp32 and fp16 only; other dtypes then run eager on CPU (a warning).
    Raises TypeError for a non-tensor, ValueError for a bad ``VITCORE_TRITON``, RuntimeError when
    ``VITCORE_TRITON=1`` cannot be honoured (no Triton, a CPU tensor without ``TRITON_INTERPRET=1``).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"use_triton expects a torch.Tensor, got {type(tensor).__name__}")
    setting = os.environ.get(_ENV, "")
    if setting not in ("", "0", "1"):
        raise ValueError(f"{_ENV}={setting!r}: expected '0', '1' or unset")
    forced = _eager_depth > 0 if torch.compiler.is_compiling() else _FORCE_EAGER.get()
    if setting == "0" or forced:
        return False
    if setting == "1":
        if not triton_available():
            raise RuntimeError(f"{_ENV}=1 but the triton package is not installed")
        if tensor.device.type == "cpu" and not _interpreting():
            raise RuntimeError(
                f"{_ENV}=1 on a CPU tensor needs TRITON_INTERPRET=1 set before Triton is imported"
            )
        if tensor.device.type == "cpu" and (problem := interpreter_problem()):
            raise RuntimeError(problem)
        return not (uses_dot and tensor.device.type == "cpu" and _interpreter_cannot(tensor.dtype))
    return tensor.device.type == "cuda" and triton_available()

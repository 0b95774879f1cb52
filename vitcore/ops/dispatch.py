"""The one place that decides between an op's Triton kernel and its eager reference.

``VITCORE_TRITON=0``  eager everywhere.
``VITCORE_TRITON=1``  Triton everywhere; a CPU tensor then needs ``TRITON_INTERPRET=1``
                      (how the tests run kernels without a GPU).
unset                 Triton for CUDA tensors when Triton imports, eager otherwise.

``with eager():`` forces the eager references for a region whatever the setting: passes that
differentiate twice (GraSP's Hessian-gradient product) or run in float64 (synflow) need them,
since the kernels' backward passes are not differentiable and the kernels take no float64.
"""
import contextlib
import contextvars
import functools
import importlib.util
import os
from typing import Optional

import torch

_ENV = "VITCORE_TRITON"
_FORCE_EAGER = contextvars.ContextVar("vitcore_force_eager", default=False)


@contextlib.contextmanager
def eager():
    """Run every vitcore op through its eager reference inside the ``with`` block."""
    token = _FORCE_EAGER.set(True)
    try:
        yield
    finally:
        _FORCE_EAGER.reset(token)


def eager_forced() -> bool:
    """True inside a ``with eager():`` block."""
    return _FORCE_EAGER.get()


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the ``triton`` package is installed (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _release(version: str) -> tuple:
    """(major, minor) of a version string such as '3.6.0' or '2.4.0rc1'."""
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@functools.lru_cache(maxsize=None)
def interpreter_problem() -> Optional[str]:
    """Why Triton's interpreter cannot run vitcore's kernels with the installed versions, or None."""
    import numpy
    import triton

    return versions_problem(triton.__version__, numpy.__version__)


def versions_problem(triton_version: str, numpy_version: str) -> Optional[str]:
    """Triton 3.6's interpreter evaluates a loop bound held in a tensor with ``int()`` of a
    one-element array, which NumPy 2.4 made an error (Triton 3.7 squeezes the array first), so
    every kernel with a runtime loop bound fails there."""
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter fails with NumPy {numpy_version}: install "
                "'numpy<2.4' or 'triton>=3.7' to run the kernels on CPU")
    return None


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether ops on ``tensor`` run their Triton kernel (True) or eager reference (False)."""
    setting = os.environ.get(_ENV, "")
    if setting not in ("", "0", "1"):
        raise ValueError(f"{_ENV}={setting!r}: expected '0', '1' or unset")
    if setting == "0" or _FORCE_EAGER.get():
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
        return True
    return tensor.device.type == "cuda" and triton_available()

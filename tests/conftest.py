"""Test setup: without a GPU, Triton kernels run through Triton's interpreter.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, at
collection time. The ``triton_on`` / ``triton_off`` fixtures force the dispatch either way.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vitcore.ops.dispatch import interpreter_problem, triton_available  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

requires_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def triton_on(monkeypatch):
    """Run vitcore ops through their Triton kernels (interpreted on CPU)."""
    if not triton_available():
        pytest.skip("triton is not installed")
    if DEVICE == "cpu" and (problem := interpreter_problem()):
        pytest.fail(problem)
    monkeypatch.setenv("VITCORE_TRITON", "1")


@pytest.fixture
def triton_off(monkeypatch):
    """Run vitcore ops through their eager references."""
    monkeypatch.setenv("VITCORE_TRITON", "0")


@pytest.fixture
def threads_of_workers():
    """``threads_of_workers(k)``: this process computes with the threads each of ``--workers k`` gets
    (``vitcore.distributed``: the cores over k), so a one-process run is comparable to the bit; the
    thread count in use comes back at the end of the test."""
    from vitcore.distributed import _cores

    before = torch.get_num_threads()
    yield lambda workers: torch.set_num_threads(max(1, _cores() // workers))
    torch.set_num_threads(before)

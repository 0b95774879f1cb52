"""The benchmarks' timers: every time vitcore reports comes from one of these.

- ``time_windows``: wall clock of back-to-back calls in windows, each closed by a device sync (CPU and
  GPU alike; launch overhead included). The time is the median of the windows' per-call means.
- ``device_ms``: ``triton.testing.do_bench`` median (CUDA events, L2 flushed between calls) of
  back-to-back calls without a host sync; host work overlaps the GPU unless the host is slower.
- ``graphed`` + ``graph_ms``: the call captured once into a CUDA graph and replayed: GPU time alone,
  without Python's dispatch and the launch path.
- ``sync_ms``: host wall clock of one call ending in a device sync (what a caller waits for), median.
- ``host_us``: host microseconds per call without a sync (launches queue behind the GPU).
- ``once_s``: one call, synchronised before and after (a whole pipeline step, e.g. scoring one model).

CPU wall-clock fallback: ``time_windows``, ``sync_ms``, ``host_us`` and ``once_s`` run on a CPU device too
(the sync is then a no-op); ``device_ms``/``graph_ms`` need CUDA and Triton.
"""
import statistics
import time
from typing import Callable, List, Tuple

import torch


def synchronizer(device) -> Callable[[], None]:
    """A no-argument device sync: ``torch.cuda.synchronize`` on CUDA, a no-op on the CPU."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def time_windows(fn: Callable, device, budget_s: float, windows: int) -> Tuple[List[float], int]:
    """Per-call seconds of each window (their median is the time) and the calls per window.

    One warm-up call (compilation, autotuning, the allocator's first allocations), one call to size
    the windows, then ``windows`` windows sharing ``budget_s`` seconds (1 to 1000 calls each).
    """
    sync = synchronizer(device)
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    estimate = max(time.perf_counter() - start, 1e-7)
    reps = int(min(1000, max(1, budget_s / windows / estimate)))
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        times.append((time.perf_counter() - start) / reps)
    return times, reps


def graphed(fn: Callable) -> Callable[[], None]:
    """``fn`` captured once into a CUDA graph; the returned callable replays it.

    Warm-up calls run first on the capture's side stream (Triton compiles and autotunes, cuBLAS and
    the caching allocator set up there, as capture requires); outputs live in the graph's memory pool.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph.replay


def device_ms(fn: Callable, warmup_ms: float = 10, rep_ms: float = 50) -> float:
    """Milliseconds per call: ``triton.testing.do_bench`` median (CUDA events, L2 flushed per call).

    The first call runs outside the timing (compilation, autotuning).
    """
    import triton

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def graph_ms(fn: Callable, warmup_ms: float = 10, rep_ms: float = 50) -> float:
    """GPU milliseconds per call: ``device_ms`` of ``fn``'s CUDA-graph replay (no host launch cost)."""
    return device_ms(graphed(fn), warmup_ms, rep_ms)


_FLUSH = {}


def flush_l2(device) -> None:
    """Overwrite 256 MiB (more than an H100's or H200's 50-60 MB of L2) so a call starts from cold caches."""
    if torch.device(device).type != "cuda":
        return
    if "buf" not in _FLUSH:
        _FLUSH["buf"] = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
    _FLUSH["buf"].zero_()


def sync_ms(fn: Callable, device="cuda", reps: int = 30, min_reps: int = 5, budget_s: float = 0.3,
            flush: bool = True) -> float:
    """Median host wall clock (ms) of one call ending in a device sync, L2 flushed before each call.

    At least ``min_reps`` calls, then more until ``reps`` calls or ``budget_s`` seconds.
    """
    sync = synchronizer(device)
    times = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        if flush:
            flush_l2(device)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def host_us(fn: Callable, device="cuda", n: int = 100, warmup: int = 10) -> float:
    """Host microseconds per call without a sync: ``n`` back-to-back calls after ``warmup`` calls.

    On a GPU the launches queue up; while the queue is not full this is the Python + launch cost
    a caller pays per call, whatever the GPU does.
    """
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t0) / n * 1e6
    sync()
    return us


def once_s(fn: Callable, device):
    """(seconds, result) of one call of ``fn``, with a device sync before and after."""
    sync = synchronizer(device)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out

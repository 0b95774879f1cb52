"""How MSA time grows with N' and D: the sweep, the timer, the fit and ``vitcore bench``.

One MSA block (``vitcore.model.MSA``: fused QKV projection, attention, W^O; heads of width
``HEAD_DIM`` so H = D/64 and E = D) is timed over a grid of sequence lengths N' and widths D, for
each attention provider and mode. Each call processes about ``tokens`` tokens: batch
B = max(1, tokens // N'). Besides the whole block, the projections alone (W^Q, W^K, W^V and W^O)
and each provider's attention core alone are timed, which gives the measured crossover N' where
the core overtakes the projections and the share of time in each.

The fit: t ≈ a·B·4N'D² + b·B·2N'²D + c (``vitcore.cost.msa_macs``), by least squares on relative
residuals (each row divided by its measured time, so a 20 µs and a 20 ms point weigh alike); R² is
the ordinary coefficient of determination of t. The floor fit, t ≈ max(h, a·B·4N'D² + b·B·2N'²D + c),
adds what the MAC count leaves out where the data say so: a call takes at least h, the host's launch
and dispatch time, however little work it holds (on a GPU, small calls wait on Python, not on the SMs).

Timing: one warm-up call (compiles and autotunes), then ``windows`` windows of back-to-back calls
filling the time budget, each window closed by a device synchronisation; the time is the median of
the windows' per-call means. The same code times CPU and GPU; launch overhead is part of the time.
With ``graphs`` (CUDA only) each call is captured once into a CUDA graph and the windows replay it:
the time is then the GPU's alone, without Python's dispatch and the launch path, which is what the
MAC model describes where the host, not the SMs, sets the time (small bf16 blocks on an H100).
"""
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitcore.bench import env
from vitcore.bench.ceilings import DTYPES, measure_ceiling
from vitcore.bench.scaling_fit import analyse
from vitcore.bench.options import HEAD_DIM, MODES, PROVIDERS, SWEEP_D, SWEEP_N
from vitcore.bench.timers import graphed, time_windows
from vitcore.bench.writer import write_text
from vitcore.cost import msa_macs
from vitcore.model import MSA
from vitcore.ops import attention as _attention
from vitcore.ops.dispatch import use_triton

# Default B·N' per call. On an H100 in bf16 a 16k-token MSA block is mostly below the launch floor
# (bench/results/h100-2026-11-23-msa-scaling): time CUDA-graph replays (graphs=True) to measure the SMs.
TOKENS = {"cuda": 16384, "cpu": 1024}
BUDGET_S = {"cuda": 0.01, "cpu": 0.05}  # default time per measurement, all windows together
WINDOWS = {"cuda": 5, "cpu": 3}
# Upper bounds of the sweep's settings: past them a run would not end in any useful time.
MAX_WINDOWS, MAX_REPEAT, MAX_BUDGET_S = 1000, 100, 60.0


def point_bytes(n: int, d: int, elsize: int, tokens: int) -> int:
    """An estimate of one sweep point's peak memory in bytes: ``MSACase``'s ten (B, N', D)-sized tensors,
    as many again for the activations and gradients of a forward and backward, the block's 4D² + 4D
    parameters, and the eager provider's three float32 (B, H, N', N') tensors (logits, probabilities,
    their gradient)."""
    B, H = batch_for(n, tokens), max(1, d // HEAD_DIM)
    return 20 * B * n * d * elsize + (4 * d * d + 4 * d) * elsize + 3 * 4 * B * H * n * n


def device_bytes(device: str) -> int:
    """The memory of ``device``: the GPU's total memory, or the host's physical memory for "cpu"."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class SweepConfig:
    ns: Tuple[int, ...] = SWEEP_N  # sequence lengths N'
    ds: Tuple[int, ...] = SWEEP_D  # widths D, multiples of HEAD_DIM
    providers: Tuple[str, ...] = PROVIDERS
    modes: Tuple[str, ...] = MODES
    dtypes: Tuple[str, ...] = ("bf16", "fp32")
    device: str = "cuda"
    tokens: int = TOKENS["cuda"]  # B·N' per call
    budget_s: float = BUDGET_S["cuda"]  # per measurement
    windows: int = WINDOWS["cuda"]
    repeat: int = 1  # passes over the whole sweep; a measurement's time is the median of its passes
    graphs: bool = False  # time CUDA-graph replays of each call (device time, no host launch cost)

    def validate(self) -> None:
        for name in ("ns", "ds"):
            for v in getattr(self, name):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise ValueError(f"{name}: {v!r} must be a positive int")
        for d in self.ds:
            if d % HEAD_DIM:
                raise ValueError(f"D={d} is not divisible by head_dim={HEAD_DIM}")
        for name, allowed in (("providers", PROVIDERS), ("modes", MODES), ("dtypes", tuple(DTYPES))):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{name}={list(values)}: expected a non-empty subset of {list(allowed)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda': no CUDA GPU is available")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: expected 'cpu' or 'cuda'")
        if self.graphs and self.device != "cuda":
            raise ValueError(f"graphs=True needs device='cuda' (CUDA graphs), not device={self.device!r}")
        for name, most in (("tokens", None), ("budget_s", MAX_BUDGET_S), ("windows", MAX_WINDOWS),
                           ("repeat", MAX_REPEAT)):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name}={value} must be positive")
            if most is not None and value > most:
                raise ValueError(f"{name}={value} is above the most this sweep takes, {most}")
        # the largest point must fit the device: a clear error now, not an allocation failure mid-sweep
        total = device_bytes(self.device)
        need, n, d, dt = max((point_bytes(n, d, DTYPES[dt].itemsize, self.tokens), n, d, dt)
                             for n in self.ns for d in self.ds for dt in self.dtypes)
        if need > total:
            raise ValueError(f"the sweep point N'={n}, D={d} ({dt}, batch {batch_for(n, self.tokens)} at "
                             f"tokens={self.tokens}) needs about {need / 2**30:.3g} GiB, more than the "
                             f"{self.device}'s {total / 2**30:.3g} GiB: lower --tokens, --n or --d")


def batch_for(n: int, tokens: int) -> int:
    return max(1, tokens // n)


# ----------------------------------------------------------------------------------------------
# What is timed
# ----------------------------------------------------------------------------------------------
def attention_fn(provider: str) -> Callable:
    """The attention core of a provider: (q, k, v) each (B, H, N', d) -> (B, H, N', d)."""
    if provider == "eager":
        return _attention.attention_ref
    if provider == "sdpa":
        return F.scaled_dot_product_attention
    if provider == "vitcore":
        return _attention.flash_attention
    raise ValueError(f"provider={provider!r}: expected one of {PROVIDERS}")


def provider_path(provider: str, device: str) -> str:
    """What a provider runs on ``device``, in words, for the report."""
    if provider == "eager":
        return "attention_ref (matmul, softmax, matmul)"
    if provider == "sdpa":
        return "torch.nn.functional.scaled_dot_product_attention"
    if use_triton(torch.empty(0, device=device)):
        return "flash_attention (Triton kernel)"
    return "flash_attention -> attention_ref (eager fallback: no Triton on this device)"


def msa_forward(m: MSA, x: torch.Tensor, attend: Callable) -> torch.Tensor:
    """``MSA.forward`` with the attention core swapped for ``attend``."""
    B, N, _ = x.shape
    qkv = m.qkv(x).view(B, N, 3, m.num_heads, m.head_dim)  # (B, N', 3, H, d)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # each (B, H, N', d), strided views
    out = attend(q, k, v)  # (B, H, N', d)
    out = out.transpose(1, 2).reshape(B, N, m.num_heads * m.head_dim)  # (B, N', H·d)
    return m.proj(out)  # (B, N', D)


class MSACase:
    """One point of the sweep: an MSA block and its inputs, and the callables that are timed."""

    def __init__(self, n: int, d: int, dtype: torch.dtype, device: str, tokens: int, seed: int = 0):
        torch.manual_seed(seed)
        self.n, self.d, self.heads, self.batch = n, d, d // HEAD_DIM, batch_for(n, tokens)
        B, H, dev = self.batch, self.heads, device
        self.msa = MSA(d, H, HEAD_DIM, qkv_bias=True).to(device=dev, dtype=dtype)
        self.params = list(self.msa.parameters())
        x_kw = dict(device=dev, dtype=dtype, requires_grad=True)
        self.x = torch.randn(B, n, d, **x_kw)  # (B, N', D) block input
        self.heads_out = torch.randn(B, n, d, **x_kw)  # (B, N', H·d) input of W^O alone
        self.qkv = torch.randn(B, n, 3, H, HEAD_DIM, **x_kw)  # (B, N', 3, H, d) packed, as the block has it
        self.grad = torch.randn(B, n, d, device=dev, dtype=dtype)  # (B, N', D) upstream gradient
        self.grad_qkv = torch.randn(B, n, 3 * d, device=dev, dtype=dtype)  # (B, N', 3·H·d)
        self.grad_core = torch.randn(B, H, n, HEAD_DIM, device=dev, dtype=dtype)  # (B, H, N', d)

    def macs(self) -> Tuple[int, int]:
        """Forward (projection, core) multiply-adds of one call: B·4N'D², B·2N'²D."""
        m = msa_macs(self.n, self.d)
        return self.batch * m.proj, self.batch * m.core

    def fn(self, what: str, mode: str, provider: Optional[str] = None) -> Callable[[], object]:
        """The call to time: ``what`` is "block", "proj" (projections alone) or "core" (attention alone)."""
        backward = mode == "fwd+bwd"
        m = self.msa
        if what == "block":
            attend = attention_fn(provider)

            def forward():
                return [msa_forward(m, self.x, attend)], [self.grad], [self.x, *self.params]
        elif what == "proj":

            def forward():
                outs = [m.qkv(self.x), m.proj(self.heads_out)]  # (B, N', 3·H·d), (B, N', D)
                return outs, [self.grad_qkv, self.grad], [self.x, self.heads_out, *self.params]
        elif what == "core":
            attend = attention_fn(provider)

            def forward():
                q, k, v = (t.transpose(1, 2) for t in self.qkv.unbind(2))  # each (B, H, N', d)
                return [attend(q, k, v)], [self.grad_core], [self.qkv]
        else:
            raise ValueError(f"what={what!r}: expected 'block', 'proj' or 'core'")

        if backward:
            def call():
                outs, grads, inputs = forward()
                return torch.autograd.grad(outs, inputs, grads)  # no .grad accumulation
        else:
            def call():
                with torch.no_grad():
                    return forward()[0]
        return call


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------
def environment(device: str, command: Optional[str] = None) -> dict:
    """The harness's environment record (``vitcore.bench.env``) with what each provider runs here."""
    return {**env.environment(device, command), "providers": {p: provider_path(p, device) for p in PROVIDERS}}


def write_results(path: str, obj: dict) -> None:
    """Indented JSON with one timing per line; atomic, so an interrupted run leaves a complete file."""
    text = json.dumps({**obj, "timings": "@TIMINGS@"}, indent=1)
    rows = ",\n  ".join(json.dumps(r) for r in obj["timings"])
    text = text.replace('"@TIMINGS@"', "[\n  " + rows + "\n ]" if rows else "[]", 1)
    write_text(path, text + "\n")


def run_sweep(cfg: SweepConfig, out_dir: str, progress: bool = True, command: Optional[str] = None) -> dict:
    """Times every point of the sweep; ``out_dir/results.json`` is rewritten after each (N', D) point.

    With ``cfg.repeat`` > 1 the whole sweep runs that many times over and a measurement's time is the
    median of its passes: a burst of other work on a shared host then spoils one pass, not the point.
    """
    cfg.validate()
    path = os.path.join(out_dir, "results.json")
    if os.path.exists(path):
        raise ValueError(f"{path!r} already holds a run: choose another folder (re-analyse that one with "
                         "`vitcore bench --report-only`)")
    os.makedirs(out_dir, exist_ok=True)
    results = {"meta": environment(cfg.device, command), "sweep": asdict(cfg), "head_dim": HEAD_DIM,
               "ceiling": None, "timings": [], "complete": False}
    results["ceiling"] = measure_ceiling(cfg.device, cfg.dtypes, cfg.budget_s, cfg.windows)
    write_results(path, results)
    rows = {}  # (dtype, mode, n, d, what, provider) -> the row in results["timings"]
    points = [(dt, mode, n, d) for dt in cfg.dtypes for mode in cfg.modes for n in cfg.ns for d in cfg.ds]
    for dt, mode, n, d in tqdm(points * cfg.repeat, desc="MSA sweep", unit="point", disable=not progress or None,
                               file=sys.stderr):
        case = MSACase(n, d, DTYPES[dt], cfg.device, cfg.tokens)
        proj, core = case.macs()
        jobs = [("proj", None)] + [(w, p) for p in cfg.providers for w in ("core", "block")]
        for what, provider in jobs:
            key = (dt, mode, n, d, what, provider)
            if key not in rows:
                rows[key] = {"dtype": dt, "mode": mode, "n": n, "d": d, "heads": case.heads, "batch": case.batch,
                             "what": what, "provider": provider, "proj_macs": proj, "core_macs": core}
                results["timings"].append(rows[key])
            row = rows[key]
            if "error" in row:
                continue
            try:
                fn = case.fn(what, mode, provider)
                times, reps = time_windows(graphed(fn) if cfg.graphs else fn, cfg.device, cfg.budget_s, cfg.windows)
            except Exception as e:  # out of memory, a kernel that fails to build: record it, time the rest
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                if cfg.device == "cuda":
                    torch.cuda.empty_cache()
                continue
            row.setdefault("pass_times_s", []).append(float(f"{np.median(times):.5g}"))
            row.setdefault("window_times_s", []).extend(float(f"{t:.4g}") for t in times)
            row["time_s"], row["reps"] = float(f"{np.median(row['pass_times_s']):.5g}"), reps
        del case
        if cfg.device == "cuda":
            torch.cuda.empty_cache()
        write_results(path, results)
    results["complete"] = True
    results["analysis"] = analyse(results)
    write_results(path, results)
    return results

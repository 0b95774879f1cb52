"""Compile check: every Triton kernel vitcore launches, compiled for NVIDIA GPUs on any machine (CPU included).

Run:   python -m bench.compile_check --out bench/results [--arch sm_80 sm_90] [--head-dims 64 72] [--jobs 2]
Writes OUT/cpu-<date>-compile-check-triton<version>.md (the table) and .jsonl (one row per compile, written
as each finishes, so an interrupted run keeps what it compiled); ``--json PATH`` writes the rows alone.

What is compiled: the library's own launch arguments, recorded from ``attention_fwd`` / ``attention_bwd``
on CPU tensors laid out as a ViT's (q, k, v views of the packed (B, N', 3, H, d) projection, N' = 197), so
the pointer alignment, the integer strides and the constexprs are those a GPU launch would see. Triton's
own binder (``create_function_from_signature`` + ``JITFunction._pack_args``, present in Triton 3.6 and 3.9)
turns them into the signature, constexprs and attributes of
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", capability, 32))``;
ptxas is the one inside the Triton wheel, run by Triton with ``TRITON_DUMP_PTXAS_LOG`` on, and its log
gives registers and spill bytes. Shared memory is Triton's ``metadata.shared`` (the dynamic shared memory
the launch requests), compared with the target's per-block opt-in limit.

Per (kernel, dtype / dot precision, head dim d, target) the attention rows are the configs in the order the
library tries them (``attention.config_order``), marked as ``attention.choose`` decides from what the
compiler reported: ``default``, launched with ``VITCORE_AUTOTUNE=0`` (the first that fits the target's
shared memory without spilling registers); ``tuned``, an autotune candidate. ``--configs default``
compiles in that order up to the first that fits unspilled; ``--configs all`` every config listed;
``--configs first`` the first listed only (a quick compile test). D parts = the head dim's column parts
(``attention.head_dim_parts``: D_MAIN, plus D_TAIL where one power of two would waste more); padded fraction
= 1 - d / (D_MAIN + D_TAIL), the share of the computed head-dim columns that are padding.
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import os
import re
import sys
from typing import Dict, Iterable, List, Optional

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

from vitcore.bench.env import environment, header_lines, today
from vitcore.bench.writer import write_text
from vitcore.kernels import attention, attention_bwd, launch, param_stats

# Per-block shared memory a kernel may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin), bytes: the SM's
# capacity less the 1 KB the system reserves per block (NVIDIA's Ampere, Ada and Hopper tuning guides:
# 164 KB on A100 (8.0), 100 KB on 8.6 and 8.9, 228 KB on H100 (9.0) per SM).
TARGETS = {
    "sm_80": (80, 163 * 1024),  # A100
    "sm_86": (86, 99 * 1024),  # RTX 3090, A10, A40
    "sm_89": (89, 99 * 1024),  # RTX 4090, L4, L40
    "sm_90": (90, 227 * 1024),  # H100, H200
}
# (dtype, tl.dot input precision): fp16 / bf16 ignore the precision; fp32 has one per matmul setting
# ("highest" -> tf32x3, "high" / "medium" -> tf32 with operands rounded to TF32)
VARIANTS = [("float16", "tf32"), ("bfloat16", "tf32"), ("float32", "tf32"), ("float32", "tf32x3")]
PHASES = ("fwd", "dq", "dkdv")
N_CTX = 197  # a 224x224 ViT's tokens with 16x16 patches (196 + the class token)
USER_HEAD_DIMS = (96, 128, 144, 256)  # widths users pass beyond the spaces' (the op takes 1..256); 144: 128 + 16

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def space_head_dims() -> List[int]:
    """Every head dim d the built-in search spaces produce (fixed head_dim, D / H, or PiT's base_dim)."""
    from vitcore.space import SPACES, PiTSpace

    dims = set()
    for space in SPACES.values():
        if isinstance(space, PiTSpace):
            dims.update(space.base_dims)
        elif space.head_dim is not None:
            dims.add(space.head_dim)
        else:
            dims.update(D // h for D in space.embed_dims for h in space.num_heads)
    return sorted(dims)


@dataclasses.dataclass(frozen=True)
class Case:
    """One compile: a kernel specialisation for one target."""
    kernel: str  # fwd, dq, dkdv or param_stats
    dtype: str  # float16, bfloat16, float32 (param_stats: mixed, dtypes are read per tensor at run time)
    precision: str  # tl.dot input precision ("-" for param_stats)
    head_dim: int  # d (0 for param_stats)
    config: tuple  # (outer block, inner block, num_warps, num_stages); param_stats: (BLOCK, BLOCK_C, warps, stages)
    arch: str  # a TARGETS key
    n_tensors: int = 0  # param_stats: the model's weight tensors T (the kernel's int chunk_map_start is 9 T)


# ----------------------------------------------------------------------------------------------
# The library's launch arguments, recorded on CPU tensors
# ----------------------------------------------------------------------------------------------
class _Recorder:
    """Stands in for a ``Launchable``'s ``launch``: keeps the arguments instead of launching."""

    def __init__(self):
        self.calls = []

    def __call__(self, tensors, ints, floats, n_ctx, n_bh, head_dim, dot_precision):
        self.calls.append((tensors, ints, floats, head_dim, dot_precision))


def _vit_qkv(dtype: torch.dtype, d: int, heads: int = 3, batch: int = 2):
    """q, k, v (B, H, N', d): views of one packed (B, N', 3, H, d) projection, as vitcore's ViT makes them."""
    qkv = torch.zeros(batch, N_CTX, 3, heads, d, dtype=dtype)
    return [t.transpose(1, 2) for t in qkv.unbind(2)]  # each (B, H, N', d)


def launch_args(phase: str, dtype: str, precision: str, d: int):
    """(kernel, positional args, constexprs) that ``attention_fwd`` / ``attention_bwd`` launch with, minus
    the block sizes (the config's)."""
    torch_dtype = _DTYPES[dtype]
    q, k, v = _vit_qkv(torch_dtype, d)
    launchable = {"fwd": attention._FWD, "dq": attention_bwd._DQ, "dkdv": attention_bwd._DKDV}[phase]
    recorder = _Recorder()
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest" if precision == "tf32x3" else "high")
    try:
        with _patched(attention._FWD, "launch", recorder), _patched(attention_bwd._DQ, "launch", recorder), \
                _patched(attention_bwd._DKDV, "launch", recorder):
            if phase == "fwd":
                attention.attention_fwd(q, k, v, d ** -0.5)
            else:
                o = attention._bhnd_like(q)
                stats = torch.zeros((*q.shape[:2], 2, q.shape[2]), dtype=torch.float32)
                attention_bwd.attention_bwd(attention._bhnd_like(q), q, k, v, o, stats, d ** -0.5)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
    index = 0 if phase in ("fwd", "dq") else 1
    tensors, ints, floats, head_dim, dot_precision = recorder.calls[index]
    assert dot_precision == precision or dtype != "float32", (dot_precision, precision)
    meta = launchable.meta(tensors, ints, head_dim, dot_precision)
    return launchable.launcher.fn, (*tensors, *ints, *floats), meta


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _param_stats_args(n_tensors: int):
    """The one launch of ``param_stats`` for a model of ``n_tensors`` weight tensors (one chunk each)."""
    table = torch.zeros(n_tensors * param_stats._NF.value + n_tensors, dtype=torch.int64)
    addrs = torch.zeros(n_tensors, 2, dtype=torch.int64)
    partials = torch.zeros(n_tensors, 4, dtype=torch.float64)
    counters = torch.zeros(n_tensors, dtype=torch.int32)
    out = torch.zeros(n_tensors, 4, dtype=torch.float64)
    ints = (n_tensors * param_stats._NF.value, param_stats.MAX_CHUNK)
    return param_stats._param_stats_kernel, (table, addrs, partials, counters, out, *ints), dict(param_stats._META)


# ----------------------------------------------------------------------------------------------
# One compile
# ----------------------------------------------------------------------------------------------
def _options(fn) -> dict:
    """The compile options ``JITFunction.run`` adds from Triton's knobs (those this release has)."""
    names = ("debug", "instrumentation_mode", "fpsan_homomorphic_casts")
    return {k: v for k, v in zip(names, launch.compile_options(fn)) if v is not None}


def compile_for(fn, args: tuple, meta: dict, num_warps: int, num_stages: int, capability: int):
    """Compile ``fn(*args, **meta)`` for ``sm_<capability>`` exactly as a launch with these arguments would
    specialise it; returns (CompiledKernel, ptxas log)."""
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(meta, num_warps=num_warps, num_stages=num_stages, **_options(fn))
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    knobs = triton.knobs
    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True  # ptxas runs, its log is printed
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    return kernel, log.getvalue()


def run_case(case: Case) -> dict:
    """Compile one case; the table row (compiled or the error's first line, registers, spills, shared)."""
    capability, limit = TARGETS[case.arch]
    row = dataclasses.asdict(case)
    row["config"] = list(case.config)
    row["smem_limit"] = limit
    outer, inner, warps, stages = case.config
    if case.kernel == "param_stats":
        fn, args, meta = _param_stats_args(case.n_tensors)
        row["padded_fraction"] = None
    else:
        fn, args, meta = launch_args(case.kernel, case.dtype, case.precision, case.head_dim)
        meta[attention._OUTER[case.kernel]], meta[attention._INNER[case.kernel]] = outer, inner
        row["padded_fraction"] = round(attention.padded_fraction(case.head_dim), 4)
        row["d_parts"] = [meta["D_MAIN"], meta["D_TAIL"]]
    try:
        kernel, log = compile_for(fn, args, meta, warps, stages, capability)
    except Exception as e:  # a compile failure is a row of the table, not the end of the check
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        row.update(compiled=False, error=f"{type(e).__name__}: {first}"[:300])
        return row
    regs = _REGS.findall(log)
    frames = [tuple(map(int, f)) for f in _SPILLS.findall(log)]
    row.update(compiled=True, shared=kernel.metadata.shared, fits=kernel.metadata.shared <= limit,
               registers=max(map(int, regs)) if regs else None,
               stack_frame=max(f[0] for f in frames) if frames else None,
               spill_stores=max(f[1] for f in frames) if frames else None,
               spill_loads=max(f[2] for f in frames) if frames else None)
    return row


def rank(row: dict) -> Optional[int]:
    """``attention.choose``'s rank of a compiled row: None over the limit, else the local memory per
    thread, bytes (ptxas's stack frame: what Triton's ``n_spills`` reads on the GPU, in 4-byte words);
    FITS = 0."""
    if not row.get("fits"):
        return None
    return row["stack_frame"] or (4 if row["spill_stores"] else attention.FITS)


# ----------------------------------------------------------------------------------------------
# Which cases
# ----------------------------------------------------------------------------------------------
def attention_groups(arches: Iterable[str], head_dims: Iterable[int], variants=VARIANTS, phases=PHASES):
    """Yield (kernel, dtype, precision, d, arch, ordered configs): one group per launch specialisation."""
    for d in head_dims:  # head dim first: an interrupted run has every target for the dims it reached
        for arch in arches:
            for dtype, precision in variants:
                for phase in phases:
                    elsize = _DTYPES[dtype].itemsize
                    yield phase, dtype, precision, d, arch, tuple(attention.config_order(phase, N_CTX, elsize))


def _mark(rows: List[dict], order: List[tuple]) -> None:
    """Mark each row's use as ``attention.choose`` decides from what the compiler reported: ``default``,
    the config launched without autotuning; ``tuned``, an autotune candidate; blank, never launched."""
    by_config = {tuple(r["config"]): r for r in rows}
    compiled = [c for c in order if c in by_config]
    uses = {}
    for autotune, use in ((True, "tuned"), (False, "default")):
        try:
            for c in attention.choose(compiled, lambda c: rank(by_config[c]), autotune):
                uses[c] = use
        except RuntimeError:  # nothing compiled fits: no row is launched
            pass
    for c, r in by_config.items():
        r["use"] = uses.get(c, "")


def _shape(row: dict) -> str:
    """The row's head dim (attention) or tensor count (param_stats), for a line of text."""
    return f"d={row['head_dim']}" if row["kernel"] != "param_stats" else f"T={row['n_tensors']}"


def _group(row: dict) -> tuple:
    return row["kernel"], row["dtype"], row["precision"], row["head_dim"], row["arch"], row["n_tensors"]


def check(arches, head_dims, configs="default", variants=VARIANTS, phases=PHASES, jobs=1, sink=None,
          param_stats_kernel=True, done_before=()) -> List[dict]:
    """Compile the cases and return their rows (``sink(row)`` is called as each finishes). Groups with
    rows in ``done_before`` (an earlier run's) are not compiled again."""
    finished = {_group(r) for r in done_before}
    groups = [g for g in attention_groups(arches, head_dims, variants, phases) if (*g[:5], 0) not in finished]
    rows: List[dict] = []

    def done(row):
        rows.append(row)
        if sink:
            sink(row)

    with concurrent.futures.ProcessPoolExecutor(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        submit = pool.submit if pool else (lambda f, *a: _Done(f(*a)))
        if param_stats_kernel:
            for arch in arches:
                for n in (152, 160):  # chunk_map_start = 9 T: one not divisible by 16, one divisible
                    if ("param_stats", "mixed", "-", 0, arch, n) in finished:
                        continue
                    config = (param_stats.BLOCK, param_stats.BLOCK_C, 4, 3)
                    done(submit(run_case, Case("param_stats", "mixed", "-", 0, config, arch, n)).result())
        if configs == "all":
            pending = {g: [submit(run_case, Case(g[0], g[1], g[2], g[3], c, g[4])) for c in g[5]] for g in groups}
            for g, futures in pending.items():
                group_rows = [f.result() for f in futures]
                _mark(group_rows, g[5])
                for r in group_rows:
                    done(r)
        elif configs == "first":  # a generator: the serial path writes each row as it is compiled
            for f in list_or_lazy(pool, (submit(run_case, Case(g[0], g[1], g[2], g[3], g[5][0], g[4]))
                                         for g in groups)):
                done(f.result())
        else:  # in the library's order until one fits; groups run side by side
            for f in list_or_lazy(pool, (submit(_walk, g) for g in groups)):
                for r in f.result():
                    done(r)
    return rows


def list_or_lazy(pool, futures):
    """All futures submitted at once to a pool (they run side by side); one at a time without one."""
    return list(futures) if pool else futures


def _walk(group) -> List[dict]:
    """A group's configs compiled in the library's order until one fits the target without spilling."""
    phase, dtype, precision, d, arch, order = group
    rows = []
    for c in order:
        rows.append(run_case(Case(phase, dtype, precision, d, c, arch)))
        if rank(rows[-1]) == attention.FITS:
            break
    _mark(rows, order)
    return rows


class _Done:
    """A finished result with a Future's ``result()`` (the serial path)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
def _spills(row: dict) -> bool:
    return bool(row.get("stack_frame") or row.get("spill_stores"))


def _parts(row: dict) -> str:
    parts = row.get("d_parts")
    return "-" if parts is None else "+".join(str(p) for p in parts if p)


def _kib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n:,}"


def render(rows: List[dict], env: dict, note: str = "") -> str:
    """The markdown report: environment, limits, a summary, then one line per compile."""
    lines = [f"# Compile check: vitcore's Triton kernels for NVIDIA targets, Triton {triton.__version__}", ""]
    lines += header_lines(env)
    lines += [f"- machine: {env['device_name']} (no GPU: cross-compiled with the ptxas inside the Triton wheel)",
              f"- N' = {N_CTX}; q, k, v views of a packed (B, N', 3, H, d) projection with H = 3, B = 2", ""]
    if note:
        lines += [note, ""]
    lines += ["Per-block shared-memory limits (opt-in): "
              + ", ".join(f"{a} {lim:,} B" for a, (_, lim) in TARGETS.items()), ""]
    compiled = [r for r in rows if r["compiled"]]
    used = [r for r in compiled if r.get("use") or r["kernel"] == "param_stats"]
    lines += ["## Summary", "",
              f"- compiles: {len(rows)}; compiled: {len(compiled)}; failed: {len(rows) - len(compiled)}",
              f"- configs the library launches (default or autotune candidate; param_stats): {len(used)}; "
              f"over the shared-memory limit: {sum(not r['fits'] for r in used)}; "
              f"spilling (a stack frame or spill stores): {sum(map(_spills, used))}",
              f"- configs compiled but not launched (over the limit, or listed after the default): "
              f"{len(compiled) - len(used)}", ""]
    groups = sorted({(r["kernel"], r["dtype"], r["precision"], r["head_dim"], r["arch"]) for r in rows
                     if r["kernel"] != "param_stats"})
    missing = [g for g in groups if not any(r.get("use") == "default" and (r["kernel"], r["dtype"], r["precision"],
                                                                             r["head_dim"], r["arch"]) == g
                                            for r in rows)]
    lines += [f"- specialisations with no config that fits: {len(missing)}"
              + ("" if not missing else " (" + "; ".join(" ".join(map(str, g)) for g in missing) + ")"), ""]
    dims = sorted({r["head_dim"] for r in rows if r["kernel"] != "param_stats"})
    if dims:
        worst = max(dims, key=attention.padded_fraction)
        lines += [f"- head dims: {', '.join(map(str, dims))}; the largest padded fraction "
                  f"{100 * attention.padded_fraction(worst):.1f}% (d = {worst}, parts "
                  f"{'+'.join(str(p) for p in attention.head_dim_parts(worst) if p)})", ""]
    spilling = [r for r in used if _spills(r) and r.get("use") != "tuned"]
    if spilling:
        lines += ["Spilling configs the library launches without autotuning (every config of the specialisation "
                  "spills; this one least):", ""]
        lines += [f"- {r['kernel']} {r['dtype']}/{r['precision']} {_shape(r)} {r['arch']} "
                  f"{tuple(r['config'])}: {r['registers']} registers, "
                  f"{r['stack_frame']} B stack frame, {r['spill_stores']} B spill stores" for r in spilling]
        lines.append("")
    tuned = [r for r in used if _spills(r) and r.get("use") == "tuned"]
    if tuned:
        lines += [f"Spilling autotune candidates (timed only where every config of the specialisation spills): "
                  f"{len(tuned)}, in {len({_group(r) for r in tuned})} specialisations.", ""]
    lines += ["## Every compile", "",
              "config = (outer block, inner block, num_warps, num_stages); use: `default` = launched without "
              "autotuning, `tuned` = an autotune candidate, blank = not launched on this target.", "",
              "| kernel | dtype | dot | d | D parts | padded | target | config | use | compiled | registers "
              "| stack frame B | spill stores B | shared B | limit B | fits |",
              "|---|---|---|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    order = {k: i for i, k in enumerate(("param_stats",) + PHASES)}
    for r in sorted(rows, key=lambda r: (order[r["kernel"]], r["arch"], r["dtype"], r["precision"], r["head_dim"],
                                         r["config"])):
        pad = "-" if r["padded_fraction"] is None else f"{100 * r['padded_fraction']:.0f}%"
        status = "yes" if r["compiled"] else f"no: {r['error']}"
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {r['precision']} | {r['head_dim'] or 'T=%d' % r['n_tensors']} | {_parts(r)} "
            f"| {pad} | {r['arch']} | {tuple(r['config'])} | {r.get('use', '')} | {status} "
            f"| {r.get('registers', '-')} | {_kib(r.get('stack_frame'))} | {_kib(r.get('spill_stores'))} "
            f"| {_kib(r.get('shared'))} "
            f"| {r['smem_limit']:,} | {'yes' if r.get('fits') else 'NO' if r['compiled'] else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compile_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for the .md table and .jsonl rows")
    p.add_argument("--json", default=None, help="write the rows as a JSON list to this path")
    p.add_argument("--arch", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--head-dims", nargs="+", type=int, default=None,
                   help="head dims d (default: the spaces' and %s)" % (USER_HEAD_DIMS,))
    p.add_argument("--kernels", nargs="+", default=list(PHASES) + ["param_stats"],
                   choices=list(PHASES) + ["param_stats"])
    p.add_argument("--variants", nargs="+", default=[f"{d}/{p}" for d, p in VARIANTS],
                   choices=[f"{d}/{p}" for d, p in VARIANTS], help="dtype/dot precision")
    p.add_argument("--configs", choices=["default", "all", "first"], default="default",
                   help="default: in the library's order up to the first that fits unspilled; all: every "
                   "listed config; first: the first listed only (a quick compile test)")
    p.add_argument("--jobs", type=int, default=1, help="compiles run side by side")
    p.add_argument("--note", default="", help="a line for the report (what this run covers)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of today's .jsonl in --out and compile only what it lacks")
    p.add_argument("--render-only", action="store_true", help="write the .md from today's .jsonl in --out")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and not args.render_only:
        raise SystemExit("bench.compile_check compiles kernels: run it without TRITON_INTERPRET")
    for d in args.head_dims or ():
        if not 1 <= d <= 256:
            raise SystemExit(f"--head-dims: d={d} is outside 1..256, the head dims the op takes")
    head_dims = args.head_dims or sorted(set(space_head_dims()) | set(USER_HEAD_DIMS))
    variants = [tuple(v.split("/")) for v in args.variants]
    phases = [k for k in PHASES if k in args.kernels]
    env = environment("cpu")
    stem = sink = None
    before: List[dict] = []
    if args.out:
        stem = os.path.join(args.out, f"cpu-{today()}-compile-check-triton{triton.__version__}")
        os.makedirs(args.out, exist_ok=True)
        if (args.resume or args.render_only) and os.path.exists(stem + ".jsonl"):
            with open(stem + ".jsonl") as f:
                before = [json.loads(line) for line in f if line.strip()]
        elif args.render_only:
            raise SystemExit(f"--render-only: no {stem}.jsonl")
        jsonl = None if args.render_only else open(stem + ".jsonl", "a" if args.resume else "w")

        def sink(row):
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
    rows = before if args.render_only else before + check(
        args.arch, head_dims, args.configs, variants, phases, args.jobs, sink,
        param_stats_kernel="param_stats" in args.kernels, done_before=before)
    if args.json:
        write_text(args.json, json.dumps(rows))
    if stem:
        write_text(stem + ".md", render(rows, env, args.note))
        print(f"wrote {stem}.md and .jsonl")
    bad = [r for r in rows if not r["compiled"] or ((r.get("use") or r["kernel"] == "param_stats") and not r["fits"])]
    print(f"{len(rows)} compiles, {len(bad)} failed or over the limit in a launched config")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

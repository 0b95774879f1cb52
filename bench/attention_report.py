"""Time every attention provider in one process and write a markdown report plus JSON.

    python -m bench.attention_report --out bench/results [--shapes vit-b,b-1025] [--dtypes bf16]

One process, same inputs, same timer (``triton.testing.do_bench``, median) for every provider.
Before timing it checks vitcore's output and gradients against a float64 reference on each shape,
and runs N'=16384, H=16 to check memory. Shapes, dtypes and providers live in ``bench.bench_attention``.
Kernels are compiled first by a pool of processes (filling Triton's on-disk cache), so the timed
process only loads them; its autotuner still benchmarks every config itself.
"""
import argparse
import multiprocessing
import time

import torch

from bench.bench_attention import DTYPES, MODES, SHAPES, flops, make_inputs, providers, step
from vitcore.bench.ceilings import matmul_precision, matmul_tflops
from vitcore.bench.env import environment, header_lines
from vitcore.bench.timers import device_ms, graph_ms
from vitcore.bench.writer import result_stem, write_json, write_text
from vitcore.ops import attention_ref, flash_attention

# fp32-tf32: Triton's TF32 MMA truncates fp32 operands where cuBLAS rounds them: ~10 TF32 ulps.
ATOL = {"bf16": 1e-2, "fp16": 1e-3, "fp32": 5e-5, "fp32-tf32": 5e-3}
GRAPH_PROVIDERS = ("sdpa", "sdpa-efficient", "sdpa-cudnn", "vitcore")
LONG = (1, 16, 16384, 64)  # memory check: B, H, N', d


# -- compile ahead, in parallel ------------------------------------------------------------------
def _prewarm(item):
    shape, dtype = item
    torch_dtype, precision = DTYPES[dtype]
    q, k, v, do = make_inputs(*SHAPES[shape], torch_dtype)
    with matmul_precision(precision):
        step(flash_attention, "fwd+bwd", q, k, v, do)
    torch.cuda.synchronize()
    return item


def prewarm(items, workers):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for _ in pool.imap_unordered(_prewarm, items):
            pass


# -- measurements --------------------------------------------------------------------------------
def check(shape, dtype):
    """max |error| vs float64 of vitcore and of PyTorch in the same dtype, for out, dq, dk, dv.

    PyTorch is SDPA's default, except under TF32, where SDPA's fp32 kernel does not use TF32 and
    the eager reference (cuBLAS TF32 matmuls) is the comparable error.
    """
    torch_dtype, precision = DTYPES[dtype]
    q, k, v, do = make_inputs(*SHAPES[shape], torch_dtype, seed=1)
    leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out64 = attention_ref(*leaves64)
    ref = [out64.detach(), *torch.autograd.grad(out64, leaves64, do.double())]
    del out64, leaves64
    result = {}
    with matmul_precision(precision):
        torch_fn = attention_ref if precision != "highest" else providers()["sdpa"]
        for name, fn in (("vitcore", flash_attention), ("torch", torch_fn)):
            out = fn(q, k, v)
            got = [out, *torch.autograd.grad(out, (q, k, v), do)]
            result[name] = [(g.double() - r).abs().max().item() for g, r in zip(got, ref)]
            result[name + "_finite"] = all(bool(torch.isfinite(g).all()) for g in got)
            del out, got
    result["ok"] = result["vitcore_finite"] and all(
        e <= 2 * t + ATOL[dtype] for e, t in zip(result["vitcore"], result["torch"])
    )
    return result


def time_ms(fn, mode, q, k, v, do):
    """do_bench median (ms) of one call of ``step``; the first call compiles / autotunes untimed."""
    return device_ms(lambda: step(fn, mode, q, k, v, do))


def ceilings():
    """Dense 8192^3 matmul TFLOP/s per dtype (fp32-tf32: fp32 at precision 'high'), measured in this run."""
    return {name: matmul_tflops("cuda", name.split("-")[0], precision=precision)
            for name, (_, precision) in DTYPES.items()}


def long_sequence():
    """N'=16384, H=16, d=64, B=1 in bf16: peak memory beyond the inputs, and time."""
    res = {}
    for name in ("vitcore", "sdpa"):
        q, k, v, do = make_inputs(*LONG, torch.bfloat16)
        fn = providers()[name]
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, "fwd+bwd", q, k, v, do)
        torch.cuda.synchronize()
        res[name] = {
            "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20,
            "fwd+bwd_ms": time_ms(fn, "fwd+bwd", q, k, v, do),
        }
        res[name]["tflops"] = flops(*LONG, "fwd+bwd") / res[name]["fwd+bwd_ms"] / 1e9
        del q, k, v, do
    return res


# -- report --------------------------------------------------------------------------------------
def _row(results, shape, dtype, provider, mode):
    for r in results:
        if (r["shape"], r["dtype"], r["provider"], r["mode"]) == (shape, dtype, provider, mode):
            return r
    return None


def _ms(results, shape, dtype, provider, mode):
    r = _row(results, shape, dtype, provider, mode)
    return r["ms"] if r and r.get("ms") else None


def targets(results, mode="fwd+bwd"):
    """(target, shape, dtype, ours, sdpa, ratio, needed, met) for each of issue 4's targets."""
    rows = []
    for dtype in ("bf16", "fp16"):
        for shape in SHAPES:
            B, H, N, d = SHAPES[shape]
            ours, sdpa = _ms(results, shape, dtype, "vitcore", mode), _ms(results, shape, dtype, "sdpa", mode)
            if ours is None or sdpa is None:
                continue
            if N == 197:
                need = 1.4 if (H == 3 or d == 32) else 1.0
                rows.append((f"N'=197: speedup >= {need}x", shape, dtype, ours, sdpa, sdpa / ours, need))
            elif N >= 1025:
                rows.append(("N'>=1025: within 1.25x", shape, dtype, ours, sdpa, sdpa / ours, 1 / 1.25))
    for dtype, need in (("fp32", 1.5), ("fp32-tf32", 3.0)):
        for shape in SHAPES:
            ours, sdpa = _ms(results, shape, dtype, "vitcore", mode), _ms(results, shape, dtype, "sdpa", mode)
            if ours is not None and sdpa is not None:
                rows.append((f"{dtype}: speedup >= {need}x", shape, dtype, ours, sdpa, sdpa / ours, need))
    return [(*r, r[5] >= r[6]) for r in rows]


def write_report(path, meta, results, checks, long_res, ceil):
    lines = [
        f"# Flash attention on {meta['device_name']}: vitcore vs PyTorch SDPA",
        "",
        *header_lines(meta),
        "- timer: `triton.testing.do_bench` median (warmup 10 ms, rep 50 ms, L2 flushed between calls), "
        "all providers in one process on the same inputs",
        "- inputs: q, k, v are (B, H, N', d) views of one packed (B, N', 3, H, d) tensor (timm's QKV "
        "layout); `fwd` records autograd as in training; `fwd+bwd` adds `torch.autograd.grad` for q, k, v",
        "- TFLOP/s: 4·B·H·N'²·d per forward, 3.5x that for forward+backward (backward = 2.5x forward); "
        "`% peak`: of a dense 8192³ matmul measured in the same run and dtype",
        "- `graph fwd+bwd`: the same forward+backward captured in a CUDA graph and replayed "
        "(`triton.testing.do_bench` median of the replay): device time without host launch cost",
        "- fp32 rows run with `torch.set_float32_matmul_precision('highest')`, fp32-tf32 rows with 'high'",
        "",
        "Matmul ceilings (TFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in ceil.items()),
        "",
        "## Targets (forward+backward, speedup = SDPA default time / vitcore time)",
        "",
        "| target | shape | dtype | vitcore ms | SDPA ms | speedup | needed | met |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for mode in ("fwd+bwd", "graph fwd+bwd"):
        rows = targets(results, mode)
        if not rows:
            continue
        lines.append(f"| **{mode}** | | | | | | | |")
        for name, shape, dtype, ours, sdpa, ratio, need, met in rows:
            lines.append(
                f"| {name} | {shape} {SHAPES[shape]} | {dtype} | {ours:.3f} | {sdpa:.3f} | {ratio:.2f}x | "
                f"{need:.2f}x | {'yes' if met else 'NO'} |"
            )
    lines += [
        "",
        "## Correctness on the GPU (max |error| vs float64: out, dq, dk, dv)",
        "",
        "Pass: every vitcore error <= 2 x PyTorch's error in the same dtype (SDPA default; eager for "
        "fp32-tf32, where SDPA does not use TF32) + atol "
        + ", ".join(f"{k} {v:g}" for k, v in ATOL.items()) + ".",
        "",
        "| shape | dtype | vitcore | PyTorch | pass |",
        "|---|---|---|---|---|",
    ]
    for (shape, dtype), c in checks.items():
        if "error" in c:
            lines.append(f"| {shape} | {dtype} | error: {c['error']} | | NO |")
            continue
        fmt = lambda xs: " ".join(f"{x:.1e}" for x in xs)  # noqa: E731
        lines.append(f"| {shape} | {dtype} | {fmt(c['vitcore'])} | {fmt(c['torch'])} | {'yes' if c['ok'] else 'NO'} |")
    if long_res:
        lines += ["", f"## Long sequence: B, H, N', d = {LONG}, bf16, forward+backward", ""]
        lines += ["| provider | peak extra memory (MiB) | ms | TFLOP/s |", "|---|---:|---:|---:|"]
        for name, r in long_res.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error']} | | |")
            else:
                lines.append(f"| {name} | {r['peak_extra_mib']:.0f} | {r['fwd+bwd_ms']:.2f} | {r['tflops']:.0f} |")
    lines += ["", "## All timings", ""]
    for dtype in DTYPES:
        lines += [f"### {dtype}", "", "| shape (B, H, N', d) | provider | fwd ms | fwd TFLOP/s | fwd+bwd ms | "
                  "fwd+bwd TFLOP/s | % peak | graph fwd+bwd ms | graph TFLOP/s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for shape in SHAPES:
            for provider in providers():
                f, fb = _row(results, shape, dtype, provider, "fwd"), _row(results, shape, dtype, provider, "fwd+bwd")
                if f is None and fb is None:
                    continue
                cells = []
                for r in (f, fb):
                    if r is None or r.get("ms") is None:
                        cells += [r["skip"][:40] if r else "-", ""]
                    else:
                        cells += [f"{r['ms']:.3f}", f"{r['tflops']:.0f}"]
                pct = f"{100 * fb['tflops'] / ceil[dtype]:.0f}%" if fb and fb.get("ms") else ""
                g = _row(results, shape, dtype, provider, "graph fwd+bwd")
                graph = [f"{g['ms']:.3f}", f"{g['tflops']:.0f}"] if g and g.get("ms") else ["", ""]
                lines.append(f"| {shape} {SHAPES[shape]} | {provider} | {' | '.join(cells)} | {pct} | {' | '.join(graph)} |")
        lines.append("")
    write_text(path, "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--name", default=None, help="what the files are named for: <device>-<date>-<name> "
                        "(default attention; -2, -3, ... if taken)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--providers", default=",".join(providers()))
    parser.add_argument("--prewarm", type=int, default=12, help="compile processes (0: none)")
    parser.add_argument("--prewarm-only", action="store_true", help="compile, then exit")
    parser.add_argument("--graph", action="store_true", help="also time fwd+bwd replayed from a CUDA graph")
    parser.add_argument("--no-long", action="store_true", help="skip the N'=16384 memory check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "attention_report: needs a CUDA GPU (none is available)\n")
    shapes, dtypes = args.shapes.split(","), args.dtypes.split(",")
    wanted = args.providers.split(",")
    meta = environment("cuda")
    stem = result_stem(args.out, args.name or "attention", "cuda")
    md_path, json_path = stem + ".md", stem + ".json"
    t0 = time.time()
    if args.prewarm:
        prewarm([(s, d) for s in shapes for d in dtypes], args.prewarm)
    meta["prewarm_s"] = time.time() - t0
    if args.prewarm_only:
        return

    results, checks, long_res = [], {}, {}
    ceil = ceilings()

    from vitcore.kernels.attention import tuned_configs  # Triton: imported where a GPU run needs it

    def dump():
        doc = {"meta": meta, "ceilings": ceil, "checks": {f"{s}/{d}": c for (s, d), c in checks.items()},
               "long": long_res, "results": results, "tuned": tuned_configs()}
        write_json(json_path, doc)
        write_report(md_path, meta, results, checks, long_res, ceil)

    for shape in shapes:
        B, H, N, d = SHAPES[shape]
        for dtype in dtypes:
            try:
                checks[(shape, dtype)] = check(shape, dtype)
            except Exception as e:  # report and go on: one failure must not lose the run
                checks[(shape, dtype)] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            torch_dtype, precision = DTYPES[dtype]
            q, k, v, do = make_inputs(B, H, N, d, torch_dtype)
            for provider, fn in providers().items():
                if provider not in wanted:
                    continue
                for mode in MODES:
                    row = {"shape": shape, "B": B, "H": H, "N": N, "d": d, "dtype": dtype, "provider": provider,
                           "mode": mode}
                    try:
                        with matmul_precision(precision):
                            ms = time_ms(fn, mode, q, k, v, do)
                        row.update(ms=ms, tflops=flops(B, H, N, d, mode) / ms / 1e9)
                    except Exception as e:  # unsupported backend / dtype, or out of memory
                        row["skip"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                        torch.cuda.empty_cache()
                    results.append(row)
                if args.graph and provider in GRAPH_PROVIDERS:
                    row = {**row, "mode": "graph fwd+bwd"}
                    row.pop("ms", None), row.pop("tflops", None), row.pop("skip", None)
                    try:
                        with matmul_precision(precision):
                            ms = graph_ms(lambda: step(fn, "fwd+bwd", q, k, v, do))
                        row.update(ms=ms, tflops=flops(B, H, N, d, "fwd+bwd") / ms / 1e9)
                    except Exception as e:  # e.g. a backend that cannot be captured
                        row["skip"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    results.append(row)
            del q, k, v, do
            torch.cuda.empty_cache()
            dump()
            print(f"[{time.time() - t0:6.1f}s] {shape} {dtype} done", flush=True)
    if not args.no_long:
        try:
            long_res = long_sequence()
        except Exception as e:
            long_res = {"vitcore": {"error": f"{type(e).__name__}: {str(e)[:200]}"}}
    meta["total_s"] = time.time() - t0
    dump()
    print(open(md_path).read())


if __name__ == "__main__":
    main()

"""Host and GPU time per call of vitcore's ops beside PyTorch's, and issue 12's targets (needs a CUDA GPU).

    python -m bench.launch_overhead --out bench/results

In one process, on the same inputs:
- attention, ViT-Ti/S/B/L shapes (B=64, N'=197, d=64; H = 3, 6, 12, 16), q, k, v views of one packed
  (B, N', 3, H, d) tensor: ``vitcore.ops.flash_attention`` and ``F.scaled_dot_product_attention``,
  forward (recording autograd) and forward + ``torch.autograd.grad``, in bf16 and fp16; fp32 at precision
  "highest" and "high" (TF32) for the ViT-B/L shapes at N' = 197 and 1025;
- ``vitcore.ops.param_stats`` over a ViT-Ti..L parameter set with fresh gradients every call (as
  ``vitcore.score`` calls it), beside ``torch._foreach_norm`` of the same gradients.
Timers (``vitcore.bench.timers``): *host µs* = ``host_us`` (back-to-back calls without a sync: the Python +
launch cost a caller pays); *GPU µs* = ``graph_ms`` (the call replayed from a CUDA graph: device time alone);
*call µs* = ``device_ms`` (do_bench median of back-to-back calls: what a training step sees);
*caller µs* = ``sync_ms`` (one call ending in its host sync, L2 flushed: what ``vitcore.score`` waits for).
Memory floor of param_stats = (bytes of g + bytes of θ) / the measured copy bandwidth (read + write).
"""
import argparse
import itertools

import torch
import torch.nn.functional as F

from bench.param_stats_report import VIT, fresh_calls, make_tensors, vit_shapes
from vitcore.bench.ceilings import copy_gbps, matmul_precision
from vitcore.bench.env import environment, header_lines
from vitcore.bench.timers import device_ms, graph_ms, host_us, sync_ms
from vitcore.bench.writer import result_stem, write_json, write_text
from vitcore.ops import flash_attention, param_stats

HEADS = {"ViT-Ti": 3, "ViT-S": 6, "ViT-B": 12, "ViT-L": 16}  # B=64, N'=197, d=64
BATCH, TOKENS, HEAD_DIM = 64, 197, 64
LOWP = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP32 = {"fp32": "highest", "fp32-tf32": "high"}  # name: torch.get_float32_matmul_precision()
FP32_SHAPES = {"ViT-B N'=197": (64, 12, 197), "ViT-L N'=197": (64, 16, 197),
               "ViT-B N'=1025": (8, 12, 1025), "ViT-L N'=1025": (8, 16, 1025)}  # (B, H, N'), d = 64
PROVIDERS = {"vitcore": flash_attention, "sdpa": F.scaled_dot_product_attention}
HOST_TARGET_US = 60  # issue 12: host time per forward+backward
FP32_NEED = {"fp32": 1.5, "fp32-tf32": 3.0}  # issue 12: speed-up over SDPA fp32 at N' >= 197, ViT-B/L


def qkv_inputs(B, H, N, dtype, seed=0):
    """q, k, v: (B, H, N', d) views of one packed (B, N', 3, H, d) tensor requiring grad; dO (B, H, N', d)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, N, 3, H, HEAD_DIM, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N', d)
    return q, k, v, torch.randn(B, H, N, HEAD_DIM, device="cuda", dtype=dtype, generator=gen)


def attention_calls(fn, q, k, v, do):
    """{mode: a no-argument call}: the forward recording autograd, and forward + backward."""
    return {"fwd": lambda: fn(q, k, v),
            "fwd+bwd": lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do)}


def time_attention(shape, B, H, N, dtype_name, dtype, precision, host=True):
    rows = []
    q, k, v, do = qkv_inputs(B, H, N, dtype)
    with matmul_precision(precision):
        for provider, fn in PROVIDERS.items():
            for mode, call in attention_calls(fn, q, k, v, do).items():
                row = {"shape": shape, "B": B, "H": H, "N": N, "dtype": dtype_name, "provider": provider,
                       "mode": mode, "call_us": 1e3 * device_ms(call)}
                if host:
                    row["host_us"] = host_us(call)
                    try:  # a call that cannot be captured keeps its other timings
                        row["gpu_us"] = 1e3 * graph_ms(call)
                    except Exception as e:  # noqa: BLE001
                        row["gpu_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                rows.append(row)
    return rows


def time_param_stats(model, bw_gbps):
    dim, depth = VIT[model]
    params, grads = make_tensors(vit_shapes(dim, depth))
    nbytes = sum(x.numel() * x.element_size() for x in params + grads)  # g and θ each read once
    calls = itertools.cycle(fresh_calls(params, grads))
    fresh = lambda: param_stats(*next(calls))  # noqa: E731  (new gradient tensors and weight views per call)
    norms = lambda: torch._foreach_norm(grads)  # noqa: E731
    row = {"model": model, "n_tensors": len(params), "bytes": nbytes, "floor_us": nbytes / (bw_gbps * 1e3),
           "vitcore_host_us": host_us(fresh), "vitcore_gpu_us": 1e3 * graph_ms(lambda: param_stats(params, grads)),
           "vitcore_caller_us": 1e3 * sync_ms(lambda: fresh().tolist()),
           "foreach_norm_host_us": host_us(norms), "foreach_norm_gpu_us": 1e3 * graph_ms(norms),
           "foreach_norm_caller_us": 1e3 * sync_ms(lambda: torch.stack(norms()).tolist())}
    return row


def targets(doc):
    """Issue 12's targets: [{"issue", "target", "measured", "met"}] from the rows measured so far."""
    out = []
    by = {(r["shape"], r["dtype"], r["provider"], r["mode"]): r for r in doc["attention"]}
    host = [(r["host_us"], r["shape"], r["dtype"]) for r in doc["attention"]
            if r["provider"] == "vitcore" and r["mode"] == "fwd+bwd" and "host_us" in r]
    if host:
        worst = max(host)
        out.append({"issue": 12, "target": f"flash_attention host time per fwd+bwd <= {HOST_TARGET_US} µs",
                    "measured": f"{worst[0]:.1f} µs (worst: {worst[1]} {worst[2]})",
                    "met": worst[0] <= HOST_TARGET_US})
    for r in doc["param_stats"]:
        limit = 1.3 * r["floor_us"] + 20
        out.append({"issue": 12, "target": f"param_stats caller time, fresh grads, {r['model']} "
                    f"<= 1.3 x floor + 20 µs = {limit:.1f} µs", "measured": f"{r['vitcore_caller_us']:.1f} µs "
                    f"({r['vitcore_caller_us'] / limit:.2f}x the limit)", "met": r["vitcore_caller_us"] <= limit})
    for (shape, dtype, provider, mode), r in by.items():
        sdpa = by.get((shape, dtype, "sdpa", mode))
        if provider != "vitcore" or mode != "fwd+bwd" or sdpa is None:
            continue
        speedup = sdpa["call_us"] / r["call_us"]
        need = FP32_NEED.get(dtype, 1.0)
        what = "no slower than SDPA" if dtype in LOWP else f">= {need}x SDPA fp32"
        out.append({"issue": 12, "target": f"{dtype} fwd+bwd {shape}: {what}",
                    "measured": f"{speedup:.2f}x SDPA ({r['call_us']:.0f} vs {sdpa['call_us']:.0f} µs)",
                    "met": speedup >= need})
    return out


def write(doc, stem):
    doc["targets"] = targets(doc)
    write_json(stem + ".json", doc)
    lines = [f"# Launch overhead: vitcore's ops beside PyTorch's, {doc['meta']['device_name']}", "",
             *header_lines(doc["meta"]), "", __doc__.split("\n\n", 1)[1].strip(), "",
             f"Measured copy bandwidth: {doc.get('copy_gbps', float('nan')):.0f} GB/s.", "",
             "## Targets (issue 12)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'MISSED'} |" for t in doc["targets"]]
    lines += ["", "## Attention", "", "| shape | dtype | provider | mode | host µs | GPU µs (graph) | call µs |",
              "|---|---|---|---|---:|---:|---:|"]
    for r in doc["attention"]:
        gpu = f"{r['gpu_us']:.1f}" if "gpu_us" in r else r.get("gpu_error", "")
        host = f"{r['host_us']:.1f}" if "host_us" in r else ""
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['provider']} | {r['mode']} | {host} | {gpu} "
                     f"| {r['call_us']:.1f} |")
    lines += ["", "## param_stats (fresh gradients) beside torch._foreach_norm", "",
              "| model | tensors | floor µs | vitcore host µs | GPU µs | caller µs | _foreach_norm host µs "
              "| GPU µs | caller µs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["param_stats"]:
        lines.append(f"| {r['model']} | {r['n_tensors']} | {r['floor_us']:.1f} | {r['vitcore_host_us']:.1f} "
                     f"| {r['vitcore_gpu_us']:.1f} | {r['vitcore_caller_us']:.1f} | {r['foreach_norm_host_us']:.1f} "
                     f"| {r['foreach_norm_gpu_us']:.1f} | {r['foreach_norm_caller_us']:.1f} |")
    write_text(stem + ".md", "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="folder; files <device>-<date>-launch_overhead.*")
    parser.add_argument("--models", default=",".join(HEADS), help=f"comma-separated: {', '.join(HEADS)}")
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 / TF32 speed-up rows")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "launch_overhead: needs a CUDA GPU (none is available)\n")
    models = args.models.split(",")
    bad = [m for m in models if m not in HEADS]
    if bad:
        parser.exit(2, f"launch_overhead: --models {bad}: expected some of {list(HEADS)}\n")
    stem = result_stem(args.out, "launch_overhead", "cuda")
    doc = {"meta": environment("cuda"), "attention": [], "param_stats": []}
    for model in models:
        for name, dtype in LOWP.items():
            doc["attention"] += time_attention(model, BATCH, HEADS[model], TOKENS, name, dtype, None)
        write(doc, stem)  # after each part: a run cut off keeps what it measured
    doc["copy_gbps"] = copy_gbps("cuda")["copy_gbps"]
    for model in models:
        doc["param_stats"].append(time_param_stats(model, doc["copy_gbps"]))
        write(doc, stem)
    if not args.no_fp32:
        for shape, (B, H, N) in FP32_SHAPES.items():
            for name, precision in FP32.items():
                doc["attention"] += time_attention(shape, B, H, N, name, torch.float32, precision, host=False)
            write(doc, stem)
    print(open(stem + ".md").read())


if __name__ == "__main__":
    main()

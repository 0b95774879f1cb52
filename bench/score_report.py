"""Scoring throughput end to end: ``vitcore score``'s pipeline against the per-parameter loop (issue 13).

Every provider scores the same architectures on the same minibatch with the same seeds, in one process,
timed from the architecture spec to the scores written (build the model, run the passes, read the
scores, write the results line):
- loop:     the loop as users write it: ``torch.manual_seed``, the model built on the CPU and moved to the
            device, SDPA attention, one forward and ``loss.backward()``, then a Python loop over the parameters
            summing per-tensor terms with ``.item()`` (grad_norm and snip), a JSON line per architecture;
- vitcore:  ``vitcore.runs.score_archs``, what ``vitcore score`` runs: the model built on the device,
            attention "auto", fp32, a JSON line per architecture (flushed; fsynced at most once a second);
- bf16:     the same under bf16 autocast (``--dtype bf16``);
- workers:  ``vitcore score --workers K`` (``--workers 2,4,8``), each K one whole run in a fresh process
            that starts K ranks on this machine (on CUDA all on the one GPU), timed by the wall clock from
            the command's start to its exit: unlike the in-process providers, the time includes starting
            K + 1 Python interpreters (importing torch) and the ranks' process group, and the merge.
The providers take turns over chunks of the architectures (loop, vitcore, bf16, loop, ...), so a load
that changes during the run falls on each alike (``rounds=1, repeats=R``: R whole runs each, alternating);
every provider scores the first architecture once before the timing (compilation, allocator warm-up).
Each provider's Kendall τ is taken against a float64 reference (its own weights in float64, eager
attention, ``vitcore.score``) on the first ``ref_n`` architectures. On a CPU the loop and vitcore build
the same weights (one CPU generator), so their scores are also compared one by one; on a GPU vitcore's
weights come from the CUDA generator and differ.

    python -m bench.score_report --workers 2,4,8 --out bench/results/h200-2026-11-29-score  # 200 ImageNet-preset
    python -m bench.score_report --device cpu --space small --n 50 --data digits --rounds 1 --repeats 3 \
        --workers 2 --out bench/results/cpu-2026-11-29-score-fastbuild

``run(out, ...)`` is the same as a function (the GPU suite calls it).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

import vitcore
from vitcore.bench.env import environment, header_lines
from vitcore.bench.timers import once_s
from vitcore.bench.writer import write_json, write_text
from vitcore.data import load_batch
from vitcore.paths import check_out_file
from vitcore.runs import arch_seed, score_archs
from vitcore.space import SPACES, sample

PROXIES = ["grad_norm", "snip"]
PROVIDERS = ("loop", "vitcore", "bf16")
SEED = 0
SETS = {"grad_norm+snip": PROXIES,
        "data pass (7 proxies)": ["grad_norm", "snip", "plain", "fisher", "jacob_cov", "nwot", "zico"],
        "synflow": ["synflow"], "grasp": ["grasp"]}
CPU_SPEEDUP, FP32_SPEEDUP, LOWP_SPEEDUP = 1.5, 10, 20  # issue 13's targets, architectures per second over the loop
FP32_TAU, LOWP_TAU, CPU_REL = 0.99, 0.95, 1e-6


def loop_run(archs, batch, out: str, device: torch.device) -> None:
    """The per-parameter loop, as users write it, one JSON line per architecture appended to ``out``."""
    x, y = batch.inputs.to(device), batch.targets.to(device)
    with open(out, "a") as f:
        for arch in archs:
            torch.manual_seed(arch_seed(arch, SEED))
            model = arch.config(batch.img_size, batch.in_chans, batch.num_classes).build(attention="sdpa").to(device)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            g2, snip = 0.0, 0.0
            for p in model.parameters():
                if p.grad is not None:
                    g2 += p.grad.norm().item() ** 2
                    snip += (p.grad * p).abs().sum().item()
            f.write(json.dumps({"id": arch.id, "scores": {"grad_norm": g2 ** 0.5, "snip": snip}}) + "\n")
            f.flush()


def vitcore_run(dtype: str):
    def provider(archs, batch, out: str, device: torch.device) -> None:
        score_archs(archs, batch, out, proxies=PROXIES, seed=SEED, device=device.type, dtype=dtype,
                    attention="auto", resume=True)
    return provider


RUNNERS = {"loop": loop_run, "vitcore": vitcore_run("fp32"), "bf16": vitcore_run("bf16")}


def workers_run(k: int, archs, space_name: str, data: str, batch_size: int, device: torch.device, tmp: str) -> dict:
    """One whole ``vitcore score --workers k`` run over ``archs`` in a fresh process: {"seconds" (wall clock),
    "results"}, or {"error"} when it exits non-zero (recorded, not raised: the providers timed before it
    and the other K are kept)."""
    archs_path, out = os.path.join(tmp, "archs.jsonl"), os.path.join(tmp, f"workers-{k}.jsonl")
    with open(archs_path, "w") as f:
        f.writelines(a.to_json() + "\n" for a in archs)
    argv = [sys.executable, "-m", "vitcore", "score", "--archs", archs_path, "--space", space_name, "--data", data,
            "--batch-size", str(batch_size), "--seed", str(SEED), "--device", device.type,
            "--proxies", ",".join(PROXIES), "--attention", "auto", "--workers", str(k), "--out", out]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": f"exited with {done.returncode}: " + " / ".join(done.stderr.strip().splitlines()[-3:])}
    return {"seconds": seconds, "results": _read(out)}


def reference(archs, batch, device: torch.device, built_on: str) -> Dict[str, dict]:
    """float64 scores of the weights built on ``built_on`` ("cpu" or the device), eager attention."""
    x, y = batch.inputs.to(device).double(), batch.targets.to(device)
    scores = {}
    for arch in archs:
        model = arch.config(batch.img_size, batch.in_chans, batch.num_classes).build(
            attention="eager", device=built_on, seed=arch_seed(arch, SEED)).to(device).double()
        scores[arch.id] = vitcore.score(model, x, y, proxies=PROXIES)
    return scores


def _read(path: str) -> Dict[str, dict]:
    with open(path) as f:
        return {r["id"]: r for r in map(json.loads, f) if "scores" in r}


def _max_rel_diff(scores: Dict[str, dict], base: Optional[Dict[str, dict]]) -> Optional[float]:
    """Largest relative difference of ``scores`` from ``base`` over the ids both scored (a base score of 0:
    0 if equal, else inf); None without a common id."""
    pairs = [(scores[i]["scores"][q], b["scores"][q]) for i, b in (base or {}).items() if i in scores for q in PROXIES]
    if not pairs:
        return None
    return max(abs(a - b) / abs(b) if b else (0.0 if a == b else math.inf) for a, b in pairs)


def _workers_summary(whole: Dict[int, dict], n: int, loop_run_s: float, ref: Dict[str, dict],
                     base: Optional[Dict[str, dict]]) -> Dict[str, dict]:
    """Per K: {"error"} for a failed run, else its seconds, the architectures it did not score, archs/s
    (of those scored), speed-up over one whole run of the loop, τ against ``ref`` and the difference from
    ``base`` (the in-process vitcore scores)."""
    summary = {}
    for k, w in whole.items():
        if "error" in w:
            summary[str(k)] = {"error": w["error"]}
            continue
        s, got = w["seconds"], w["results"]
        summary[str(k)] = {"seconds": s, "missing": n - len(got), "archs_per_s": len(got) / s,
                           "speedup": loop_run_s / s, "tau": {q: _tau(got, ref, q) for q in PROXIES},
                           "max_rel_diff_vs_vitcore": _max_rel_diff(got, base)}
    return summary


def _tau(scores: Dict[str, dict], ref: Dict[str, dict], proxy: str) -> Optional[float]:
    ids = [i for i in ref if i in scores]
    if len(ids) < 2:
        return None
    tau = kendalltau([scores[i]["scores"][proxy] for i in ids], [ref[i][proxy] for i in ids]).statistic
    return float(tau)


def run(out: str, n: int = 200, batch_size: int = 64, space_name: str = "imagenet", device: str = "cuda",
        full_family_n: int = 0, command: Optional[str] = None, data: str = "synthetic",
        providers: Optional[Sequence[str]] = None, ref_n: int = 30, rounds: int = 10, repeats: int = 1,
        workers: Sequence[int] = ()) -> dict:
    """Time ``providers`` (default: loop, vitcore, bf16 on CUDA; loop, vitcore on a CPU) on ``n``
    architectures of ``space_name`` with ``batch_size`` examples of ``data`` ("synthetic": images shaped
    for the space); then one whole ``vitcore score --workers K`` run for each K in ``workers``; τ
    against float64 on the first ``ref_n``; ``full_family_n`` architectures also timed per proxy set
    through ``vitcore.score``. Writes ``out``.json (after every chunk, "complete": false until the end)
    and ``out``.md. Returns {"meta", "complete", "rows", "providers", "workers", "targets", "speedup"}.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda': no CUDA GPU is available")
    if n < 1 or batch_size < 1 or ref_n < 0 or rounds < 1 or repeats < 1 or full_family_n < 0:
        raise ValueError(f"n={n}, batch_size={batch_size}, rounds={rounds}, repeats={repeats} must be positive, "
                         f"ref_n={ref_n}, full_family_n={full_family_n} >= 0")
    if space_name not in SPACES:
        raise ValueError(f"space {space_name!r}; valid: {', '.join(SPACES)}")
    if not isinstance(workers, (list, tuple)) or any(isinstance(k, bool) or not isinstance(k, int) for k in workers):
        raise TypeError(f"workers={workers!r} must be a list of ints")
    if any(k < 1 for k in workers):
        raise ValueError(f"workers={list(workers)} must be positive ints")
    dev = torch.device(device)
    providers = list(providers or (PROVIDERS if dev.type == "cuda" else PROVIDERS[:2]))
    unknown = [p for p in providers if p not in RUNNERS]
    if unknown or "loop" not in providers:
        raise ValueError(f"providers={providers}: need 'loop' and only {', '.join(RUNNERS)}")
    for suffix in (".json", ".md"):  # refused now, not after the timing; an earlier run is never overwritten
        if os.path.lexists(out + suffix):
            raise ValueError(f"--out {out!r}: {out + suffix!r} exists (an earlier run); name another stem")
        check_out_file(out + suffix, "--out")
    space = SPACES[space_name]
    archs = sample(space, n, SEED)
    batch = load_batch(data, batch_size, SEED, space)
    meta = {**environment(dev, command), "space": space_name, "n": n, "batch_size": batch_size, "data": data,
            "input_shape": list(batch.inputs.shape), "proxies": PROXIES, "rounds": rounds,
            "repeats": repeats, "workers": list(workers)}
    seconds = {p: 0.0 for p in providers}
    per_chunk = {p: [] for p in providers}  # seconds of each chunk: a load spike shows in one chunk's ratio
    step = -(-n // min(rounds, n))
    chunks = [archs[i:i + step] for i in range(0, n, step)]
    doc = {"meta": meta, "complete": False}
    with tempfile.TemporaryDirectory() as tmp:
        for p in providers:  # warm-up, not timed
            RUNNERS[p](archs[:1], batch, os.path.join(tmp, f"warm-{p}.jsonl"), dev)
        for r in range(repeats):  # each repeat a fresh run per provider, into its own file
            paths = {p: os.path.join(tmp, f"{p}-{r}.jsonl") for p in providers}
            for k, chunk in enumerate(chunks):
                for p in providers:
                    per_chunk[p].append(once_s(lambda: RUNNERS[p](chunk, batch, paths[p], dev), dev)[0])
                    seconds[p] += per_chunk[p][-1]
                doc["chunk_seconds"] = per_chunk
                write_json(out + ".json", doc)
                print(f"[{r + 1}/{repeats}, {k + 1}/{len(chunks)}] "
                      + ", ".join(f"{p} {s:.2f} s" for p, s in seconds.items()), file=sys.stderr, flush=True)
            if r == 0:
                results = {p: _read(paths[p]) for p in providers}
    meta["load_average_end"] = list(os.getloadavg())
    refs = {"cpu": reference(archs[:ref_n], batch, dev, "cpu")}
    refs["device"] = refs["cpu"] if dev.type == "cpu" else reference(archs[:ref_n], batch, dev, device)
    rows = [{"id": a.id, "params": results["vitcore" if "vitcore" in results else "loop"][a.id].get("params"),
             "scores": {p: results[p][a.id]["scores"] for p in providers},
             "timing": {p: results[p][a.id]["timing"] for p in providers if "timing" in results[p][a.id]},
             **({"reference": {w: refs[w][a.id] for w in refs}} if a.id in refs["cpu"] else {})} for a in archs]
    summary = {}
    for p in providers:
        ref = refs["cpu" if p == "loop" else "device"]
        timings = [r["timing"][p] for r in rows if p in r["timing"]]
        ratios = [a / b for a, b in zip(per_chunk["loop"], per_chunk[p])]
        summary[p] = {"seconds": seconds[p], "archs_per_s": n * repeats / seconds[p],
                      "speedup": seconds["loop"] / seconds[p],
                      "median_chunk_speedup": float(np.median(ratios)),
                      "tau": {q: _tau(results[p], ref, q) for q in PROXIES},
                      "mean_ms": {k: 1e3 * float(np.mean([t[k] for t in timings])) for k in timings[0]} if timings
                      else None}
    if dev.type == "cpu" and "vitcore" in providers:
        summary["vitcore"]["max_rel_diff_vs_loop"] = max(
            abs(r["scores"]["vitcore"][q] - r["scores"]["loop"][q]) / abs(r["scores"]["loop"][q])
            for r in rows for q in PROXIES)
    family = _family(archs[:full_family_n], batch, dev)
    # written before the workers runs too: a run stopped during them (GPU suite budget) keeps this report
    doc.update(complete=not workers, rows=rows, providers=summary, workers={}, targets=_targets(summary, {}, dev),
               family=family)
    write_json(out + ".json", doc)
    write_text(out + ".md", report(doc))
    if workers:
        whole = {}
        with tempfile.TemporaryDirectory() as tmp:
            for k in workers:
                whole[k] = workers_run(k, archs, space_name, data, batch_size, dev, tmp)
                print(f"[workers {k}] {whole[k].get('error') or format(whole[k]['seconds'], '.2f') + ' s'}",
                      file=sys.stderr, flush=True)
        workers_summary = _workers_summary(whole, n, seconds["loop"] / repeats,  # one whole run of the loop
                                           refs["device"], results.get("vitcore"))
        doc.update(complete=True, workers=workers_summary, targets=_targets(summary, workers_summary, dev))
        write_json(out + ".json", doc)
    text = report(doc)
    write_text(out + ".md", text)
    print(text)
    doc["speedup"] = summary["vitcore"]["speedup"] if "vitcore" in summary else None
    return doc


def _family(archs, batch, dev) -> Dict[str, float]:
    """Mean seconds per architecture of ``vitcore.score`` for each proxy set (models built before the timing)."""
    if not archs:
        return {}
    x, y = batch.inputs.to(dev), batch.targets.to(dev)
    times = {name: [] for name in SETS}
    for arch in archs:
        model = arch.config(batch.img_size, batch.in_chans, batch.num_classes).build(
            attention="auto", device=dev, seed=arch_seed(arch, SEED))
        for name, names in SETS.items():
            vitcore.score(model, x, y, proxies=names)  # warm-up
            times[name].append(once_s(lambda: vitcore.score(model, x, y, proxies=names), dev)[0])
    return {name: float(np.mean(t)) for name, t in times.items()}


def _targets(summary: dict, workers: dict, dev: torch.device) -> List[dict]:
    """Issue 13's targets for this device, each {"target", "measured", "met"}."""
    def tau_min(s):
        taus = [t for t in s["tau"].values() if t is not None]
        return min(taus) if taus else float("nan")

    if dev.type == "cpu":
        if "vitcore" not in summary:
            return []
        s = summary["vitcore"]
        return [{"target": f"issue 13 (CPU): default vitcore score >= {CPU_SPEEDUP}x the loop's architectures/s, "
                           f"scores equal to {CPU_REL:g} (relative)",
                 "measured": f"{s['speedup']:.2f}x, largest relative difference {s['max_rel_diff_vs_loop']:.1e}",
                 "met": s["speedup"] >= CPU_SPEEDUP and s["max_rel_diff_vs_loop"] <= CPU_REL}]
    rows = []
    if "vitcore" in summary:
        s = summary["vitcore"]
        rows.append({"target": f"issue 13: vitcore fp32 >= {FP32_SPEEDUP}x the loop's architectures/s, "
                               f"τ >= {FP32_TAU} vs float64",
                     "measured": f"{s['speedup']:.2f}x, min τ {tau_min(s):.3f}",
                     "met": s["speedup"] >= FP32_SPEEDUP and tau_min(s) >= FP32_TAU})
    def measured(name, s):
        if "error" in s or s.get("missing"):  # a failed or partial run is not judged
            return f"{name} not judged: " + (f"failed ({s['error']})" if "error" in s else f"{s['missing']} not scored")
        return f"{name} {s['speedup']:.2f}x (min τ {tau_min(s):.3f})"

    fast = ({"bf16": summary["bf16"]} if "bf16" in summary else {}) | {f"{k} workers": s for k, s in workers.items()}
    if fast:
        rows.append({"target": f"issue 13: vitcore bf16 or 2/4/8 workers >= {LOWP_SPEEDUP}x the loop, "
                               f"τ >= {LOWP_TAU}",
                     "measured": ", ".join(measured(name, s) for name, s in fast.items()),
                     "met": any("error" not in s and not s.get("missing") and s["speedup"] >= LOWP_SPEEDUP
                                and tau_min(s) >= LOWP_TAU for s in fast.values())})
    return rows


def report(doc: dict) -> str:
    """The markdown report of a finished run's document."""
    meta, summary = doc["meta"], doc["providers"]
    lines = [f"# `vitcore score` end to end: {meta['n']} `{meta['space']}` architectures vs the per-parameter loop",
             "", *header_lines(meta),
             f"- load average (1, 5, 15 min) at the end: {', '.join(f'{v:.2f}' for v in meta['load_average_end'])}",
             f"- data: {meta['data']}, input {'x'.join(map(str, meta['input_shape']))}, proxies "
             f"{' + '.join(meta['proxies'])}, providers interleaved over {meta['rounds']} chunks, "
             f"{meta['repeats']} time(s) (each repeat a fresh run per provider)", "",
             "Timed from the architecture spec to the scores written (build, passes, host read, results line). "
             "Speed-up: the loop's total time over the provider's; the median over the chunks of the same ratio "
             "is less moved by a load spike that falls on one provider's turn.", "",
             "| provider | archs/s | total s | speed-up over loop | median chunk speed-up | build / passes / read, "
             "mean ms | τ grad_norm | τ snip |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    names = {"loop": "loop (CPU-built model moved, SDPA, .item() per tensor)",
             "vitcore": "vitcore fp32 (`vitcore score`, built on the device, attention auto)",
             "bf16": "vitcore bf16 autocast"}
    for p, s in summary.items():
        ms = " / ".join(f"{s['mean_ms'][k]:.1f}" for k in ("build_s", "passes_s", "read_s")) if s["mean_ms"] else "—"
        taus = [f"{s['tau'][q]:.3f}" if s["tau"][q] is not None else "—" for q in PROXIES]
        lines.append(f"| {names[p]} | {s['archs_per_s']:.2f} | {s['seconds']:.2f} | {s['speedup']:.2f}x | "
                     f"{s['median_chunk_speedup']:.2f}x | {ms} | "
                     + " | ".join(taus) + " |")
    if meta["workers"] and not doc["workers"]:
        lines += ["", f"`vitcore score --workers K` for K = {', '.join(map(str, meta['workers']))}: not run yet "
                      "(this report is written before them and again after)."]
    if doc["workers"]:
        lines += ["", "`vitcore score --workers K`, one whole run each (wall clock from the command's start to its "
                      "exit, so it includes starting K + 1 Python processes; speed-up over one whole run of the "
                      "loop, whose process start is not counted):", "",
                  "| K | archs/s | total s | speed-up over loop | τ grad_norm | τ snip | largest relative difference "
                  "from the in-process vitcore fp32 scores |", "|---|---:|---:|---:|---:|---:|---:|"]
        for k, s in doc["workers"].items():
            if "error" in s:
                lines.append(f"| {k} | failed: {s['error']} | | | | | |")
                continue
            taus = [f"{s['tau'][q]:.3f}" if s["tau"][q] is not None else "—" for q in PROXIES]
            diff = "—" if s["max_rel_diff_vs_vitcore"] is None else f"{s['max_rel_diff_vs_vitcore']:.1e}"
            missing = f" ({s['missing']} not scored)" if s.get("missing") else ""
            lines.append(f"| {k} | {s['archs_per_s']:.2f}{missing} | {s['seconds']:.2f} | {s['speedup']:.2f}x | "
                         + " | ".join(taus) + f" | {diff} |")
    if "max_rel_diff_vs_loop" in summary.get("vitcore", {}):
        lines += ["", f"Largest relative difference between vitcore's and the loop's scores (same weights): "
                      f"{summary['vitcore']['max_rel_diff_vs_loop']:.1e}."]
    if doc["targets"]:
        lines += ["", "| target | measured | met |", "|---|---|---|",
                  *(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in doc["targets"])]
    if doc["family"]:
        lines += ["", "`vitcore.score` per proxy set (model built before the timing):", "",
                  "| proxies | ms per architecture |", "|---|---:|",
                  *(f"| {k} | {v * 1e3:.1f} |" for k, v in doc["family"].items())]
    return "\n".join(lines) + "\n"


def _positive_ints(text: str) -> List[int]:
    """``--workers 2,4,8`` -> [2, 4, 8] (empty entries skipped); anything else is a usage error naming it."""
    parts = [k.strip() for k in text.split(",") if k.strip()]
    if not all(k.isdigit() and int(k) > 0 for k in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive ints")
    return [int(k) for k in parts]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="path stem: writes .json and .md")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--space", default="imagenet", choices=sorted(SPACES))
    p.add_argument("--data", default="synthetic", help="synthetic, digits or an .npz path (vitcore.data)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--providers", help=f"comma-separated from {', '.join(PROVIDERS)} (default: by device)")
    p.add_argument("--ref-n", type=int, default=30, help="architectures scored in float64 for Kendall τ")
    p.add_argument("--rounds", type=int, default=10, help="chunks the providers take turns over")
    p.add_argument("--repeats", type=int, default=1, help="times the whole interleaved run is repeated")
    p.add_argument("--full-family-n", type=int, default=0, help="architectures timed with every proxy set")
    p.add_argument("--workers", type=_positive_ints, default=[],
                   help="comma-separated K: one whole `vitcore score --workers K` run each")
    args = p.parse_args()
    try:
        run(args.out, args.n, args.batch_size, args.space, args.device, args.full_family_n, data=args.data,
            providers=args.providers.split(",") if args.providers else None, ref_n=args.ref_n, rounds=args.rounds,
            repeats=args.repeats, workers=args.workers)
    except ValueError as e:
        p.exit(2, f"score_report: error: {e}\n")


if __name__ == "__main__":
    main()

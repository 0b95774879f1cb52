"""The ``vitcore`` command line.

``vitcore score`` scores architectures of a search space on one minibatch and prints them ranked.
Results go to a JSON-lines file one architecture at a time, so an interrupted run loses nothing:
``--resume`` skips the architectures already scored with the same settings (and retries failed ones).
``vitcore evaluate`` ranks proxies by their rank correlation with trained accuracy.
``vitcore bench`` times one MSA block over N' x D and writes a scaling report (``vitcore.bench.scaling_report``,
imported when the command runs: the library imports nothing from the benchmark harness).
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import List, Optional

import torch
from tqdm import tqdm

from vitcore.data import DATA_CHOICES, load_batch
from vitcore.evaluate import DEFAULT_TRUTH, evaluate, format_table, read_truth, scatter_plots
from vitcore.model import ViT
from vitcore.paths import free_name
from vitcore.proxies import GRAD_NORM_MODES, PARAM_SETS, PROXIES, check_proxies, score
from vitcore.space import SPACES, Arch, get_space, sample

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_OUT = os.path.join("vitcore-results", "scores.jsonl")


def read_archs(path: str) -> List[Arch]:
    """Architectures from a JSON list or JSON lines; each entry an arch or a result with an "arch" field."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"architectures file {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        entries = json.loads(text)
        entries = entries if isinstance(entries, list) else [entries]
    except json.JSONDecodeError:
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    archs = [Arch.from_dict(e["arch"] if isinstance(e, dict) and "arch" in e else e) for e in entries]
    if not archs:
        raise ValueError(f"architectures file {path!r} holds no architectures")
    unique = list({a.id: a for a in archs}.values())  # a results file holds a retried id twice
    if len(unique) < len(archs):
        print(f"{path}: {len(archs) - len(unique)} repeated architectures scored once", file=sys.stderr)
    return unique


def read_results(path: str, repair: bool = False) -> List[dict]:
    """The complete lines of a results file. A line cut off by an interruption is skipped, and with
    ``repair`` (before appending to the file) also dropped from the file."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        with open(path, "wb") as f:
            f.write(complete)
    records = []
    for number, line in enumerate(complete.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise ValueError(f"{path}, line {number}: expected a JSON object with a string \"id\", got {line[:80]!r}")
        if not isinstance(record.get("scores", {}), dict):
            raise ValueError(f"{path}, line {number}: \"scores\" is {record['scores']!r}, not an object")
        records.append(record)
    return records


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available")
    return torch.device(name)


def _score_one(arch: Arch, batch, args, device: torch.device) -> dict:
    torch.manual_seed((int(arch.id, 16) + args.seed) % 2**31)  # same arch and seed, same weights
    model = ViT(arch.config(batch.img_size, batch.in_chans, batch.num_classes)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    dtype = DTYPES[args.dtype]
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    start = time.perf_counter()
    with amp:
        scores = score(model, batch.inputs.to(device), batch.targets.to(device), proxies=args.proxies,
                       mode=args.mode, params=args.params)
    return {"params": n_params, "scores": scores, "time_s": round(time.perf_counter() - start, 6)}


def _print_table(results: List[dict], proxies: List[str], rank_by: str) -> None:
    ok = sorted((r for r in results if "scores" in r),
                key=lambda r: (math.isnan(r["scores"][rank_by]), -r["scores"][rank_by]))  # NaN last
    failed = [r for r in results if "scores" not in r]
    head = f"{'rank':>4}  {'id':12}  {'params':>9}  {'depth':>5}  {'embed':>5}  {'patch':>5}  {'heads':<14}"
    print(head + "".join(f"  {p:>12}" for p in proxies))
    for i, r in enumerate(ok, 1):
        a = r["arch"]
        heads = "-".join(map(str, a["num_heads"]))
        row = f"{i:>4}  {r['id']:12}  {r['params']:>9,}  {a['depth']:>5}  {a['embed_dim']:>5}  {a['patch_size']:>5}  {heads:<14}"
        print(row + "".join(f"  {r['scores'][p]:>12.5g}" for p in proxies))
    for r in failed:
        print(f"   -  {r['id']:12}  failed: {r['error']}")
    print(f"{len(ok)} scored, {len(failed)} failed; ranked by {rank_by}")


def check_out_file(path: str) -> None:
    """A results file (``--out``) may not be a folder, nor sit below a file."""
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a folder; name a file such as {os.path.join(path, 'scores.jsonl')!r}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path!r}: {parent!r} is a file, not a folder")


def run_scoring(args) -> List[dict]:
    """Score every architecture ``args`` names, appending to ``args.out``; the records in arch order."""
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: expected a non-negative integer")
    check_out_file(args.out)
    space = get_space(args.space)
    archs = read_archs(args.archs) if args.archs else sample(space, args.n, args.seed)
    device = _device(args.device)
    batch = load_batch(args.data, args.batch_size, args.seed, space)
    settings = {k: getattr(args, k) for k in ("data", "batch_size", "seed", "proxies", "mode", "params", "dtype")}
    settings["device"] = device.type

    done = {}
    if args.resume:
        for r in read_results(args.out, repair=True):
            if r.get("settings") != settings:
                raise ValueError(
                    f"--resume: {args.out} holds results for settings {r.get('settings')}, not {settings}; "
                    "use another --out"
                )
            done[r["id"]] = r
    elif os.path.exists(args.out):
        backup = free_name(args.out + ".bak")
        os.replace(args.out, backup)
        print(f"moved the previous {args.out} to {backup}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    todo = [a for a in archs if "scores" not in done.get(a.id, {})]
    with open(args.out, "a") as out:
        for arch in tqdm(todo, desc="scoring", unit="arch", disable=None, file=sys.stderr):
            record = {"id": arch.id, "arch": arch.to_dict(), "settings": settings}
            try:
                record.update(_score_one(arch, batch, args, device))
            except (RuntimeError, ValueError) as e:  # out of memory, an invalid config: record and go on
                record["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
            done[arch.id] = record
    print(f"results: {args.out}", file=sys.stderr)
    return [done[a.id] for a in archs]


def cmd_score(args) -> int:
    args.proxies = check_proxies(args.proxies.split(","))
    rank_by = args.rank_by or args.proxies[0]
    if rank_by not in args.proxies:
        raise ValueError(f"--rank-by {rank_by!r} is not among --proxies {','.join(args.proxies)}")
    results = run_scoring(args)
    _print_table(results, args.proxies, rank_by)
    return 0 if any("scores" in r for r in results) else 1  # every architecture failed


def cmd_evaluate(args) -> int:
    # everything checked before scoring: a bad argument should not cost a scoring run
    truth = read_truth(args.truth)
    if not 0 < args.top_fraction <= 1:
        raise ValueError(f"--top-fraction {args.top_fraction}: expected a share in (0, 1]")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a file; evaluate writes a folder")
    if args.scores:
        if not os.path.isfile(args.scores):
            raise FileNotFoundError(f"scores file {args.scores!r} does not exist")
        records = list({r["id"]: r for r in read_results(args.scores)}.values())  # the last line per id wins
    else:
        score_args = build_parser().parse_args(
            ["score", "--proxies", ",".join(PROXIES), "--out", os.path.join(args.out, "scores.jsonl"), "--resume"]
        )
        score_args.proxies = check_proxies(score_args.proxies.split(","))
        records = run_scoring(score_args)
    table = format_table(evaluate(records, truth, args.top_fraction))
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "evaluation.md"), "w") as f:
        f.write(f"scores: {args.scores or 'the built-in 50 architectures'}; truth: {args.truth}\n\n{table}\n")
    plots = scatter_plots(records, truth, args.out)
    print(f"table and {len(plots)} scatter plots: {args.out}", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from vitcore.bench.scaling_report import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score architectures with zero-cost proxies and rank them")
    s.add_argument("--archs", help="JSON or JSON-lines file of architectures (default: sample the space)")
    s.add_argument("--n", type=int, default=50, help="architectures to sample (default 50)")
    s.add_argument("--seed", type=int, default=0, help="sampling, minibatch and initialisation seed")
    s.add_argument("--space", default="small", help=f"search space: {', '.join(SPACES)} (default small)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--data", default="digits", help=f"{' | '.join(DATA_CHOICES)} (default digits)")
    s.add_argument("--proxies", default="grad_norm,snip", help=f"comma-separated: {', '.join(PROXIES)}")
    s.add_argument("--mode", default="global", choices=GRAD_NORM_MODES, help="grad_norm over the whole vector or per layer")
    s.add_argument("--params", default="all", choices=PARAM_SETS, help="count every trainable tensor or layer weights")
    s.add_argument("--rank-by", help="proxy to rank by (default: the first of --proxies)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="autocast precision (weights stay fp32)")
    s.add_argument("--out", default=DEFAULT_OUT, help=f"results, one JSON line per architecture (default {DEFAULT_OUT})")
    s.add_argument("--resume", action="store_true", help="keep --out's finished results and score the rest")
    s.set_defaults(func=cmd_score)
    e = sub.add_parser("evaluate", help="rank correlation of proxies with trained accuracy, with scatter plots")
    e.add_argument("--scores", help="results of `vitcore score` (default: score the built-in 50 with every proxy)")
    e.add_argument("--truth", default=DEFAULT_TRUTH, help="CSV with columns id, acc_mean (default: the built-in digits truth)")
    e.add_argument("--top-fraction", type=float, default=0.1, help="top-k overlap with k = this share of the archs")
    e.add_argument("--out", default=os.path.join("vitcore-results", "evaluate"), help="folder for the table and plots")
    e.set_defaults(func=cmd_evaluate)
    b = sub.add_parser("bench", help="time one MSA block over N' x D, fit the cost model, write a report")
    from vitcore.bench.options import add_arguments  # plain Python: the grid and options, no benchmark code

    add_arguments(b)
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.exit(2, f"vitcore {args.command}: error: {e}\n")

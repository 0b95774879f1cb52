"""Scoring runs: many architectures scored on one minibatch, one JSON line per architecture.

``score_archs`` appends each architecture's record to the results file as soon as it is scored, so an
interrupted run loses nothing; with ``resume`` it keeps the records already there for the same
settings and scores the rest (failed architectures are retried). ``run_scoring`` is the whole run
of ``vitcore score``: it samples or reads the architectures, loads the minibatch and calls
``score_archs``. The readers (``read_archs``, ``read_results``) are what ``vitcore evaluate`` and
users' scripts load results with.
"""
import contextlib
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from vitcore.data import Batch, load_batch
from vitcore.model import ViT
from vitcore.paths import free_name
from vitcore.proxies import check_proxies, score
from vitcore.space import Arch, get_space, sample

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_OUT = os.path.join("vitcore-results", "scores.jsonl")


def read_archs(path: str) -> List[Arch]:
    """Architectures from a JSON list or JSON lines; each entry an arch or a result with an "arch" field.

    Repeated architectures (a results file holds a retried id twice) are kept once, in first-seen
    order. Raises FileNotFoundError for a missing file, ValueError for a file with no architecture.
    """
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
    unique = list({a.id: a for a in archs}.values())
    if len(unique) < len(archs):
        print(f"{path}: {len(archs) - len(unique)} repeated architectures scored once", file=sys.stderr)
    return unique


def read_results(path: str, repair: bool = False) -> List[dict]:
    """The complete lines of a results file, as dicts with a string "id" (and a "scores" object or an "error").

    A line cut off by an interruption is skipped, and with ``repair`` (before appending to the file)
    also dropped from the file. A missing file reads as no results. Raises ValueError naming the file
    and line for a line that is not such a record.
    """
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


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``; ValueError for CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available")
    return torch.device(name)


def check_out_file(path: str) -> None:
    """A results file (``--out``) may not be a folder, nor sit below a file (ValueError)."""
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a folder; name a file such as {os.path.join(path, 'scores.jsonl')!r}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path!r}: {parent!r} is a file, not a folder")


def _score_one(arch: Arch, batch: Batch, proxies: List[str], mode: str, params: str, seed: int,
               device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed((int(arch.id, 16) + seed) % 2**31)  # same arch and seed, same weights
    model = ViT(arch.config(batch.img_size, batch.in_chans, batch.num_classes)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    start = time.perf_counter()
    with amp:
        scores = score(model, batch.inputs.to(device), batch.targets.to(device), proxies=proxies,
                       mode=mode, params=params)
    return {"params": n_params, "scores": scores, "time_s": round(time.perf_counter() - start, 6)}


def score_archs(archs: Sequence[Arch], batch: Batch, out: str = DEFAULT_OUT, *,
                proxies: Sequence[str] = ("grad_norm", "snip"), mode: str = "global", params: str = "all",
                seed: int = 0, device: str = "auto", dtype: str = "fp32", resume: bool = False) -> List[dict]:
    """Score ``archs`` on ``batch`` with ``proxies``, appending one JSON line per architecture to ``out``.

    Each architecture's weights are initialised from ``seed`` and its id, so a record is reproducible
    on its own. ``dtype`` ("fp32", "bf16", "fp16") is the autocast precision (weights stay fp32);
    ``device`` is "auto", "cpu" or "cuda". A record is ``{"id", "arch", "settings", "params",
    "scores", "time_s"}`` (``time_s`` in seconds), or ``{"id", "arch", "settings", "error"}`` for an
    architecture that failed (out of memory, an invalid config); the run goes on after a failure.

    Without ``resume`` an existing ``out`` is moved aside to ``out.bak`` (or ``.bak-2``, ...). With
    ``resume`` the finished records in ``out`` are kept and not scored again; ValueError if they were
    made with other settings. Returns the records in the order of ``archs``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed {seed}: expected a non-negative integer")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; valid: {', '.join(DTYPES)}")
    proxies = check_proxies(proxies)
    check_out_file(out)
    run_device = resolve_device(device)
    settings = {"data": batch.name, "batch_size": len(batch.targets), "seed": seed, "proxies": proxies,
                "mode": mode, "params": params, "dtype": dtype, "device": run_device.type}

    done = {}
    if resume:
        for r in read_results(out, repair=True):
            if r.get("settings") != settings:
                raise ValueError(
                    f"--resume: {out} holds results for settings {r.get('settings')}, not {settings}; "
                    "use another --out"
                )
            done[r["id"]] = r
    elif os.path.exists(out):
        backup = free_name(out + ".bak")
        os.replace(out, backup)
        print(f"moved the previous {out} to {backup}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    todo = [a for a in archs if "scores" not in done.get(a.id, {})]
    with open(out, "a") as f:
        for arch in tqdm(todo, desc="scoring", unit="arch", disable=None, file=sys.stderr):
            record = {"id": arch.id, "arch": arch.to_dict(), "settings": settings}
            try:
                record.update(_score_one(arch, batch, proxies, mode, params, seed, run_device, DTYPES[dtype]))
            except (RuntimeError, ValueError) as e:  # out of memory, an invalid config: record and go on
                record["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                if run_device.type == "cuda":
                    torch.cuda.empty_cache()
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done[arch.id] = record
    print(f"results: {out}", file=sys.stderr)
    return [done[a.id] for a in archs]


def run_scoring(out: str = DEFAULT_OUT, *, space: str = "small", n: int = 50, archs: Optional[str] = None,
                data: str = "digits", batch_size: int = 64, seed: int = 0,
                proxies: Sequence[str] = ("grad_norm", "snip"), mode: str = "global", params: str = "all",
                device: str = "auto", dtype: str = "fp32", resume: bool = False) -> List[dict]:
    """The run of ``vitcore score``: ``n`` architectures sampled from ``space`` with ``seed`` (or those
    of the file ``archs``, see ``read_archs``), scored on ``batch_size`` examples of ``data`` ("digits",
    "synthetic" or an .npz path, see ``vitcore.data.load_batch``) by ``score_archs``, which documents
    the other arguments and the records returned."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed {seed}: expected a non-negative integer")
    check_out_file(out)
    search_space = get_space(space)
    chosen = read_archs(archs) if archs else sample(search_space, n, seed)
    resolve_device(device)
    batch = load_batch(data, batch_size, seed, search_space)
    return score_archs(chosen, batch, out, proxies=proxies, mode=mode, params=params, seed=seed,
                       device=device, dtype=dtype, resume=resume)

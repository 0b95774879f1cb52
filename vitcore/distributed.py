"""Scoring on many processes: torchrun's ranks, or ``vitcore score --workers K``, share the architectures.

Started as ``torchrun --nproc-per-node K -m vitcore score ...`` (or ``--workers K``, which starts the
same K processes on this machine through torch's elastic launcher), every rank samples or reads the
same architecture list and loads the same minibatch. The architectures still to score are dealt out
round-robin, the i-th to rank i mod the world size, so the ranks' shares differ by at most one.

Files. Rank r of w appends its records to its own shard ``<out>.rank<r>-of-<w>.jsonl``, whose first
line marks it as vitcore's (``shard_header``: a user's file of that name is never read, moved, merged
or removed, and a run whose shard would take its name stops before it starts), then one flushed
line per architecture (fsynced at most once a second and at the end) and locked by its writer, as a
one-process run writes ``out``: a killed rank loses at most the architecture it was on. When every
rank has finished, rank 0 appends the shards' records to ``out`` in architecture order, fsyncs it and
removes the shards, so ``out`` holds what a one-process run writes, line for line, apart from each
line's timing fields (``TIMING_FIELDS``).
Rank 0 holds ``out``'s lock from start to end: a second run on the same ``out`` stops with a clear
error. Without ``resume`` rank 0 first moves ``out`` and any shard beside it to ``.bak`` names; with
``resume`` every rank reads ``out`` and every shard beside it, whatever world size wrote them, so a
run killed on K ranks resumes on any number of ranks, one included.

Devices and the process group. On CUDA rank r uses GPU ``LOCAL_RANK mod torch.cuda.device_count()``,
so several ranks may share one GPU. The ranks exchange nothing but three barriers, so the process
group is gloo (TCP) on CPU and GPU alike: NCCL refuses two ranks on one GPU. Across nodes, torchrun's
rendezvous (``--nnodes``, ``--rdzv-backend c10d --rdzv-endpoint HOST:PORT``) joins the ranks, and
``out`` must sit in a folder every node shares.

Test hook: with ``VITCORE_TEST_KILL=R:N`` in the environment, rank R kills itself (SIGKILL, as an
out-of-memory killer or a preempted node would) right after its N-th record is written.
"""
import itertools
import json
import logging
import os
import re
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, List, Optional, Sequence, TextIO

import torch
import torch.distributed as dist

from vitcore.data import Batch
from vitcore.paths import free_name, lock
from vitcore.runs import SHARD_KEY, open_results, read_results, resolve_device, score_archs
from vitcore.space import AnyArch

KILL_ENV = "VITCORE_TEST_KILL"
TIMING_FIELDS = ("time_s", "timing")  # a record's fields that differ between runs (measured seconds)
# the last barrier waits for the slowest rank's whole share; a dead rank ends the job sooner (torchrun)
BARRIER_TIMEOUT = timedelta(hours=24)


class RankFailed(RuntimeError):
    """A rank of a ``--workers`` run failed; the records it and the others finished stay in the shards."""


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun job: ``rank`` of ``world`` processes, ``local_rank`` on its node."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Rank":
        """From torchrun's RANK, WORLD_SIZE and LOCAL_RANK (one process when unset); ValueError when malformed."""
        values = {}
        for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            text = os.environ.get(name, default)
            if not text.isdigit():
                raise ValueError(f"environment variable {name}={text!r}: expected a non-negative integer")
            values[name] = int(text)
        if not values["RANK"] < values["WORLD_SIZE"]:
            raise ValueError(f"RANK={values['RANK']} is not below WORLD_SIZE={values['WORLD_SIZE']}")
        return cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def shard_path(out: str, rank: int, world: int) -> str:
    """The results shard of rank ``rank`` of ``world``: ``<out>.rank<rank>-of-<world>.jsonl``."""
    return f"{out}.rank{rank}-of-{world}.jsonl"


def shard_header(rank: int, world: int) -> dict:
    """The first line of rank ``rank`` of ``world``'s shard: what tells vitcore's shard from a user's file
    of the same name."""
    return {SHARD_KEY: {"rank": rank, "world": world}}


def is_shard(path: str, rank: int, world: int) -> bool:
    """Whether ``path`` is a regular file whose first line is ``shard_header(rank, world)``."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return json.loads(f.readline()) == shard_header(rank, world)
    except (OSError, ValueError):  # unreadable, not JSON, not UTF-8: not a shard vitcore wrote
        return False


def shard_paths(out: str) -> List[str]:
    """Every shard of a vitcore run beside ``out`` (named ``shard_path`` and starting with
    ``shard_header``), of any world size, ordered by (world, rank). A user's file of such a name is
    not one: never read, moved, merged or removed."""
    folder = os.path.dirname(out)
    if not os.path.isdir(folder or "."):
        return []
    pattern = re.compile(re.escape(os.path.basename(out)) + r"\.rank(\d+)-of-(\d+)\.jsonl")
    found = []
    for name in os.listdir(folder or "."):
        match = pattern.fullmatch(name)
        if match and is_shard(os.path.join(folder, name), int(match[1]), int(match[2])):
            found.append(((int(match[2]), int(match[1])), os.path.join(folder, name)))
    return [path for _, path in sorted(found)]


def check_files(out: str, world: int) -> None:
    """ValueError, before any process starts, for what would stop every rank of a ``world``-process run
    on ``out``: a folder that cannot be written, an ``out`` another run is writing (its lock), or a file
    of a shard's name that vitcore did not write (a user's: never moved or appended to), a malformed
    ``VITCORE_TEST_KILL``."""
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        if os.path.exists(out):
            with open(out, "a") as f:
                lock(f, out)  # released on closing: rank 0 takes it again
    except OSError as e:
        raise ValueError(f"--out {out!r} cannot be written: {e.strerror}") from None
    _check_shard_names(out, world)
    _kill_hook(Rank())  # the test hook's variable, read by every rank: malformed stops them all


def _check_shard_names(out: str, world: int) -> None:
    for rank in range(world):
        path = shard_path(out, rank, world)
        if os.path.lexists(path) and not is_shard(path, rank, world):
            raise ValueError(f"{path} is not a shard of a vitcore run (its first line is not {SHARD_KEY}'s) but has "
                             "the name this run's would take: move it, or choose another --out")


def is_sharded(out: str) -> bool:
    """Whether a run on ``out`` goes through the shards: under torchrun with several ranks, or when
    shards of an earlier run lie beside ``out``."""
    return Rank.from_env().world > 1 or bool(shard_paths(out))


def score_sharded(archs: Sequence[AnyArch], batch: Batch, out: str, *, resume: bool = False,
                  **score_kwargs) -> List[dict]:
    """Score this rank's share of ``archs`` into its shard; on rank 0 merge every shard into ``out``.

    ``score_kwargs`` are ``score_archs``'s settings (proxies, mode, params, seed, device, dtype,
    space). Returns, on rank 0, the records of ``archs`` in their order as ``score_archs`` does; on
    the other ranks the records of their own share. Raises what ``score_archs`` raises (for
    instance ValueError when another run holds ``out``'s lock or ``resume`` finds other settings).
    """
    me = Rank.from_env()
    if resolve_device(score_kwargs.get("device", "auto")).type == "cuda":
        torch.cuda.set_device(me.local_rank % torch.cuda.device_count())
    joined = me.world > 1 and not dist.is_initialized()
    if joined:  # env:// rendezvous: MASTER_ADDR and MASTER_PORT come from torchrun
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    merged: Optional[TextIO] = None
    try:
        _check_shard_names(out, me.world)  # a user's file of a shard's name stops the run, untouched
        if me.rank == 0:
            merged = open_results(out, resume)  # locked to the end; without resume the old out is moved aside
            if resume:
                read_results(out, repair=True)  # a line cut off by a kill, dropped before rank 0 appends
            else:
                _set_aside(shard_paths(out))
        _barrier(me)  # the old files are in place or moved before any rank reads
        stored = [out, *shard_paths(out)] if resume else []
        scored = {r["id"] for path in stored for r in read_results(path) if "scores" in r}
        _barrier(me)  # every rank has read the same files before any rank writes
        todo = [a for a in archs if a.id not in scored]
        shard = shard_path(out, me.rank, me.world)
        own = score_archs(todo[me.rank::me.world], batch, shard, resume=resume,
                          resume_from=[p for p in stored if p != shard], on_record=_kill_hook(me),
                          first_line=shard_header(me.rank, me.world), **score_kwargs)
        _barrier(me)  # every shard is complete
        return _merge(merged, out, archs) if merged is not None else own
    finally:
        if merged is not None:
            merged.close()
        if joined:
            dist.destroy_process_group()


def launch(workers: int, kwargs: dict) -> List[dict]:
    """``run_scoring(**kwargs)`` on ``workers`` processes of this machine, started by torch's elastic
    launcher as ``torchrun --standalone --nproc-per-node workers`` would; returns rank 0's records.

    Each worker runs ``cores // workers`` CPU threads unless OMP_NUM_THREADS says otherwise. Raises
    RankFailed naming the first failed rank and its error; the other ranks are stopped then, and
    every record finished before stays in the shards for ``resume``.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    logging.disable(logging.ERROR)  # the launcher logs a failed worker with tracebacks; RankFailed names it
    try:
        returned = elastic_launch(config, _worker)(workers, kwargs)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()  # the root cause; the others were stopped after it
        message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        if not _any_record(kwargs["out"]):
            raise RankFailed(f"rank {rank} of {workers} failed before any architecture was scored: {message}") \
                from None
        raise RankFailed(f"rank {rank} of {workers} failed ({message}); the finished architectures are kept "
                         "in the shards beside the results file: rerun with --resume") from None
    finally:
        logging.disable(logging.NOTSET)
    return returned[0]


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def max_workers() -> int:
    """The most ``--workers`` a run starts on this machine: one process per CPU core (each needs one to
    run), and two on any machine."""
    return max(2, _cores())


def _any_record(out: str) -> bool:
    """Whether a shard beside ``out`` holds a record (a line beyond its ``shard_header``)."""
    for path in shard_paths(out):
        with open(path, "rb") as f:
            if f.read().count(b"\n") > 1:
                return True
    return False


def _worker(workers: int, kwargs: dict) -> List[dict]:
    from vitcore.runs import run_scoring

    if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1; share the cores instead
        torch.set_num_threads(max(1, _cores() // workers))
    return run_scoring(**kwargs)


def _barrier(me: Rank) -> None:
    if me.world > 1:
        dist.barrier()


def _set_aside(paths: Sequence[str]) -> None:
    for path in paths:
        backup = free_name(path + ".bak")
        os.replace(path, backup)
        print(f"moved the previous {path} to {backup}", file=sys.stderr)


def _merge(f: TextIO, out: str, archs: Sequence[AnyArch]) -> List[dict]:
    """Append to ``out`` (open as ``f``) the shards' records it lacks, in the order of ``archs`` (then any
    other id the shards hold), fsync it, then remove the shards. ValueError, before anything is
    written, when an architecture has no record (another node's shards are not beside ``out``)."""
    existing = read_results(out)
    latest = {r["id"]: r for r in existing}
    scored = {i for i, r in latest.items() if "scores" in r}
    written = {json.dumps(r, sort_keys=True) for r in existing}
    shards = shard_paths(out)
    found = {}
    for path in shards:
        for r in read_results(path):
            if "scores" in r or "scores" not in found.get(r["id"], {}):  # a score beats an error
                found[r["id"]] = r
    ids = [a.id for a in archs]
    missing = [i for i in ids if i not in latest and i not in found]
    if missing:  # every rank passed the last barrier, so its shard is complete: it is not in this folder
        raise ValueError(f"no record of {len(missing)} architectures (e.g. {missing[0]}) in {out} or the shards "
                         "beside it: on several nodes, --out must be in a folder every node shares")
    for i in dict.fromkeys(ids + list(found)):
        r = found.get(i)
        if r is not None and i not in scored and json.dumps(r, sort_keys=True) not in written:
            f.write(json.dumps(r) + "\n")
            latest[i] = r
    f.flush()
    os.fsync(f.fileno())
    for path in shards:
        os.remove(path)
    print(f"results: {out} ({len(shards)} shards merged)", file=sys.stderr)
    return [latest[i] for i in ids]


def _kill_hook(me: Rank) -> Optional[Callable[[dict], None]]:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return None
    match = re.fullmatch(r"(\d+):(\d+)", spec)
    if not match:
        raise ValueError(f"{KILL_ENV}={spec!r}: expected RANK:RECORDS, e.g. 1:1")
    if int(match[1]) != me.rank:
        return None
    written = itertools.count(1)

    def kill_after(record: dict) -> None:
        if next(written) >= int(match[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    return kill_after

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
so several ranks may share one GPU. The ranks join through torchrun's env:// rendezvous (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, checked up front by ``Rank.from_env``) and wait
``RENDEZVOUS_TIMEOUT`` (120 s) for each other: such variables left over from another job fail then,
naming them, instead of waiting for ranks that never come. The ranks exchange nothing but three barriers, so the process
group is gloo (TCP) on CPU and GPU alike: NCCL refuses two ranks on one GPU. Across nodes, torchrun's
rendezvous (``--nnodes``, ``--rdzv-backend c10d --rdzv-endpoint HOST:PORT``) joins the ranks, and
``out`` must sit in a folder every node shares.

Test hook: with ``VITCORE_TEST_KILL=R:N`` in the environment, rank R kills itself (SIGKILL, as an
out-of-memory killer or a preempted node would) right after its N-th record is written.
"""
import hashlib
import inspect
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
from vitcore.families import Family, get_family
from vitcore.runs import (SHARD_KEY, open_results, read_results, resolve_device, run_settings, score_archs,
                          settings_diff)
from vitcore.space import AnyArch

KILL_ENV = "VITCORE_TEST_KILL"
_SCORE_DEFAULTS = {name: p.default for name, p in inspect.signature(score_archs).parameters.items()
                   if p.default is not p.empty}  # the settings a rank's score_kwargs may leave out
TIMING_FIELDS = ("time_s", "timing")  # a record's fields that differ between runs (measured seconds)
# the last barrier waits for the slowest rank's whole share; a dead rank ends the job sooner (torchrun)
BARRIER_TIMEOUT = timedelta(hours=24)
# how long the ranks wait for each other to join (torchrun starts them together): a RANK / WORLD_SIZE
# environment left over from elsewhere then fails after this, naming the variables, not after a day
RENDEZVOUS_TIMEOUT = timedelta(seconds=120)
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets for each rank


def _env_line(names: Sequence[str] = TORCHRUN_ENV) -> str:
    """``NAME=value`` for each of ``names`` set in the environment, for error messages."""
    return " ".join(f"{n}={os.environ[n]!r}" for n in names if n in os.environ) or "none of them set"


class RankFailed(RuntimeError):
    """A rank of a ``--workers`` run failed; the records it and the others finished stay in the shards."""


class Stopped(RuntimeError):
    """A ``--workers`` run was stopped by a signal (SIGTERM, SIGINT, SIGHUP): the workers were stopped too,
    and the records they finished stay in the shards. ``signum``: the signal; ``vitcore score`` exits
    with 128 + signum, as a process the signal ends does."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun job: ``rank`` of ``world`` processes, ``local_rank`` on its node."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Rank":
        """From torchrun's RANK, WORLD_SIZE and LOCAL_RANK (one process when RANK and WORLD_SIZE are unset).

        ValueError, naming the variables, for a malformed value and for an environment torchrun would not
        make: RANK without WORLD_SIZE or the reverse, RANK >= WORLD_SIZE, or WORLD_SIZE > 1 without
        LOCAL_RANK, MASTER_ADDR and a MASTER_PORT in 1..65535 (left over from another job, they would make
        this process wait for ranks that never come)."""
        values = {}
        for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            text = os.environ.get(name, default).strip()
            if not text.isdigit():
                raise ValueError(f"environment variable {name}={text!r}: expected a non-negative integer")
            values[name] = int(text)
        hint = ("; vitcore reads these as one rank of a torchrun job: if torchrun did not start this process, "
                f"unset {', '.join(TORCHRUN_ENV)}")
        if ("RANK" in os.environ) != ("WORLD_SIZE" in os.environ):
            have, lack = ("RANK", "WORLD_SIZE") if "RANK" in os.environ else ("WORLD_SIZE", "RANK")
            raise ValueError(f"the environment sets {_env_line((have,))} but not {lack}{hint}")
        if values["WORLD_SIZE"] < 1 or not values["RANK"] < values["WORLD_SIZE"]:
            raise ValueError(f"RANK={values['RANK']} is not below WORLD_SIZE={values['WORLD_SIZE']}{hint}")
        if values["WORLD_SIZE"] > 1:
            missing = [n for n in TORCHRUN_ENV if not os.environ.get(n, "").strip()]
            if missing:
                raise ValueError(f"WORLD_SIZE={values['WORLD_SIZE']} but {', '.join(missing)} "
                                 f"{'is' if len(missing) == 1 else 'are'} not set ({_env_line()}){hint}")
            port = os.environ["MASTER_PORT"].strip()
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"environment variable MASTER_PORT={port!r}: expected a TCP port in 1..65535")
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
    if joined:
        _join(me)
    merged: Optional[TextIO] = None
    try:
        if me.world > 1:
            _agree(me, run_key(archs, batch, out, resume, score_kwargs))
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
    every record finished before stays in the shards for ``resume``. A signal to this process
    (SIGTERM, SIGINT, ...) stops the workers and raises Stopped; their records stay there too.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    logging.disable(logging.ERROR)  # the launcher logs a failed worker with tracebacks; RankFailed names it
    # A signal leaves the semaphores of the launcher's result queues to multiprocessing's resource tracker
    # (a process it starts with this one's -W options), which removes them at exit and warns that it did:
    # nothing a user can act on, under the one-line Stopped message.
    if _QUIET_TRACKER not in sys.warnoptions:
        sys.warnoptions.append(_QUIET_TRACKER)
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
    except SignalException as e:  # the launcher has stopped the workers (elastic agent's shutdown)
        signum = int(e.sigval)
        raise Stopped(f"stopped by {signal.Signals(signum).name}; the {workers} workers were stopped and the "
                      "architectures they finished are kept in the shards beside the results file: rerun with "
                      "--resume", signum) from None
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


_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


def _worker(workers: int, kwargs: dict) -> List[dict]:
    from vitcore.runs import run_scoring

    if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1; share the cores instead
        torch.set_num_threads(max(1, _cores() // workers))
    return run_scoring(**kwargs)


def _join(me: Rank) -> None:
    """Join the gloo process group of torchrun's env:// rendezvous (MASTER_ADDR, MASTER_PORT): wait up to
    ``RENDEZVOUS_TIMEOUT`` for the other ranks, then ``BARRIER_TIMEOUT`` per barrier. ValueError naming
    the environment when they do not come."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # set by torchrun and --workers: this may be a leftover
        print(f"rank {me.rank} of {me.world} (from {_env_line()}): waiting up to "
              f"{RENDEZVOUS_TIMEOUT.total_seconds():.0f} s for the other ranks", file=sys.stderr)
    try:
        store, rank, world = next(dist.rendezvous("env://", timeout=RENDEZVOUS_TIMEOUT))
    except (RuntimeError, ValueError) as e:  # torch's DistStoreError / DistNetworkError are RuntimeErrors
        raise ValueError(f"rank {me.rank} of {me.world}: the other ranks did not join at "
                         f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within "
                         f"{RENDEZVOUS_TIMEOUT.total_seconds():.0f} s ({type(e).__name__}: {str(e).splitlines()[0]}). "
                         f"The environment ({_env_line()}) makes this process one rank of a torchrun job: if torchrun "
                         f"did not start it, unset {', '.join(TORCHRUN_ENV)}") from None
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)


def run_key(archs: Sequence[AnyArch], batch: Batch, out: str, resume: bool, score_kwargs: dict) -> dict:
    """What every rank of one run must share: the results file's name, ``resume``, the architectures (their
    count and a digest of their ids in order) and the resume key its records carry (``run_settings``:
    the data as named, the minibatch's digest, every scoring setting)."""
    kw = {**_SCORE_DEFAULTS, **score_kwargs}
    family = kw["family"] if isinstance(kw["family"], Family) else get_family(kw["family"])
    settings = run_settings(batch, list(kw["proxies"]), kw["mode"], kw["params"], kw["seed"],
                            resolve_device(kw["device"]), kw["dtype"], kw["attention"], kw["space"], family)
    ids = hashlib.sha256("\n".join(a.id for a in archs).encode()).hexdigest()[:16]
    return {"--out": os.path.basename(out), "resume": resume, "architectures": f"{len(archs)} (ids sha256 {ids})",
            **settings}


def _agree(me: Rank, key: dict) -> None:
    """ValueError on every rank, before any file is touched, when the ranks were started with different
    ``run_key``s (different options per rank would merge records of different runs into one file)."""
    keys: List[Optional[dict]] = [None] * me.world
    dist.all_gather_object(keys, key)
    for rank, other in enumerate(keys):
        if other != keys[0]:
            raise ValueError(f"rank {rank} of {me.world} was started with other settings than rank 0 "
                             f"({settings_diff(other, keys[0], f'on rank {rank}', 'on rank 0')}): start every "
                             "rank of one run with the same vitcore score options and inputs")


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

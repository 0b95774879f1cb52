"""Scoring on several processes (vitcore.distributed): shards, the merge, resume across world sizes, a
killed rank, and docs/scale.md's `--workers` and torchrun commands run on 2 CPU processes (gloo).

Every comparison with a one-process run is exact: the same architectures, seed and minibatch on one
CPU thread per process give the same floating-point operations in the same order.
"""
import dataclasses
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from vitcore.cli import main
from vitcore.data import load_batch
from vitcore.distributed import KILL_ENV, TIMING_FIELDS, Rank, shard_header, shard_path, shard_paths
from vitcore.paths import lock
from vitcore.runs import read_results, run_scoring, score_archs
from vitcore.space import SPACES, sample

SCALE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "scale.md")
RUN = dict(n=4, data="synthetic", batch_size=8)  # the cheap stand-in for docs/scale.md's run: 4 tiny archs
CHEAP = {"--workers": "2", "--nproc-per-node": "2", "--num-archs": "4"}


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread here and in every process started (torchrun sets OMP_NUM_THREADS=1 itself)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", KILL_ENV):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reference(tmp_path, one_thread):
    """The records of a one-process run of RUN, without their timing."""
    return _untimed(run_scoring(str(tmp_path / "one.jsonl"), **RUN))


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _scale_commands():
    with open(SCALE, encoding="utf-8") as f:
        blocks = re.findall(r"^```text\n(vitcore score --workers.*?)^```", f.read(), flags=re.S | re.M)
    assert blocks, "docs/scale.md: no text block of --workers / torchrun commands"
    for line in "".join(blocks).splitlines():
        argv = shlex.split(line)
        argv = [CHEAP.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
        yield argv + ["--data", RUN["data"], "--batch-size", str(RUN["batch_size"])]


TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_rank_from_env_and_shard_names(tmp_path, monkeypatch):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    assert Rank.from_env() == Rank(0, 1, 0)
    for name, value in {**TORCHRUN, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    assert Rank.from_env() == Rank(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 is not below WORLD_SIZE=4"):
        Rank.from_env()
    monkeypatch.setenv("RANK", "-1")
    with pytest.raises(ValueError, match="RANK='-1': expected a non-negative integer"):
        Rank.from_env()

    out = str(tmp_path / "s.jsonl")
    assert shard_path(out, 2, 10) == out + ".rank2-of-10.jsonl"
    for rank, world in ((1, 10), (0, 2), (2, 10), (1, 2)):
        with open(shard_path(out, rank, world), "w") as f:
            f.write(json.dumps(shard_header(rank, world)) + "\n")
    for rank, world, first in ((5, 10, ""), (6, 10, json.dumps(shard_header(0, 2)) + "\n")):
        with open(shard_path(out, rank, world), "w") as f:  # a user's files of shards' names: not shards
            f.write(first)
    os.mkdir(shard_path(out, 3, 10))  # not a regular file: never read, moved or removed
    os.mkfifo(shard_path(out, 4, 10))
    for other in (out + ".rank0-of-2.jsonl.bak", str(tmp_path / "t.jsonl.rank0-of-2.jsonl")):
        open(other, "w").close()
    assert shard_paths(out) == [shard_path(out, r, w) for r, w in ((0, 2), (1, 2), (1, 10), (2, 10))]
    assert shard_paths(str(tmp_path / "missing" / "s.jsonl")) == []


def _killed_run(out, shares, cut=True):
    """Shards as a killed run of len(shares) ranks leaves them: rank r scored shares[r], then a cut line."""
    archs = sample(SPACES["small"], RUN["n"], 0)
    batch = load_batch(RUN["data"], RUN["batch_size"], 0, SPACES["small"])
    for rank, share in enumerate(shares):
        shard = shard_path(out, rank, len(shares))
        score_archs([archs[i] for i in share], batch, shard, space="small", first_line=shard_header(rank, len(shares)))
        with open(shard, "a") as f:
            f.write('{"id": "cut off by the kill' if cut else "")


def test_resume_on_one_process_merges_shards_of_another_world_size(tmp_path, reference):
    out = str(tmp_path / "r.jsonl")
    _killed_run(out, [[0, 3], [1], []])  # three ranks; rank 2 killed on its first architecture
    records = run_scoring(out, resume=True, **RUN)
    assert _untimed(records) == _untimed(_lines(out)) == reference  # every arch once, in order
    assert shard_paths(out) == []


def test_resume_counts_a_failed_architecture_once_retried(tmp_path, reference):
    out = str(tmp_path / "r.jsonl")
    _killed_run(out, [[0], [1, 2]], cut=False)
    record = read_results(shard_path(out, 0, 2))[0]
    failed = {k: v for k, v in record.items() if k not in ("scores", "params", "time_s")}
    with open(shard_path(out, 1, 2), "a") as f:  # rank 1 recorded a failure for arch 3
        f.write(json.dumps(dict(failed, id=reference[3]["id"], arch=reference[3]["arch"],
                                error="RuntimeError: out of memory")) + "\n")
    run_scoring(out, resume=True, **RUN)
    assert _untimed(_lines(out)) == reference  # retried: the score replaces the error


def test_a_fresh_run_moves_old_shards_aside(tmp_path, reference, capsys):
    out = str(tmp_path / "r.jsonl")
    _killed_run(out, [[0], [1]])
    run_scoring(out, **RUN)
    assert _untimed(_lines(out)) == reference and shard_paths(out) == []
    assert len(read_results(shard_path(out, 0, 2) + ".bak")) == 1
    assert f"moved the previous {shard_path(out, 1, 2)} to {shard_path(out, 1, 2)}.bak" in capsys.readouterr().err


def test_resume_refuses_shards_of_other_settings(tmp_path, one_thread):
    out = str(tmp_path / "r.jsonl")
    _killed_run(out, [[0], [1]])
    before = [read_results(path) for path in shard_paths(out)]
    with pytest.raises(ValueError, match=re.escape(f"--resume: {shard_path(out, 0, 2)} holds results for settings")):
        run_scoring(out, resume=True, seed=1, **RUN)
    assert [read_results(shard_path(out, r, 2)) for r in (0, 1)] == before  # nothing merged or removed
    assert read_results(out) == []


def test_the_results_file_is_locked_while_shards_are_merged(tmp_path, one_thread):
    out = str(tmp_path / "r.jsonl")
    _killed_run(out, [[0], [1]])
    with open(out, "a") as f:
        lock(f, out)  # another run writes out
        with pytest.raises(ValueError, match="is being written by another run"):
            run_scoring(out, resume=True, **RUN)
    assert shard_paths(out) == [shard_path(out, 0, 2), shard_path(out, 1, 2)]


@pytest.mark.parametrize("kwargs, env, message", [
    (dict(workers=0), {}, "--workers 0: expected a positive integer"),
    (dict(workers=2), TORCHRUN, "already one of torchrun's ranks"),
    (dict(), {KILL_ENV: "1"}, f"{KILL_ENV}='1': expected RANK:RECORDS"),
])
def test_bad_worker_settings(tmp_path, monkeypatch, kwargs, env, message):
    _killed_run(str(tmp_path / "r.jsonl"), [[0], [1]])  # the test hook is read by a run on shards
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_scoring(str(tmp_path / "r.jsonl"), resume=True, **RUN, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(proxies=["zico"], batch_size=1), "zico needs at least 2 examples; the batch holds 1"),
    (dict(kill="1"), f"{KILL_ENV}='1': expected RANK:RECORDS"),
    (dict(proxies=["nope"]), "unknown proxy 'nope'"),
    (dict(dtype="fp8"), "dtype='fp8'"),
    (dict(mode="nope"), "mode='nope'"),
    (dict(params="nope"), "params='nope'"),
])
def test_settings_every_worker_would_refuse_are_refused_before_they_start(tmp_path, monkeypatch, kwargs, message):
    """Each worker refused them after being started (seconds each); now the launching process does."""
    import vitcore.distributed

    def started(*args):
        raise AssertionError("the workers were started")

    monkeypatch.setattr(vitcore.distributed, "launch", started)
    kwargs = dict(kwargs)
    if "kill" in kwargs:  # the test hook's variable, malformed
        monkeypatch.setenv(KILL_ENV, kwargs.pop("kill"))
    with pytest.raises(ValueError, match=re.escape(message)):
        run_scoring(str(tmp_path / "r.jsonl"), workers=2, **{**RUN, **kwargs})


def test_proxies_from_a_generator_are_read_once(tmp_path):
    """The settings check before the workers read the generator; scoring then found it empty."""
    records = run_scoring(str(tmp_path / "r.jsonl"), proxies=(p for p in ["params"]), **RUN)
    assert [list(r["scores"]) for r in records] == [["params"]] * RUN["n"]


def test_torchrun_then_a_killed_worker_then_resume(tmp_path, monkeypatch, capsys, reference):
    """docs/scale.md's commands on 2 processes: torchrun gives the one-process results; `--workers` with
    rank 1 killed after its first architecture exits 1 naming it and loses nothing finished;
    `--resume` on one process completes the run."""
    monkeypatch.chdir(tmp_path)
    (workers, torchrun) = _scale_commands()
    assert workers[:2] == ["vitcore", "score"] and torchrun[0] == "torchrun"
    out = workers[workers.index("--out") + 1]
    assert torchrun[torchrun.index("--out") + 1] == out

    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", *torchrun[1:]], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _untimed(_lines(out)) == reference and shard_paths(out) == []
    assert run.stdout.count("4 scored, 0 failed") == 1  # rank 0's table only

    monkeypatch.setenv(KILL_ENV, "1:1")
    with pytest.raises(SystemExit) as exit:
        main(workers[1:])
    assert exit.value.code == 1
    assert re.search(r"rank 1 of 2 failed \(Signal 9 \(SIGKILL\).*rerun with --resume", capsys.readouterr().err)
    assert _lines(out) == []  # moved to .bak at the start; never merged
    assert _untimed(_lines(out + ".bak")) == reference
    assert _untimed(read_results(shard_path(out, 1, 2))) == reference[1:2]  # killed right after its first record
    rank0 = _untimed(read_results(shard_path(out, 0, 2)))  # stopped by the launcher: all, some or none of its share
    assert rank0 == reference[0::2][:len(rank0)]

    monkeypatch.delenv(KILL_ENV)
    assert main(["score", "--resume", *workers[workers.index("--num-archs"):]]) == 0
    assert _untimed(_lines(out)) == reference and shard_paths(out) == []


def test_two_nodes_by_rendezvous_share_one_results_file(tmp_path, monkeypatch, one_thread):
    """docs/scale.md's multi-node command, as two torchrun agents ("nodes") of one process each on this
    machine: HOST is 127.0.0.1 (a free port), the space the small one, the device the CPU."""
    monkeypatch.chdir(tmp_path)
    with open(SCALE, encoding="utf-8") as f:
        (template,) = re.findall(r"^```text\n(torchrun --nnodes.*?)^```", f.read(), flags=re.S | re.M)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    template = template.replace("\\\n", " ").replace("HOST:29400", f"127.0.0.1:{port}")
    argv = shlex.split(template.replace("/shared/", ""))  # the shared folder: this test's own
    cheap = {"--nproc-per-node": "1", "--num-archs": "4", "--space": "small", "--device": "cpu"}
    argv = [cheap.get(argv[i - 1], a) for i, a in enumerate(argv)][1:]
    argv += ["--data", RUN["data"], "--batch-size", str(RUN["batch_size"])]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    out = argv[argv.index("--out") + 1]
    assert _untimed(_lines(out)) == _untimed(run_scoring(str(tmp_path / "one.jsonl"), **RUN))
    assert shard_paths(out) == []
    assert sum("4 scored, 0 failed" in stdout for stdout, _ in outputs) == 1  # rank 0's table, on one node


def test_a_shard_missing_at_the_merge_is_named_and_nothing_is_lost(tmp_path, monkeypatch, reference):
    """Rank 0 of 2 whose partner's shard is not beside --out (on another node, in a folder not shared)."""
    from vitcore import distributed

    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "_barrier", lambda me: None)  # rank 1 finished elsewhere
    monkeypatch.setattr(distributed, "_join", lambda me: None)
    monkeypatch.setattr(distributed, "_agree", lambda me, key: None)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: None)
    out = str(tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="no record of 2 architectures .* every node shares"):
        run_scoring(out, **RUN)
    assert read_results(out) == [] and _untimed(read_results(shard_path(out, 0, 2))) == reference[0::2]


@pytest.mark.parametrize("env, message", [
    ({"RANK": "1"}, "the environment sets RANK='1' but not WORLD_SIZE"),
    ({"WORLD_SIZE": "2"}, "the environment sets WORLD_SIZE='2' but not RANK"),
    ({"RANK": "1", "WORLD_SIZE": "2"}, "WORLD_SIZE=2 but LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"),
    ({**TORCHRUN, "MASTER_PORT": ""}, "WORLD_SIZE=2 but MASTER_PORT is not set"),
    ({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT='70000': expected a TCP port in 1..65535"),
    ({**TORCHRUN, "MASTER_PORT": "http"}, "MASTER_PORT='http': expected a TCP port"),
    ({**TORCHRUN, "WORLD_SIZE": "0"}, "RANK=0 is not below WORLD_SIZE=0"),
    ({**TORCHRUN, "LOCAL_RANK": "x"}, "LOCAL_RANK='x': expected a non-negative integer"),
])
def test_a_leftover_torchrun_environment_is_refused_up_front(tmp_path, monkeypatch, env, message):
    """RANK / WORLD_SIZE / MASTER_* exported by another job: a clear error naming them before any work,
    never a rendezvous that waits for ranks that do not exist (issue 26, case 7)."""
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = str(tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match=re.escape(message)):
        run_scoring(out, **RUN)
    assert not os.path.exists(out)


@pytest.mark.parametrize("rank", [0, 1])
def test_ranks_that_never_come_fail_after_the_rendezvous_timeout(tmp_path, monkeypatch, capsys, rank):
    """A complete torchrun environment with nobody else: rank 0 waits for clients, rank 1 for a server;
    both give up after RENDEZVOUS_TIMEOUT (shortened here from 120 s) with the environment named."""
    from datetime import timedelta

    from vitcore import distributed

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    for name, value in {**TORCHRUN, "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(distributed, "RENDEZVOUS_TIMEOUT", timedelta(seconds=2))
    out = str(tmp_path / "r.jsonl")
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"rank {rank} of 2: the other ranks did not join at 127\.0\.0\.1:{port} "
                                         rf"within 2 s .*RANK='{rank}' WORLD_SIZE='2'.*unset RANK, WORLD_SIZE"):
        run_scoring(out, **RUN)
    assert time.monotonic() - start < 60
    assert f"rank {rank} of 2 (from RANK='{rank}'" in capsys.readouterr().err  # said before it waited
    assert not dist.is_initialized()


def test_sigterm_on_a_workers_run_is_one_line_and_the_shards_resume(tmp_path, one_thread):
    """SIGTERM to `vitcore score --workers 2` printed a 35-line torch traceback (issue 26, case 9): now one
    line and status 128 + 15; the workers are stopped and their records stay in the shards, each whole
    and identical to a one-process run's, for --resume."""
    import signal

    out = str(tmp_path / "r.jsonl")
    n = 200  # far more than the workers score before the signal
    argv = ["score", "--workers", "2", "--n", str(n), "--data", RUN["data"], "--batch-size", str(RUN["batch_size"]),
            "--out", out]
    run = subprocess.Popen([sys.executable, "-m", "vitcore", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    shard = shard_path(out, 0, 2)
    deadline = time.monotonic() + 300

    def lines(path):  # newline-ended lines: the shard's header, then one per finished architecture
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return f.read().count("\n")

    while lines(shard) < 2 and run.poll() is None:
        assert time.monotonic() < deadline, "no record after 300 s"
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.splitlines() == ["vitcore score: stopped by SIGTERM; the 2 workers were stopped and the "
                                   "architectures they finished are kept in the shards beside the results file: "
                                   "rerun with --resume"]
    assert stdout == ""
    kept = [r for path in shard_paths(out) for r in read_results(path)]
    assert 1 <= len(kept) < n
    archs = {a.id: a for a in sample(SPACES["small"], n, 0)}
    redo = [archs[r["id"]] for r in kept[:3]]
    batch = load_batch(RUN["data"], RUN["batch_size"], 0, SPACES["small"])
    again = score_archs(redo, batch, str(tmp_path / "one.jsonl"), space="small")
    assert _untimed(again) == _untimed(kept[:3])


@pytest.mark.parametrize("options, message", [
    (["--num-archs", "5"], "architectures '5 (ids sha256 "),
    (["--proxies", "snip,params"], "proxies ['snip', 'params'] on rank 1, ['grad_norm', 'params'] on rank 0"),
])
def test_ranks_started_with_different_options_stop_before_writing(tmp_path, one_thread, options, message):
    """Each rank of a torchrun job is its own command line: ranks with different options or inputs stop
    with the difference named, before any file is written (they merged records of different runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = str(tmp_path / "r.jsonl")
    base = ["score", "--num-archs", "4", "--data", "synthetic", "--batch-size", "8", "--proxies", "grad_norm,params",
            "--out", out]
    env = {**os.environ, **TORCHRUN, "MASTER_PORT": port, "TORCHELASTIC_RUN_ID": "test"}
    ranks = [subprocess.Popen([sys.executable, "-m", "vitcore", *base, *(options if rank else [])],
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    for rank, (_, err) in zip(ranks, outputs):
        assert rank.returncode == 2 and f"rank 1 of 2 was started with other settings than rank 0 ({message}" in err
        assert "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_the_run_key_is_the_records_resume_key_with_the_architectures_and_out(tmp_path):
    """Ranks agree when their records would carry one resume key: the data as named (a relative and an
    absolute path to one file give records other readers refuse to mix), defaults filled in as
    score_archs fills them."""
    from vitcore.distributed import run_key
    from vitcore.runs import settings_diff

    archs = sample(SPACES["small"], 3, 0)
    batch = load_batch("synthetic", 8, seed=0, space=SPACES["small"])
    key = run_key(archs, batch, str(tmp_path / "r.jsonl"), False, {"proxies": ["grad_norm", "snip"]})
    assert {k: v for k, v in key.items() if k not in ("--out", "resume", "architectures")} == \
        score_archs(archs[:1], batch, str(tmp_path / "one.jsonl"))[0]["settings"]
    assert key == run_key(archs, batch, "elsewhere/r.jsonl", False, {"proxies": ("grad_norm", "snip"), "seed": 0})
    renamed = dataclasses.replace(batch, name="./synthetic")
    other = run_key(archs[:2], renamed, str(tmp_path / "r.jsonl"), True, {"proxies": ["grad_norm", "snip"]})
    words = settings_diff(other, key, "on rank 1", "on rank 0")
    assert "resume True on rank 1, False on rank 0" in words and \
        "data './synthetic' on rank 1, 'synthetic' on rank 0" in words
    assert "architectures '2 (ids sha256" in words

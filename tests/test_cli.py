"""The `vitcore` command line: options, exit status, the ranked table."""
import json
import os
import stat
import subprocess
import sys

import pytest

from vitcore.cli import _print_table, main
from vitcore.space import SPACES, sample


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_scores_and_ranks(tmp_path, capsys):  # the default run is the README's (test_docs)
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--n", "7", "--batch-size", "8", "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    records = _lines(out)
    assert len(records) == 7 and all("scores" in r for r in records)
    assert [r["id"] for r in records] == [a.id for a in sample(SPACES["small"], 7, 0)]
    assert table[-2] == "7 scored, 0 failed; ranked by grad_norm"
    assert table[-1].startswith("on the built-in truth (vitcore/truth/digits-small-50.csv, 7 of these architectures) "
                                "grad_norm ranks with Kendall τ ")  # the 7 are the built-in 50's first
    ranked = [float(line.split()[-2]) for line in table[1:-2]]  # the grad_norm column
    assert len(ranked) == 7 and ranked == sorted(ranked, reverse=True)


def test_every_architecture_failing_exits_nonzero(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["score", "--space", "imagenet", "--n", "2", "--batch-size", "4", "--out", str(out)]) == 1
    assert "0 scored, 2 failed" in capsys.readouterr().out


def test_repeated_architectures_are_scored_once(tmp_path, capsys):
    first = tmp_path / "r.jsonl"
    main(["score", "--n", "2", "--batch-size", "4", "--out", str(first)])
    lines = first.read_text().splitlines()
    archs = tmp_path / "archs.jsonl"
    archs.write_text("\n".join(lines + lines[:1]) + "\n")  # a retried id appears twice
    again = tmp_path / "again.jsonl"
    main(["score", "--archs", str(archs), "--batch-size", "4", "--out", str(again)])
    assert [r["id"] for r in _lines(again)] == [r["id"] for r in _lines(first)]
    assert "1 repeated architectures scored once" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--proxies", "grad_norm,synflo"], "unknown proxy 'synflo'; valid: grad_norm, snip, plain"),
        (["--space", "huge"], "unknown search space 'huge'; valid: autoformer, imagenet, pit, small"),
        (["--archs", "/no/such.json"], "architectures file '/no/such.json' does not exist"),
        (["--data", "/no/such.npz"], "data file '/no/such.npz' does not exist"),
        (["--data", "mnist"], "unknown data 'mnist'; valid: digits, synthetic, PATH.npz"),
        (["--batch-size", "5000"], "batch_size=5000 is larger than the 1797 examples"),
        (["--rank-by", "plain"], "--rank-by 'plain' is not among --proxies grad_norm,snip"),
        (["--seed", "-1"], "--seed -1: expected a non-negative integer"),
        (["--attention", "flash"], "argument --attention: invalid choice: 'flash'"),
        (["--out", "{tmp}"], "is a folder; name a file such as"),
        (["--out", "{tmp}/afile/x.jsonl"], "afile' is a file, not a folder"),
        (["--out", os.devnull], f"--out '{os.devnull}' is not a regular file"),
        (["--out", "/sys/vitcore-test.jsonl"], "--out '/sys/vitcore-test.jsonl' cannot be written"),
        (["--archs", "{tmp}"], "architectures file '{tmp}' is a directory, not a file"),
        (["--data", "{tmp}/adir.npz"], "data file '{tmp}/adir.npz' is a directory, not a file"),
        (["--data", "{tmp}/afile.npz"], "afile.npz: not a readable .npz of images and labels (EOFError"),
        (["--n", "44281"], "--n 44281: the 'small' space holds 44,280 architectures"),
        (["--space", "imagenet", "--data", "synthetic", "--batch-size", "1000000000"],
         "batch_size=1000000000: synthetic images of shape (1000000000, 3, 224, 224) need 560760.5 GiB"),
    ],
)
def test_bad_options_say_what_is_wrong(argv, message, tmp_path, capsys):
    if "/sys/" in message and not os.path.isdir("/sys"):
        pytest.skip("needs Linux's /sys, read-only even for root")
    (tmp_path / "afile").write_text("")
    (tmp_path / "afile.npz").write_text("")  # an empty .npz
    (tmp_path / "adir.npz").mkdir()
    argv, message = [a.format(tmp=tmp_path) for a in argv], message.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--n", "2", "--out", str(tmp_path / "x.jsonl")] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_synthetic_data_and_module_entry_point(tmp_path):
    out = tmp_path / "syn.jsonl"
    cmd = [sys.executable, "-m", "vitcore", "score", "--n", "3", "--data", "synthetic", "--batch-size", "4",
           "--proxies", "snip,plain", "--mode", "per_layer", "--attention", "eager", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "3 scored, 0 failed; ranked by snip" in result.stdout
    assert all(set(r["scores"]) == {"snip", "plain"} and r["settings"]["attention"] == "eager" for r in _lines(out))


def _stdout_env(buffered: bool) -> dict:
    """This environment with Python's stdout block-buffered (a redirect's default) or unbuffered."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return env if buffered else dict(env, PYTHONUNBUFFERED="1")


@pytest.mark.parametrize("buffered", [True, False])
def test_a_closed_stderr_or_a_reader_gone_from_stdout_keeps_the_results(tmp_path, buffered):
    """`2>&-` made Python's sys.stderr None, and the progress bar failed every architecture; a reader that
    left stdout (`| head -1`) ended in a one-line error and exit 2, which means bad input: now the status
    SIGPIPE gives (141), no message, every result written, whether stdout is buffered or not."""
    base = [sys.executable, "-m", "vitcore", "score", "--n", "2", "--batch-size", "8", "--out"]
    env = _stdout_env(buffered)
    closed = subprocess.run(base + [str(tmp_path / "a.jsonl")], stdout=subprocess.DEVNULL,
                            preexec_fn=lambda: os.close(2), timeout=300, env=env)
    assert closed.returncode == 0 and all("scores" in r for r in _lines(tmp_path / "a.jsonl"))
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first print (unbuffered) or the flush (buffered) raises BrokenPipeError
    gone = subprocess.run(base + [str(tmp_path / "b.jsonl")], stdout=write, stderr=subprocess.PIPE, text=True,
                          timeout=300, env=env)
    os.close(write)
    assert gone.returncode == 141 and "Traceback" not in gone.stderr and "error" not in gone.stderr
    assert len(_lines(tmp_path / "b.jsonl")) == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("buffered", [True, False])
def test_a_full_device_behind_stdout_is_named(tmp_path, buffered):
    """stdout redirected to a full device: the error said "No space left on device" and no more, as if the
    results file had failed (unbuffered), or Python's flush at exit printed an ignored exception and the
    status was 120 (buffered); it names stdout, exit 2, and the results are written."""
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-m", "vitcore", "score", "--n", "2", "--batch-size", "8", "--out",
                              str(tmp_path / "r.jsonl")], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
                             env=_stdout_env(buffered))
    assert run.returncode == 2 and "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    assert run.stderr.splitlines()[-1] == "vitcore score: error: [Errno 28] No space left on device: '<stdout>'"
    assert len(_lines(tmp_path / "r.jsonl")) == 2


def test_ranked_table_puts_nan_last(capsys):
    arch = sample(SPACES["small"], 1)[0].to_dict()
    records = [{"id": f"a{i}", "arch": arch, "params": 1, "scores": {"jacob_cov": v}}
               for i, v in enumerate([3.0, float("nan"), 5.0, 1.0, 4.0])]
    _print_table(records, ["jacob_cov"], "jacob_cov")
    rows = capsys.readouterr().out.splitlines()[1:-1]
    assert [r.split()[1] for r in rows] == ["a2", "a4", "a0", "a3", "a1"]


def test_an_id_with_a_newline_stays_on_its_row(capsys):
    arch = sample(SPACES["small"], 1)[0].to_dict()
    records = [{"id": "two\nlines", "arch": arch, "params": 1, "scores": {"snip": 1.0}},
               {"id": "tab\tbed", "arch": arch, "error": "ValueError: x"}]
    _print_table(records, ["snip"], "snip")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[1].split()[1] == "two\\nlines" and out[2].split()[1] == "tab\\tbed"


def test_ranked_table_shows_a_pit_per_stage(capsys):
    arch = {"base_dim": 16, "depth": [2, 8, 4], "num_heads": [2, 4, 4], "mlp_ratio": 6.0, "patch_size": 16,
            "stride": 8}
    _print_table([{"id": "p", "arch": arch, "params": 893828, "scores": {"params": 893828.0}}], ["params"], "params")
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[1:6] == ["p", "893,828", "2-8-4", "32-64-64", "16"] and row[6] == "2-4-4"


def test_resume_with_another_space_is_refused(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    common = ["score", "--data", "synthetic", "--n", "2", "--batch-size", "4", "--out", str(out)]
    assert main(common + ["--space", "small"]) == 0
    before = out.read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(common + ["--space", "imagenet", "--resume"])
    assert exit_info.value.code == 2 and "holds results for settings" in capsys.readouterr().err
    assert out.read_text() == before


def test_the_null_device_is_left_alone(tmp_path, capsys):
    if not os.path.exists(os.devnull) or os.path.isfile(os.devnull):
        pytest.skip("no null device here")
    mode = os.stat(os.devnull).st_mode
    with pytest.raises(SystemExit):
        main(["score", "--n", "1", "--out", os.devnull])
    assert os.stat(os.devnull).st_mode == mode and stat.S_ISCHR(mode) and not os.path.exists(os.devnull + ".bak")


def test_a_bad_archs_line_is_named_with_file_and_line(tmp_path, capsys):
    archs = tmp_path / "archs.jsonl"
    good = json.dumps(sample(SPACES["small"], 1)[0].to_dict())
    archs.write_text(f"{good}\n\n{good[:-1]}\n")
    with pytest.raises(SystemExit):
        main(["score", "--archs", str(archs), "--out", str(tmp_path / "r.jsonl")])
    assert f"{archs}, line 3: not JSON" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["evaluate", "--help"]])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "usage: vitcore" in text
    assert "`" not in text and ":func:" not in text and ".. " not in text  # no reStructuredText markup

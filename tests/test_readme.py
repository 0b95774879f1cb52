"""Every command and code block of the README runs as written.

The README's bash blocks are run in order in one empty folder, as a new user would paste them, with
these rewrites to keep CI cheap (each uses a documented option and changes how much is scored, not
what the command does):
- ``vitcore score --n N`` becomes ``--n 1`` and ``--batch-size`` is 2 for the 224x224 spaces;
- ``vitcore evaluate`` without ``--scores`` gets ``--n 3 --proxies grad_norm,snip``;
- ``--device cuda`` becomes ``--device cpu`` on a machine without CUDA;
- ``pip install ...`` and ``pytest`` are what ``.ci/run`` runs (the README's test command), not run here;
- a ``--truth`` that is a file of the repository (the built-in truth) is read there, as from the
  repository's root; a CSV ``--truth`` that is nowhere gets one made from the scores it reads (the
  README says what the file holds: columns id and acc_mean); ``--truth truth.jsonl`` gets three
  architectures of the ``autoformer`` space with made-up ``acc`` columns, and ``--data images.npz``
  eight random images of that space's size (the formats the README gives).
Python blocks run as written.
"""
import csv
import json
import os
import re
import shlex

import numpy as np
import pytest
import torch

from vitcore.cli import main
from vitcore.runs import read_results
from vitcore.space import get_space, sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
LARGE_SPACES = ("imagenet", "autoformer")


def _blocks(language):
    with open(README, encoding="utf-8") as f:
        return re.findall(rf"^```{language}\n(.*?)^```", f.read(), flags=re.S | re.M)


def _commands():
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                yield from (c.strip() for c in line.split("&&"))


def _cheap(argv):
    argv = list(argv)
    if argv[0] == "evaluate" and "--scores" not in argv:
        return argv + ["--n", "3", "--proxies", "grad_norm,snip"]
    for flag, value in (("--n", "1"), ("--batch-size", "2")):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    if any(space in argv for space in LARGE_SPACES) and "--batch-size" not in argv:
        argv += ["--batch-size", "2"]
    if "cuda" in argv and not torch.cuda.is_available():
        argv[argv.index("cuda")] = "cpu"
    return argv


def _write_truth(scores_path, truth_path):
    with open(truth_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "acc_mean"])
        for i, r in enumerate(read_results(scores_path)):
            w.writerow([r["id"], i / 100])


def _write_truth_jsonl(truth_path, columns):
    rows = sample(get_space("autoformer"), n=3, seed=0)
    with open(truth_path, "w") as f:
        for i, arch in enumerate(rows):
            f.write(json.dumps({**arch.to_dict(), "acc": {c: 70.0 + i + j for j, c in enumerate(columns)}}) + "\n")


def _write_images(npz_path):
    space = get_space("autoformer")
    gen = np.random.default_rng(0)
    x = gen.standard_normal((8, space.in_chans, space.img_size, space.img_size)).astype(np.float32)
    np.savez(npz_path, x=x, y=gen.integers(0, space.num_classes, 8))


def test_the_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in _commands():
        argv = shlex.split(command)
        if argv[0] == "pip" or argv[:2] == ["pytest", "-q"]:
            assert command in ("pip install -e .", "pip install -e '.[test]'", "pytest -q")  # .ci/run's
            continue
        assert argv[0] == "vitcore" and argv[1] in ("score", "evaluate"), f"no test runs README's {command!r}"
        argv = _cheap(argv[1:])
        truth = argv[argv.index("--truth") + 1] if "--truth" in argv else None
        if truth and os.path.isfile(os.path.join(ROOT, truth)):  # the README runs from the repository's root
            argv[argv.index("--truth") + 1] = truth = os.path.join(ROOT, truth)
        if truth and not os.path.exists(truth) and truth.endswith(".jsonl"):
            _write_truth_jsonl(truth, argv[argv.index("--columns") + 1].split(","))
        elif truth and not os.path.exists(truth):
            _write_truth(argv[argv.index("--scores") + 1], truth)
        if "--data" in argv and argv[argv.index("--data") + 1].endswith(".npz"):
            _write_images(argv[argv.index("--data") + 1])
        capsys.readouterr()
        assert main(argv) == 0, command
        out = capsys.readouterr().out
        if argv[0] == "score":
            results = argv[argv.index("--out") + 1] if "--out" in argv else "vitcore-results/scores.jsonl"
            assert f"{len(read_results(results))} scored, 0 failed" in out, command
        else:
            assert "| grad_norm |" in out, command
        ran.append(argv[0])
    assert ran.count("score") >= 3 and ran.count("evaluate") >= 2  # the blocks were found
    assert len(read_results("vitcore-results/scores.jsonl")) == 50  # the default run: the built-in 50
    assert len(read_results("vitcore-results/evaluate/scores.jsonl")) == 3
    assert len(read_results("vitcore-results/dev/scores.jsonl")) == 3  # the JSON-lines truth's architectures


@pytest.mark.parametrize("block", _blocks("python"))
def test_the_readme_python_runs_as_written(block):
    exec(compile(block, README, "exec"), {})

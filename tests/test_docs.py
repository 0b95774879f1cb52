"""The README and every page of docs/ run as written, cite what they measure, and link to files that exist.

Pages: README.md and docs/*.md (a glob: a page added later is tested too).

Blocks (``test_the_page_runs_as_written``). A page's fenced blocks run in page order in one empty
temporary folder, as a new user would paste them; the folder holds links to the repository's files
(``vitcore/``, ``bench/``, ...) and, one level up, ``shared/`` (the project's data), so paths relative
to the repository's root and ``../shared/data/...`` read as they do from a checkout.
- ```bash lines are commands: ``vitcore ...`` (or ``python -m vitcore ...``), run through
  ``vitcore.cli.main``, optionally behind ``NAME=value`` settings of the environment; ``a && b`` runs
  both; ``pip install ...`` and ``pytest ...`` lines are what ``.ci/run`` runs, not run here; any other
  command fails the test (write it in a ```text block).
- ```python blocks run as written; ```text blocks (output, commands not to run) are not run. A block
  of any other language fails the test, so that nothing runnable escapes it.
Rewrites that keep CI cheap (each uses a documented option and changes how much is scored or
timed, not what the command does):
- ``--n`` / ``--num-archs`` becomes 1 (except for ``vitcore bench``, whose ``--n`` lists N');
  ``--batch-size`` is 2 for the 224x224 spaces (``imagenet``, ``autoformer``, ``pit``, and a
  JSON-lines truth, which is scored in one of them);
- ``vitcore evaluate`` without ``--scores`` gets ``--n 3``, and ``--proxies grad_norm,snip`` unless it
  names its own;
- ``vitcore bench`` times a three-point grid (N' 16, 64, 197 at D 64), one window of 1 ms per point,
  no plots, and writes to the temporary folder when it has no ``--out``;
- ``--device cuda`` becomes ``--device cpu`` on a machine without CUDA;
- a CSV ``--truth`` that is nowhere gets one made from the scores it reads (columns id and acc_mean);
  a JSON-lines ``--truth`` that is nowhere gets three architectures of the ``autoformer`` space with
  made-up accuracies in its ``--columns``; a ``--data PATH.npz`` that is nowhere gets eight random
  images of the command's space.

Numbers (``test_every_number_is_from_the_report_it_cites``). A page is cut into units: a paragraph, a
list item, a table row, a ```text block. A unit cites the reports it links to (files under
``bench/results/`` or ``vitcore/truth/``); a table row and a ```text block also cite what the
paragraph just above them cites. Outside code (fenced blocks other than text, `inline code`, link
targets), every number of a citing unit, but for the digits 0 to 9 standing alone, must occur in a
report it cites, as a whole number (0.98 does not match 0.983). A unit that cites nothing may hold
no measured-looking number (a decimal, a power of ten, or a number with a unit: x, %, s, ms, µs)
unless ``NOT_MEASURED`` lists it, with the reason it needs no report.

Links (``test_every_relative_link_exists``): every link that is not a web address names a file or
folder of the repository.
"""
import csv
import glob
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
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
REPO_ENTRIES = ("vitcore", "kernels", "bench", "tests", "docs", "README.md", "setup.py", "pytest.ini")
LARGE_SPACES = ("imagenet", "autoformer", "pit")
REPORT_DIRS = ("bench/results/", "vitcore/truth/")
BENCH_GRID = {"--n": "16,64,197", "--d": "64", "--budget-ms": "1", "--windows": "1", "--repeat": "1"}

# Measured-looking numbers that need no report, each with the reason.
NOT_MEASURED = {
    "2.13.0": "the torch CPU build the README's set-up installs where the package index serves it",
    "2.14.1": "the torch release .ci/run installs with torchvision 0.29.1 so that timm imports",
    "0.29.1": "the torchvision release .ci/run installs with torch 2.14.1",
    "2.3": "the oldest torch setup.py accepts",
    "3.6": "a Triton version the code is written and tested for",
    "3.9": "a Triton version the code is written and tested for",
    "3.7": "the Triton release whose interpreter accepts NumPy 2.4 (vitcore/ops/dispatch.py)",
    "2.4": "the NumPy release older Triton interpreters fail on (vitcore/ops/dispatch.py)",
    "0.1": "the default of evaluate's --top-fraction (vitcore/cli.py)",
    "0.05": "the level of vitcore calibrate's one-sided test (vitcore.calibrate.ALPHA)",
    "5": "vitcore calibrate's level in percent (vitcore.calibrate.ALPHA), and its fewest labels (MIN_K)",
    "95": "the confidence level of evaluate's intervals (vitcore.ranking.CI_LEVEL)",
    "1e-5": "jacob_cov's offset k, part of its formula (vitcore/proxies/jacob_cov.py)",
    "10.6": "PiT-XS's parameter count in millions, from the PiT paper; tests/test_pit.py checks it",
    "23.5": "PiT-S's parameter count in millions, from the PiT paper; tests/test_pit.py checks it",
    "73.8": "PiT-B's parameter count in millions, from the PiT paper; tests/test_pit.py checks it",
}


def _rel(page):
    return os.path.relpath(page, ROOT)


def _read(page):
    with open(page, encoding="utf-8") as f:
        return f.read()


FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", flags=re.S | re.M)


def _blocks(page):
    """[(language, text, first line number)] of the page's fenced blocks, in page order."""
    text = _read(page)
    return [(m[1], m[2], text.count("\n", 0, m.start()) + 2) for m in FENCE.finditer(text)]


# --- running the blocks ---------------------------------------------------------------------------

def _commands(block):
    """The commands of a bash block: comments dropped, continued lines joined, ``a && b`` split."""
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            yield from (c.strip() for c in line.split("&&"))


def _option(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def _set(argv, flag, value):
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def _is_large(argv):
    truth = _option(argv, "--truth") or ""
    return any(space in argv for space in LARGE_SPACES) or (argv[0] == "evaluate" and truth.endswith(".jsonl"))


def _cheap(argv, folder):
    """``argv`` (after ``vitcore``) with the rewrites the module docstring lists."""
    argv = list(argv)
    if argv[0] == "bench":
        for flag, value in BENCH_GRID.items():
            _set(argv, flag, value)
        if "--no-plots" not in argv:
            argv.append("--no-plots")
        if "--out" not in argv:
            argv += ["--out", os.path.join(folder, "bench-out")]
    elif argv[0] == "evaluate" and "--scores" not in argv:
        _set(argv, "--n", "3")
        if "--proxies" not in argv:
            argv += ["--proxies", "grad_norm,snip"]
    else:
        for flag in ("--n", "--num-archs"):
            if flag in argv:
                argv[argv.index(flag) + 1] = "1"
    if argv[0] != "bench" and "--scores" not in argv and _is_large(argv):  # scores read, not made: no batch
        _set(argv, "--batch-size", "2")
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
    with open(truth_path, "w") as f:
        for i, arch in enumerate(sample(get_space("autoformer"), n=3, seed=0)):
            f.write(json.dumps({**arch.to_dict(), "acc": {c: 70.0 + i + j for j, c in enumerate(columns)}}) + "\n")


def _write_images(npz_path, space_name):
    space = get_space(space_name)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((8, space.in_chans, space.img_size, space.img_size)).astype(np.float32)
    np.savez(npz_path, x=x, y=gen.integers(0, space.num_classes, 8))


def _make_missing_inputs(argv):
    truth = _option(argv, "--truth")
    if truth and not os.path.exists(truth):
        if truth.endswith(".jsonl"):
            _write_truth_jsonl(truth, (_option(argv, "--columns") or "acc").split(","))
        elif _option(argv, "--scores"):
            _write_truth(_option(argv, "--scores"), truth)
    data = _option(argv, "--data")
    if data and data.endswith(".npz") and not os.path.exists(data):
        space = _option(argv, "--space") or ("autoformer" if (truth or "").endswith(".jsonl") else "small")
        _write_images(data, space)


def _run_vitcore(argv, capsys, where):
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # --help and argparse's own exits
        status = e.code
    out = capsys.readouterr().out
    assert status in (0, None), f"{where}: vitcore {shlex.join(argv)} exited {status}"
    if argv[0] == "score":
        results = _option(argv, "--out") or "vitcore-results/scores.jsonl"
        assert f"{len(read_results(results))} scored, 0 failed" in out, where
    elif argv[0] == "evaluate" and "--few-shot" in argv:
        assert "| column | n | rule τ |" in out, f"{where}: no few-shot table printed"
    elif argv[0] == "evaluate":
        assert "| proxy |" in out, f"{where}: no table of proxies printed"


def _run_command(command, capsys, monkeypatch, folder, where):
    """Run one command of a bash block; False for the ones .ci/run runs instead (pip, pytest)."""
    argv = shlex.split(command)
    settings = []
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        settings.append(argv.pop(0).split("=", 1))
    if argv[0] == "pip" or argv[0] == "pytest" or argv[:3] == ["python", "-m", "pytest"]:
        return False
    if argv[:3] == ["python", "-m", "vitcore"]:
        argv = ["vitcore"] + argv[3:]
    assert argv[0] == "vitcore", f"{where}: no test runs {command!r}; write commands not to run in a ```text block"
    argv = _cheap(argv[1:], folder)
    _make_missing_inputs(argv)
    with monkeypatch.context() as env:  # NAME=value holds for this command only
        for name, value in settings:
            env.setenv(name, value)
        _run_vitcore(argv, capsys, where)
    return True


def _checkout_view(tmp_path):
    """An empty folder that sees the repository's files by relative path, and shared/ one level up."""
    folder = tmp_path / "repo"
    folder.mkdir()
    for name in REPO_ENTRIES:
        if os.path.exists(os.path.join(ROOT, name)):
            os.symlink(os.path.join(ROOT, name), folder / name)
    if os.path.isdir(SHARED):
        os.symlink(SHARED, tmp_path / "shared")
    return folder


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_the_page_runs_as_written(page, tmp_path, monkeypatch, capsys):
    blocks = _blocks(page)
    for language, text, line in blocks:
        assert language in ("bash", "python", "text"), \
            f"{_rel(page)}:{line}: a ```{language} block; use bash or python (run by this test) or text (not run)"
    runnable = [b for b in blocks if b[0] in ("bash", "python")]
    if any("../shared/" in text for _, text, _ in runnable) and not os.path.isdir(SHARED):
        pytest.skip(f"{_rel(page)} reads ../shared/, which is not beside this checkout")
    folder = _checkout_view(tmp_path)
    monkeypatch.chdir(folder)
    ran = 0
    for language, text, line in runnable:
        where = f"{_rel(page)}:{line}"
        if language == "python":
            exec(compile(text, where, "exec"), {"__name__": "__main__"})
            ran += 1
        else:
            ran += sum(_run_command(c, capsys, monkeypatch, str(tmp_path), where) for c in _commands(text))
    assert ran or not runnable or all("pip install" in t or "pytest" in t for _, t, _ in runnable), _rel(page)


def test_the_readme_gives_ci_its_test_command():
    """.ci/run runs the line two lines below the marker (the line after the block's opening fence)."""
    lines = _read(PAGES[0]).splitlines()
    at = lines.index("<!-- test command -->")
    assert lines[at + 1] == "```bash" and "pytest" in lines[at + 2], lines[at:at + 3]


def test_the_readme_is_short():
    assert len(_read(PAGES[0]).splitlines()) <= 150  # what a newcomer reads in five minutes; the rest is in docs/


# --- numbers and their reports --------------------------------------------------------------------

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)*(?:e[-+]?\d+)?", flags=re.I)  # 0.983, 2.13.0, 4e-12
LIST_ITEM = re.compile(r"([-*]|\d+\.)\s")
UNIT = re.compile(r"(?:x(?![\w])|%|\s?(?:s|ms|µs|us|min)\b)")


def _units(page):
    """[(text, cited reports, first line)] of a page: paragraphs, list items, table rows, text blocks."""
    lines = _read(page).splitlines()
    units, caption, i = [], set(), 0
    while i < len(lines):
        line, first = lines[i].strip(), i + 1
        if line.startswith("```"):  # a fenced block: only a text block holds prose numbers
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if line == "```text":
                body = "\n".join(lines[i + 1:end])
                units.append((body, caption | _cited(page, body), first))
            i = end + 1
        elif line.startswith("|"):  # a table row cites its own links and its caption's
            units.append((line, caption | _cited(page, line), first))
            i += 1
        elif not line or line.startswith(("#", "<!--")):
            if line:  # a heading ends what a caption can cite
                units.append((line, set(), first))
                caption = set()
            i += 1
        else:  # a paragraph or a list item: to the next blank line, table, block, heading or item
            j = i + 1
            while j < len(lines) and lines[j].strip() and not lines[j].strip().startswith(("|", "```", "#")) \
                    and not LIST_ITEM.match(lines[j].strip()):
                j += 1
            body = "\n".join(l.strip() for l in lines[i:j])
            caption = _cited(page, body)
            units.append((body, caption, first))
            i = j
    return units


def _cited(page, text):
    """The reports ``text`` links to, as paths relative to the repository's root."""
    cited = set()
    for _, target in LINK.findall(text):
        path = os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0])), ROOT)
        if path.startswith(REPORT_DIRS) and os.path.isfile(os.path.join(ROOT, path)):
            cited.add(path)
    return cited


def _numbers(text):
    """(number as written without its sign, looks measured) for each number outside code and link targets."""
    text = re.sub(r"`[^`]*`|arXiv[ :]\S+", " ", text)  # code, and arXiv identifiers (2006.04647)
    text = LINK.sub(lambda m: m[1], text)
    for m in NUMBER.finditer(text):
        following = text[m.end():m.end() + 8]
        if re.match(r"[A-Za-z_]", following) and not UNIT.match(following):
            continue  # part of a name: 7a28b27, 3D, 12th
        token = m[0]
        measured = bool(re.search(r"[.e]", token, flags=re.I) or UNIT.match(following))
        yield token, measured


def _in_report(token, report_text):
    forms = {token, token.replace(",", "")}
    return any(re.search(rf"(?<![\d.]){re.escape(f)}(?![\d]|\.\d)", report_text) for f in forms)


def _number_problems(page):
    """One line per number of ``page`` that breaks the rule of the module docstring."""
    reports, problems = {}, []
    for text, cited, line in _units(page):
        for token, measured in _numbers(text):
            if cited:
                if not measured and len(token) == 1:
                    continue  # a small count: 3 seeds, 2 cores
                for path in cited - reports.keys():
                    reports[path] = _read(os.path.join(ROOT, path))
                if not any(_in_report(token, reports[p]) for p in cited):
                    problems.append(f"{_rel(page)}:{line}: {token} is in none of {sorted(cited)}")
            elif measured and token not in NOT_MEASURED:
                problems.append(f"{_rel(page)}:{line}: {token} cites no report (link the report under "
                                "bench/results/ it comes from, or list it in NOT_MEASURED with a reason)")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_number_is_from_the_report_it_cites(page):
    problems = _number_problems(page)
    assert not problems, "\n".join(problems)


def test_the_number_check_fails_a_number_no_cited_report_holds(tmp_path):
    report = os.path.join(ROOT, "bench", "results", "cpu-2026-12-07-evaluate-digits.md")
    page = tmp_path / "page.md"
    page.write_text(f"meco τ 0.679 ([report]({report})).\n\nmeco τ 0.678, uncited.\n\n"
                    f"| proxy | τ |\n| --- | --- |\n| meco | 0.678 |\n\nmeco τ 0.678 ([report]({report})).\n\n"
                    f"Its table ([report]({report})):\n\n| proxy | τ |\n| --- | --- |\n| meco | 0.678 |\n")
    problems = _number_problems(str(page))
    assert [p.split(": ", 1)[1].split(" ")[:2] for p in problems] == \
        [["0.679", "is"], ["0.678", "cites"], ["0.678", "cites"]]  # the cited 0.678 and its captioned row pass


# --- links ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_exists(page):
    text = FENCE.sub("", _read(page))
    text = re.sub(r"`[^`]*`", "", text)
    missing = []
    for _, target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address or an anchor of this page
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        if not os.path.exists(path):
            missing.append(target)
    assert not missing, f"{_rel(page)} links to files that do not exist: {missing}"

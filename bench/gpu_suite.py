"""Everything vitcore measures on a GPU, in one call: the GPU tests and every report, with a summary of targets.

    PYTHONPATH=. python -m bench.gpu_suite --out DIR            # on a CUDA machine, from the repository root
    python -m bench.gpu_suite --dry-run                          # anywhere: import every part, list the plan

Parts run one after another as subprocesses (attention before launch_overhead: its parallel prewarm fills
Triton's on-disk cache for the same shapes), each with its own time budget (a part over budget is stopped,
with its process group, and marked so; a part that fails does not stop the others); the budgets add up to
under 8 minutes. The first part makes ``vitcore.kernels`` importable from the tree: ``setup.py`` maps it from
``kernels/``, which ``PYTHONPATH=.`` alone does not do, so where ``import vitcore.kernels`` fails the suite
puts a small shim package on ``PYTHONPATH`` (no install, no network). Installing works too:
``pip install -e . --no-deps``. The tests run with ``VITCORE_AUTOTUNE=0`` (each kernel at its default
configuration: autotuning every test shape would not fit the budget); the reports run the tuned kernels.

DIR receives at most 8 files, none in a subfolder, each under 16 MiB: ``summary.md`` (every target with its
measured value and met / missed, or "not run: why"), ``tests.log``, one ``<part>.md`` report per part and
``results.json`` (each part's status, timing and measured JSON). The reports are copied in as soon as their
part ends (a part stopped over budget keeps what it had written), and summary.md and results.json are
rewritten after every part, so a suite killed midway keeps what it finished.
"""
import argparse
import glob
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from bench import suite_targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILE_BYTES = 16 * 2**20
TOTAL_BUDGET_S = 455  # all parts together, and the suite's own work between them: under 8 minutes
MSA_ARGS = ["--device", "cuda", "--dtype", "fp32,bf16", "--graphs", "--providers", "sdpa,vitcore",
            "--n", "16,50,128,197,256,577,1024,1025,2048", "--no-plots"]
ATTENTION_ARGS = ["--shapes", "vit-ti,vit-s,vit-b,vit-l,b-1025", "--providers", "sdpa,vitcore", "--graph",
                  "--no-long", "--prewarm", "8"]
# vitcore and its kernels must come from this tree (not from an older install); then the environment record
SETUP_CHECK = ("import json, os, vitcore.kernels, vitcore.ops; from vitcore.bench.env import environment; "
               "here = [os.path.realpath(m.__file__) for m in (vitcore, vitcore.kernels)]; "
               "assert all(p.startswith({repo!r} + os.sep) for p in here), f'vitcore imported from {{here}}'; "
               "print(json.dumps(environment('cuda')))")
SCORE_CALL = ("from bench.score_report import run; run({out!r}, n=48, batch_size=64, space_name='imagenet', "
              "device='cuda', full_family_n=2, workers=(2, 4, 8), command='python -m bench.gpu_suite (score part)')")


@dataclass
class Part:
    name: str
    budget_s: int
    modules: List[str]  # imported by --dry-run
    command: Callable[[str], List[str]]  # work folder -> argv (run from the repository root)
    report: str  # glob, in the work folder, of the markdown report copied to DIR/<name>.md
    data: str  # glob of the JSON merged into DIR/results.json
    env: Optional[Dict[str, str]] = None  # set for this part's process only


PY = sys.executable
PARTS = [
    Part("setup", 20, ["vitcore.bench.env"], lambda w: [PY, "-c", SETUP_CHECK.format(repo=os.path.realpath(REPO))],
         "", ""),
    Part("tests", 115, ["pytest"],
         lambda w: [PY, "-m", "pytest", "tests", "-q", "-rfEs", "-p", "no:cacheprovider",
                    "--junitxml", os.path.join(w, "tests.xml")], "", "tests.xml",
         {"VITCORE_AUTOTUNE": "0"}),  # correctness at the default configs; the reports check the tuned ones
    Part("attention", 60, ["bench.attention_report"],
         lambda w: [PY, "-m", "bench.attention_report", "--out", w, *ATTENTION_ARGS], "*-attention.md",
         "*-attention.json"),
    Part("launch_overhead", 60, ["bench.launch_overhead"],
         lambda w: [PY, "-m", "bench.launch_overhead", "--out", w], "*-launch_overhead.md", "*-launch_overhead.json"),
    Part("param_stats", 45, ["bench.param_stats_report"],
         lambda w: [PY, "-m", "bench.param_stats_report", "--out", w], "*-param_stats.md", "*-param_stats.json"),
    Part("msa_scaling", 75, ["vitcore.bench.scaling_report"],
         lambda w: [PY, "-m", "vitcore", "bench", "--out", os.path.join(w, "msa"), *MSA_ARGS], "msa/report.md",
         "msa/results.json"),
    Part("score", 75, ["bench.score_report"],
         lambda w: [PY, "-c", SCORE_CALL.format(out=os.path.join(w, "score"))], "score.md", "score.json"),
]
assert sum(p.budget_s for p in PARTS) <= TOTAL_BUDGET_S


def shim_path(work: str) -> str:
    """A folder holding a ``vitcore`` package that is the tree's ``vitcore/`` plus ``kernels/`` as
    ``vitcore.kernels`` (what setup.py's package_dir does on install)."""
    root = os.path.join(work, "shim")
    os.makedirs(os.path.join(root, "vitcore"), exist_ok=True)
    extra = os.path.join(root, "extra")
    os.makedirs(extra, exist_ok=True)
    if not os.path.exists(os.path.join(extra, "kernels")):
        os.symlink(os.path.join(REPO, "kernels"), os.path.join(extra, "kernels"))
    init = os.path.join(REPO, "vitcore", "__init__.py")
    with open(os.path.join(root, "vitcore", "__init__.py"), "w") as f:
        f.write(f"__path__ = [{os.path.join(REPO, 'vitcore')!r}, {extra!r}]\n__file__ = {init!r}\n"
                f"exec(compile(open(__file__).read(), __file__, 'exec'))\n")
    return root


_CURRENT = {}  # the running part's process, for the signal handler


def run_part(part: Part, work: str, env: dict, timeout_s: float) -> dict:
    """Run one part in its own process group; stop the group at ``timeout_s``. Returns its status."""
    start = time.time()
    log_path = os.path.join(work, f"{part.name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(part.command(work), cwd=REPO, env={**env, **(part.env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        _CURRENT["proc"] = proc
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, f"stopped: over its budget of {timeout_s:.0f} s"
        finally:
            _CURRENT.pop("proc", None)
    with open(log_path, errors="replace") as f:
        text = f.read()
    return {"status": status, "rc": rc, "seconds": round(time.time() - start, 1), "budget_s": part.budget_s,
            "log": text}


def collect(part: Part, work: str, out: str, result: dict, doc: dict, env: dict) -> None:
    """Copy the part's report to DIR/<name>.md and merge its JSON into the results document."""
    if part.name == "tests":
        _copy_text(result["log"], os.path.join(out, "tests.log"))
    if part.name == "msa_scaling" and os.path.exists(os.path.join(work, "msa", "results.json")) \
            and not os.path.exists(os.path.join(work, "msa", "report.md")):  # stopped: report what it timed
        try:
            subprocess.run([PY, "-m", "vitcore", "bench", "--report-only", "--no-plots", "--out",
                            os.path.join(work, "msa")], cwd=REPO, env=env, capture_output=True, timeout=20)
        except subprocess.TimeoutExpired:
            result["status"] += "; its report of the points timed did not finish in 20 s"
    reports = sorted(glob.glob(os.path.join(work, part.report))) if part.report else []
    if reports and os.path.getsize(reports[-1]) < MAX_FILE_BYTES:
        shutil.copyfile(reports[-1], os.path.join(out, f"{part.name}.md"))
        result["report"] = f"{part.name}.md"
    data = sorted(glob.glob(os.path.join(work, part.data))) if part.data else []
    if data:
        result["data"] = suite_targets.read_data(data[-1])
    if part.name == "setup" and result["rc"] == 0:
        doc["environment"] = json.loads(result["log"].strip().splitlines()[-1])


def _copy_text(text: str, path: str) -> None:
    data = text.encode()[-MAX_FILE_BYTES + 4096:]  # the end holds pytest's summary
    with open(path, "wb") as f:
        f.write(data)


def write_outputs(out: str, doc: dict) -> None:
    """summary.md and results.json (each part's log cut to its last 4,000 characters), both under 16 MiB."""
    slim = {**doc, "parts": {k: {**v, "log": v.get("log", "")[-4000:]} for k, v in doc["parts"].items()}}
    text = json.dumps(slim, indent=1, default=str)
    for name in sorted(slim["parts"], key=lambda k: -len(json.dumps(slim["parts"][k].get("data"), default=str))):
        if len(text.encode()) < MAX_FILE_BYTES:
            break
        slim["parts"][name]["data"] = "left out: results.json would pass 16 MiB"
        text = json.dumps(slim, indent=1, default=str)
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))
    try:
        text = suite_targets.summary(doc, PARTS)
    except Exception as e:  # noqa: BLE001  (data of an unexpected shape must not stop the remaining parts)
        text = "# GPU suite\n\nThe summary failed: " + f"{type(e).__name__}: {e}\n\n" + "".join(
            f"- {name}: {r['status']}\n" for name, r in doc["parts"].items())
    with open(os.path.join(out, "summary.md.tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(out, "summary.md.tmp"), os.path.join(out, "summary.md"))


def dry_run() -> int:
    print(f"bench.gpu_suite: {len(PARTS)} parts, {sum(p.budget_s for p in PARTS)} s of budgets "
          f"(total cap {TOTAL_BUDGET_S} s)")
    failed = 0
    for part in PARTS:
        try:
            for module in part.modules:
                importlib.import_module(module)
            state = "imports"
        except Exception as e:  # noqa: BLE001  (list every part, then fail)
            state, failed = f"IMPORT FAILED: {type(e).__name__}: {e}", failed + 1
        cmd = " ".join(part.command("DIR/work"))
        print(f"part {part.name}: budget {part.budget_s} s; {state}; runs: {cmd}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the suite's files (created; must not hold a summary.md yet)")
    parser.add_argument("--dry-run", action="store_true", help="import every part, list the plan, exit")
    parser.add_argument("--parts", help=f"comma-separated subset of: {', '.join(p.name for p in PARTS)}")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run()
    import torch

    if not torch.cuda.is_available():
        parser.exit(2, "bench.gpu_suite: needs a CUDA GPU and none is available (use --dry-run to check the plan)\n")
    if not args.out:
        parser.exit(2, "bench.gpu_suite: --out DIR is required\n")
    if os.path.exists(os.path.join(args.out, "summary.md")) or (os.path.exists(args.out)
                                                               and not os.path.isdir(args.out)):
        parser.exit(2, f"bench.gpu_suite: --out {args.out!r} is a file or holds a finished suite: choose another\n")
    wanted = set(args.parts.split(",")) if args.parts else {p.name for p in PARTS}
    if wanted - {p.name for p in PARTS}:
        parser.exit(2, f"bench.gpu_suite: --parts {sorted(wanted - {p.name for p in PARTS})}: unknown\n")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="vitcore-gpu-suite-")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    doc = {"command": "python -m bench.gpu_suite " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}, "env": {}}
    start = time.time()

    def stop(signum, frame):  # killed from outside: stop the running part, keep what is written
        proc = _CURRENT.get("proc")
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        doc["interrupted"] = f"signal {signum} after {time.time() - start:.0f} s"
        write_outputs(args.out, doc)
        sys.exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for part in PARTS:
            if part.name not in wanted:
                continue
            left = TOTAL_BUDGET_S - (time.time() - start)
            if left < 5:
                doc["parts"][part.name] = {"status": "not run: the suite's total budget is spent",
                                           "budget_s": part.budget_s}
                continue
            result = run_part(part, work, env, min(part.budget_s, left))
            if part.name == "setup" and result["rc"] != 0:  # PYTHONPATH=. does not map kernels/: use the shim
                env["PYTHONPATH"] = os.pathsep.join([shim_path(work), env["PYTHONPATH"]])
                doc["env"]["PYTHONPATH"] = env["PYTHONPATH"]
                result = run_part(part, work, env, min(part.budget_s, left))
                result["status"] += " (vitcore.kernels through the shim package)"
            collect(part, work, args.out, result, doc, env)
            doc["parts"][part.name] = result
            write_outputs(args.out, doc)
            print(f"[{time.time() - start:5.0f} s] {part.name}: {result['status']}", flush=True)
        doc["seconds"] = round(time.time() - start, 1)
        write_outputs(args.out, doc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(work, ignore_errors=True)
    print(open(os.path.join(args.out, "summary.md")).read())
    return 0 if all(v["status"].startswith("ok") for v in doc["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

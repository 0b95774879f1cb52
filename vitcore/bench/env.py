"""What every benchmark file records about where and how it ran, and the device tag of file names.

``environment(device)`` is the one environment record: device name, versions (python, torch, CUDA,
cuDNN, triton, numpy, vitcore, git commit), the exact command, the UTC date, the precision settings
(``torch.get_float32_matmul_precision()`` and the TF32 flags), the host's load and vitcore's
environment switches. ``device_tag(device)`` is the one rule for the device in file names
(``h200``, ``h100``, ``cpu``).
"""
import datetime
import os
import platform
import subprocess
import sys
from typing import Optional

import numpy as np
import torch

SWITCHES = ("VITCORE_TRITON", "VITCORE_AUTOTUNE", "TRITON_INTERPRET")  # vitcore's environment switches


def device_tag(device) -> str:
    """Short lower-case device name for file names: ``cpu``, or the first GPU-name word holding a
    digit (``NVIDIA H200`` -> ``h200``; ``NVIDIA GeForce RTX 4090`` -> ``4090``), else ``gpu``."""
    if torch.device(device).type != "cuda":
        return "cpu"
    words = torch.cuda.get_device_name(torch.device(device)).lower().replace("nvidia", "").split()
    return next((w for w in words if any(ch.isdigit() for ch in w)), words[0] if words else "gpu")


def today() -> str:
    """The UTC date, ``YYYY-MM-DD``: the date in every results file name."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def device_name(device) -> str:
    """The GPU's name, or the CPU's model name with the number of torch threads."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    threads = torch.get_num_threads()
    return f"{name} ({threads} thread{'' if threads == 1 else 's'})"


def git_commit() -> Optional[str]:
    """The checkout's short commit, ``+dirty`` with uncommitted changes; None outside a git checkout."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True)
        return (rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None
    except OSError:
        return None


def _version(name: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def command_line() -> str:
    """This process's command as it was typed: ``python -m bench.x ...`` or ``vitcore bench ...``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return " ".join(["python -m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    return " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith(".py") else " ".join(sys.argv)


def environment(device, command: Optional[str] = None) -> dict:
    """The environment record of a benchmark run on ``device`` ("cpu", "cuda" or a torch.device).

    ``command``: the command that repeats the run (default: this process's command line).
    """
    cuda = torch.device(device).type == "cuda"
    return {
        "device": torch.device(device).type,
        "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or command_line(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if cuda else None, "triton": _version("triton"),
                     "numpy": np.__version__, "vitcore": _version("vitcore"), "git": git_commit()},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,  # other work on the host
        "env": {k: os.environ.get(k) for k in SWITCHES},
    }


def header_lines(env: dict) -> list:
    """The environment record as markdown bullet lines, for the top of a report."""
    v = env["versions"]
    load = env.get("load_average")
    return [
        f"- date: {env['date']}; command: `{env['command']}`",
        f"- versions: python {v['python']}, torch {v['torch']}, CUDA {v['cuda']}, "
        + (f"cuDNN {v['cudnn']}, " if v.get("cudnn") else "")
        + f"triton {v['triton']}, numpy {v['numpy']}, vitcore {v['vitcore']} (git {v['git']})",
        f"- fp32 matmul precision: `{env['float32_matmul_precision']}`; "
        + "".join(f"TF32 {k} {val}; " for k, val in env.get("tf32", {}).items()) + "environment: "
        + ", ".join(f"{k}={val}" for k, val in env["env"].items())
        + (f"; host load average at the start (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load)}" if load else ""),
    ]

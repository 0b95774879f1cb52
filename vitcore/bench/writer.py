"""Writing benchmark results: a finished run is never overwritten, an interrupted one stays readable.

``result_stem(out_dir, what, device)`` names a run ``<device tag>-<date>-<what>`` (``h200-2026-11-29-attention``)
and takes ``-2``, ``-3``, ... (``vitcore.paths.free_name``) while a file of that stem exists. ``write_text``
and ``write_json`` replace a file atomically (write a temporary file, then rename), so a run killed while
writing leaves the previous complete version.
"""
import glob
import json
import os

from vitcore.bench.env import device_tag, today
from vitcore.paths import free_name, write_whole


def result_stem(out_dir: str, what: str, device) -> str:
    """A free path stem in ``out_dir`` (created) for a new run: no file starting with it exists yet."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir!r} is a file: give a folder")
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{device_tag(device)}-{today()}-{what}")
    return free_name(base, lambda stem: bool(glob.glob(glob.escape(stem) + ".*")) or os.path.exists(stem))


def write_text(path: str, text: str) -> None:
    """``text`` into ``path``, atomically (``vitcore.paths.write_whole``); the folder is made if missing."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_whole(path, text)


def publish(path: str, text: str) -> int:
    """A report script's end: ``text`` written to ``path`` (``write_text``) and printed; 0, its exit status."""
    write_text(path, text)
    print(text)
    return 0


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON into ``path``, atomically."""
    write_text(path, json.dumps(obj, indent=1) + "\n")

"""Files of a run: inputs checked before they are read, outputs that never overwrite a finished result."""
import json
import math
import os
import sys
import tempfile
from typing import Callable, Iterable, Iterator, Sequence, TextIO, Tuple, Union

try:
    import fcntl
except ImportError:  # not on Windows: results files go unlocked there, with a warning
    fcntl = None


def free_name(base: str, taken: Callable[[str], bool] = os.path.exists) -> str:
    """``base``, or ``base-2``, ``base-3``, ...: the first name that ``taken`` says is free."""
    path, k = base, 1
    while taken(path):
        k += 1
        path = f"{base}-{k}"
    return path


def check_input_file(path, what: str) -> str:
    """``path`` if it names a regular file; ``what`` ("data file", ...) names it in the error.

    Raises TypeError for a path that is not a str or os.PathLike, FileNotFoundError for a missing
    file, ValueError for a directory or something that is not a regular file (a FIFO, a device).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory, not a file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} is not a regular file")
    return path


class DuplicateKey(ValueError):
    """A JSON object that names one key twice (Python's json keeps the last value silently)."""


def _unique_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(f"key {key!r} appears twice in one JSON object; give each key once")
        obj[key] = value
    return obj


def load_json(text: Union[str, bytes]):
    """``json.loads`` that refuses an object naming a key twice (DuplicateKey, a ValueError)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def json_lines(path: str, lines: Iterable[Union[str, bytes]]) -> Iterator[Tuple[str, object]]:
    """(where, value) for each non-blank line of a JSON-lines file, ``where`` = "PATH, line N" (numbered
    as an editor numbers them) for the caller's own errors. ``lines`` are text, or bytes decoded as UTF-8
    (a file opened in binary mode); a byte-order mark before line 1 is dropped. Raises ValueError naming
    the line for a line that is not UTF-8 or not JSON (with the column of the JSON error), or whose
    object names a key twice."""
    for number, line in enumerate(lines, 1):
        where = f"{path}, line {number}"
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where}: not UTF-8 text") from None
        if number == 1:
            line = line.lstrip("\ufeff")  # a byte-order mark, as some editors write
        if not line.strip():
            continue
        try:
            value = load_json(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
        except DuplicateKey as e:
            raise ValueError(f"{where}: {e}") from None
        except RecursionError:
            raise ValueError(f"{where}: JSON nested too deeply to be read") from None
        yield where, value


def check_out_file(path, option: str = "--out", example: str = "scores.jsonl", inputs: Sequence = ()) -> str:
    """``path`` if a results file may be written there: not a folder (the error suggests ``example`` in
    it), not something other than a regular file (a device, a FIFO: never moved aside or replaced), not
    below a file, not one of the command's ``inputs`` (paths of files it reads), not empty. ValueError
    otherwise."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{option} must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{option} is empty; name a file such as {example!r}")
    if os.path.isdir(path) or path.endswith(tuple(filter(None, (os.sep, os.altsep)))):  # "newdir/": a folder
        raise ValueError(f"{option} {path!r} is a folder; name a file such as {os.path.join(path, example)!r}")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{option} {path!r} is not a regular file (a device or a pipe?); name a file")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path!r}: {parent!r} is a file, not a folder")
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise ValueError(f"{option} {path!r} is the input {os.fspath(source)!r}: writing there would replace "
                             "it; name another file")
    return path


def check_writable(path: str, option: str = "--out", folder: str = "") -> str:
    """``path`` once ``folder`` (default: the one ``path`` is in) exists (made if missing) and takes a new
    file: checked before the work, so a folder that cannot be written to fails at once, not after it.
    ValueError naming ``option`` and ``path``."""
    folder = folder or os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ValueError(f"{option} {path!r} cannot be written: {e.strerror or e}") from None
    return path


def _finite_or_null(x):
    if isinstance(x, float):  # numpy's float64 too
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_null(v) for v in x]
    return x


def strict_json(obj, **dumps_kwargs) -> str:
    """``json.dumps(obj, **dumps_kwargs)`` with every NaN or infinite float written as null, so that any
    JSON reader (jq, JavaScript, strict parsers) reads the file: Python's own writes the non-standard NaN."""
    return json.dumps(_finite_or_null(obj), allow_nan=False, **dumps_kwargs)


def write_whole(path: str, text: str) -> None:
    """``text`` into ``path`` as UTF-8, whole or not at all: written beside it, then renamed over it, so a
    failure leaves the file as it was."""
    data = text.encode("utf-8")  # before touching anything: a text that cannot be written fails here
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def lock(f: TextIO, path: str, option: str = "--out") -> None:
    """Take ``f``'s exclusive lock without waiting (``fcntl.flock``): one writer per results file.

    ValueError (after closing ``f``) when another process holds it. Where files cannot be locked
    (no ``fcntl``, a file system without locks) a warning says so and the run goes on unlocked.
    """
    if fcntl is None:
        print(f"{path}: results files cannot be locked on this system; run one writer at a time", file=sys.stderr)
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"{option} {path!r} is being written by another run; wait for it or use another {option}") \
            from None
    except OSError as e:  # e.g. ENOLCK on a network file system
        print(f"{path}: not locked ({e.strerror}); run one writer at a time", file=sys.stderr)

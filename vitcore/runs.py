"""Scoring runs: many architectures scored on one minibatch, one JSON line per architecture.

``score_archs`` appends each architecture's record to the results file as soon as it is scored, so an
interrupted run loses nothing; with ``resume`` it keeps the records already there for the same
settings and scores the rest (failed architectures are retried). One run writes a results file at a
time: the file is locked while a run writes it (``vitcore.paths.lock``). ``run_scoring`` is the
whole run of ``vitcore score``: it samples or reads the architectures, loads the minibatch and calls
``score_archs``. The readers (``read_archs``, ``read_results``) are what ``vitcore evaluate`` and
users' scripts load results with.
"""
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
from importlib import metadata
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple, Union

import torch
from tqdm import tqdm

from vitcore.attention_choice import check_attention
from vitcore.data import Batch, load_batch
from vitcore.families import TIMM, VITCORE, BrokenBuilder, Family, Record, build_record, check_record, get_family
from vitcore.model import INIT_SCHEME
from vitcore.ops.dispatch import check_dispatch
from vitcore.paths import DuplicateKey, check_input_file, check_out_file, free_name, json_lines, load_json, lock
from vitcore.proxies import GRAD_NORM_MODES, PARAM_SETS, UNITS, ProxyFailed, check_proxies, score
from vitcore.proxies.plan import NeedsViT, passes_end_marks
from vitcore.space import ARCH_TYPES, AnyArch, arch_from_dict, get_space, is_arch_id, sample, without_label
from vitcore.timm_attention import use_vitcore_attention

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_OUT = os.path.join("vitcore-results", "scores.jsonl")
DEFAULT_N = 50  # architectures sampled when neither n nor a file of architectures is given
SHARD_KEY = "vitcore_shard"  # the first line of a shard, {SHARD_KEY: {"rank": r, "world": w}}: vitcore wrote it
FSYNC_EVERY_S = 1.0  # one fsync took 11 ms (median) on this project's VM, as long as scoring a small model
BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"  # always arch/s


def _entry_arch(entry, where: str, family: Family) -> Union[AnyArch, Record]:
    if isinstance(entry, dict) and "arch" in entry:  # a results record
        entry = entry["arch"]
    elif isinstance(entry, dict) and "acc" in entry:  # a ground-truth line: its accuracies are not read here
        entry = {k: v for k, v in entry.items() if k != "acc"}
        entry = without_label(entry) if family.builtin else entry  # vitcore's ids hash the fields
    try:
        if family.builtin:
            return arch_from_dict(entry)
        record = Record.from_dict(entry)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: not an architecture ({e})") from None
    check_record(family, record, where)
    return record


def read_archs(path: str, family: Union[str, Family] = VITCORE) -> List[Union[AnyArch, Record]]:
    """Architectures from a JSON list, one JSON object, or JSON lines; each entry an arch, a result with
    an "arch" field, or a ground-truth line (an arch's fields and an "acc" object,
    ``vitcore.evaluate.read_truth_jsonl``). An arch is, for the ``family`` "vitcore" (the default), a
    ViT's or a PiT's fields (``vitcore.space.arch_from_dict``); for any other family
    (``vitcore.families``) a JSON object, a ``vitcore.families.Record``.

    Repeated architectures (a results file holds a retried id twice) are kept once, in first-seen
    order. Raises FileNotFoundError for a missing file; ValueError for a directory, a file with no
    architecture, a line that is not UTF-8 text, a bad entry (naming the file and the line, or the
    entry of a list), or two different records under one "id" label.
    """
    family = family if isinstance(family, Family) else get_family(family)
    path = check_input_file(path, "architectures file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text") from None
    try:
        document = load_json(text)
    except DuplicateKey as e:
        raise ValueError(f"{path}: {e}") from None
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):  # a JSON list with a syntax error
            raise ValueError(f"{path}, line {e.lineno}: not JSON ({e.msg})") from None
        document = None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to hold architectures") from None
    if isinstance(document, list):
        entries = [(f"{path}, entry {i}", e) for i, e in enumerate(document, 1)]
    elif document is not None:
        entries = [(path, document)]
    else:  # JSON lines, read as checked (the first bad line is named); a shard's mark (SHARD_KEY) is no architecture
        entries = ((where, entry) for where, entry in json_lines(path, text.split("\n"))
                   if not (isinstance(entry, dict) and SHARD_KEY in entry and where.endswith(", line 1")))
    archs, where_of = [], {}
    for where, entry in entries:
        arch = _entry_arch(entry, where, family)
        first = where_of.setdefault(arch.id, (where, arch))
        if first[1] != arch:
            raise ValueError(f"{where}: id {arch.id!r} names another architecture at {first[0]}")
        archs.append(arch)
    if not archs:
        raise ValueError(f"architectures file {path!r} holds no architectures")
    unique = list({a.id: a for a in archs}.values())
    if len(unique) < len(archs):
        print(f"{path}: {len(archs) - len(unique)} repeated architectures scored once", file=sys.stderr)
    return unique


def read_results(path: str, repair: bool = False) -> List[dict]:
    """The complete lines of a results file, as dicts checked by ``check_records`` (a string "id", a
    "scores" object of numbers or an "error" string; one run's settings and proxies throughout; a null
    score, as jq and pandas write NaN, reads as NaN).

    A last line without its newline is a record when it parses as JSON (a file saved by an editor or
    cut just before the newline), and a line cut off by an interruption otherwise: then it is skipped,
    and with ``repair`` (before appending to the file) also dropped from the file; with ``repair`` a
    whole last line gets its newline. The first line of a ``vitcore.distributed`` shard (``SHARD_KEY``)
    is not a record and is skipped. A missing file reads as no results. Raises TypeError for a ``path``
    that is not a path, and ValueError naming the file and line for a line that is not such a record,
    and for a directory or a non-regular file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"results file {path!r} is not a path")
    if not os.path.lexists(path):
        return []
    path = check_input_file(path, "results file")
    with open(path, "rb") as f:
        data = f.read()
    cut = data.rfind(b"\n") + 1
    whole = _parses(data[cut:], first=cut == 0)
    lines = list(json_lines(path, (data if whole else data[:cut]).split(b"\n")))
    if lines and isinstance(lines[0][1], dict) and SHARD_KEY in lines[0][1]:
        lines = lines[1:]  # a shard's mark, not a record
    records = check_records(lines)
    if repair and whole:  # the file's records are sound: only then is it changed
        with open(path, "ab") as f:
            f.write(b"\n")
    elif repair and cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
    return records


def _parses(line: bytes, first: bool) -> bool:
    """Whether ``line`` is JSON text in UTF-8, as ``json_lines`` reads it (a byte-order mark only on the
    ``first`` line), not blank: a cut-off record never is (it lacks its closing brace)."""
    try:
        text = line.decode("utf-8")
        text = text.lstrip("\ufeff") if first else text
        if not text.strip():
            return False
        json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def _check_fields(where: str, record) -> dict:
    """One record, its fields checked; a null score becomes NaN."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise ValueError(f"{where}: expected a JSON object with a string \"id\", got {json.dumps(record)[:80]!r}")
    if "scores" in record:
        scores = record["scores"]
        if not isinstance(scores, dict):
            raise ValueError(f"{where}: \"scores\" is {scores!r}, not an object")
        for proxy, value in scores.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}: score {proxy}={value!r} is not a number (null reads as NaN)")
        record = {**record, "scores": {p: math.nan if v is None else v for p, v in scores.items()}}
    elif not isinstance(record.get("error"), str):
        raise ValueError(f"{where}: expected \"scores\" (an object) or \"error\" (a string); the record has "
                         f"{', '.join(sorted(record))}")
    if "settings" in record and "arch" not in record:  # vitcore score's records have both: its table reads arch
        raise ValueError(f"{where}: a record with \"settings\" (written by vitcore score) lacks its \"arch\"")
    params = record.get("params", 0)
    if isinstance(params, bool) or not isinstance(params, int) or params < 0:
        raise ValueError(f"{where}: \"params\" is {params!r}, not a count of parameters")
    for name in ("settings", "proxy_errors"):
        if not isinstance(record.get(name, {}), dict):
            raise ValueError(f"{where}: \"{name}\" is {record[name]!r}, not an object")
    if "arch" in record:
        made_by = record.get("settings", {}).get("family")  # a family other than vitcore's: its record's fields
        try:
            arch = Record.from_dict(record["arch"]) if made_by else arch_from_dict(record["arch"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: \"arch\" is not an architecture ({e})") from None
        if arch.id != record["id"]:
            raise ValueError(f"{where}: id {record['id']!r} is not its architecture's (id {arch.id})")
    return record


def settings_diff(here: Optional[dict], there: Optional[dict], here_name: str = "here",
                  there_name: str = "there") -> str:
    """The settings (or ``vitcore.distributed.run_key`` fields) that differ, e.g. "seed 1 here, 0 there"."""
    if here is None or there is None:
        return f"no settings recorded {there_name if there is None else here_name}"
    keys = [k for k in dict.fromkeys([*there, *here]) if here.get(k) != there.get(k)]
    return "; ".join(f"{k} {here.get(k)!r} {here_name}, {there.get(k)!r} {there_name}" for k in keys)


def check_records(lines: Sequence[Tuple[str, object]]) -> List[dict]:
    """The records of ``lines``, (where, record) pairs ("PATH, line N" or "records[i]"), checked as one
    run's results: each a dict with a string ``id`` and a ``scores`` object of numbers (null reads as
    NaN) or an ``error`` string; ``params`` a count, ``settings`` and ``proxy_errors`` objects, ``arch``
    an architecture whose id is ``id``, when present (a record with ``settings``, as ``vitcore score``
    writes it, has ``arch``). One run's records throughout: the same
    ``settings`` on every record, and the same proxies in every ``scores``, else τ would compare
    scores made on other batches or seeds, or proxies a record lacks. ValueError naming where, the bad
    value and, for a mismatch, the first record it differs from; two scored records of one id must hold
    the same scores (a retried failure is scored once; two runs' files joined are refused).

    Every reader of results goes through it: ``read_results`` (``vitcore score --resume``, ``vitcore
    evaluate --scores``, the shards of ``vitcore.distributed``) and ``vitcore.evaluate.evaluate``.
    """
    records = []
    first = scored = None  # (where, record) of the first record, and of the first scored one
    scored_ids: Dict[str, Tuple[str, dict]] = {}  # id: (where, scores) of its first scored record
    for where, record in lines:
        record = _check_fields(where, record)
        if first is None:
            first = where, record
        elif record.get("settings") != first[1].get("settings"):
            diff = settings_diff(record.get("settings"), first[1].get("settings"))
            raise ValueError(f"{where}: made with other settings than {_line_of(first[0])} ({diff}); a results "
                             "file holds one run's records: evaluate or resume each run's file on its own")
        if "scores" in record:
            if scored is None:
                scored = where, record
            elif set(record["scores"]) != set(scored[1]["scores"]):
                have, want = set(record["scores"]), set(scored[1]["scores"])
                missing, extra = sorted(want - have), sorted(have - want)
                raise ValueError(f"{where}: scores other proxies than {_line_of(scored[0])}"
                                 + (f" (lacks {', '.join(missing)})" if missing else "")
                                 + (f" (has {', '.join(extra)} too)" if extra else "")
                                 + "; every record of one run scores the same proxies")
            earlier = scored_ids.setdefault(record["id"], (where, record["scores"]))
            if earlier[1] is not record["scores"] and not _same_scores(earlier[1], record["scores"]):
                raise ValueError(f"{where}: architecture {record['id']} was scored at {_line_of(earlier[0])} with "
                                 "other scores; a run scores an architecture once (two runs' files joined?): "
                                 "keep one run's records")
        records.append(record)
    return records


def _same_scores(a: dict, b: dict) -> bool:
    """Whether two records' scores are equal, NaN equal to NaN."""
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def _line_of(where: str) -> str:
    """The line of ``where`` ("line N" of "PATH, line N"); "records[i]" as it is."""
    return where.rsplit(", ", 1)[-1]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``; ValueError for CUDA without a GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={name!r}; valid: auto, cpu, cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available")
    return torch.device(name)


def _versions() -> Dict[str, str]:
    try:
        vitcore_version = metadata.version("vitcore")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        vitcore_version = "not installed"
    return {"vitcore": vitcore_version, "torch": torch.__version__}


def _batch_digest(batch: Batch) -> str:
    """The first 16 hex digits of the SHA-256 of the batch's images and labels: the data in the resume key."""
    h = hashlib.sha256()
    for t in (batch.inputs, batch.targets):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def open_results(out: str, resume: bool) -> TextIO:
    """``out`` opened for appending and locked (``vitcore.paths.lock``); without ``resume`` an existing
    ``out`` is first moved aside to ``out.bak`` (or ``.bak-2``, ...). ValueError when another run holds
    the lock or ``out`` cannot be written."""
    existed = os.path.exists(out)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        f = open(out, "a", encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--out {out!r} cannot be written: {e.strerror}") from None
    lock(f, out)  # before reading or moving anything: another run may be writing it
    if resume or not existed:
        return f
    try:
        backup = free_name(out + ".bak")
        os.replace(out, backup)  # a regular file (check_out_file), still locked by us
        print(f"moved the previous {out} to {backup}", file=sys.stderr)
        try:
            fresh = open(out, "x", encoding="utf-8")
        except FileExistsError:
            raise ValueError(f"--out {out!r} was created by another run meanwhile; use another --out") from None
        lock(fresh, out)
    finally:
        f.close()
    return fresh


def _open_results(out: str, settings: dict, resume: bool,
                  resume_from: Sequence[str] = ()) -> Tuple[TextIO, Dict[str, dict]]:
    """``out`` opened by ``open_results``, and with ``resume`` the finished records by id of ``out`` and
    of the files ``resume_from`` (read, not repaired: other writers' files); a score beats an error."""
    f = open_results(out, resume)
    done: Dict[str, dict] = {}
    try:
        for path in (out, *resume_from) if resume else ():
            for r in _resumable(path, settings, repair=path == out):
                if "scores" in r or "scores" not in done.get(r["id"], {}):
                    done[r["id"]] = r
    except BaseException:
        f.close()
        raise
    return f, done


def _resumable(path: str, settings: dict, repair: bool = False) -> List[dict]:
    """The records of the results file ``path`` (``read_results``), when they were made with ``settings``;
    ValueError naming the file and the settings that differ otherwise."""
    records = read_results(path, repair=repair)
    if records and records[0].get("settings") != settings:  # one run's settings throughout (check_records)
        diff = settings_diff(settings, records[0].get("settings"), "this run", "the file")
        raise ValueError(f"--resume: {path} holds results for settings other than this run's ({diff}); "
                         "use another --out")
    return records


def run_settings(batch: Batch, proxies: List[str], mode: str, params: str, seed: int, device: torch.device,
                  dtype: str, attention: str, space: Optional[str], family: Family) -> dict:
    """The resume key of a run: everything that changes a score (``score_archs`` lists it); a family other
    than vitcore's adds its name and builder."""
    family_key = {} if family.builtin else {"family": family.name, "builder": family.builder}
    return {**family_key, "space": space, "data": batch.name, "batch_size": len(batch.targets),
            "input_shape": list(batch.inputs.shape[1:]), "num_classes": batch.num_classes,
            "batch_sha256": _batch_digest(batch), "seed": seed, "proxies": proxies, "mode": mode,
            "params": params, "dtype": dtype, "device": device.type, "attention": attention, "init": INIT_SCHEME}


def arch_seed(arch: Union[AnyArch, Record], seed: int) -> int:
    """The initialisation seed of ``arch``'s model in a run with ``seed``: same arch and seed, same weights
    (a record's own "id" label is hashed first)."""
    key = arch.id if is_arch_id(arch.id) else hashlib.sha1(arch.id.encode()).hexdigest()[:12]
    return (int(key, 16) + seed) % 2**31


def build_model(family: Family, arch: Union[AnyArch, Record], batch: Batch, device: torch.device, seed: int,
                attention: str) -> torch.nn.Module:
    """``arch``'s model for ``batch``'s images and classes, on ``device``, from the run's ``seed``
    (``arch_seed``): a vitcore architecture builds itself with ``attention``; a record is built by its
    family (``vitcore.families.build_record``), its timm attention then routed through ``attention``."""
    if family.builtin:
        return arch.config(batch.img_size, batch.in_chans, batch.num_classes).build(
            attention=attention, device=device, seed=arch_seed(arch, seed))
    model = build_record(family, arch, device, arch_seed(arch, seed), (batch.in_chans, batch.img_size,
                                                                      batch.num_classes))
    if family.name == TIMM:
        use_vitcore_attention(model, attention)
    return model


def _head_width(family: Family, arch, batch: Batch) -> Optional[int]:
    """The logits' width where vitcore chose the head: the batch's classes for vitcore's models and timm's
    default, a timm record's own "num_classes" (0: no head); None for a user's builder, which is not told."""
    if family.builtin:
        return batch.num_classes
    if family.name == TIMM:
        width = arch.fields.get("num_classes", batch.num_classes)
        return width if isinstance(width, int) and not isinstance(width, bool) and width >= 0 else None
    return None


class _EveryProxyFailed(Exception):
    """Every proxy failed on one architecture: its record's "error" is the one reason they share (a
    model whose forward raises fails every pass alike), else each proxy's."""

    def __init__(self, errors: Dict[str, str]):
        reasons = {re.sub(r"^the \w+ pass failed: ", "", why) for why in errors.values()}
        super().__init__(reasons.pop() if len(reasons) == 1 else
                         "every proxy failed; " + "; ".join(f"{p}: {why}" for p, why in errors.items()))


def _score_one(family: Family, arch: Union[AnyArch, Record], batch: Batch, inputs: torch.Tensor,
               targets: torch.Tensor, proxies: List[str], mode: str, params: str, seed: int, device: torch.device,
               dtype: torch.dtype, attention: str) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    model = build_model(family, arch, batch, device, seed, attention)
    sync()
    built = time.perf_counter()
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    errors = {}
    with amp, passes_end_marks() as marks:
        try:
            scores = score(model, inputs, targets, proxies=proxies, mode=mode, params=params,
                           num_classes=_head_width(family, arch, batch))
        except ProxyFailed as e:  # the others' scores kept, NaN for the failed proxies, each error named
            scores, errors = e.scores, e.errors
    if len(errors) == len(proxies):  # nothing scored: the architecture failed
        raise _EveryProxyFailed(errors)
    end = time.perf_counter()
    timing = {"build_s": built - start, "passes_s": marks[-1] - built, "read_s": end - marks[-1]}
    record = {"params": sum(p.numel() for p in model.parameters()), "scores": scores,
              "time_s": round(end - built, 6), "timing": {k: round(v, 6) for k, v in timing.items()}}
    return {**record, "proxy_errors": errors} if errors else record


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"--seed {seed!r}: expected an int")
    if seed < 0:
        raise ValueError(f"--seed {seed}: expected a non-negative integer")


def score_archs(archs: Sequence[AnyArch], batch: Batch, out: str = DEFAULT_OUT, *,
                proxies: Sequence[str] = ("grad_norm", "snip"), mode: str = "global", params: str = "all",
                seed: int = 0, device: str = "auto", dtype: str = "fp32", attention: str = "auto",
                resume: bool = False, space: Optional[str] = None, resume_from: Sequence[str] = (),
                on_record: Optional[Callable[[dict], None]] = None, first_line: Optional[dict] = None,
                family: Union[str, Family] = VITCORE) -> List[dict]:
    """Score ``archs`` on ``batch`` with ``proxies``, appending one JSON line per architecture to ``out``.

    ``family`` (``vitcore.families``) builds the models: "vitcore" (the default) takes ``Arch`` and
    ``PiTArch`` objects; "timm" or "package.module:function" take ``vitcore.families.Record`` objects
    or plain dicts (JSON objects, made into records), as ``read_archs(path, family)`` returns them.
    With a user's family, ``attention`` must stay "auto" (its modules are the user's).

    Each model is built on ``device`` and initialised there from ``seed`` and its id, so a record is
    reproducible on its own on the same kind of device (CPU and CUDA generators draw different
    weights). ``mode`` and ``params`` are those of ``vitcore.score``; ``dtype`` ("fp32", "bf16",
    "fp16") is the autocast precision (weights stay fp32); ``device`` is "auto", "cpu" or "cuda";
    ``attention`` the ViT's attention ("vitcore", "sdpa", "eager", "auto": ``vitcore.attention_choice``);
    ``space`` names the space the architectures come from (recorded; None when they come from
    elsewhere). A record is ``{"id", "arch", "settings", "versions", "params", "scores", "time_s",
    "timing"}`` (``time_s`` the seconds of scoring, passes and host read; ``timing`` seconds
    ``{"build_s", "passes_s", "read_s"}``: the model built on the device, the passes until the device
    finished them, the one host read; ``versions`` of vitcore and torch) with, when some proxies
    raised on it (``vitcore.proxies.ProxyFailed``), their scores NaN, the others' kept, and
    ``"proxy_errors": {proxy: "ExceptionType: message"}``; or ``{"id", "arch",
    "settings", "versions", "error"}`` for an architecture that failed (out of memory, an invalid
    config, any exception its builder or model raised, every proxy failing); the run goes on after a
    failure. The progress bar shows architectures per second. Each
    line is flushed when written (a killed process loses nothing) and fsynced at most once a second
    and at the end (a machine crash loses at most about a second of lines).

    ``settings`` is the resume key: everything that changes a score (space, the data's name, batch
    size, image shape, classes and a digest of the batch's contents, seed, proxies, mode, params,
    dtype, device type, attention, and ``vitcore.model.INIT_SCHEME``: how a seed becomes weights; for
    a family other than vitcore also "family" and "builder", its name and its builder's qualified name).
    Without ``resume`` an existing ``out`` is moved aside to ``out.bak`` (or ``.bak-2``, ...). With ``resume`` the finished records in ``out`` are kept and not scored again;
    ValueError if they were made with other settings. ValueError too when another run is writing
    ``out``, or ``out`` cannot be written or is not a regular file. Returns the records in the order
    of ``archs``.

    With ``resume``, the records of the results files ``resume_from`` count as finished too (the
    shards of a run on several processes, ``vitcore.distributed``). ``on_record``, when given, is
    called with each record once its line is written and flushed. ``first_line``, when given, is
    written as the first line of a new or empty ``out`` (a shard's mark, ``SHARD_KEY``).
    """
    family = family if isinstance(family, Family) else get_family(family)
    archs = _check_archs(archs, family)
    if not isinstance(batch, Batch):
        raise TypeError(f"batch must be a vitcore.data.Batch (see load_batch), got {type(batch).__name__}")
    _check_seed(seed)
    if not isinstance(resume, bool):
        raise TypeError(f"resume={resume!r} must be a bool")
    proxies = _check_settings(proxies, batch, mode, params, dtype)
    _check_family_attention(family, attention)
    out = check_out_file(out)
    run_device = resolve_device(device)
    check_dispatch(run_device)
    settings = run_settings(batch, proxies, mode, params, seed, run_device, dtype, attention, space, family)
    versions = _versions()

    f, done = _open_results(out, settings, resume, resume_from)
    if first_line is not None and f.tell() == 0:
        f.write(json.dumps(first_line) + "\n")
        f.flush()
    inputs, targets = batch.inputs.to(run_device), batch.targets.to(run_device)  # once for the run
    synced = time.monotonic()
    with f:
        todo = [a for a in archs if "scores" not in done.get(a.id, {})]
        for arch in tqdm(todo, desc="scoring", unit="arch", disable=None, file=sys.stderr, bar_format=BAR):
            record = {"id": arch.id, "arch": arch.to_dict(), "settings": settings, "versions": versions}
            try:
                record.update(_score_one(family, arch, batch, inputs, targets, proxies, mode, params, seed, run_device,
                                         DTYPES[dtype], attention))
            except (BrokenBuilder, NeedsViT):  # the builder or the choice of proxies is wrong: stop
                raise
            except Exception as e:  # out of memory, an invalid config, the model's own error: record, go on
                record["error"] = (str(e) if isinstance(e, _EveryProxyFailed) else f"{type(e).__name__}: {e}").splitlines()[0]
                if run_device.type == "cuda":
                    torch.cuda.empty_cache()
            f.write(json.dumps(record) + "\n")
            f.flush()  # in the OS's hands: a killed process loses nothing written
            if time.monotonic() - synced >= FSYNC_EVERY_S:  # on disk: a machine crash loses at most ~1 s
                os.fsync(f.fileno())
                synced = time.monotonic()
            done[arch.id] = record
            if on_record is not None:
                on_record(record)
        os.fsync(f.fileno())
    print(f"results: {out}", file=sys.stderr)
    return [done[a.id] for a in archs]


def _check_archs(archs, family: Family) -> list:
    """``archs`` as a list of the family's architectures (dicts made into records); TypeError otherwise."""
    listed = not isinstance(archs, (str, bytes)) and isinstance(archs, Sequence)
    if family.builtin:
        if not listed or not all(isinstance(a, ARCH_TYPES) for a in archs):
            raise TypeError(f"archs must be a list of Arch or PiTArch (see read_archs, sample), got {archs!r:.80}")
        return list(archs)
    if not listed:
        raise TypeError(f"archs must be a list of records (see read_archs), got {archs!r:.80}")
    records = [Record.from_dict(a) if isinstance(a, dict) else a for a in archs]
    for i, r in enumerate(records):
        if not isinstance(r, Record):
            raise TypeError(f"archs[{i}] is a {type(r).__name__}; family {family.name} scores records "
                            "(dicts or vitcore.families.Record, see read_archs)")
        check_record(family, r, f"archs[{i}]")
    first = {}
    for i, r in enumerate(records):
        j = first.setdefault(r.id, i)
        if records[j] != r:
            raise ValueError(f"archs[{i}]: id {r.id!r} names another architecture at archs[{j}]")
    return records


def _check_family_attention(family: Family, attention: str) -> None:
    check_attention(attention)
    if not family.builtin and family.name != TIMM and attention != "auto":
        raise ValueError(f"--attention {attention}: family {family.name} builds its own modules; the attention "
                         "choice applies to vitcore's and timm's ViTs")


def _check_settings(proxies: Sequence[str], batch: Batch, mode: str, params: str, dtype: str) -> List[str]:
    """The proxies as a list, after checking them and the settings that every architecture would fail on
    (ValueError naming the bad value): asked once, before any scoring and before ``--workers`` start."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; valid: {', '.join(DTYPES)}")
    if mode not in GRAD_NORM_MODES:
        raise ValueError(f"mode={mode!r}; valid: {', '.join(GRAD_NORM_MODES)}")
    if params not in PARAM_SETS:
        raise ValueError(f"params={params!r}; valid: {', '.join(PARAM_SETS)}")
    proxies = check_proxies(proxies)
    short = [p for p in proxies if len(batch.targets) < UNITS[p].min_batch]
    if short:
        raise ValueError(f"{', '.join(short)} {'needs' if len(short) == 1 else 'need'} at least "
                         f"{max(UNITS[p].min_batch for p in short)} examples; "
                         f"the batch holds {len(batch.targets)} (--batch-size)")
    return proxies


def run_scoring(out: str = DEFAULT_OUT, *, space: str = "small", n: Optional[int] = None, archs: Optional[str] = None,
                data: str = "digits", batch_size: int = 64, seed: int = 0,
                proxies: Sequence[str] = ("grad_norm", "snip"), mode: str = "global", params: str = "all",
                device: str = "auto", dtype: str = "fp32", attention: str = "auto", resume: bool = False,
                workers: int = 1, family: str = VITCORE) -> List[dict]:
    """The run of ``vitcore score``: ``n`` architectures (default ``DEFAULT_N``) sampled from ``space``
    with ``seed``, or the first ``n`` of the file ``archs`` (default all of them, see ``read_archs``),
    scored on ``batch_size`` examples of ``data`` ("digits", "synthetic" or an .npz path, see
    ``vitcore.data.load_batch``) by ``score_archs``, which documents
    the other arguments and the records returned. Everything is checked before the first
    architecture is scored: ValueError for an ``n`` larger than the space or the file, a bad file, bad
    settings, ``workers`` beyond ``vitcore.distributed.max_workers()`` (more workers than architectures
    start one per architecture).

    Under torchrun with several ranks, or with ``workers`` > 1 (processes started on this machine),
    the ranks share the architectures and rank 0 merges their records into ``out``; a resumed run
    also takes the records of the shards an earlier such run left (``vitcore.distributed``).
    RankFailed (a RuntimeError) when a worker fails.

    ``family`` (``vitcore.families``): "vitcore" (the spaces' ViTs and PiTs), "timm" or
    "package.module:function"; any but vitcore needs ``archs``, a file of its records, and ``space``
    then only shapes the "synthetic" data."""
    from vitcore import distributed  # imports this module

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers {workers!r}: expected a positive integer")
    if workers > distributed.max_workers():
        raise ValueError(f"--workers {workers}: at most {distributed.max_workers()} on this machine (one process per "
                         "CPU core, two on any machine; more only wait for a core)")
    world = distributed.Rank.from_env().world  # a leftover or incomplete torchrun environment fails here, up front
    if workers > 1 and world > 1:
        raise ValueError(f"--workers {workers}: this process is already one of torchrun's ranks; drop --workers")
    _check_seed(seed)
    model_family = get_family(family)
    _check_family_attention(model_family, attention)
    out = check_out_file(out)
    search_space = get_space(space)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"--n {n!r}: expected an int")
    if archs is None and not model_family.builtin:
        raise ValueError(f"--family {family}: give its architectures with --archs FILE (a JSON object per "
                         "architecture); only vitcore's spaces can be sampled")
    if archs is None:
        n = DEFAULT_N if n is None else n
        if not 1 <= n <= search_space.size:
            raise ValueError(f"--n {n}: the {space!r} space holds {search_space.size:,} architectures; "
                             "ask for 1 to that many")
        chosen = sample(search_space, n, seed)
    else:
        chosen = read_archs(archs, model_family)
        if n is not None and not 1 <= n <= len(chosen):
            raise ValueError(f"--n {n}: {archs} holds {len(chosen)} architectures; ask for 1 to that many")
        chosen = chosen[:n]
    if workers > len(chosen):
        print(f"--workers {workers}: {len(chosen)} architectures, so {len(chosen)} processes", file=sys.stderr)
        workers = len(chosen)
    check_dispatch(resolve_device(device))
    batch = load_batch(data, batch_size, seed, search_space)
    proxies = _check_settings(proxies, batch, mode, params, dtype)  # a list: a generator is read once
    if workers > 1:  # the inputs above are checked once, here, before the workers start
        distributed.check_files(out, workers)
        if resume:  # what every rank reads: records of this run's settings
            settings = run_settings(batch, proxies, mode, params, seed, resolve_device(device), dtype, attention,
                                     space, model_family)
            for path in (out, *distributed.shard_paths(out)):
                _resumable(path, settings)
        return distributed.launch(workers, dict(out=out, space=space, n=n, archs=archs, data=data,
                                                batch_size=batch_size, seed=seed, proxies=proxies, mode=mode,
                                                params=params, device=device, dtype=dtype, attention=attention,
                                                resume=resume, family=family))
    settings = dict(proxies=proxies, mode=mode, params=params, seed=seed, device=device, dtype=dtype,
                    attention=attention, space=space, family=model_family)
    if distributed.is_sharded(out):
        return distributed.score_sharded(chosen, batch, out, resume=resume, **settings)
    return score_archs(chosen, batch, out, resume=resume, **settings)

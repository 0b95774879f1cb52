"""Evaluate proxies against trained accuracy: a table of τ, ρ and top-k overlap, and scatter plots.

Ground truth comes as a CSV (``id``, ``acc_mean`` or ``accuracy``: one column) or as JSON lines, one
architecture per line with its fields and an ``acc`` object of several columns (the dev set's format,
``../shared/data/autoformer-tiny-100.jsonl``); every column is evaluated on its own, and the mean τ
over the columns a user names sums them up.
"""
import csv
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from scipy import stats

from vitcore.ensemble import COMBINED
from vitcore.families import VITCORE, Family, Record, check_record, get_family
from vitcore.paths import check_input_file, json_lines
from vitcore.proxies import PROXIES
from vitcore.ranking import (CI_LEVEL, Ceiling, Difference, RankQuality, mean_tau_ceiling, mean_tau_difference,
                             rank_quality)
from vitcore.runs import check_records
from vitcore.space import AnyArch, arch_from_dict, without_label

# The built-in ground truth, package data (made by bench/ground_truth.py, provenance in the .md beside
# it): the 50 default `small` architectures trained on digits.
DEFAULT_TRUTH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "truth", "digits-small-50.csv")


def read_truth(path: str) -> Dict[str, float]:
    """{architecture id: accuracy} from a CSV with columns ``id`` and ``acc_mean`` (or ``accuracy``).

    Raises FileNotFoundError for a missing file; ValueError for a directory, a file that is not UTF-8
    text, or a bad row (naming the file and line).
    """
    path = check_input_file(path, "ground-truth file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            return _parse_truth(path, csv.DictReader(f))
    except UnicodeDecodeError:
        raise ValueError(f"ground-truth file {path!r} is not UTF-8 text") from None
    except csv.Error as e:
        raise ValueError(f"ground-truth file {path!r} is not a CSV file ({e})") from None


def _parse_truth(path: str, reader: csv.DictReader) -> Dict[str, float]:
    truth: Dict[str, float] = {}
    fields = reader.fieldnames or []
    column = next((c for c in ("acc_mean", "accuracy") if c in fields), None)
    if "id" not in fields or column is None:
        first = f"has {fields}" if fields else "is empty"
        raise ValueError(f"{path}: needs a header naming columns 'id' and 'acc_mean' (or 'accuracy') as its "
                         f"first line; its first line {first}")
    repeated = sorted({c for c in fields if fields.count(c) > 1} & {"id", column})
    if repeated:
        raise ValueError(f"{path}: the header names {', '.join(map(repr, repeated))} twice; which one holds the "
                         "values is not clear: rename or drop one")
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        arch_id, value = row["id"], row[column]
        try:
            if "_" in value:  # float() reads "91_0" as 910.0 (Python's digit grouping)
                raise ValueError
            acc = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {column}={value!r} is not a number") from None
        if not math.isfinite(acc):
            raise ValueError(f"{where}: {column}={value!r} is not finite")
        if arch_id in truth:
            raise ValueError(f"{where}: id {arch_id!r} appears twice")
        truth[arch_id] = acc
    return truth


@dataclass
class Truth:
    """Trained accuracies per column, {column: {architecture id: accuracy}}, the architectures a
    JSON-lines truth defines (empty for a CSV, whose ids refer to a scoring run's architectures), the
    columns the file names with no accuracy on any line (``empty``, not in ``columns``), and those
    that cannot rank architectures, {column: why} (``flat``: one accuracy, or one value on every
    line; not in ``columns``)."""

    columns: Dict[str, Dict[str, float]]
    archs: Dict[str, Union[AnyArch, Record]] = field(default_factory=dict)
    empty: List[str] = field(default_factory=list)
    flat: Dict[str, str] = field(default_factory=dict)


def _warn_mixed_scales(path: str, column: str, values: List[float]) -> None:
    """A warning when a column looks like fractions and percentages mixed: two or more values in [0, 1]
    and two or more above 1, the former within the latter's range once multiplied by 100 (a column in
    percent may hold a diverged network's 0.5 legitimately, so this warns and does not refuse)."""
    small = [v for v in values if 0 <= v <= 1]
    large = [v for v in values if v > 1]
    if len(small) >= 2 and len(large) >= 2 and min(large) <= 100 * max(small) and 100 * min(small) <= max(large):
        warnings.warn(f"ground-truth file {path!r}, column {column!r}: {len(small)} accuracies are in [0, 1] and "
                      f"{len(large)} above 1; if some are fractions and others percentages, put them on one "
                      "scale (the ranking mixes them)", UserWarning, stacklevel=3)


def _set_aside_flat(path: str, truth: Truth) -> Truth:
    """``truth`` with the columns that rank nothing moved from ``columns`` to ``flat`` (τ, ρ and the top-k
    overlap are undefined or meaningless there); ValueError naming the file when no column is left."""
    for column, accuracies in list(truth.columns.items()):
        _warn_mixed_scales(path, column, list(accuracies.values()))
        values = set(accuracies.values())
        if len(accuracies) < 2:
            truth.flat[column] = f"only {len(accuracies)} architecture has an accuracy"
        elif len(values) == 1:
            truth.flat[column] = f"all {len(accuracies)} accuracies are {values.pop():g}"
        else:
            continue
        del truth.columns[column]
    if not truth.columns:
        why = "; ".join(f"{c}: {w}" for c, w in truth.flat.items())
        raise ValueError(f"ground-truth file {path!r}: no column ranks two architectures apart ({why})")
    return truth


def _accuracy(where: str, column: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {column}={value!r:.40} is not a number")
    try:
        accuracy = float(value)
    except OverflowError:  # an int beyond float's range
        accuracy = math.inf
    if not math.isfinite(accuracy):
        raise ValueError(f"{where}: {column}={value!r:.40} is not finite")
    return accuracy


def read_truth_jsonl(path: str, family: Union[str, Family] = VITCORE) -> Truth:
    """Architectures with an ``acc`` object of columns, one JSON object per line (blank lines skipped).

    Each line holds an architecture's fields, a ViT's (``vitcore.space.Arch``; ``head_dim`` absent or
    null for heads embed_dim / num_heads wide) or a PiT's (``vitcore.space.PiTArch``), either at the top
    level or under ``"arch"``, and ``"acc": {column: accuracy, ...}``. An ``"id"`` of the form of
    vitcore's ids (12 hex digits) is checked against the fields; any other ``"id"`` ("pit_017", 3) is
    the file's own label and is not read. A column that is missing or null on a line (not trained for
    that architecture) leaves the architecture out of that column. Raises ValueError naming the file,
    line and bad value; the same architecture twice is an error naming both lines. A column null on
    every line is left out of ``columns`` and named in ``empty``; one that cannot rank (one accuracy,
    or the same on every line) is left out and named in ``flat``, and a file left with no column is a
    ValueError.

    With a ``family`` other than "vitcore" (``vitcore.families``) a line holds that family's record
    instead (``vitcore.families.Record``: any JSON fields, its "id" string its label).
    """
    family = family if isinstance(family, Family) else get_family(family)
    path = check_input_file(path, "ground-truth file")
    truth = Truth(columns={})
    lines: Dict[str, str] = {}  # architecture id -> where it was read
    with open(path, "rb") as f:  # bytes: json_lines names a line that is not UTF-8
        for where, row in json_lines(path, f):
            if not isinstance(row, dict) or not isinstance(row.get("acc"), dict) or not row["acc"]:
                raise ValueError(f"{where}: expected an architecture with an \"acc\" object of accuracies")
            fields = {k: v for k, v in row.items() if k != "acc"}
            fields = without_label(fields) if family.builtin else fields
            if "arch" in fields:
                extra = set(fields) - {"arch", "id"}
                if extra:
                    raise ValueError(f"{where}: an architecture under \"arch\" takes no other field beside "
                                     f"\"acc\" and \"id\"; found {', '.join(sorted(extra))}")
                nested = fields["arch"]
                fields = {**nested, "id": fields["id"]} if "id" in fields and isinstance(nested, dict) else nested
            try:
                arch = arch_from_dict(fields) if family.builtin else Record.from_dict(fields)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {e}") from None
            check_record(family, arch, where)
            if arch.id in truth.archs:
                first = lines[arch.id].rsplit(", ", 1)[-1]
                raise ValueError(f"{where}: architecture {arch.id} appears twice ({first} has the same fields); "
                                 "give each architecture one line, e.g. the mean of its accuracies")
            truth.archs[arch.id], lines[arch.id] = arch, where
            for column, value in row["acc"].items():
                accuracies = truth.columns.setdefault(column, {})
                if value is not None:
                    accuracies[arch.id] = _accuracy(where, column, value)
    if not truth.archs:
        raise ValueError(f"ground-truth file {path!r} holds no architectures")
    truth.empty = [c for c, accuracies in truth.columns.items() if not accuracies]
    truth.columns = {c: accuracies for c, accuracies in truth.columns.items() if accuracies}
    if not truth.columns:
        raise ValueError(f"ground-truth file {path!r}: every accuracy is null")
    return _set_aside_flat(path, truth)


def read_truth_any(path: str, family: Union[str, Family] = VITCORE) -> Truth:
    """A JSON-lines truth (of ``family``'s records: ``read_truth_jsonl``) with its columns, or a CSV truth as one column named "acc", told apart by the
    file's first character that is not blank (``{``: JSON lines, whatever the name: ``.json``, ``.JSONL``);
    ValueError for a JSON list (``[``: write one object per line), and for a truth with no column that
    ranks (see ``Truth.flat``)."""
    path = check_input_file(path, "ground-truth file")
    with open(path, "rb") as f:
        start = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]  # after a byte-order mark and blank lines
    if start == b"{":
        return read_truth_jsonl(path, family)
    if start == b"[":
        raise ValueError(f"ground-truth file {path!r} is a JSON list; write one architecture per line (JSON lines), "
                         "or a CSV with columns id, acc_mean")
    return _set_aside_flat(path, Truth(columns={"acc": read_truth(path)}))


def with_combined(records: List[dict]) -> List[dict]:
    """The records with each combined proxy of ``vitcore.ensemble.COMBINED`` (vit_vote, az_nas) added to
    every scored record's scores, when every one of its members was scored; the records unchanged
    otherwise. A combination ranks the records together, so it is computed over this population."""
    scored = [r for r in records if "scores" in r]
    for name, (combine, members) in COMBINED.items():
        if scored and all(m in r["scores"] for r in scored for m in members):
            values = combine(records, members)
            records = [dict(r, scores={**r["scores"], name: v}) if "scores" in r else r
                       for r, v in zip(records, values)]
            scored = [r for r in records if "scores" in r]
    return records


def constant_proxies(records: List[dict]) -> Dict[str, float]:
    """{proxy: its one score} for each proxy that gave every scored architecture (two or more) the same
    finite score: its τ and ρ are undefined (NaN) on every column, and its top-k overlap is the order of
    the file (SWAP saturated at 2^B on a small batch, for one)."""
    scored = [r["scores"] for r in records if "scores" in r]
    proxies = dict.fromkeys(p for s in scored for p in s)
    out = {}
    for p in proxies:
        values = {s.get(p, math.nan) for s in scored}
        if len(scored) >= 2 and len(values) == 1 and math.isfinite(next(iter(values))):
            out[p] = values.pop()
    return out


def evaluate_columns(records: List[dict], truth: Truth, top_fraction: float = 0.1) -> Dict[str, Dict[str, RankQuality]]:
    """``evaluate`` for every column of ``truth``: {column: {proxy: RankQuality}}; its ValueError names the column."""
    results = {}
    for column, acc in truth.columns.items():
        try:
            results[column] = evaluate(records, acc, top_fraction)
        except ValueError as e:
            raise ValueError(f"column {column!r}: {e}") from None
    return results


def _check_columns(columns: Sequence[str]) -> None:
    if isinstance(columns, (str, bytes)) or not isinstance(columns, Sequence):
        raise TypeError(f"columns={columns!r:.80} must be a list of column names")


def mean_tau(results: Dict[str, Dict[str, RankQuality]], columns: Sequence[str]) -> Dict[str, float]:
    """{proxy: mean Kendall τ over ``columns``}; a column that is not in ``results`` is a ValueError,
    columns that are not a list of names a TypeError."""
    _check_columns(columns)
    for c in columns:
        if c not in results:
            raise ValueError(f"column {c!r} is not in the truth; it has {', '.join(results)}")
    if not columns:
        raise ValueError("name at least one column to average")
    proxies = next(iter(results.values()))
    return {p: sum(results[c][p].kendall_tau for c in columns) / len(columns) for p in proxies}


BASELINE = "params"  # the proxy every other is compared with: the parameter count ranks ViTs well


def mean_tau_vs(records: List[dict], truth: Truth, columns: Sequence[str],
                baseline: str = BASELINE) -> Dict[str, Difference]:
    """{proxy: its mean τ over ``columns`` minus ``baseline``'s, with the paired bootstrap interval of
    ``ranking.mean_tau_difference``} for every proxy of ``records`` but the baseline; {} when the baseline
    was not scored. Each column's τ is over the architectures it holds, as ``evaluate_columns`` takes
    it, so ``value`` is the difference of ``mean_tau``'s two numbers. ValueError for a column not in the
    truth, TypeError for columns that are not a list of names."""
    _check_columns(columns)
    for c in columns:
        if c not in truth.columns:
            raise ValueError(f"column {c!r} is not in the truth; it has {', '.join(truth.columns)}")
    if not columns:
        raise ValueError("name at least one column to average")
    held = [r for r in records if any(r["id"] in truth.columns[c] for c in columns)]
    proxies = list(dict.fromkeys(p for r in held for p in r.get("scores", {})))
    if baseline not in proxies:
        return {}
    acc = [[truth.columns[c].get(r["id"], math.nan) for r in held] for c in columns]

    def scores(p: str) -> List[float]:
        return [r.get("scores", {}).get(p, math.nan) for r in held]

    base = scores(baseline)
    return {p: mean_tau_difference(scores(p), base, acc) for p in proxies if p != baseline}


def columns_ceiling(truth: Truth, columns: Sequence[str]) -> Ceiling:
    """``ranking.mean_tau_ceiling`` over ``columns`` of ``truth``, on the architectures that every one of
    them holds; ValueError when fewer than 2 do (or for the cases that function refuses)."""
    for c in columns:
        if c not in truth.columns:
            raise ValueError(f"column {c!r} is not in the truth; it has {', '.join(truth.columns)}")
    if not columns:
        raise ValueError("name at least one column")
    common = [i for i in truth.columns[columns[0]] if all(i in truth.columns[c] for c in columns[1:])]
    if len(common) < 2:
        raise ValueError(f"columns {', '.join(columns)} share {len(common)} architectures: need at least 2")
    return mean_tau_ceiling([[truth.columns[c][i] for i in common] for c in columns])


BUILTIN_MIN = 5  # architectures in common with the built-in truth before its τ is worth printing


def builtin_taus(records: List[dict], proxies: Sequence[str]) -> Dict[str, tuple]:
    """{proxy: (Kendall τ-b, p of τ = 0, n)} of ``records``' scores against the built-in truth
    (``DEFAULT_TRUTH``, scipy.stats.kendalltau, NaN ranked last), over the scored records it holds; {} when
    it holds fewer than ``BUILTIN_MIN`` of them (another space, other architectures: nothing to say)."""
    truth = read_truth(DEFAULT_TRUTH)
    held = [r for r in records if "scores" in r and r["id"] in truth]
    if len(held) < BUILTIN_MIN:
        return {}
    acc = [truth[r["id"]] for r in held]
    out = {}
    for p in proxies:
        s = np.array([r["scores"].get(p, math.nan) for r in held], dtype=np.float64)
        result = stats.kendalltau(stats.rankdata(np.where(np.isnan(s), -np.inf, s)), acc)
        out[p] = (float(result.statistic), float(result.pvalue), len(held))
    return out


def _signed(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.3f}"


def format_columns(results: Dict[str, Dict[str, RankQuality]], columns: Sequence[str] = (),
                   versus: Optional[Dict[str, Difference]] = None, baseline: str = BASELINE) -> str:
    """A τ summary (proxy x column, with the mean over ``columns`` and, given ``versus`` from
    ``mean_tau_vs``, each proxy's difference from ``baseline``'s mean with its interval), then each
    column's full table."""
    names = list(results)
    proxies = list(next(iter(results.values())))
    means = mean_tau(results, columns) if columns else {}
    head = "| proxy | " + " | ".join(f"τ {c}" for c in names) + (f" | mean τ ({', '.join(columns)}) |" if columns else " |")
    if versus:
        head += f" mean τ minus that of {baseline} [{CI_LEVEL:.0%} CI] |"
    lines = [head, "| --- |" + " ---: |" * (len(names) + bool(columns)) + (" :---: |" if versus else "")]
    for p in proxies:
        row = f"| {p} | " + " | ".join(f"{results[c][p].kendall_tau:.3f}" for c in names)
        row += f" | {means[p]:.3f} |" if columns else " |"
        if versus:
            d = versus.get(p)
            row += " |" if d is None else " nan |" if math.isnan(d.value) else \
                f" {d.value:+.3f} [{_signed(d.ci[0])}, {_signed(d.ci[1])}] |"
        lines.append(row)
    if versus and any(math.isfinite(d.value) and math.isnan(d.ci[0]) for d in versus.values()):
        lines.append(f"\n[nan, nan]: some bootstrap resamples leave a column one value throughout, whose τ is "
                     "undefined, so the interval of the difference is too: too few architectures")
    parts = ["\n".join(lines)]
    for c in names:
        parts.append(f"### {c}\n\n{format_table(results[c])}")
    return "\n\n".join(parts)


def evaluate(records: List[dict], truth: Dict[str, float], top_fraction: float = 0.1) -> Dict[str, RankQuality]:
    """Rank quality per proxy over the architectures that have both scores and a true accuracy.

    ``records`` are results as ``read_results`` gives them, ``truth`` maps ids to accuracies (as
    ``read_truth`` gives it). A failed architecture (a record with an error) counts as NaN for every
    proxy. Raises TypeError for arguments of the wrong type, ValueError for records that are not one
    run's (``vitcore.runs.check_records``: other settings, other proxies, a score that is not a number),
    fewer than 2 architectures in common or none of them scored.
    """
    if isinstance(records, (str, bytes, dict)) or not hasattr(records, "__iter__"):
        raise TypeError(f"records must be a list of result dicts, got {type(records).__name__}")
    records = list(records)
    bad = next((r for r in records if not isinstance(r, dict) or not isinstance(r.get("id"), str)), None)
    if bad is not None:
        raise TypeError(f"records must be dicts with a string 'id' (see read_results), got {bad!r:.80}")
    if not isinstance(truth, dict):
        raise TypeError(f"truth must be a dict of id -> accuracy (see read_truth), got {type(truth).__name__}")
    records = check_records([(f"records[{i}]", r) for i, r in enumerate(records)])  # one run's, null scores NaN
    proxies = list(dict.fromkeys(p for r in records for p in r.get("scores", {})))  # first-seen order
    common = [r for r in records if r["id"] in truth]
    if len(common) < 2:
        loose = {i.strip().lower() for i in truth}
        near = sum(r["id"].strip().lower() in loose for r in records)
        hint = (f" ({near} would match ignoring case and blanks: ids must be written alike)" if near > len(common)
                else f" (first scored id {records[0]['id']!r:.40}, first truth id {next(iter(truth), '')!r:.40})"
                if records and truth else "")
        raise ValueError(f"only {len(common)} scored architectures have a true accuracy; need at least 2{hint}")
    if not any("scores" in r for r in common):
        raise ValueError(f"none of the {len(common)} architectures with a true accuracy was scored; the first "
                         f"error: {common[0].get('error', 'not recorded')}")
    acc = [truth[r["id"]] for r in common]
    return {
        p: rank_quality([r.get("scores", {}).get(p, math.nan) for r in common], acc, top_fraction)
        for p in proxies
    }


def format_table(results: Dict[str, RankQuality]) -> str:
    k = next(iter(results.values())).top_k if results else 0
    lines = [f"| proxy | Kendall τ | τ {CI_LEVEL:.0%} CI | p (τ = 0) | Spearman ρ | top-{k} overlap | n | NaN |",
             "| --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, q in results.items():
        lo, hi = q.kendall_ci
        lines.append(f"| {name} | {q.kendall_tau:.3f} | [{lo:.2f}, {hi:.2f}] | {q.kendall_p:.2g} "
                     f"| {q.spearman_rho:.3f} | {q.top_overlap:.2f} | {q.n} | {q.n_nan} |")
    degenerate = [q.n for q in results.values() if math.isfinite(q.kendall_tau) and math.isnan(q.kendall_ci[0])]
    if degenerate:
        lines.append(f"\n[nan, nan]: some bootstrap resamples of these {max(degenerate)} architectures hold one value "
                     "throughout, whose τ is undefined, so the interval is too: too few architectures")
    return "\n".join(lines)


def scatter_plots(records: List[dict], truth: Dict[str, float], out_dir: str) -> List[str]:
    """One PNG per proxy, ``scatter-<proxy>.png`` in ``out_dir``: score against accuracy (log x-axis where
    every score is positive). An earlier evaluation's plot of a proxy these records do not hold is
    removed, so the folder shows this evaluation only. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    common = [r for r in records if r["id"] in truth and "scores" in r]
    paths = []
    for proxy in common[0]["scores"] if common else []:
        pairs = [(r["scores"][proxy], truth[r["id"]]) for r in common if math.isfinite(r["scores"][proxy])]
        fig, ax = plt.subplots(figsize=(4, 3.2), dpi=100)
        ax.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=12)
        if pairs and all(p[0] > 0 for p in pairs):
            ax.set_xscale("log")
        ax.set_xlabel(proxy)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{proxy} vs accuracy ({len(pairs)} archs)")
        fig.tight_layout()
        path = os.path.join(out_dir, f"scatter-{proxy}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    for proxy in (*PROXIES, *COMBINED):
        stale = os.path.join(out_dir, f"scatter-{proxy}.png")
        if stale not in paths and os.path.isfile(stale):
            os.remove(stale)
    return paths

"""The ``vitcore`` command line.

``vitcore score`` scores architectures of a search space on one minibatch and prints them ranked.
Results go to a JSON-lines file one architecture at a time, so an interrupted run loses nothing:
``--resume`` skips the architectures already scored with the same settings (and retries failed ones).
``vitcore evaluate`` ranks proxies by their rank correlation with trained accuracy; with ``--few-shot K`` it
measures ``vitcore calibrate`` instead. ``vitcore calibrate`` fits a ranking rule from a few trained
architectures (``vitcore.calibrate``); ``vitcore rank`` ranks scored architectures with it.
``vitcore bench`` times one MSA block over N' x D and writes a scaling report (``vitcore.bench.scaling_report``,
imported when the command runs: the library imports nothing from the benchmark harness).
"""
import argparse
import collections
import hashlib
import io
import json
import math
import os
import re
import sys
from typing import List, Optional, Tuple

from vitcore.attention_choice import ATTENTION_CHOICES
from vitcore.calibrate import MAX_DRAWS, MIN_K, Rule, apply_rule, few_shot, fit_rule
from vitcore.data import DATA_CHOICES
from vitcore.data import load_batch
from vitcore.distributed import Rank, RankFailed, Stopped
from vitcore.ensemble import COMBINED
from vitcore.evaluate import (BASELINE, DEFAULT_TRUTH, builtin_taus, columns_ceiling, constant_proxies,
                              evaluate_columns, format_columns, format_table, mean_tau, mean_tau_vs, read_truth_any,
                              scatter_plots, with_combined)
from vitcore.families import FAMILY_HELP, VITCORE, get_family
from vitcore.paths import (DuplicateKey, check_input_file, check_out_file, check_writable, load_json, strict_json,
                           write_whole)
from vitcore.proxies import GRAD_NORM_MODES, PARAM_SETS, PROXIES, check_proxies
from vitcore.ranking import CI_LEVEL
from vitcore.runs import DEFAULT_OUT, DTYPES, read_results, run_scoring, score_archs
from vitcore.space import SPACES, PiTArch, get_space

BUILTIN_N = 50  # architectures of the built-in ground truth: the default sample of vitcore score
DESCRIPTION = "Zero-cost proxies for Vision Transformer search: score architectures, evaluate proxies, time MSA."


def _arch_cells(a: dict) -> Tuple[str, str, str, str]:
    """(depth, width, patch, heads) of a record's architecture as the table prints them: a ViT's depth and
    width D, a PiT's blocks and widths D_s per stage; heads per block or per stage, joined by '-'; for
    another family's record the fields of those names it has (timm's depth, embed_dim, patch_size,
    num_heads), '-' for the others."""
    if "base_dim" in a:
        widths = (a["base_dim"] * h for h in a["num_heads"])
        return ("-".join(map(str, a["depth"])), "-".join(map(str, widths)), str(a["patch_size"]),
                "-".join(map(str, a["num_heads"])))

    def cell(key: str) -> str:
        value = a.get(key, "-")
        return "-".join(map(str, value)) if isinstance(value, list) else str(value)

    return cell("depth"), cell("embed_dim"), cell("patch_size"), cell("num_heads")


def _shown(text: str) -> str:
    """``text`` for one table cell: a newline, tab or other control character escaped (a user's id)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _print_table(results: List[dict], proxies: List[str], rank_by: str) -> None:
    ok = sorted((r for r in results if "scores" in r),
                key=lambda r: (math.isnan(r["scores"][rank_by]), -r["scores"][rank_by]))  # NaN last
    failed = [r for r in results if "scores" not in r]
    cells = [_arch_cells(r["arch"]) for r in ok]
    # the widest row sets each column: a 14-block ViT's heads are 27 characters
    w = [max([least, *(len(c[k]) for c in cells)]) for k, least in enumerate((5, 11, 5, 14))]
    head = (f"{'rank':>4}  {'id':12}  {'params':>9}  {'depth':>{w[0]}}  {'width':>{w[1]}}  {'patch':>{w[2]}}  "
            f"{'heads':<{w[3]}}")
    print(head + "".join(f"  {p:>12}" for p in proxies))
    for i, (r, (depth, width, patch, heads)) in enumerate(zip(ok, cells), 1):
        params = f"{r['params']:,}" if "params" in r else "-"  # a hand-made record resumed
        row = (f"{i:>4}  {_shown(r['id']):12}  {params:>9}  {depth:>{w[0]}}  {width:>{w[1]}}  {patch:>{w[2]}}  "
               f"{heads:<{w[3]}}")
        print(row + "".join(f"  {r['scores'][p]:>12.5g}" for p in proxies))
    for r in failed:
        print(f"   -  {_shown(r['id']):12}  failed: {r['error']}")
    for r in ok:
        for proxy, why in r.get("proxy_errors", {}).items():
            print(f"   -  {_shown(r['id']):12}  {proxy} failed (scored NaN, the other proxies kept): {why}")
    print(f"{len(ok)} scored, {len(failed)} failed; ranked by {rank_by}")


def cmd_score(args) -> int:
    proxies = check_proxies(args.proxies.split(","))
    rank_by = args.rank_by.strip() if args.rank_by else proxies[0]
    if rank_by not in proxies:
        raise ValueError(f"--rank-by {rank_by!r} is not among --proxies {','.join(proxies)}")
    results = run_scoring(args.out, space=args.space, n=args.n, archs=args.archs, data=args.data,
                          batch_size=args.batch_size, seed=args.seed, proxies=proxies, mode=args.mode,
                          params=args.params, device=args.device, dtype=args.dtype, attention=args.attention,
                          resume=args.resume, workers=args.workers, family=args.family)
    if Rank.from_env().rank != 0:  # under torchrun: rank 0 prints the merged table
        return 0
    _print_table(results, proxies, rank_by)
    _print_builtin_note(results, proxies, rank_by)
    return 0 if any("scores" in r for r in results) else 1  # every architecture failed


def _print_builtin_note(results: List[dict], proxies: List[str], rank_by: str) -> None:
    """How the ranked-by proxy and the best of ``proxies`` ranked the built-in truth's architectures among
    ``results`` (its trained accuracies, ``vitcore/truth/``), or that it holds too few of them."""
    taus = builtin_taus(results, proxies)
    if not taus:
        print("the built-in truth holds too few of these architectures to say how well the proxies rank them; "
              "vitcore calibrate picks a proxy from a few trained ones")
        return
    tau, p, n = taus[rank_by]
    defined = {q: t for q, (t, _, _) in taus.items() if not math.isnan(t)}
    best = max(defined, key=defined.get) if defined else None
    line = (f"on the built-in truth (vitcore/truth/{os.path.basename(DEFAULT_TRUTH)}, "
            f"{n} of these architectures) {rank_by} ranks with Kendall τ {tau:.3f} (p {p:.2g})")
    if best is not None and best != rank_by:
        line += f"; the best of these proxies there: {best} {defined[best]:.3f}"
    print(line + "; every proxy: vitcore evaluate")


def _batch_line(records: List[dict]) -> str:
    """The batch the records were scored with, from their settings (size, data, seed)."""
    kinds = {(r["settings"].get("batch_size"), r["settings"].get("data"), r["settings"].get("seed"))
             for r in records if "settings" in r}
    return "; ".join(f"batch of {b} from {d!r}, seed {s}" for b, d, s in sorted(kinds, key=str)) or "not recorded"


def _check_buildable(archs, batch, options: str) -> None:
    """ValueError, before any scoring, naming the first architecture that cannot be built for ``batch``'s
    images (a PiT's patch of 16 on 8x8 digits): every one would fail, and no τ could be reported."""
    for arch in archs:
        try:
            arch.config(batch.img_size, batch.in_chans, batch.num_classes)
        except (TypeError, ValueError) as e:
            shape = f"{batch.in_chans}x{batch.img_size}x{batch.img_size}"
            raise ValueError(f"architecture {arch.id} cannot be built for the batch's {shape} images ({options}): "
                             f"{e}") from None


# evaluate's options that choose how it scores: meaningless with --scores (None when not given)
SCORING_OPTIONS = ("proxies", "n", "space", "data", "batch_size", "seed", "device")
EVALUATE_FILES = ("evaluation.md", "scores.jsonl", "few-shot.json")  # what evaluate writes in --out itself
WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10))}


def _left_out(records: List[dict], truth, scores: str, truth_path: str) -> str:
    """What τ is not computed over: the scored architectures the truth has no accuracy for, and the truth's
    architectures that were not scored ("" when the two hold the same architectures)."""
    known = set().union(*truth.columns.values())
    ids = {r["id"] for r in records}
    parts = []
    if ids - known:
        parts.append(f"{len(ids - known)} of the {len(ids)} architectures of {scores} have no accuracy in {truth_path}")
    if known - ids:
        parts.append(f"{len(known - ids)} of the {len(known)} architectures of {truth_path} were not scored")
    if not parts:
        return ""
    return f"left out of τ: {'; '.join(parts)} (τ is over the {len(ids & known)} in both)"


def _records(path: str) -> List[dict]:
    check_input_file(path, "scores file")
    records = list({r["id"]: r for r in read_results(path)}.values())  # the last line per id wins
    if not records:
        raise ValueError(f"scores file {path!r} holds no results")
    return records


def cmd_calibrate(args) -> int:
    truth = read_truth_any(args.truth)
    if args.column not in truth.columns:
        why = truth.flat.get(args.column) or ("null on every line" if args.column in truth.empty else None)
        raise ValueError(f"--column {args.column!r} of {args.truth} " + (f"ranks nothing: {why}" if why else
                         f"does not exist; it has {', '.join(list(truth.columns) + list(truth.flat))}"))
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: expected an integer >= 0")
    check_writable(check_out_file(args.out, example="rule.json", inputs=[args.scores, args.truth]))
    records = _records(args.scores)
    try:
        rule = fit_rule(records, truth.columns[args.column], seed=args.seed,
                        inputs={"scores": args.scores, "truth": args.truth, "column": args.column})
    except ValueError as e:
        raise ValueError(f"--scores {args.scores}, --truth {args.truth}, --column {args.column}: {e}") from None
    try:
        write_whole(args.out, strict_json(rule.to_dict(), indent=1, ensure_ascii=False) + "\n")
    except UnicodeEncodeError:  # a path that is not UTF-8 (bytes kept by Python as surrogates): escaped
        write_whole(args.out, strict_json(rule.to_dict(), indent=1) + "\n")
    print(f"rule: rank by {rule.label}{' (fallback)' if rule.fallback else ''}: {rule.reason}")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


def _json_score(score: float):
    """A rule's score as ranked.jsonl writes it: a number; null for NaN (a failed architecture, a NaN
    score); the strings "inf" and "-inf" for infinities (JSON has none; Python's float() reads them)."""
    return score if not math.isinf(score) else ("inf" if score > 0 else "-inf")


def cmd_rank(args) -> int:
    path = check_input_file(args.rule, "rule file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            document = load_json(f.read())
    except DuplicateKey as e:
        raise ValueError(f"rule file {path!r}: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"rule file {path!r} is not JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"rule file {path!r} is nested too deeply to be a vitcore rule") from None
    rule = Rule.from_dict(document, path)
    if args.out is not None:
        check_writable(check_out_file(args.out, example="ranked.jsonl", inputs=[args.scores, path]))
    records = _records(args.scores)
    ranked = apply_rule(rule, records)
    by_id = {r["id"]: r["score"] for r in ranked}
    shown = [dict(r, scores={**r["scores"], rule.label: by_id[r["id"]]}) if "scores" in r else r for r in records]
    _print_table(shown, [rule.label], rule.label)
    print(f"rule {args.rule}: {rule.reason}")
    if args.out is not None:
        write_whole(args.out, "".join(strict_json({"rank": i, "id": r["id"], "rule": rule.label,
                                                   "score": _json_score(r["score"])}) + "\n"
                                      for i, r in enumerate(ranked, 1)))
        print(f"written: {args.out}", file=sys.stderr)
    return 0


def _few_shot(args, records: List[dict], truth, columns: List[str]) -> int:
    columns = columns or list(truth.columns)
    seed = 0 if args.seed is None else args.seed
    result = few_shot(records, {c: truth.columns[c] for c in columns}, args.few_shot, args.draws, seed)
    lines = [f"few-shot calibration: K = {args.few_shot} labelled, {args.draws} draws, seed {seed}; "
             "Kendall τ on the rest, mean over the draws", "",
             "| column | n | rule τ | params τ | best single proxy (τ) | rule − params [95% CI] | kept params |",
             "| --- | ---: | ---: | ---: | --- | :---: | ---: |"]
    for c, r in result["columns"].items():
        lo, hi = r["gain_ci"]
        lines.append(f"| {c} | {r['n']} | {r['rule_tau']:.3f} | {r['params_tau']:.3f} | {r['best_proxy']} "
                     f"({r['best_proxy_tau']:.3f}) | {r['gain']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                     f"{r['fallback_share']:.0%} |")
    lines += ["", f"mean gain over params ({', '.join(columns)}): {result['mean_gain']:+.3f}"]
    print("\n".join(lines))
    write_whole(os.path.join(args.out, "few-shot.json"), strict_json(result, indent=1) + "\n")
    print(f"written: {os.path.join(args.out, 'few-shot.json')}", file=sys.stderr)
    return 0


def _digest(column: str) -> str:
    return hashlib.sha256(column.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def column_folder(column: str) -> str:
    """The subfolder of evaluate's --out for a truth column's plots: the column's name where it is a plain
    file name (letters, digits, ".", "_", "-", at most 80 characters, not ending in ".", none of Windows'
    reserved device names, not one of evaluate's own files in any case), else that name made plain ("_"
    for every other character, cut to 60) and a digest of the column, so no column name can reach
    outside --out ("..", "/abs", "a/b") or hold a name a file system refuses."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", column)
    own = {name.casefold() for name in EVALUATE_FILES}
    if plain == column and len(column) <= 80 and not column.endswith(".") and column.casefold() not in own \
            and column.split(".")[0].upper() not in WINDOWS_DEVICES:
        return column
    return f"{plain.strip('.')[:60] or 'column'}-{_digest(column)}"


def column_folders(columns) -> dict:
    """{column: subfolder} of ``column_folder``, with a digest added where two folders differ only in case
    (one folder on macOS's and Windows' file systems)."""
    folders = {c: column_folder(c) for c in columns}
    counts = collections.Counter(f.casefold() for f in folders.values())
    return {c: f if counts[f.casefold()] == 1 else f"{f[:60]}-{_digest(c)}" for c, f in folders.items()}


def cmd_evaluate(args) -> int:
    # everything checked before scoring: a bad argument should not cost a scoring run
    family = get_family(args.family)
    truth = read_truth_any(args.truth, family)
    if args.few_shot is not None and args.few_shot < MIN_K:
        raise ValueError(f"--few-shot {args.few_shot}: calibration needs K >= {MIN_K} labelled architectures")
    if not 1 <= args.draws <= MAX_DRAWS:
        raise ValueError(f"--draws {args.draws}: expected an integer from 1 to {MAX_DRAWS}")
    if args.few_shot is not None and args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed {args.seed}: the draws' seed must be an integer >= 0")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else []  # "a, b" too
    columns = list(dict.fromkeys(columns))  # "a,a": a once in the mean
    if args.columns is not None and not columns:
        raise ValueError(f"--columns {args.columns!r} names no column; leave it out for every column")
    for c in columns:
        if c in truth.empty:
            raise ValueError(f"--columns: {c!r} is null on every line of {args.truth}")
        if c in truth.flat:
            raise ValueError(f"--columns: {c!r} of {args.truth} ranks nothing: {truth.flat[c]}")
        if c not in truth.columns:
            raise ValueError(f"--columns: {c!r} is not a column of {args.truth}; it has {', '.join(truth.columns)}")
    if truth.empty:
        print(f"{args.truth}: left out, null on every line: {', '.join(truth.empty)}", file=sys.stderr)
    for c, why in truth.flat.items():
        print(f"{args.truth}: left out, {c} ranks nothing: {why}", file=sys.stderr)
    if not 0 < args.top_fraction <= 1:
        raise ValueError(f"--top-fraction {args.top_fraction}: expected a share in (0, 1]")
    seed, device = (0 if args.seed is None else args.seed), args.device or "auto"
    if not args.out:
        raise ValueError("--out is empty: name the folder evaluate writes its tables and plots to")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a file; evaluate writes a folder")
    proxies = check_proxies(args.proxies.split(",")) if args.proxies else list(PROXIES)
    scores_file = os.path.join(args.out, "scores.jsonl")
    n, archs = args.n, list(truth.archs.values())
    if args.scores:
        check_input_file(args.scores, "scores file")
        ignored = [f"--{k.replace('_', '-')}" for k in SCORING_OPTIONS if getattr(args, k) is not None
                   and not (k == "seed" and args.few_shot is not None)]  # --few-shot draws with --seed
        if ignored:
            raise ValueError(f"{', '.join(ignored)}: {'chooses' if len(ignored) == 1 else 'choose'} how evaluate "
                             f"scores, but --scores {args.scores} holds scores already made; drop "
                             f"{'it' if len(ignored) == 1 else 'them'} or --scores")
    elif archs and n is not None:
        if not 2 <= n <= len(archs):
            raise ValueError(f"--n {n}: {args.truth} holds {len(archs)} architectures; score 2 to {len(archs)}")
        archs = archs[:n]
    elif not archs and not family.builtin:
        raise ValueError(f"--family {family.name}: give --scores, or a JSON-lines --truth of its records to score")
    elif not archs:
        n = BUILTIN_N if n is None else n
        if not 2 <= n <= BUILTIN_N:
            raise ValueError(f"--n {n}: the built-in truth has {BUILTIN_N} architectures; score 2 to {BUILTIN_N}")
    check_writable(args.out, folder=args.out)  # a folder we cannot write to fails here, not after scoring
    subfolders = column_folders(truth.columns)
    folders = [args.out] if len(truth.columns) == 1 else [os.path.join(args.out, f) for f in subfolders.values()]
    for name in EVALUATE_FILES:
        check_out_file(os.path.join(args.out, name))  # never write into a pipe or a device
    for folder in folders:
        for p in list(PROXIES) + list(COMBINED):
            check_out_file(os.path.join(folder, f"scatter-{p}.png"))
    if args.scores:
        records = list({r["id"]: r for r in read_results(args.scores)}.values())  # the last line per id wins
    elif archs and not family.builtin:  # another family's records (the first --n): vitcore score's defaults
        space_name, data = args.space or "small", args.data or "digits"
        batch = load_batch(data, args.batch_size or 8, seed, get_space(space_name))
        records = score_archs(archs, batch, scores_file, proxies=proxies, seed=seed, device=device, resume=True,
                              family=family)
    elif archs:  # a JSON-lines truth names its architectures: score them (the first --n)
        pits = all(isinstance(a, PiTArch) for a in archs)
        space_name, data = args.space or ("pit" if pits else "autoformer"), args.data or "synthetic"
        space = get_space(space_name)
        batch = load_batch(data, args.batch_size or 8, seed, space)
        _check_buildable(archs, batch, f"--space {space_name}, --data {data}")
        if (batch.in_chans, batch.img_size, batch.num_classes) != (space.in_chans, space.img_size, space.num_classes):
            print(f"note: the batch ({batch.in_chans}x{batch.img_size}x{batch.img_size} images, {batch.num_classes} "
                  f"classes) is not the {space_name} space's ({space.in_chans}x{space.img_size}x{space.img_size}, "
                  f"{space.num_classes} classes): the architectures are built for the batch", file=sys.stderr)
        records = score_archs(archs, batch, scores_file, proxies=proxies, seed=seed, device=device, resume=True)
    else:  # the first n of the built-in 50, with the other defaults of vitcore score unless given
        records = run_scoring(scores_file, n=n, space=args.space or "small", data=args.data or "digits",
                              batch_size=args.batch_size or 64, seed=seed, proxies=proxies, device=device,
                              resume=True)
    for r in records:  # a proxy that raised on a network: NaN there (ranked last), the other proxies kept
        for proxy, why in r.get("proxy_errors", {}).items():
            print(f"architecture {r['id']}: {proxy} failed, scored NaN: {why}", file=sys.stderr)
    records = with_combined(records)
    if args.few_shot is not None:
        return _few_shot(args, records, truth, columns)
    results = evaluate_columns(records, truth, args.top_fraction)
    left_out = _left_out(records, truth, args.scores or scores_file, args.truth)
    if left_out:
        print(left_out, file=sys.stderr)
    # one column (a CSV truth's "acc", or a JSON-lines truth's only column): its full table
    versus = mean_tau_vs(records, truth, columns) if columns else {}
    text = format_columns(results, columns, versus) if len(results) > 1 or columns else format_table(*results.values())
    if left_out:
        text += f"\n\n{left_out}"
    for proxy, value in constant_proxies(records).items():
        text += (f"\n\n{proxy} gave every architecture the same score ({value:.6g}): its τ and ρ are undefined "
                 "(nan), and its top-k overlap only reflects the file's order")
    shown, summary = text, []  # printed: the tables, then the summary lines (evaluation.md: the tables and prose)
    if columns:
        means = {p: t for p, t in mean_tau(results, columns).items() if not math.isnan(t)}  # NaN: a constant proxy
        top = max(means.values(), default=math.nan)
        best = ", ".join(p for p, t in means.items() if t == top) or "no proxy has a defined τ"
        line = f"highest mean τ over {', '.join(columns)}: {best} {top:.3f}"
        if BASELINE in means and best and BASELINE not in best.split(", "):
            first = best.split(", ")[0]
            d = versus[first]
            lo, hi = ("nan" if math.isnan(x) else f"{x:+.3f}" for x in d.ci)  # nan: too few architectures
            named = f"{first} minus {BASELINE}" if ", " in best else "difference"
            line += f" ({BASELINE} {means[BASELINE]:.3f}; {named} {d.value:+.3f}, {CI_LEVEL:.0%} CI [{lo}, {hi}])"
        summary.append(line)
        if len(columns) > 1:
            try:
                ceiling = columns_ceiling(truth, columns)
            except ValueError as e:  # too few shared architectures, a column of one value: the tables stand
                line = f"mean τ any ranking reaches over {', '.join(columns)}: not defined ({e})"
                text += f"\n\n{line}"
            else:
                line = (f"mean τ any ranking reaches over {', '.join(columns)}: {ceiling.reached:.3f} "
                        f"(bound {ceiling.bound:.3f})")
                text += (f"\n\nThe columns disagree: the best ranking found (consensus of the true accuracies) "
                         f"reaches mean τ {ceiling.reached:.3f}, and no ranking without ties exceeds "
                         f"{ceiling.bound:.3f} (vitcore.ranking.mean_tau_ceiling).")
            summary.append(line)
    # UTF-8 whatever the locale, a path that is not (a non-UTF-8 name) escaped; written before printing, so
    # nothing printed can stop it (main() has stdout escape what its encoding lacks)
    with open(os.path.join(args.out, "evaluation.md"), "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(f"scores: {args.scores or scores_file}; truth: {args.truth}; {_batch_line(records)}\n\n{text}\n")
    print("\n".join([shown, *summary]))
    plots = []
    for column, acc in truth.columns.items():
        folder = args.out if len(truth.columns) == 1 else os.path.join(args.out, subfolders[column])
        plots += scatter_plots(records, acc, folder)
    print(f"tables and {len(plots)} scatter plots: {args.out}", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from vitcore.bench.scaling_report import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitcore", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score architectures with zero-cost proxies and rank them")
    s.add_argument("--archs", help="JSON or JSON-lines file of architectures (default: sample the space)")
    s.add_argument("--n", "--num-archs", dest="n", type=int,
                   help="architectures to sample (default 50), or the first n of --archs (default all); "
                        "--num-archs under torchrun, where --n is ambiguous")
    s.add_argument("--seed", type=int, default=0, help="sampling, minibatch and initialisation seed")
    s.add_argument("--space", default="small", help=f"search space: {', '.join(SPACES)} (default small; with another "
                                                     "--family it only shapes synthetic data)")
    s.add_argument("--family", default=VITCORE, help=f"model family building --archs' records: {FAMILY_HELP} "
                                                     "(default vitcore)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--data", default="digits", help=f"{' | '.join(DATA_CHOICES)} (default digits)")
    s.add_argument("--proxies", default="grad_norm,snip", help=f"comma-separated: {', '.join(PROXIES)}")
    s.add_argument("--mode", default="global", choices=GRAD_NORM_MODES, help="grad_norm over the whole vector or per layer")
    s.add_argument("--params", default="all", choices=PARAM_SETS, help="count every trainable tensor or layer weights")
    s.add_argument("--rank-by", help="proxy to rank by (default: the first of --proxies)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="autocast precision (weights stay fp32)")
    s.add_argument("--attention", default="auto", choices=ATTENTION_CHOICES,
                   help="vitcore's kernel, PyTorch's SDPA, eager softmax(qk^T)v, or auto: vitcore where the GPU "
                        "report measured it faster than SDPA, SDPA elsewhere (default auto)")
    s.add_argument("--out", default=DEFAULT_OUT, help=f"results, one JSON line per architecture (default {DEFAULT_OUT})")
    s.add_argument("--resume", action="store_true", help="keep --out's finished results and score the rest")
    s.add_argument("--workers", type=int, default=1,
                   help="processes on this machine sharing the architectures (default 1; see also torchrun)")
    s.set_defaults(func=cmd_score)
    e = sub.add_parser("evaluate", help="rank correlation of proxies with trained accuracy, with scatter plots")
    e.add_argument("--scores", help="results of vitcore score (default: score the built-in 50 with every proxy)")
    e.add_argument("--truth", default=DEFAULT_TRUTH,
                   help="CSV with columns id, acc_mean, or JSON lines of architectures with an \"acc\" object of "
                        "columns (default: the built-in digits truth)")
    e.add_argument("--family", default=VITCORE, help=f"without --scores: the family of a JSON-lines truth's "
                                                     f"records: {FAMILY_HELP} (default vitcore)")
    e.add_argument("--columns", help="comma-separated truth columns to average τ over (JSON-lines truth)")
    e.add_argument("--proxies", help="without --scores: comma-separated proxies to score with (default: every proxy)")
    e.add_argument("--n", type=int,
                   help=f"without --scores: score the first n architectures of a JSON-lines truth (default all), or "
                        f"of the built-in {BUILTIN_N} for a CSV truth (default {BUILTIN_N})")
    e.add_argument("--space", help="search space giving image size, channels and classes of synthetic data "
                                   "(the networks are built for the batch's images and classes; default for a "
                                   "JSON-lines truth of vitcore's: pit when it holds PiTs only, else autoformer; "
                                   "else small)")
    e.add_argument("--data", help=f"{' | '.join(DATA_CHOICES)}: the batch to score with; data-dependent proxies "
                                  "read it (default: synthetic for a JSON-lines truth of vitcore's, else digits)")
    e.add_argument("--batch-size", type=int, help="examples in the batch (default: 8 for a JSON-lines truth, else 64)")
    e.add_argument("--seed", type=int, help="batch and initialisation seed, and with --few-shot the draws' (default 0)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to score (default auto)")
    e.add_argument("--top-fraction", type=float, default=0.1, help="top-k overlap with k = this share of the archs")
    e.add_argument("--out", default=os.path.join("vitcore-results", "evaluate"), help="folder for the table and plots")
    e.add_argument("--few-shot", type=int, metavar="K",
                   help=f"instead of the tables: draw K (>= {MIN_K}) labelled architectures, calibrate on them "
                        "(vitcore calibrate), and write the τ on the rest to --out/few-shot.json")
    e.add_argument("--draws", type=int, default=200, help="with --few-shot: seeded draws (default 200)")
    e.set_defaults(func=cmd_evaluate)
    c = sub.add_parser("calibrate", help="fit a ranking rule from the accuracies of a few trained architectures")
    c.add_argument("--scores", required=True, help="results of vitcore score: every candidate architecture (S)")
    c.add_argument("--truth", required=True,
                   help=f"trained accuracies of K >= {MIN_K} of them (T), as for vitcore evaluate --truth")
    c.add_argument("--column", default="acc", help="the truth's column to rank by (default acc, a CSV's)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    c.add_argument("--out", default="rule.json", help="rule file to write (default rule.json)")
    c.set_defaults(func=cmd_calibrate)
    r = sub.add_parser("rank", help="rank scored architectures with a rule of vitcore calibrate")
    r.add_argument("--scores", required=True, help="results of vitcore score")
    r.add_argument("--rule", required=True, help="rule file of vitcore calibrate")
    r.add_argument("--out", help="also write the ranking as JSON lines {rank, id, rule, score}")
    r.set_defaults(func=cmd_rank)
    b = sub.add_parser("bench", help="time one MSA block over N' x D, fit the cost model, write a report")
    from vitcore.bench.options import add_arguments  # plain Python: the grid and options, no benchmark code

    add_arguments(b)
    b.set_defaults(func=cmd_bench)
    return parser


class _NamedStdout:
    """stdout whose write errors name it: a redirect to a full device fails with "No space left on device:
    '<stdout>'", not an error that names no file. Everything else is the stream's own; a reader gone
    (BrokenPipeError) stays that error, which ``main`` ends on as SIGPIPE would."""

    NAME = "<stdout>"

    def __init__(self, stream):
        self._stream = stream

    def _named(self, method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OSError(e.errno, e.strerror, self.NAME) from None

    def write(self, text):
        return self._named(self._stream.write, text)

    def flush(self):
        return self._named(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: Optional[List[str]] = None) -> int:
    if sys.stdout is None or sys.stderr is None:  # started with a closed stream (2>&-): write nowhere, not fail
        sys.stdout, sys.stderr = sys.stdout or open(os.devnull, "w"), sys.stderr or open(os.devnull, "w")
    for stream in (sys.stdout, sys.stderr):  # a console or redirect in cp1252 or ASCII: τ printed as \u03c4,
        if isinstance(stream, io.TextIOWrapper):  # not an error after the work is done
            stream.reconfigure(errors="backslashreplace")
    stdout, sys.stdout = sys.stdout, _NamedStdout(sys.stdout)
    try:
        return _run(build_parser(), argv)
    finally:
        sys.stdout = stdout


def _run(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> int:
    """Parse ``argv`` and run its command; errors become the exit statuses ``main`` documents."""
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a buffered stdout fails here, named, not in Python's flush at exit
        return status
    except RankFailed as e:  # a worker died or raised: what it finished is kept for --resume
        parser.exit(1, f"vitcore {args.command}: {e}\n")
    except Stopped as e:  # a --workers run stopped by a signal: the status a process the signal ends has
        parser.exit(128 + e.signum, f"vitcore {args.command}: {e}\n")
    except BrokenPipeError:  # the reader of stdout left (| head): results are kept; end as SIGPIPE would
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE (13): the status of a process that SIGPIPE ends
    except (ValueError, TypeError, OSError) as e:  # OSError: a full disk (stdout's named), a file gone meanwhile
        if isinstance(e, OSError) and e.filename == _NamedStdout.NAME:
            _stdout_to_devnull()
        parser.exit(2, f"vitcore {args.command}: error: {e}\n")


def _stdout_to_devnull() -> None:
    """stdout, which failed, now writes nowhere: what it still holds raises no second error when Python
    flushes it at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

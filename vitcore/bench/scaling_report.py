"""``vitcore bench``: run the MSA scaling sweep (``vitcore.bench.scaling``), then write ``report.md`` and PNG plots."""
import json
import math
import os
import sys
from typing import Dict, List, Tuple

import numpy as np
import torch

from vitcore.bench.env import device_tag, header_lines, today
from vitcore.bench.options import MODES, PROVIDERS, QUICK_D, QUICK_N, SWEEP_D, SWEEP_N, budget_ms
from vitcore.bench.scaling import BUDGET_S, TOKENS, WINDOWS, SweepConfig, run_sweep, write_results
from vitcore.bench.scaling_fit import BACKWARD_FACTOR, MIN_POINTS, analyse, select
from vitcore.paths import free_name

DPI = 80  # modest: the reports are committed


def _fmt_n(x) -> str:
    return "—" if x is None else f"{x:.0f}"


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


def _header(results: dict) -> List[str]:
    m, cfg, ceil = results["meta"], results["sweep"], results["ceiling"]
    lines = [f"# MSA scaling: {m['device_name']}", ""] + header_lines(m) + [
        f"- sweep: N' ∈ {cfg['ns']}, D ∈ {cfg['ds']}, heads of width {results['head_dim']} (H = D/64), "
        f"batch B = max(1, {cfg['tokens']} // N'); dtypes {', '.join(cfg['dtypes'])}; "
        f"modes {', '.join(cfg['modes'])}",
        f"- timer: median of {cfg['windows']} windows of back-to-back calls, about {1e3 * cfg['budget_s']:g} ms "
        "per measurement, each window closed by a device sync "
        + ("(each call replayed from a CUDA graph: GPU time, no host launch cost)" if cfg.get("graphs")
           else "(launch overhead included)")
        + (f"; the sweep ran {cfg['repeat']} times, each time the median of its passes" if cfg.get("repeat", 1) > 1
           else ""),
        "- providers (the attention core inside the same MSA block, same inputs, same timer):",
    ]
    lines += [f"  - `{p}`: {m['providers'][p]}" for p in cfg["providers"]]
    lines += [
        f"- measured ceiling: {ceil['matmul_n']}³ matmul "
        + ", ".join(f"{dt} {tf:.3g} TFLOP/s" for dt, tf in ceil["matmul_tflops"].items())
        + f"; copy of {ceil['copy_bytes'] / 2**20:.0f} MiB {ceil['copy_gbps']:.0f} GB/s (read + write)",
        "",
        "FLOPs = 2 × MACs, MACs = B·(4N'D² + 2N'²D) per forward; fwd+bwd counts 3× the forward "
        "(`vitcore.cost`). Softmax, scaling, biases and reshapes are not counted.",
        "",
    ]
    return lines


def _fit_table(fits: List[dict]) -> List[str]:
    lines = [
        "## The fit: t ≈ a·4N'D²·B + b·2N'²D·B + c",
        "",
        "Least squares on relative residuals over every (N', D) of the sweep (whole MSA block). "
        "a and b are shown as the throughput they imply (FLOP per MAC over seconds per MAC); "
        "crossover N'* = 2D·a/b. *Floor*: t ≈ max(h, a·4N'D²·B + b·2N'²D·B + c), h the launch floor; "
        "*on floor*: points the floor model puts at h; *R² above 2h*: the MAC model refitted on the points "
        "whose modelled work exceeds 2h (— if fewer than 4).",
        "",
        "| dtype | mode | provider | R² | median \\|err\\| | max \\|err\\| at (N', D) | a → TFLOP/s "
        "| b → TFLOP/s | c (µs) | N'*/2D (fit) | floor h (µs) | floor R² | floor median \\|err\\| | on floor "
        "| R² above 2h (points) | peak TFLOP/s (% of ceiling) |",
        "|" + "---|" * 16,
    ]
    for f in fits:
        b, fl, k = f["base"], f["floor"], 2 * BACKWARD_FACTOR[f["mode"]]
        tput = [("%.3g" % (k / b["coef"][t] / 1e12)) if b["coef"][t] > 0 else "n/a" for t in ("proj", "core")]
        cross = "—" if f["fit_crossover_over_2d"] is None else f"{f['fit_crossover_over_2d']:.2f}"
        above = "—" if fl["r2_above_2h"] is None else f"{fl['r2_above_2h']:.4f}"
        n_pts = len(b["pred_s"])
        lines.append(
            f"| {f['dtype']} | {f['mode']} | {f['provider']} | {b['r2']:.4f} | {100 * b['median_abs_rel_err']:.1f}% "
            f"| {100 * b['max_abs_rel_err']:.0f}% at ({b['worst']['n']}, {b['worst']['d']}) | {tput[0]} | {tput[1]} "
            f"| {1e6 * b['coef']['const']:.1f} | {cross} | {1e6 * fl['coef']['floor']:.0f} | {fl['r2']:.4f} "
            f"| {100 * fl['median_abs_rel_err']:.1f}% | {fl['on_floor']}/{n_pts} | {above} ({fl['above_2h']}) "
            f"| {f['peak_tflops']:.3g} ({100 * f['peak_fraction']:.0f}%) "
            f"at ({f['peak_at']['n']}, {f['peak_at']['d']}) |"
        )
    if not fits:
        lines.append(f"No fit: a fit needs at least {MIN_POINTS + 1} (N', D) points per dtype, mode and "
                     "provider, and this sweep has fewer; give more --n or --d values.")
    return lines + [""]


def _noise_table(fits: List[dict]) -> List[str]:
    """The lack-of-fit test of each fit (``vitcore.bench.scaling_fit.noise_check``); none without replicates."""
    tested = [f for f in fits if f["base"]["noise"] is not None]
    if not tested:
        return []
    lines = [
        "## Is the miss the timer's noise?",
        "",
        "Each point was measured more than once: *passes* are its measurements in the repeated sweeps "
        "(`--repeat`, minutes apart: they catch slow drift of the host or the clocks), *windows* its back-to-back "
        "timing windows (they catch short-term jitter only, so a test on windows calls slow drift a miss). "
        "*Ceiling*: the R² over the replicates of a model that passes through every point's mean — the most "
        "any model can reach given this noise. *F*, *p*: the lack-of-fit test on the fit's relative scale; "
        "p < 0.01 says the model misses more than the noise between replicates explains.",
        "",
        "| dtype | mode | provider | replicates per point | median spread | R² over replicates | ceiling "
        "| F (p) | floor model: R², F (p) |",
        "|" + "---|" * 9,
    ]
    for f in tested:
        b, fl = f["base"]["noise"], f["floor"]["noise"]
        lines.append(
            f"| {f['dtype']} | {f['mode']} | {f['provider']} | {b['per_point']:.3g} {b['replicates']} "
            f"| {100 * b['median_rel_spread']:.1f}% | {b['r2']:.4f} | {b['r2_ceiling']:.4f} "
            f"| {b['f']:.3g} ({b['p']:.2g}) | {fl['r2']:.4f}, {fl['f']:.3g} ({fl['p']:.2g}) |"
        )
    return lines + [""]


def _crossover_table(fits: List[dict], ds) -> List[str]:
    lines = [
        "## Crossover: the N' where the attention core takes as long as the projections",
        "",
        "Measured from the core and the projections timed alone (log-log interpolation between sweep "
        "points; — where the core never catches up, or is ahead from the start). The MAC model says 2D.",
        "",
        "| dtype | mode | provider | " + " | ".join(f"D={d} (2D={2 * d})" for d in ds) + " |",
        "|" + "---|" * (3 + len(ds)),
    ]
    for f in fits:
        cells = []
        for d in ds:
            x = f["measured_crossover"].get(d, f["measured_crossover"].get(str(d)))
            cells.append("—" if x is None else f"{x:.0f} ({x / (2 * d):.2f}×2D)")
        lines.append(f"| {f['dtype']} | {f['mode']} | {f['provider']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _residual_tables(results: dict, fits: List[dict]) -> List[str]:
    """Per N', the median over D of the base model's relative miss (prediction / measured - 1)."""
    cfg = results["sweep"]
    lines = [
        "## Where the MAC model misses",
        "",
        "Median over D of the base fit's prediction relative to the measured time, per N' "
        "(negative: the block is slower than the MAC model predicts); the floor model's in brackets.",
        "",
    ]
    for dt in cfg["dtypes"]:
        for mode in cfg["modes"]:
            group = [f for f in fits if f["dtype"] == dt and f["mode"] == mode]
            if not group:
                continue
            lines += [f"**{dt}, {mode}**", "", "| N' | " + " | ".join(f["provider"] for f in group) + " |",
                      "|" + "---|" * (1 + len(group))]
            per = []
            for f in group:
                rows = select(results["timings"], dtype=dt, mode=mode, what="block", provider=f["provider"])
                misses: Dict[int, list] = {}
                for r, pb, pe in zip(rows, f["base"]["pred_s"], f["floor"]["pred_s"]):
                    misses.setdefault(r["n"], []).append((pb / r["time_s"] - 1, pe / r["time_s"] - 1))
                per.append(misses)
            for n in cfg["ns"]:
                cells = []
                for misses in per:
                    if n not in misses:
                        cells.append("—")
                        continue
                    mb, me = np.median([m[0] for m in misses[n]]), np.median([m[1] for m in misses[n]])
                    cells.append(f"{_pct(mb)} ({_pct(me)})")
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def plot_scaling(results: dict, dtype: str, path: str) -> None:
    """Block time vs N' per D on log-log axes, measured (markers) and the base fit (lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, fits = results["sweep"], results["analysis"]["fits"]
    modes, providers = cfg["modes"], cfg["providers"]
    fig, axes = plt.subplots(len(modes), len(providers), figsize=(4 * len(providers), 3.2 * len(modes)),
                             squeeze=False, sharex=True, sharey="row")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, mode in enumerate(modes):
        for j, p in enumerate(providers):
            ax = axes[i][j]
            f = next((f for f in fits if (f["dtype"], f["mode"], f["provider"]) == (dtype, mode, p)), None)
            rows = select(results["timings"], dtype=dtype, mode=mode, what="block", provider=p)
            for c, d in enumerate(cfg["ds"]):
                idx = sorted((k for k, r in enumerate(rows) if r["d"] == d), key=lambda k: rows[k]["n"])
                ns = [rows[k]["n"] for k in idx]
                ax.loglog(ns, [1e3 * rows[k]["time_s"] for k in idx], "o", ms=3, color=colors[c % 10], label=f"D={d}")
                if f is not None:
                    ax.loglog(ns, [1e3 * f["base"]["pred_s"][k] for k in idx], "-", lw=1, color=colors[c % 10])
            r2 = f"  R²={f['base']['r2']:.3f}" if f else ""
            ax.set_title(f"{p}, {mode}{r2}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(modes) - 1:
                ax.set_xlabel("N' (tokens)")
            if j == 0:
                ax.set_ylabel("ms per call")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"MSA block, {dtype}: measured (dots) and a·4N'D²B + b·2N'²DB + c (lines)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_share(results: dict, dtype: str, path: str, provider: str = "vitcore") -> None:
    """The attention core's share of (projections + core) time vs N', measured and by MAC count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["sweep"]
    provider = provider if provider in cfg["providers"] else cfg["providers"][0]
    fig, axes = plt.subplots(1, len(cfg["modes"]), figsize=(5 * len(cfg["modes"]), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, mode in enumerate(cfg["modes"]):
        ax = axes[0][j]
        for c, d in enumerate(cfg["ds"]):
            timings = results["timings"]
            proj = {r["n"]: r["time_s"] for r in select(timings, dtype=dtype, mode=mode, what="proj", d=d)}
            core = {r["n"]: r["time_s"] for r in
                    select(timings, dtype=dtype, mode=mode, what="core", provider=provider, d=d)}
            ns = sorted(set(proj) & set(core))
            col = colors[c % 10]
            ax.semilogx(ns, [core[n] / (core[n] + proj[n]) for n in ns], "o-", ms=3, color=col, label=f"D={d}")
            dense = np.geomspace(min(cfg["ns"]), max(cfg["ns"]), 100)
            ax.semilogx(dense, dense / (dense + 2 * d), "--", lw=0.8, color=col)  # 2N'²D / (4N'D² + 2N'²D)
            ax.axvline(2 * d, color=col, lw=0.6, ls=":")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_ylim(0, 1)
        ax.set_xlabel("N' (tokens)")
        ax.set_ylabel("attention core / (projections + core)")
        ax.set_title(f"{provider}, {mode}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{dtype}: share of time in the attention core, measured (dots) and by MACs N'/(N'+2D) "
                 "(dashed); dotted: N' = 2D", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def write_report(results: dict, out_dir: str, plots: bool = True) -> str:
    """Writes ``report.md`` (and the plots) into ``out_dir``; returns the report's path.

    A ``notes.md`` in ``out_dir`` (what a person read in the numbers) goes in after the header.
    """
    cfg, fits = results["sweep"], results["analysis"]["fits"]
    lines = _header(results)
    notes = os.path.join(out_dir, "notes.md")  # the reading of a committed report, written by hand
    if os.path.isfile(notes):
        with open(notes) as f:
            lines += [f.read().strip(), ""]
    if not results.get("complete"):
        lines += ["**Incomplete run**: the sweep was interrupted; the tables cover the points measured.", ""]
    failed = [r for r in results["timings"] if "error" in r]
    if failed:
        lines += [f"**{len(failed)} measurements failed** (left out of the fits):", ""]
        lines += [f"- {r['dtype']} {r['mode']} {r['what']} {r['provider'] or ''} N'={r['n']} D={r['d']}: "
                  f"{r['error']}" for r in failed[:20]] + [""]
    lines += (_fit_table(fits) + _noise_table(fits) + _crossover_table(fits, cfg["ds"])
              + _residual_tables(results, fits))
    pngs = []
    for dt in cfg["dtypes"]:
        scaling_png, share_png = (os.path.join(out_dir, f"{kind}-{dt}.png") for kind in ("scaling", "share"))
        if plots:
            plot_scaling(results, dt, scaling_png)
            plot_share(results, dt, share_png)
        pngs += [(f"time vs N', {dt}", scaling_png), (f"core share, {dt}", share_png)]
    pngs = [(alt, os.path.basename(p)) for alt, p in pngs if os.path.isfile(p)]  # --no-plots: link earlier ones
    if pngs:
        lines += ["## Plots", ""] + [line for alt, name in pngs for line in (f"![{alt}]({name})", "")]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------
# ``vitcore bench``
# ----------------------------------------------------------------------------------------------
def _ints(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of ints") from None


def _names(text: str) -> Tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _command(args) -> str:
    """The ``vitcore bench`` command line that repeats this run (every option spelled out)."""
    words = ["vitcore", "bench"]
    for k, v in vars(args).items():
        if k not in ("command", "func") and v is not None and v is not False:
            words += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return " ".join(words)


def _free_folder(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... : the first that holds no run yet (never overwrite a report)."""
    return free_name(base, lambda path: os.path.exists(os.path.join(path, "results.json")))


# the options that choose a sweep (name, value when not given): meaningless with --report-only
SWEEP_OPTIONS = (("quick", False), ("device", "auto"), ("dtype", None), ("providers", ",".join(PROVIDERS)),
                 ("modes", ",".join(MODES)), ("n", None), ("d", None), ("tokens", None), ("budget_ms", None),
                 ("windows", None), ("repeat", 1), ("threads", None), ("graphs", False))
RESULTS_KEYS = ("meta", "sweep", "ceiling", "timings")  # what a results.json of vitcore bench holds


def _read_results(path: str) -> dict:
    """A results.json read back for --report-only; ValueError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path!r} is not JSON ({e}): rerun the sweep into another --out") from None
    missing = [k for k in RESULTS_KEYS if not isinstance(results, dict) or k not in results]
    if missing:
        raise ValueError(f"{path!r} is not a results.json of vitcore bench: it lacks {', '.join(missing)}")
    if not isinstance(results["sweep"], dict) or not isinstance(results["timings"], list):
        raise ValueError(f"{path!r} is not a results.json of vitcore bench: \"sweep\" must be an object and "
                         "\"timings\" a list")
    for number, row in enumerate(results["timings"], 1):
        _check_timing(f"{path!r}, timing {number}", row)
    return results


TIMING_COUNTS = ("n", "d", "heads", "batch", "proj_macs", "core_macs", "reps")  # positive integers where present
TIMING_SECONDS = ("pass_times_s", "window_times_s")  # lists of measured seconds where present
SHORTEST_S = 1e-9  # no pass of an MSA block takes less than a nanosecond (the timers' resolution)


def _positive_seconds(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= SHORTEST_S


def _check_timing(where: str, row) -> None:
    """ValueError naming the timing and the field of a results.json row that vitcore bench cannot have
    written: counts that are not positive integers, times that are not finite seconds of at least
    ``SHORTEST_S``."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} is {json.dumps(row)[:60]}, not an object")
    for name in TIMING_COUNTS:
        value = row.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name}={value!r} is not a positive integer")
    if "time_s" in row and not _positive_seconds(row["time_s"]):
        raise ValueError(f"{where}: time_s={row['time_s']!r} is not a number of seconds from {SHORTEST_S:g} up")
    for name in TIMING_SECONDS:
        values = row.get(name, [])
        if not isinstance(values, list):
            raise ValueError(f"{where}: {name}={values!r:.60} is not a list of seconds")
        bad = [v for v in values if not _positive_seconds(v)]
        if bad:
            raise ValueError(f"{where}: {name} holds {bad[0]!r}, not a number of seconds from {SHORTEST_S:g} up")


def run_bench(args) -> int:
    """``vitcore bench``: run the sweep, fit, write results.json, report.md and the plots."""
    if args.out == "":
        raise ValueError("--out is empty: name the folder for the report, or leave --out out")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a file: give a folder for the report")
    if args.report_only:
        if not args.out:
            raise ValueError("--report-only needs --out, the folder holding results.json")
        sweep = [f"--{name.replace('_', '-')}" for name, unset in SWEEP_OPTIONS if getattr(args, name) != unset]
        if sweep:
            raise ValueError(f"--report-only re-analyses the sweep in {args.out}; {', '.join(sweep)} "
                             f"{'chooses' if len(sweep) == 1 else 'choose'} a new sweep: drop "
                             f"{'it' if len(sweep) == 1 else 'them'} or --report-only")
        path = os.path.join(args.out, "results.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} does not exist")
        results = _read_results(path)
        try:
            results["analysis"] = analyse(results)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"{path!r} is not a results.json of vitcore bench: {type(e).__name__} {e} "
                             "reading it") from None
        write_results(path, results)  # the timings as they were, the analysis of this version
        print(f"report: {write_report(results, args.out, plots=not args.no_plots)}", file=sys.stderr)
        return 0
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        cores = os.cpu_count() or 1
        if not 1 <= args.threads <= cores:  # torch.set_num_threads(100000) crashes the process
            raise ValueError(f"--threads {args.threads}: expected 1 to this machine's {cores} CPU threads")
    cfg = SweepConfig(
        ns=_ints(args.n) if args.n is not None else (QUICK_N if args.quick else SWEEP_N),
        ds=_ints(args.d) if args.d is not None else (QUICK_D if args.quick else SWEEP_D),
        providers=_names(args.providers), modes=_names(args.modes),
        dtypes=_names(args.dtype) if args.dtype is not None else (("bf16", "fp32") if device == "cuda" else ("fp32",)),
        device=device, tokens=TOKENS[device] if args.tokens is None else args.tokens,
        budget_s=BUDGET_S[device] if args.budget_ms is None else budget_ms(args.budget_ms) / 1e3,
        windows=WINDOWS[device] if args.windows is None else args.windows, repeat=args.repeat, graphs=args.graphs,
    )
    cfg.validate()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out or _free_folder(os.path.join(
        "bench", "results", f"{device_tag(device)}-{today()}-msa-scaling"))
    results = run_sweep(cfg, out, command=_command(args))
    report = write_report(results, out, plots=not args.no_plots)
    for f in results["analysis"]["fits"]:
        cross = f["fit_crossover_over_2d"]
        print(f"{f['dtype']:>4} {f['mode']:>7} {f['provider']:>7}: R²={f['base']['r2']:.4f} "
              f"(floor {f['floor']['r2']:.4f}, h={1e6 * f['floor']['coef']['floor']:.0f} µs), "
              f"N'*/2D={'—' if cross is None else f'{cross:.2f}'}, "
              f"peak {f['peak_tflops']:.3g} TFLOP/s ({100 * f['peak_fraction']:.0f}% of the matmul ceiling)")
    print(f"report: {report}", file=sys.stderr)
    return 0

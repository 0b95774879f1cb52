"""Fitting the MSA timings of ``vitcore.bench.scaling``: the MAC model, the launch floor, the crossover.

The MAC model: t ≈ a·B·4N'D² + b·B·2N'²D + c (``vitcore.cost.msa_macs``), by least squares (numpy) on
relative residuals, each row divided by its measured time, so a 20 µs and a 20 ms point weigh alike.
R² is the ordinary coefficient of determination of t.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

BACKWARD_FACTOR = {"fwd": 1, "fwd+bwd": 3}  # matmul work relative to forward (vitcore.cost docstring)


MIN_POINTS = 4  # a fit needs more points than its 3 (base) or 4 (floor) parameters


def _summary(rows: List[dict], t: np.ndarray, pred: np.ndarray) -> dict:
    rel = pred / t - 1
    worst = int(np.argmax(np.abs(rel)))
    return {"r2": _r2(t, pred), "median_abs_rel_err": float(np.median(np.abs(rel))),
            "max_abs_rel_err": float(abs(rel[worst])), "worst": {"n": rows[worst]["n"], "d": rows[worst]["d"]},
            "pred_s": pred.tolist()}


def _r2(t: np.ndarray, pred: np.ndarray) -> float:
    return 1 - float(np.sum((t - pred) ** 2) / np.sum((t - t.mean()) ** 2)) if len(t) > 1 else float("nan")


def _linear(rows: List[dict]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares on relative residuals of t = a·B·4N'D² + b·B·2N'²D + c: (coef, X, t)."""
    X = np.array([[r["proj_macs"], r["core_macs"], 1.0] for r in rows], dtype=np.float64)
    t = np.array([r["time_s"] for r in rows])
    coef, *_ = np.linalg.lstsq(X / t[:, None], np.ones_like(t), rcond=None)
    return coef, X, t


def fit(rows: List[dict]) -> dict:
    """The MAC model t = a·B·4N'D² + b·B·2N'²D + c: coefficients, R² of t, relative errors."""
    coef, X, t = _linear(rows)
    return {"model": "base", "coef": dict(zip(("proj", "core", "const"), coef.tolist())),
            **_summary(rows, t, X @ coef)}


def fit_floor(rows: List[dict]) -> dict:
    """The MAC model under a launch floor: t = max(h, a·B·4N'D² + b·B·2N'²D + c).

    h is the time below which a call does not get: the host's launch and dispatch time (the GPU
    waits for work) or a kernel's fixed latency. Fitted by nonlinear least squares on relative
    residuals (scipy), coefficients kept positive. Also reports which points sit on the floor and
    the MAC model refitted on the points well above it (work > 2h), where it should hold.
    """
    from scipy.optimize import least_squares

    base, X, t = _linear(rows)
    a0, b0, c0 = np.maximum(base, [1e-18, 1e-18, 1e-8])

    def model(theta):
        a, b, c, h = np.exp(theta)
        return X @ np.array([a, b, c]), h

    def residuals(theta):
        work, h = model(theta)
        return np.maximum(h, work) / t - 1

    # The floor's gradient vanishes where it is below every point: start it at a few heights, keep the best.
    starts = [np.log([a0, b0, c0 * f, h]) for f, h in ((1, t.min()), (0.1, np.median(t)), (0.1, np.percentile(t, 25)))]
    theta = min((least_squares(residuals, x0) for x0 in starts), key=lambda sol: sol.cost).x
    work, h = model(theta)
    above = work > 2 * h
    out = {"model": "floor", "coef": dict(zip(("proj", "core", "const", "floor"), np.exp(theta).tolist())),
           **_summary(rows, t, np.maximum(h, work)), "on_floor": int(np.sum(work <= h)), "above_2h": int(above.sum()),
           "r2_above_2h": None}
    if above.sum() >= MIN_POINTS:
        kept = [r for r, k in zip(rows, above) if k]
        out["r2_above_2h"] = fit(kept)["r2"]
    return out


def replicates(row: dict) -> Tuple[str, List[float]]:
    """A point's repeated measurements: its passes over the sweep when there are two or more
    (``--repeat``; minutes apart, so slow drift of the host or the clocks shows), else its timing
    windows (back to back: they show only short-term jitter)."""
    passes = row.get("pass_times_s", [])
    return ("passes", passes) if len(passes) >= 2 else ("windows", row.get("window_times_s", []))


def noise_check(rows: List[dict], pred: Sequence[float], n_params: int) -> Optional[dict]:
    """Is a model's miss more than the timer's own noise? The lack-of-fit F test on replicates.

    On the scale the model was fitted on (each point's replicates and prediction divided by its
    measured time): the pure error is the replicates' scatter around their point's mean, the lack of
    fit the rest of the residual. F = (SS_lof / (P - n_params)) / (SS_pure / (n - P)) for P points and
    n replicates; a small p (scipy.stats.f) says the model misses something the noise does not explain.
    Also R² over the replicates and its ceiling 1 - SS_pure / SS_tot: what a model that passes through
    every point's mean would reach given that noise. None without two replicates for every point.
    """
    from scipy import stats

    kinds, reps = zip(*(replicates(r) for r in rows))
    P, n = len(rows), sum(len(x) for x in reps)
    if min(len(x) for x in reps) < 2 or P <= n_params:
        return None
    t = np.array([r["time_s"] for r in rows])
    ss_pure = ss_res = 0.0
    for x, ti, pi in zip(reps, t, pred):
        x = np.asarray(x) / ti  # (k,) relative to the point's time
        ss_pure += float(np.sum((x - x.mean()) ** 2))
        ss_res += float(np.sum((x - pi / ti) ** 2))
    ss_lof = max(ss_res - ss_pure, 0.0)
    f_stat = (ss_lof / (P - n_params)) / (ss_pure / (n - P)) if ss_pure > 0 else float("inf")
    flat = np.concatenate([np.asarray(x) for x in reps])  # every replicate, in seconds
    pred_flat = np.repeat(np.asarray(pred, dtype=float), [len(x) for x in reps])
    ss_tot = float(np.sum((flat - flat.mean()) ** 2))
    point_mean = np.repeat([np.mean(x) for x in reps], [len(x) for x in reps])
    return {"replicates": kinds[0] if len(set(kinds)) == 1 else "mixed", "per_point": n / P,
            "median_rel_spread": float(np.median([(max(x) - min(x)) / np.median(x) for x in reps])),
            "r2": 1 - float(np.sum((flat - pred_flat) ** 2)) / ss_tot,
            "r2_ceiling": 1 - float(np.sum((flat - point_mean) ** 2)) / ss_tot,
            "f": f_stat, "p": float(stats.f.sf(f_stat, P - n_params, n - P)) if ss_pure > 0 else 0.0}


def crossover(ns: Sequence[int], t_proj: Sequence[float], t_core: Sequence[float]) -> Optional[float]:
    """The N' where the core's time reaches the projections' (log-log interpolation), or None."""
    order = np.argsort(ns)
    x = np.log(np.asarray(ns, dtype=float)[order])
    r = np.log(np.asarray(t_core)[order] / np.asarray(t_proj)[order])  # > 0: the core dominates
    for i in range(len(x)):
        if r[i] >= 0:
            if i == 0:
                return None
            frac = -r[i - 1] / (r[i] - r[i - 1])
            return float(np.exp(x[i - 1] + frac * (x[i] - x[i - 1])))
    return None


def select(timings: List[dict], **key) -> List[dict]:
    """The successful timings matching every key=value."""
    return [r for r in timings if "error" not in r and all(r[k] == v for k, v in key.items())]


def analyse(results: dict) -> dict:
    """Fits per (dtype, mode, provider) on the whole-block times, crossovers per D, peak TFLOP/s."""
    cfg, timings, ceiling = results["sweep"], results["timings"], results["ceiling"]
    out = []
    for dt in cfg["dtypes"]:
        for mode in cfg["modes"]:
            proj_rows = select(timings, dtype=dt, mode=mode, what="proj")
            for p in cfg["providers"]:
                rows = select(timings, dtype=dt, mode=mode, what="block", provider=p)
                if len(rows) < MIN_POINTS + 1:
                    continue
                base, floor = fit(rows), fit_floor(rows)
                base["noise"] = noise_check(rows, base["pred_s"], n_params=3)
                floor["noise"] = noise_check(rows, floor["pred_s"], n_params=4)
                a, b = base["coef"]["proj"], base["coef"]["core"]
                core_rows = select(timings, dtype=dt, mode=mode, what="core", provider=p)
                cross = {}
                for d in cfg["ds"]:
                    tp = {r["n"]: r["time_s"] for r in select(proj_rows, d=d)}
                    tc = {r["n"]: r["time_s"] for r in select(core_rows, d=d)}
                    ns = sorted(set(tp) & set(tc))
                    cross[d] = crossover(ns, [tp[n] for n in ns], [tc[n] for n in ns]) if ns else None
                flops = [2 * BACKWARD_FACTOR[mode] * (r["proj_macs"] + r["core_macs"]) / r["time_s"] for r in rows]
                best = int(np.argmax(flops))
                out.append({
                    "dtype": dt, "mode": mode, "provider": p, "base": base, "floor": floor,
                    "fit_crossover_over_2d": a / b if a > 0 and b > 0 else None,  # N'* = 2D·a/b
                    "measured_crossover": cross,
                    "peak_tflops": flops[best] / 1e12, "peak_at": {"n": rows[best]["n"], "d": rows[best]["d"]},
                    "peak_fraction": flops[best] / 1e12 / ceiling["matmul_tflops"][dt],
                })
    return {"fits": out}


import copy
import json
import os

import numpy as np
import pytest
import torch

from vitcore.cli import main
from vitcore.bench.scaling import MODES, PROVIDERS, MSACase, SweepConfig, attention_fn, msa_forward, run_sweep
from vitcore.bench.scaling_fit import crossover, fit, fit_floor, noise_check
from vitcore.bench.scaling_report import _free_folder
from vitcore.bench.timers import graphed, time_windows

from conftest import DEVICE, requires_cuda


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n", [1, 197])
def test_msa_forward_matches_the_model_for_every_provider(n, provider, triton_on):
    """Every provider's block (vitcore's through the Triton kernel) against the model's MSA in float64,
    where flash_attention runs its eager reference."""
    case = MSACase(n, 128, torch.float32, DEVICE, tokens=2 * n)
    with torch.no_grad():
        ref = copy.deepcopy(case.msa).double()(case.x.double())  # (B, N', D), vitcore.model.MSA
        out = msa_forward(case.msa, case.x, attention_fn(provider))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("what, provider", [("proj", None), ("core", "sdpa"), ("block", "eager")])
def test_timed_calls_run_in_every_mode(what, provider, mode):
    case = MSACase(50, 64, torch.float32, "cpu", tokens=100)
    assert (case.batch, case.heads) == (2, 1)
    assert case.macs() == (2 * 4 * 50 * 64**2, 2 * 2 * 50**2 * 64)
    result = case.fn(what, mode, provider)()
    if mode == "fwd+bwd":  # gradients of every input and parameter, none accumulated in .grad
        assert all(g is not None for g in result)
        assert all(p.grad is None for p in case.params)
    times, reps = time_windows(case.fn(what, mode, provider), "cpu", budget_s=0.003, windows=2)
    assert len(times) == 2 and reps >= 1 and min(times) > 0


def test_fit_recovers_a_known_model_and_crossover():
    rng = np.random.default_rng(0)
    rows = []
    for n in (16, 64, 197, 1024):
        for d in (64, 128, 256):
            b = max(1, 1024 // n)
            proj, core = b * 4 * n * d * d, b * 2 * n * n * d
            t = 2e-12 * proj + 1e-12 * core + 5e-6
            rows.append({"n": n, "d": d, "batch": b, "heads": d // 64, "proj_macs": proj, "core_macs": core,
                         "time_s": t * (1 + 1e-9 * rng.standard_normal())})
    f = fit(rows)
    assert f["r2"] > 0.999999 and f["max_abs_rel_err"] < 1e-6
    np.testing.assert_allclose([f["coef"][k] for k in ("proj", "core", "const")], [2e-12, 1e-12, 5e-6], rtol=1e-5)
    floored = [dict(r, time_s=max(r["time_s"], 2e-4)) for r in rows]  # a 200 µs launch floor
    assert fit(floored)["r2"] < 0.99
    g = fit_floor(floored)
    assert g["r2"] > 0.9999 and g["coef"]["floor"] == pytest.approx(2e-4, rel=1e-3)
    assert g["on_floor"] == sum(r["time_s"] < 2e-4 for r in rows)
    # the core (t = n) reaches the projections (t = 100) at n = 100 between the points 64 and 128
    assert crossover([16, 64, 128], [100, 100, 100], [16, 64, 128]) == pytest.approx(100, rel=1e-9)
    assert crossover([16, 64], [100, 100], [1, 2]) is None


def _replicated_rows(extra, noise, rng, kind="window_times_s", k=3):
    """Points of the MAC model plus ``extra(n, d)`` seconds, each measured k times with relative noise."""
    rows = []
    for n in (16, 50, 197, 577, 1024):
        for d in (64, 128, 256):
            proj, core = 4 * n * d * d, 2 * n * n * d
            true = 2e-12 * proj + 1e-12 * core + 5e-6 + extra(n, d)
            reps = (true * (1 + noise * rng.standard_normal(k))).tolist()
            rows.append({"n": n, "d": d, "proj_macs": proj, "core_macs": core, "time_s": float(np.median(reps)),
                         kind: reps})
    return rows


def test_noise_check_tells_a_systematic_miss_from_noise():
    rng = np.random.default_rng(1)
    noisy = _replicated_rows(lambda n, d: 0.0, 0.05, rng)
    ok = noise_check(noisy, fit(noisy)["pred_s"], n_params=3)
    assert ok["replicates"] == "windows" and ok["per_point"] == 3 and ok["p"] > 0.01
    assert 0 < ok["r2"] <= ok["r2_ceiling"] < 1
    # a term the MAC model lacks (a per-width cost), under the same noise
    missed = _replicated_rows(lambda n, d: 4e-5 * (d == 128), 0.05, rng)
    bad = noise_check(missed, fit(missed)["pred_s"], n_params=3)
    assert bad["p"] < 1e-6 and bad["r2"] < bad["r2_ceiling"]


def test_noise_check_prefers_passes_and_needs_two_replicates():
    rng = np.random.default_rng(2)
    rows = _replicated_rows(lambda n, d: 0.0, 0.02, rng, kind="pass_times_s")
    for r in rows:
        r["window_times_s"] = [r["time_s"]] * 5  # windows that agree exactly must not be used
    assert noise_check(rows, fit(rows)["pred_s"], n_params=3)["replicates"] == "passes"
    single = _replicated_rows(lambda n, d: 0.0, 0.02, rng, k=1)
    assert noise_check(single, fit(single)["pred_s"], n_params=3) is None


def test_repeated_sweep_keeps_every_pass_and_takes_the_median(tmp_path):
    cfg = SweepConfig(ns=(16,), ds=(64,), providers=("eager",), modes=("fwd",), dtypes=("fp32",), device="cpu",
                      tokens=32, budget_s=0.001, windows=2, repeat=3)
    results = run_sweep(cfg, str(tmp_path), progress=False)
    assert results["complete"] and [r["what"] for r in results["timings"]] == ["proj", "core", "block"]
    for r in results["timings"]:
        assert len(r["pass_times_s"]) == 3 and len(r["window_times_s"]) == 6
        assert r["time_s"] == pytest.approx(sorted(r["pass_times_s"])[1], rel=1e-4)
    assert json.loads((tmp_path / "results.json").read_text())["timings"] == results["timings"]
    with pytest.raises(ValueError, match="already holds a run"):  # a finished run is never overwritten
        run_sweep(cfg, str(tmp_path), progress=False)
    assert json.loads((tmp_path / "results.json").read_text())["timings"] == results["timings"]
    assert main(["bench", "--report-only", "--no-plots", "--out", str(tmp_path)]) == 0  # one point: no fit, said so
    assert "No fit: a fit needs at least 5 (N', D) points" in (tmp_path / "report.md").read_text()


def test_default_report_folder_skips_folders_holding_a_run(tmp_path):
    base = str(tmp_path / "cpu-date-msa-scaling")
    assert _free_folder(base) == base
    for folder in (base, base + "-2"):
        os.makedirs(folder)
        open(os.path.join(folder, "results.json"), "w").close()
    assert _free_folder(base) == base + "-3"


def test_sweep_config_rejects_bad_values_naming_them():
    with pytest.raises(ValueError, match="D=100"):
        SweepConfig(ds=(100,), device="cpu").validate()
    with pytest.raises(ValueError, match="flash"):
        SweepConfig(providers=("flash",), device="cpu").validate()
    with pytest.raises(ValueError, match="repeat=0"):
        SweepConfig(device="cpu", repeat=0).validate()
    with pytest.raises(ValueError, match="graphs=True.*device='cpu'"):
        SweepConfig(device="cpu", graphs=True).validate()


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
def test_graph_replay_recomputes_the_call(mode):
    case = MSACase(197, 128, torch.float16, "cuda", tokens=4 * 197)
    fn = case.fn("block", mode, "vitcore")
    want = [t.clone() for t in fn()]
    box = {}

    def call():
        box["out"] = fn()  # the captured call's outputs, rewritten by every replay

    replay = graphed(call)
    for t in box["out"]:
        t.fill_(float("nan"))
    replay()
    torch.cuda.synchronize()
    for got, ref in zip(box["out"], want):
        torch.testing.assert_close(got, ref)
    times, reps = time_windows(replay, "cuda", budget_s=0.01, windows=2)
    assert len(times) == 2 and reps >= 1 and min(times) > 0


def test_bench_cli_writes_report_json_and_plots(tmp_path, capsys):
    out = tmp_path / "report"
    args = ["bench", "--quick", "--n", "16,50,64", "--d", "64,128", "--modes", "fwd", "--tokens", "128",
            "--budget-ms", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(PROVIDERS) and all("R²=" in line for line in printed)
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["meta"]["device"] == "cpu"
    assert {"torch", "triton", "python"} <= set(results["meta"]["versions"]) and results["meta"]["date"]
    assert results["meta"]["command"].startswith("vitcore bench") and "--modes fwd" in results["meta"]["command"]
    assert len(results["timings"]) == 3 * 2 * (1 + 2 * len(PROVIDERS))  # N' x D x (proj + core, block each)
    assert all(r["time_s"] > 0 and len(r["window_times_s"]) == 3 for r in results["timings"])
    assert len(results["analysis"]["fits"]) == len(PROVIDERS)
    report = (out / "report.md").read_text()
    for heading in ("## The fit", "## Is the miss the timer's noise?", "## Crossover", "## Where the MAC model misses",
                    "scaling-fp32.png"):
        assert heading in report
    assert (out / "scaling-fp32.png").stat().st_size > 0 and (out / "share-fp32.png").stat().st_size > 0
    (out / "report.md").unlink()
    assert main(["bench", "--report-only", "--no-plots", "--out", str(out)]) == 0
    assert "## The fit" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [(["--d", "100"], "D=100"), (["--n", "16,x"], "16,x"),
                                            (["--modes", "bwd"], "bwd"), (["--tokens", "0"], "tokens=0"),
                                            (["--windows", "0"], "windows=0"), (["--budget-ms", "0"], "budget_s=0"),
                                            (["--d="], "'' is not a comma-separated list"),
                                            (["--dtype="], "dtypes=[]"), (["--budget-ms", "inf"], "'inf'"),
                                            (["--budget-ms", "nan"], "'nan'"), (["--budget-ms", "x"], "'x'"),
                                            # issue 26, case 8: a segfault, an allocation traceback, no end
                                            (["--threads", "100000"], "--threads 100000: expected 1 to this "
                                                                      "machine's"),
                                            (["--threads", "0"], "--threads 0: expected 1 to"),
                                            (["--tokens", "99999999999"], "(fp32, batch 390624999 at "
                                                                          "tokens=99999999999) needs about"),
                                            (["--n", "100000000"], "the sweep point N'=100000000, D=384"),
                                            (["--windows", "100000"], "windows=100000 is above the most this "
                                                                      "sweep takes, 1000"),
                                            (["--repeat", "101"], "repeat=101 is above the most this sweep "
                                                                  "takes, 100"),
                                            (["--budget-ms", "60001"], "budget_s=60.001 is above the most")])
def test_bench_cli_errors_exit_2_with_the_bad_value(tmp_path, capsys, extra, message):
    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", "--out", str(tmp_path)] + extra)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert torch.get_num_threads() == threads and not os.listdir(tmp_path)  # nothing set, nothing written


def test_bench_cli_refuses_an_empty_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--report-only"]):
        with pytest.raises(SystemExit) as e:
            main(["bench", "--quick", "--out", ""] + extra)  # was a new folder under bench/results/
        assert e.value.code == 2 and "--out is empty" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_bench_cli_out_naming_a_file_exits_2_and_leaves_the_file(tmp_path, capsys):
    path = tmp_path / "report.md"
    path.write_text("a finished report")
    for extra in ([], ["--report-only"]):
        with pytest.raises(SystemExit) as e:
            main(["bench", "--quick", "--out", str(path)] + extra)
        assert e.value.code == 2 and f"--out {str(path)!r} is a file" in capsys.readouterr().err
    assert path.read_text() == "a finished report"


@pytest.mark.parametrize("change, message", [
    ({"time_s": 0.0}, "timing 2: time_s=0.0 is not a number of seconds from 1e-09 up"),  # the fit hung on it
    ({"time_s": 5e-324}, "time_s=5e-324 is not a number of seconds"),
    ({"time_s": float("nan")}, "time_s=nan is not"),
    ({"time_s": -0.001}, "time_s=-0.001 is not"),
    ({"time_s": "0.001"}, "time_s='0.001' is not"),
    ({"time_s": True}, "time_s=True is not"),
    ({"window_times_s": [0.001, 0.0]}, "window_times_s holds 0.0, not a number of seconds"),
    ({"pass_times_s": 0.001}, "pass_times_s=0.001 is not a list of seconds"),
    ({"heads": 0}, "timing 2: heads=0 is not a positive integer"),
    ({"core_macs": -5}, "core_macs=-5 is not a positive integer"),
    ({"n": 16.0}, "n=16.0 is not a positive integer"),
])
def test_report_only_names_a_timing_vitcore_bench_cannot_have_written(tmp_path, capsys, change, message):
    row = {"dtype": "fp32", "mode": "fwd", "n": 16, "d": 64, "heads": 1, "batch": 64, "what": "proj",
           "provider": None, "proj_macs": 16777216, "core_macs": 2097152, "pass_times_s": [0.0005],
           "window_times_s": [0.0005], "time_s": 0.0005, "reps": 1}
    results = {"meta": {}, "sweep": {}, "ceiling": {}, "timings": [row, {**row, **change}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit) as e:
        main(["bench", "--report-only", "--no-plots", "--out", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("{}", "is not a results.json of vitcore bench: it lacks meta, sweep, ceiling, timings"),
    ("[]", "is not a results.json of vitcore bench: it lacks meta"),
    ('{"meta": {}, "sweep": [], "ceiling": {}, "timings": []}', '"sweep" must be an object'),
    ('{"meta": {}, "sweep": {}, "ceiling": {}, "timings": []}', "is not a results.json of vitcore bench: KeyError"),
    ('{"meta": {}, "sweep"', "is not JSON"),
])
def test_report_only_on_a_file_that_is_no_results_json_names_it(tmp_path, capsys, text, message):
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(SystemExit) as e:
        main(["bench", "--report-only", "--no-plots", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "results.json" in err and message in err
    assert (tmp_path / "results.json").read_text() == text and not (tmp_path / "report.md").exists()


def test_report_only_refuses_options_that_choose_a_new_sweep(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--report-only", "--n", "5", "--threads", "99999", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--n, --threads choose a new sweep: drop them or --report-only" in capsys.readouterr().err

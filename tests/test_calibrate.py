"""Few-shot calibration: the weighted τ-b, the rule's decision, its inputs, and the CLI commands."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from vitcore import calibrate
from vitcore.calibrate import Rule, apply_rule, few_shot, fit_rule, weighted_tau_b
from vitcore.cli import _print_builtin_note, main
from vitcore.evaluate import DEFAULT_TRUTH, read_truth
from vitcore.space import SPACES, sample

N = 40  # scored architectures of the small tests


def _population(n=N, seed=0, signal=3.0):
    """Records of n real `small` architectures with proxies params, good (accuracy plus a little noise),
    noise, and accuracies where params explains a little: good beats params by a wide margin."""
    gen = np.random.default_rng(seed)
    archs = sample(SPACES["small"], n, seed)
    params = gen.uniform(1e5, 1e6, n)
    acc = signal * gen.standard_normal(n) + 1e-6 * params
    records = [{"id": a.id, "arch": a.to_dict(), "params": int(p),
                "scores": {"params": float(p), "good": float(y + 0.3 * gen.standard_normal()),
                           "noise": float(gen.standard_normal())}}
               for a, p, y in zip(archs, params, acc)]
    return archs, records, {a.id: float(y) for a, y in zip(archs, acc)}


@pytest.mark.parametrize("k", [2, 7, 23])
@pytest.mark.parametrize("ties", [False, True])
def test_weighted_tau_b_is_scipys_tau_b_on_the_repeated_sample(k, ties):
    gen = np.random.default_rng(k)
    scores = gen.integers(0, 3, (3, k)).astype(float) if ties else gen.standard_normal((3, k))
    acc = gen.integers(0, 4, k).astype(float) if ties else gen.standard_normal(k)
    weights = gen.integers(0, 3, (5, k)).astype(float)
    weights[:, :2] = 1.0  # at least two architectures in every sample
    got = weighted_tau_b(calibrate._signs(scores), calibrate._signs(acc), weights)
    for b, w in enumerate(weights):
        rows = np.repeat(np.arange(k), w.astype(int))
        for p in range(3):
            want = stats.kendalltau(scores[p, rows], acc[rows]).statistic
            assert (math.isnan(want) and math.isnan(got[p, b])) or abs(got[p, b] - want) < 1e-12


def test_a_clearly_better_proxy_is_chosen_and_noise_keeps_params():
    _, records, truth = _population()
    labelled = dict(list(truth.items())[:30])
    rule = fit_rule(records, labelled)
    assert rule.proxy == "good" and not rule.fallback
    assert rule.evidence["lower_bound"] > 0 and rule.evidence["k"] == 30
    assert rule.evidence["tau"]["good"] > rule.evidence["params_tau"]
    for r in records:  # only noise to choose from: params stays
        del r["scores"]["good"]
    kept = fit_rule(records, labelled)
    assert kept.proxy == "params" and kept.fallback and "kept params" in kept.reason


def test_a_task_that_rewards_the_opposite_is_ranked_by_the_proxy_reversed():
    """Accuracies that fall as "good" rises (a task favouring what the proxy calls worse): the rule is
    "-good", and it ranks S from good's lowest score up."""
    _, records, truth = _population(seed=2)
    opposite = {i: -a for i, a in list(truth.items())[:30]}
    rule = fit_rule(records, opposite)
    assert (rule.proxy, rule.reversed, rule.label, rule.fallback) == ("good", True, "-good", False)
    assert "good reversed, lower first" in rule.reason
    assert rule.evidence["tau"]["-good"] == pytest.approx(-rule.evidence["tau"]["good"])
    ranked = apply_rule(rule, records)
    good = {r["id"]: r["scores"]["good"] for r in records}
    assert [r["id"] for r in ranked] == sorted(good, key=good.get)
    assert all(r["score"] == -good[r["id"]] for r in ranked)
    as_scored = fit_rule(records, opposite, reverse=False)  # only orderings as scored: none beats params
    assert as_scored.fallback and "-good" not in as_scored.evidence["tau"]
    assert as_scored.parameters["reverse"] is False
    with pytest.raises(TypeError, match="reverse='no'"):
        fit_rule(records, opposite, reverse="no")
    with pytest.raises(TypeError, match="reverse=1"):
        few_shot(records, {"task": opposite}, 8, reverse=1)


def test_the_rule_is_deterministic_under_a_seed_and_round_trips(tmp_path):
    _, records, truth = _population(seed=3, signal=1.0)
    labelled = dict(list(truth.items())[:12])
    a, b = fit_rule(records, labelled, seed=5), fit_rule(records, labelled, seed=5)
    assert a == b
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(a.to_dict()))
    assert Rule.from_dict(json.loads(path.read_text())) == a
    with pytest.raises(ValueError, match="not a vitcore rule"):
        Rule.from_dict({"proxy": "params"}, "x.json")
    with pytest.raises(ValueError, match="field 'fallback'"):
        Rule.from_dict(dict(a.to_dict(), fallback="no"), "x.json")
    with pytest.raises(ValueError, match="field 'reversed'"):
        Rule.from_dict({k: v for k, v in a.to_dict().items() if k != "reversed"}, "x.json")
    old = {k: v for k, v in dict(a.to_dict(), format=1).items() if k != "reversed"}  # before "reversed"
    assert Rule.from_dict(old) == a and not a.reversed


def test_the_rule_never_reads_accuracies_outside_t(monkeypatch):
    """Poison every accuracy outside the draw's T: the protocol's rule (and its evidence) is the same,
    only the τ on the rest changes."""
    _, records, truth = _population(seed=1, signal=1.0)
    seen = []
    fit = calibrate._fit
    monkeypatch.setattr(calibrate, "_fit", lambda *a: seen.append((a[2].copy(), a[3].copy())) or fit(*a))
    clean = few_shot(records, {"task": truth}, 12, draws=1, seed=4)
    labelled_positions, labelled_acc = seen[-1]
    ids = list(truth)
    t_ids = {ids[n] for n in labelled_positions}
    gen = np.random.default_rng(9)
    poisoned = {i: (a if i in t_ids else float(-1e3 * gen.standard_normal())) for i, a in truth.items()}
    dirty = few_shot(records, {"task": poisoned}, 12, draws=1, seed=4)
    assert np.array_equal(seen[-1][0], labelled_positions) and np.array_equal(seen[-1][1], labelled_acc)
    assert dirty["columns"]["task"]["rules"] == clean["columns"]["task"]["rules"]
    assert dirty["columns"]["task"]["params_tau"] != clean["columns"]["task"]["params_tau"]
    t_only = {i: truth[i] for i in ids if i in t_ids}
    assert fit_rule(records, t_only, seed=0) == fit_rule(records, dict(t_only), seed=0)


@pytest.mark.parametrize("truth, message", [
    ("stranger", "not among the"),
    ("first4", "K = 4 labelled architectures; calibration needs K >= 5"),
    ("nan", "must be a finite number"),
    ("flat", "rank nothing"),
    ("failed", "1 labelled architectures failed in S, so no proxy scored them"),
])
def test_bad_labels_say_what_is_wrong(truth, message):
    _, records, full = _population()
    ids = list(full)
    records[0] = {"id": ids[0], "arch": records[0]["arch"], "error": "RuntimeError: out of memory"}
    truth = {"first4": {i: full[i] for i in ids[1:5]}, "nan": {**{i: full[i] for i in ids[1:7]}, ids[7]: math.nan},
             "flat": {i: 1.0 for i in ids[1:7]}, "stranger": {"x": 1.0, "y": 2.0},
             "failed": {i: full[i] for i in ids[:6]}}[truth]
    with pytest.raises(ValueError, match=message):
        fit_rule(records, truth)


def test_a_rule_needs_params_and_apply_needs_its_proxy():
    _, records, truth = _population()
    for r in records:
        del r["scores"]["params"], r["params"]
    with pytest.raises(ValueError, match="hold no 'params'"):
        fit_rule(records, dict(list(truth.items())[:8]))
    rule = Rule("zico", False, "", {}, {})
    with pytest.raises(ValueError, match="ranks by 'zico', which these scores do not hold"):
        apply_rule(rule, records)
    for value, message in [(math.nan, "which is NaN on all 40 of these"), (2.5, r"2.5 on all 40 architectures it scored \(40")]:
        for r in records:
            r["scores"]["zico"] = value
        with pytest.raises(ValueError, match=message):
            apply_rule(rule, records)
    records[0]["scores"]["zico"] = 3.0  # one finite value among NaN: a ranking of one, allowed
    for r in records[1:]:
        r["scores"]["zico"] = math.nan
    assert apply_rule(rule, records)[0] == {"id": records[0]["id"], "score": 3.0}
    records[1]["scores"]["zico"], records[2]["scores"]["zico"] = math.inf, 3.0  # an overflowed score ranks first
    assert [r["score"] for r in apply_rule(rule, records)[:3]] == [math.inf, 3.0, 3.0]


def test_few_shot_reports_every_column():
    _, records, truth = _population()
    other = {i: -a for i, a in truth.items()}
    out = few_shot(records, {"task": truth, "reversed": other}, 8, draws=6, seed=0)
    assert out["k"] == 8 and out["draws"] == 6 and set(out["columns"]) == {"task", "reversed"}
    for c in out["columns"].values():
        assert set(c) >= {"rule_tau", "params_tau", "best_proxy", "best_proxy_tau", "gain_ci", "fallback_share"}
        assert c["gain_ci"][0] <= c["gain"] <= c["gain_ci"][1] and len(c["rules"]) == 6
    assert out["mean_gain"] == pytest.approx(np.mean([c["gain"] for c in out["columns"].values()]))
    with pytest.raises(ValueError, match="needs at least 42"):
        few_shot(records, {"task": truth}, 40)


def _files(tmp_path, labelled=12, extra_line=None):
    archs, records, truth = _population()
    scores = tmp_path / "S.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = [json.dumps({**a.to_dict(), "acc": {"task": truth[a.id]}}) for a in archs[:labelled]]
    t = tmp_path / "T.jsonl"
    t.write_text("\n".join(lines + ([extra_line] if extra_line else [])) + "\n")
    full = tmp_path / "full.jsonl"
    full.write_text("".join(json.dumps({**a.to_dict(), "acc": {"task": truth[a.id], "other": 1.0}}) + "\n"
                            for a in archs))
    return scores, t, full


def test_calibrate_rank_and_few_shot_end_to_end(tmp_path, capsys):
    scores, t, full = _files(tmp_path, labelled=30)
    rule_file, ranked = tmp_path / "rule.json", tmp_path / "ranked.jsonl"
    assert main(["calibrate", "--scores", str(scores), "--truth", str(t), "--column", "task",
                 "--out", str(rule_file)]) == 0
    rule = json.loads(rule_file.read_text())
    assert rule["proxy"] == "good" and rule["inputs"]["column"] == "task" and len(rule["inputs"]["labelled"]) == 30
    assert "rule: rank by good" in capsys.readouterr().out
    assert main(["rank", "--scores", str(scores), "--rule", str(rule_file), "--out", str(ranked)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in ranked.read_text().splitlines()]
    assert [r["rank"] for r in rows] == list(range(1, N + 1))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert [line.split()[1] for line in out[1:N + 1]] == [r["id"] for r in rows]  # the table, in that order
    assert out[N + 1] == f"{N} scored, 0 failed; ranked by good"
    folder = tmp_path / "fs"
    assert main(["evaluate", "--scores", str(scores), "--truth", str(full), "--columns", "task",
                 "--few-shot", "6", "--draws", "4", "--out", str(folder)]) == 0
    result = json.loads((folder / "few-shot.json").read_text())
    assert result["k"] == 6 and result["draws"] == 4 and list(result["columns"]) == ["task"]
    assert "| task | 40 |" in capsys.readouterr().out


def test_calibrate_and_rank_with_a_reversed_rule(tmp_path, capsys):
    archs, records, truth = _population(seed=2)
    scores, t = tmp_path / "S.jsonl", tmp_path / "T.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))
    t.write_text("".join(json.dumps({**a.to_dict(), "acc": {"task": -truth[a.id]}}) + "\n" for a in archs[:30]))
    rule_file, ranked = tmp_path / "rule.json", tmp_path / "ranked.jsonl"
    assert main(["calibrate", "--scores", str(scores), "--truth", str(t), "--column", "task",
                 "--out", str(rule_file)]) == 0
    assert "rule: rank by -good:" in capsys.readouterr().out
    assert json.loads(rule_file.read_text())["reversed"] is True
    assert main(["rank", "--scores", str(scores), "--rule", str(rule_file), "--out", str(ranked)]) == 0
    assert f"{N} scored, 0 failed; ranked by -good" in capsys.readouterr().out
    rows = [json.loads(line) for line in ranked.read_text().splitlines()]
    good = {r["id"]: r["scores"]["good"] for r in records}
    assert [r["id"] for r in rows] == sorted(good, key=good.get) and {r["rule"] for r in rows} == {"-good"}


@pytest.mark.parametrize("case, message", [
    ("k4", "K = 4 labelled architectures; calibration needs K >= 5"),
    ("column", "--column 'acc' of"),
    ("stranger", "not among the 40 scored ones"),
    ("nan", "is not finite"),
    ("few_shot", "--few-shot 3: calibration needs K >= 5"),
    ("rule", "is not JSON"),
    ("deep_rule", "nested too deeply"),
    ("seed", "--seed -1: expected an integer >= 0"),
    ("draws", "--draws 1000000000000: expected an integer from 1 to 100000"),
    ("columns", "--columns ',' names no column"),
    ("out_is_truth", "writing there would replace it"),
    ("out_is_scores", "writing there would replace it"),
])
def test_bad_inputs_to_the_commands(case, message, tmp_path, capsys):
    stranger = sample(SPACES["small"], N + 1, 7)[-1]
    extra = {"stranger": json.dumps({**stranger.to_dict(), "acc": {"task": 50.0}}),
             "nan": json.dumps({**sample(SPACES["small"], N, 0)[20].to_dict(), "acc": {"task": 1.0}}).replace(
                 "1.0}}", "NaN}}")}.get(case)
    scores, t, full = _files(tmp_path, labelled=4 if case == "k4" else 12, extra_line=extra)
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    inputs = {p: p.read_bytes() for p in (scores, t)}
    evaluate = ["evaluate", "--scores", str(scores), "--truth", str(full), "--out", str(tmp_path / "o")]
    argv = {"column": ["calibrate", "--scores", str(scores), "--truth", str(t)],
            "few_shot": evaluate + ["--few-shot", "3"],
            "rule": ["rank", "--scores", str(scores), "--rule", str(tmp_path / "bad.json")],
            "deep_rule": ["rank", "--scores", str(scores), "--rule", str(tmp_path / "deep.json")],
            "draws": evaluate + ["--few-shot", "5", "--draws", str(10**12)],
            "columns": evaluate + ["--few-shot", "5", "--columns", ","],
            "out_is_scores": ["calibrate", "--scores", str(scores), "--truth", str(t), "--column", "task",
                              "--out", str(scores)]}.get(
        case, ["calibrate", "--scores", str(scores), "--truth", str(t), "--column", "task"])
    argv += {"seed": ["--seed", "-1"], "out_is_truth": ["--out", str(t)]}.get(case, [])
    with pytest.raises(SystemExit) as exit_info:
        main(argv + (["--out", str(tmp_path / "r.json")] if argv[0] == "calibrate" and "--out" not in argv else []))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert all(p.read_bytes() == data for p, data in inputs.items())  # no input was touched


def test_rank_reads_a_rule_with_a_byte_order_mark_and_never_writes_over_its_inputs(tmp_path, capsys):
    scores, t, _ = _files(tmp_path, labelled=30)
    rule_file = tmp_path / "rule.json"
    assert main(["calibrate", "--scores", str(scores), "--truth", str(t), "--column", "task",
                 "--out", str(rule_file)]) == 0
    rule_file.write_bytes(b"\xef\xbb\xbf" + rule_file.read_bytes())
    assert main(["rank", "--scores", str(scores), "--rule", str(rule_file)]) == 0
    before = {p: p.read_bytes() for p in (scores, rule_file)}
    for out in (scores, rule_file):
        with pytest.raises(SystemExit):
            main(["rank", "--scores", str(scores), "--rule", str(rule_file), "--out", str(out)])
        assert "writing there would replace it" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (scores, rule_file)} == before


def test_a_rule_of_a_path_that_is_not_utf8_is_written_whole(tmp_path, capsys):
    """A scores path of bytes that are not UTF-8 (kept by Python as surrogates) is escaped in the rule file,
    not a failure half-way through writing it."""
    scores, t, _ = _files(tmp_path, labelled=12)
    odd = tmp_path / "S\udcff.jsonl"
    odd.write_bytes(scores.read_bytes())
    rule_file = tmp_path / "new" / "rule.json"  # a folder made for it
    assert main(["calibrate", "--scores", str(odd), "--truth", str(t), "--column", "task",
                 "--out", str(rule_file)]) == 0
    rule = Rule.from_dict(json.loads(rule_file.read_text(encoding="utf-8")))
    assert rule.inputs["scores"] == str(odd)


@pytest.mark.parametrize("edit, message", [
    (dict(format=True), "not a vitcore rule (format True"),
    (dict(format=2.0), "not a vitcore rule (format 2.0"),
    (dict(format=1, reversed=True), "field 'reversed' is not part of format 1"),
    (dict(reversed=None), "field 'reversed' is None"),
    (dict(proxy="-good", reversed=True), "proxy '-good' starts with '-'"),
])
def test_a_hand_edited_rule_file_is_refused_with_the_field_named(edit, message):
    _, records, truth = _population()
    good = fit_rule(records, dict(list(truth.items())[:12])).to_dict()
    d = dict(good, **edit)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Rule.from_dict(d, "x.json")
    with pytest.raises(ValueError, match="field 'inputs' is missing"):
        Rule.from_dict({k: v for k, v in good.items() if k != "inputs"}, "x.json")
    with pytest.raises(TypeError, match="must be a vitcore.calibrate.Rule"):
        apply_rule(d, records)


def test_the_api_takes_numpy_numbers_and_names_bad_arguments():
    _, records, truth = _population()
    labelled = dict(list(truth.items())[:12])
    as_numpy = fit_rule(records, {i: np.float32(a) for i, a in labelled.items()})
    assert as_numpy.proxy == fit_rule(records, {i: float(np.float32(a)) for i, a in labelled.items()}).proxy
    assert few_shot(records, {"task": truth}, np.int64(6), np.int64(2))["k"] == 6
    for kwargs, message in [(dict(seed=-1), "seed=-1: expected an integer >= 0"),
                            (dict(alpha=0.7), r"alpha=0.7: expected a level in \(0, 0.5\)"),
                            (dict(resamples=1), "resamples=1: expected an integer >= 100"),
                            (dict(draws=10**9), "draws=1000000000: expected an integer from 1 to 100000")]:
        with pytest.raises(ValueError, match=message):
            few_shot(records, {"task": truth}, 6, **dict(dict(draws=2), **kwargs))
    with pytest.raises(ValueError, match="seed=-1"):
        fit_rule(records, labelled, seed=-1)
    with pytest.raises(TypeError, match="columns must be a dict"):
        few_shot(records, ["task"], 6, 2)
    with pytest.raises(ValueError, match="column 'task': accuracy of .* is 'x'"):
        few_shot(records, {"task": dict(truth, **{next(iter(truth)): "x"})}, 6, 2)
    with pytest.raises(ValueError, match="record 0 has no \"id\""):
        fit_rule([{"scores": {"params": 1.0}}] + records, labelled)
    huge = [dict(r, scores=dict(r["scores"], good=10**400)) if n == 0 else r for n, r in enumerate(records)]
    assert "good" in fit_rule(huge, labelled).evidence["excluded"]  # an int beyond float: not finite


def test_few_shot_refuses_a_draw_with_one_accuracy_value():
    """All accuracies equal but one: some draw's T (or rest) holds one value, where τ is undefined."""
    _, records, truth = _population()
    flat = {i: (2.0 if n == 0 else 1.0) for n, i in enumerate(truth)}
    with pytest.raises(ValueError, match="column 'flat': draw 1 holds one accuracy value in"):
        few_shot(records, {"flat": flat}, 8, draws=3)


def test_score_says_how_its_ranking_did_on_the_builtin_truth(capsys):
    truth = read_truth(DEFAULT_TRUTH)
    records = [{"id": i, "scores": {"grad_norm": -a, "meco": a}} for i, a in list(truth.items())[:10]]
    _print_builtin_note(records, ["grad_norm", "meco"], "grad_norm")
    line = capsys.readouterr().out
    assert "10 of these architectures) grad_norm ranks with Kendall τ -1.000" in line
    assert "the best of these proxies there: meco 1.000" in line
    _print_builtin_note([dict(r, id=f"x{n}") for n, r in enumerate(records)], ["meco"], "meco")
    assert "holds too few of these architectures" in capsys.readouterr().out


def _strict(text: str):
    """json.loads refusing NaN and Infinity, as jq, JavaScript and other strict readers do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_rule_ranking_and_few_shot_files_are_standard_json(tmp_path, capsys):
    archs, records, truth = _population()
    labelled = [a.id for a in archs[:12]]
    for r in records:  # "step" is one value on T, so its τ there is undefined (NaN); one record failed
        r["scores"]["step"] = 0.0 if r["id"] in labelled else float(r["scores"]["noise"])
    records[-1] = {"id": records[-1]["id"], "arch": records[-1]["arch"], "error": "RuntimeError: out of memory"}
    scores = tmp_path / "S.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))
    t = tmp_path / "T.jsonl"
    t.write_text("".join(json.dumps({**a.to_dict(), "acc": {"task": truth[a.id]}}) + "\n" for a in archs[:12]))
    rule_file, ranked, folder = tmp_path / "rule.json", tmp_path / "ranked.jsonl", tmp_path / "fs"
    assert main(["calibrate", "--scores", str(scores), "--truth", str(t), "--column", "task",
                 "--out", str(rule_file)]) == 0
    rule = _strict(rule_file.read_text())
    assert "step" in rule["evidence"]["excluded"] or rule["evidence"]["tau"]["step"] is None
    assert main(["rank", "--scores", str(scores), "--rule", str(rule_file), "--out", str(ranked)]) == 0
    rows = [_strict(line) for line in ranked.read_text().splitlines()]
    assert rows[-1]["id"] == records[-1]["id"] and rows[-1]["score"] is None
    assert main(["evaluate", "--scores", str(scores), "--truth", str(t), "--columns", "task",
                 "--few-shot", "5", "--draws", "3", "--out", str(folder)]) == 0
    _strict((folder / "few-shot.json").read_text())
    capsys.readouterr()


@pytest.mark.parametrize("reverse", [False, True])
def test_ranked_jsonl_writes_infinite_scores_as_strings_and_null_only_for_failures(tmp_path, capsys, reverse):
    """An overflowed score ranks first (or last, reversed) in the table and in ranked.jsonl, where it is
    "inf" / "-inf": null means a failed architecture; an empty --out is refused, not ignored."""
    archs, records, truth = _population()
    records[0]["scores"]["good"] = math.inf
    records[-1] = {"id": records[-1]["id"], "arch": records[-1]["arch"], "error": "RuntimeError: out of memory"}
    scores = tmp_path / "S.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in records))
    rule = Rule("good", False, reversed=reverse, reason="test", evidence={}, parameters={}, inputs={})
    rule_file, ranked = tmp_path / "rule.json", tmp_path / "ranked.jsonl"
    rule_file.write_text(json.dumps(rule.to_dict()))
    assert main(["rank", "--scores", str(scores), "--rule", str(rule_file), "--out", str(ranked)]) == 0
    rows = [_strict(line) for line in ranked.read_text().splitlines()]
    infinite = rows[-2] if reverse else rows[0]
    assert infinite["id"] == records[0]["id"] and infinite["score"] == ("-inf" if reverse else "inf")
    assert rows[-1]["id"] == records[-1]["id"] and rows[-1]["score"] is None
    assert all(isinstance(r["score"], float) for r in rows if r not in (infinite, rows[-1]))
    with pytest.raises(SystemExit):
        main(["rank", "--scores", str(scores), "--rule", str(rule_file), "--out", ""])
    assert "--out is empty" in capsys.readouterr().err

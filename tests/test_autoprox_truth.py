"""bench.autoprox_truth: Auto-Prox's ground-truth lists as vitcore's JSON-lines truth."""
import json

import pytest
import torch

from bench import autoprox_truth
from vitcore.evaluate import read_truth_jsonl
from vitcore.space import Arch, PiTArch

AUTOFORMER = {"hidden_dim": 216, "mlp_ratio": [3.5, 4.0], "depth": 2, "num_heads": [3, 4]}
PIT = {"base_dim": 16, "mlp_ratio": 6, "depth": [2, 8, 4], "num_heads": [2, 4, 4]}


def _run(tmp_path, entries, name="gt.pth"):
    pth, out = tmp_path / name, tmp_path / (name + ".jsonl")
    torch.save(entries, pth)
    assert autoprox_truth.main([str(pth), str(out)]) == 0
    return out


def test_both_families_convert_and_read_back(tmp_path):
    entries = [{"arch": AUTOFORMER, "c100_kd_acc": 78.30000001953125, "c100_base_acc": None},
               {"arch": PIT, "c100_kd_acc": 72.5, "c100_base_acc": 68.33}]
    out = _run(tmp_path, entries)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"embed_dim": 216, "depth": 2, "num_heads": [3, 4], "mlp_ratio": [3.5, 4.0], "patch_size": 16,
                        "acc": {"c100_kd": 78.3, "c100_base": None}}
    assert list(lines[0]) == ["embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "acc"]  # the dev set's
    assert lines[1] == {**PIT, "acc": {"c100_kd": 72.5, "c100_base": 68.33}}
    truth = read_truth_jsonl(str(out))
    vit = Arch.from_dict({k: v for k, v in lines[0].items() if k != "acc"})
    pit = PiTArch.from_dict(PIT)
    assert list(truth.archs) == [vit.id, pit.id] and vit.head_dim is None
    assert truth.columns == {"c100_kd": {vit.id: 78.3, pit.id: 72.5}}
    assert truth.flat == {"c100_base": "only 1 architecture has an accuracy"}  # read, and set aside: it ranks nothing


@pytest.mark.parametrize("entries, message", [
    ({"arch": PIT}, "expected a non-empty list"),
    ([{"c100_kd_acc": 1.0}], "entry 0: expected a dict with an \"arch\" dict"),
    ([{"arch": PIT, "c100_kd_acc": 1.0, "note": "x"}], "entry 0: expected \"arch\" and accuracies named"),
    ([{"arch": PIT, "c100_kd_acc": "high"}], "entry 0: c100_kd_acc='high' is not a number or null"),
    ([{"arch": PIT, "c100_kd_acc": 1.0}, {"arch": {**AUTOFORMER, "embed": 3}, "c100_kd_acc": 1.0}],
     r"entry 1: fields \['embed'\] are not an AutoFormer architecture's"),
    ([{"arch": {**PIT, "num_heads": [4, 2, 4]}, "c100_kd_acc": 1.0}], "entry 0: num_heads=.*2 heads after 4"),
])
def test_bad_entries_are_named(entries, message):
    with pytest.raises(ValueError, match=message):
        autoprox_truth.convert(entries)


def test_an_existing_output_and_a_file_that_is_not_a_list_are_refused(tmp_path, capsys):
    out = _run(tmp_path, [{"arch": PIT, "c100_kd_acc": 1.0}])
    before = out.read_text()
    with pytest.raises(SystemExit):
        autoprox_truth.main([str(tmp_path / "gt.pth"), str(out)])
    assert "exists" in capsys.readouterr().err and out.read_text() == before
    text = tmp_path / "notes.txt"
    text.write_text("not a torch file")
    with pytest.raises(SystemExit):
        autoprox_truth.main([str(text), str(tmp_path / "x.jsonl")])
    assert "is not a file torch.save wrote" in capsys.readouterr().err

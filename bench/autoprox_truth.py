"""Auto-Prox's ground truths (lliai/Auto-Prox-AAAI24, ``gt_results/*.pth``) as vitcore's JSON-lines truth.

    python -m bench.autoprox_truth gt_pit.pth pit-100.jsonl

Each entry of the file, ``{"arch": {...}, "<column>_acc": accuracy or None, ...}``, becomes one line that
``vitcore evaluate --truth`` reads: the architecture's fields and ``"acc": {column: accuracy}``, the
accuracies rounded to 4 decimals and a null (a column not trained for that network) kept as null.
- AutoFormer entries (``hidden_dim``, per-block ``num_heads`` and ``mlp_ratio``, ``depth``) become
  ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio`` and ``patch_size`` 16: networks with heads
  embed_dim / num_heads wide, as the CIFAR/Flowers/Chaoyang columns trained them.
- PiT entries (``base_dim``, one ``mlp_ratio``, ``depth`` and ``num_heads`` per stage) keep their fields.
This is the conversion ``../shared/data/autoformer-tiny-100.jsonl`` went through (its README).

The file is read with ``torch.load(weights_only=True)``: plain lists, dicts and numbers, no code run.
Raises ValueError for a file that is not such a list (naming the entry), or an existing output.
"""
import argparse
import json
import os
import sys
from typing import List

import torch

from vitcore.paths import check_input_file
from vitcore.space import arch_from_dict

SUFFIX = "_acc"
AUTOFORMER_PATCH = 16  # Auto-Prox's AutoFormer networks: 224x224 inputs, 16x16 patches


def _arch_fields(arch: dict) -> dict:
    """vitcore's fields for an Auto-Prox architecture dict, in vitcore's order."""
    if "hidden_dim" in arch:
        fields = {"embed_dim": arch["hidden_dim"], "depth": arch.get("depth"), "num_heads": arch.get("num_heads"),
                  "mlp_ratio": arch.get("mlp_ratio"), "patch_size": AUTOFORMER_PATCH}
        extra = set(arch) - {"hidden_dim", "depth", "num_heads", "mlp_ratio"}
        if extra:
            raise ValueError(f"fields {sorted(extra)} are not an AutoFormer architecture's")
        return fields
    return dict(arch)


def convert(entries) -> List[dict]:
    """The truth lines (dicts) of Auto-Prox's list of entries; every architecture is checked by building
    its vitcore description (``arch_from_dict``)."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"expected a non-empty list of entries, got {type(entries).__name__}")
    lines = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("arch"), dict):
            raise ValueError(f"entry {i}: expected a dict with an \"arch\" dict")
        columns = {k[: -len(SUFFIX)]: v for k, v in entry.items() if k.endswith(SUFFIX)}
        if not columns or set(entry) != {"arch", *(c + SUFFIX for c in columns)}:
            raise ValueError(f"entry {i}: expected \"arch\" and accuracies named <column>{SUFFIX}, got {sorted(entry)}")
        try:
            fields = _arch_fields(entry["arch"])
            arch_from_dict(fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"entry {i}: {e}") from None
        acc = {}
        for column, value in columns.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"entry {i}: {column}{SUFFIX}={value!r} is not a number or null")
            acc[column] = None if value is None else round(float(value), 4)
        lines.append({**fields, "acc": acc})
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.autoprox_truth", description=__doc__.splitlines()[0])
    p.add_argument("pth", help="an Auto-Prox ground truth, e.g. gt_results/gt_pit.pth")
    p.add_argument("out", help="the JSON-lines truth to write (refused if it exists)")
    args = p.parse_args(argv)
    try:
        path = check_input_file(args.pth, "ground-truth file")
        if os.path.lexists(args.out):
            raise ValueError(f"{args.out!r} exists; choose another output")
        try:
            entries = torch.load(path, weights_only=True)
        except Exception as e:  # a zip, pickle or unpickling error: torch raises several kinds
            raise ValueError(f"{path!r} is not a file torch.save wrote of lists, dicts and numbers "
                             f"({type(e).__name__})") from None
        lines = convert(entries)
    except (OSError, ValueError) as e:
        p.error(str(e))
    with open(args.out, "x", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    print(f"{len(lines)} architectures: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

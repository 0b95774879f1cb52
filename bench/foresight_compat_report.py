"""Report: ``vitcore.compat.find_measures`` against foresight's own ``find_measures``, side by side.

foresight (SamsungLabs/zero-cost-nas, commit a43bfbc) is not vendored: fetch it and put its root on
PYTHONPATH, e.g.

    git clone https://github.com/SamsungLabs/zero-cost-nas /tmp/foresight && git -C /tmp/foresight checkout a43bfbc
    PYTHONPATH=/tmp/foresight python -m bench.foresight_compat_report --out bench/results

Writes OUT/<date>-foresight-compat.md (device, date, versions, command at the top).

Part 1: both libraries' eight measures on the same networks and the same batch, fp32 and fp64 (the
network and batch cast): a BatchNorm CNN fresh in train mode, the same CNN after its BatchNorm ran in
training mode passed in eval mode, a ViT of vitcore's "small" space, a timm-structured ViT written
in plain torch, foresight's NAS-Bench-201 network (with its own get_prunable_copy, and copied as foresight copies
any other network). Each row gives |vitcore - foresight| / |foresight|
and whether that is rounding or a documented difference (docs/foresight.md), with its reason.
Part 2: synflow on >= 20 NAS-Bench-201 networks: Kendall τ with the parameter count for foresight's
synflow, vitcore.score's and compat's, and τ between them.
Part 3: each measure with the batch cut in k chunks over its value on the whole batch, both libraries.
"""
import argparse
import copy
import itertools
import math
import os
import random
import sys
import types
from typing import Dict, List

import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch import nn

from vitcore.bench.env import environment, header_lines, today
import vitcore
from vitcore import compat
from vitcore.compat import FORESIGHT_MEASURES, find_measures, per_module_weights
from vitcore.passes import synflow_grads
from vitcore.proxies.plan import Settings, score_counted
from vitcore.space import get_space, sample

try:
    from foresight.models import nasbench2
    from foresight.pruners import measures, predictive
except ImportError as e:
    sys.exit(f"foresight is not importable ({e}). Fetch SamsungLabs/zero-cost-nas (commit a43bfbc) and put its "
             "root on PYTHONPATH: see this script's docstring. It is not vendored in vitcore.")

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# relative differences up to this are rounding: fp32 sums of up to ~1e5 terms in another order
# (Higham's γ_n ~ n·u with n·u32 ~ 6e-3 is loose; measured cases sit far below)
ROUNDING = {torch.float32: 1e-4, torch.float64: 1e-9}


def bn_cnn(classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )


class TimmBlock(nn.Module):
    """timm's ViT Block: x + attn(norm1(x)), x + mlp(norm2(x)); qkv one Linear, MLP fc1-GELU-fc2."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, d)
        attn = (q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(-1)  # (B, H, N, N)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))  # (B, N, C)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    """timm's VisionTransformer layout: Conv2d patch embedding, class token, learned positions, blocks,
    final LayerNorm, class-token Linear head."""

    def __init__(self, img: int = 32, patch: int = 4, dim: int = 48, depth: int = 3, heads: int = 3,
                 mlp_ratio: float = 4.0, classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TimmBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed  # (B, N+1, D)
        return self.head(self.norm(self.blocks(x))[:, 0])  # (B, classes)


def small_space_vit() -> nn.Module:
    arch = sample(get_space("small"), 1, seed=0)[0]
    return arch.config(img_size=32, in_chans=3, num_classes=10).build(seed=0)


def random_arch(rng: random.Random) -> str:
    ops = [rng.choice(NB201_OPS) for _ in range(6)]
    e = iter(ops)
    return "+".join("|" + "|".join(f"{next(e)}~{i}" for i in range(j)) + "|" for j in range(1, 4))


def trained_bn_cnn() -> nn.Module:
    """The CNN after a few training-mode forwards moved its running statistics, passed in eval mode."""
    net = bn_cnn()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(16, 3, 32, 32, generator=g) * 3 + 1)
    return net.eval()


NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_1x1~2|"
GENERIC_COPY = "foresight NAS-Bench-201, generic copy"  # foresight copies it as any network (deepcopy, BN no-op)
NETWORKS = {
    "BatchNorm CNN (train mode)": bn_cnn,
    "BatchNorm CNN (eval mode, statistics moved)": trained_bn_cnn,
    "vitcore small-space ViT": small_space_vit,
    "timm-structured ViT": TimmViT,
    "foresight NAS-Bench-201": lambda: nasbench2.get_model_from_arch_str(NB201_ARCH, 10),
    GENERIC_COPY: lambda: nasbench2.get_model_from_arch_str(NB201_ARCH, 10),
}


def reason(net_name: str, measure: str) -> str:
    """The documented difference a measure has on a network (docs/foresight.md), or ''."""
    if measure == "fisher" and "ViT" in net_name:
        return "transformer fisher: vitcore keeps channels of (B, N', C), foresight keeps tokens"
    if measure == "synflow" and net_name == "foresight NAS-Bench-201":
        return "foresight's NB201 copy (its get_prunable_copy) keeps 4 BatchNorm layers in train mode"
    return ""


def nb201_params(net: nn.Module) -> int:
    """The architecture's parameters: foresight's NB201 model builds every op of every edge and runs
    the kept ones (keep_mask), so the ops it does not keep are left out of the count."""
    unused = sum(p.numel() for cell in net.modules() if isinstance(cell, nasbench2.SearchCell)
                 for op, keep in zip(cell.options, cell.keep_mask) if not keep for p in op.parameters())
    return sum(p.numel() for p in net.parameters()) - unused


def side_by_side(dtype: torch.dtype, batch: int, seed: int) -> List[Dict]:
    rows = []
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    for net_name, make in NETWORKS.items():
        torch.manual_seed(seed)
        net = make().to(dtype)
        loader = [(x.to(dtype), y)]
        ours = find_measures(net, loader, ("random", 1, 10), "cpu")
        try:
            theirs_net = copy.deepcopy(net)
            if net_name == GENERIC_COPY:  # foresight's own copy for networks without get_prunable_copy
                theirs_net.get_prunable_copy = types.MethodType(predictive.copynet, theirs_net)
            theirs = predictive.find_measures(theirs_net, loader, ("random", 1, 10), "cpu")
        except RuntimeError as e:  # foresight's NB201 copy is rebuilt in fp32 whatever the network's dtype
            rows.append({"net": net_name, "dtype": str(dtype).removeprefix("torch."), "measure": "all",
                         "foresight": math.nan, "vitcore": math.nan, "rel": math.nan,
                         "verdict": f"foresight raises: {str(e).splitlines()[0]}"})
            continue
        for m in FORESIGHT_MEASURES:
            a, b = float(ours[m]), float(theirs[m])
            rel = abs(a - b) / abs(b) if b else abs(a - b)
            why = reason(net_name, m)
            if m == "fisher" and dtype == torch.float64 and rel <= ROUNDING[torch.float32]:
                why = "fp32 rounding: foresight's per-weight fisher copies are fp32 tensors (torch.Tensor)"
            rows.append({"net": net_name, "dtype": str(dtype).removeprefix("torch."), "measure": m,
                         "foresight": b, "vitcore": a, "rel": rel,
                         "verdict": why or ("rounding" if rel <= ROUNDING[dtype] else "UNEXPLAINED")})
    return rows


def nb201_taus(n: int, seed: int) -> Dict:
    """synflow of n random NAS-Bench-201 networks (CIFAR-10 head, C=16) by foresight, vitcore.score and
    compat, and their Kendall τ with the parameter count and with each other."""
    rng = random.Random(seed)
    archs = list(dict.fromkeys(random_arch(rng) for _ in range(4 * n)))[:n]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    y = torch.tensor([0, 1])
    cols = {"params": [], "foresight": [], "vitcore.score": [], "compat": [], "by the example": []}
    for arch in archs:
        torch.manual_seed(seed)
        net = nasbench2.get_model_from_arch_str(arch, 10)
        cols["params"].append(nb201_params(net))
        theta, grads = synflow_grads(net.eval(), per_module_weights(net), x.shape[1:], "keep")  # the old bug
        cols["by the example"].append(sum((t * g).abs().sum().item() for t, g in zip(theta, grads) if g is not None))
        net.train()
        cols["vitcore.score"].append(vitcore.score(net, x, y, proxies=["synflow"], params="weights")["synflow"])
        ours = find_measures(net, [(x, y)], ("random", 1, 10), "cpu", measure_names=["synflow"])
        cols["compat"].append(ours["synflow"])
        cols["foresight"].append(predictive.find_measures(copy.deepcopy(net), [(x, y)], ("random", 1, 10), "cpu",
                                                          measure_names=["synflow"])["synflow"])
    taus = {(a, b): kendalltau(cols[a], cols[b])[0] for a, b in itertools.combinations(cols, 2)}
    return {"archs": archs, "cols": cols, "taus": taus}


def split_ratios(batch: int, seed: int, splits=(2, 4)) -> List[Dict]:
    """What a batch cut in k chunks does to each measure (foresight splits after CUDA runs out of
    memory): the score with k chunks over the score of the whole batch, foresight's ``calc_measure``
    with split_data=k against compat's passes with chunks=k, on the timm-structured ViT in fp64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (batch,), generator=g)
    torch.manual_seed(seed)
    net = TimmViT().double()
    net.get_prunable_copy = types.MethodType(predictive.copynet, net)
    names = ["grad_norm", "snip", "plain", "grasp", "fisher"]
    units = {n: compat._FORESIGHT[n][0] for n in names}

    def foresight(k):
        arrays = {n: measures.calc_measure(n, net, "cpu", x, y, loss_fn=F.cross_entropy, split_data=k) for n in names}
        return {n: sum(float(t.detach().sum()) for t in v) for n, v in arrays.items()}

    def ours(k):
        return score_counted(net, x, y, F.cross_entropy, names, "per_layer", compat.per_module_weights(net), k,
                             "weights", Settings(units=units, ignore_index=compat.IGNORE_INDEX))

    base_f, base_o = foresight(1), ours(1)
    rows = []
    for k in splits:
        f, o = foresight(k), ours(k)
        rows += [{"k": k, "measure": n, "foresight": f[n] / base_f[n], "vitcore": o[n] / base_o[n]} for n in names]
    return rows


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="folder of the report")
    p.add_argument("--batch", type=int, default=8, help="examples in the batch (default 8)")
    p.add_argument("--cells", type=int, default=24, help="NAS-Bench-201 networks for the τ part (>= 20)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("VITCORE_TRITON", "0")
    env = environment("cpu")
    rows = side_by_side(torch.float32, args.batch, args.seed) + side_by_side(torch.float64, args.batch, args.seed)
    tau = nb201_taus(args.cells, args.seed)
    ratios = split_ratios(args.batch, args.seed)
    lines = [f"# vitcore.compat.find_measures against foresight's find_measures ({today()})", "",
             f"- device: {env['device_name']}; foresight: SamsungLabs/zero-cost-nas a43bfbc, unpatched, imported from "
             f"`{os.path.dirname(os.path.dirname(predictive.__file__))}`; exact command: "
             f"`PYTHONPATH={os.environ.get('PYTHONPATH', '')} {env['command']}`",
             *header_lines(env), "",
             "## The eight measures, same networks and batch",
             "", f"Batch: {args.batch} examples 3x32x32, N(0, 1), 10 classes, seed {args.seed}, "
             "`dataload_info=('random', 1, 10)`, "
             "default measure set. rel = |vitcore - foresight| / |foresight|; rounding: rel <= "
             f"{ROUNDING[torch.float32]:g} (fp32), {ROUNDING[torch.float64]:g} (fp64).", "",
             "| network | dtype | measure | foresight | vitcore.compat | rel | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['dtype']} | {r['measure']} | {r['foresight']:.9g} | {r['vitcore']:.9g} | "
                     f"{r['rel']:.2e} | {r['verdict']} |")
    worst = {}
    for r in rows:
        if r["verdict"] == "rounding":
            key = r["dtype"]
            worst[key] = max(worst.get(key, 0.0), r["rel"])
    lines += ["", "Largest rel among the rows that are rounding: "
              + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()) + "; unexplained rows: "
              + str(sum(r["verdict"] == "UNEXPLAINED" for r in rows)) + ".", ""]
    lines += [f"## synflow on {len(tau['archs'])} NAS-Bench-201 networks (foresight's model, C=16, CIFAR-10 head)", "",
              "Random cells (seeded), float32 networks, `vitcore.score(params='weights')` (BatchNorm without running "
              "statistics at mean 0, variance 1), compat's \"synflow\" (BatchNorm stripped), foresight's \"synflow\"; "
              "\"by the example\": vitcore.score's synflow before this report's fix (eval mode, the cells' BatchNorm "
              "normalising by the one all-ones example). params: the kept ops' parameters and the rest of the "
              "network.", "",
              "| Kendall τ | value |", "|---|---|"]
    for (a, b), t in tau["taus"].items():
        lines.append(f"| {a} vs {b} | {t:.3f} |")
    lines += ["", "| cell | params | foresight | vitcore.score | compat | by the example |",
              "|---|---|---|---|---|---|"]
    for i, arch in enumerate(tau["archs"]):
        c = tau["cols"]
        lines.append(f"| `{arch}` | {c['params'][i]} | {c['foresight'][i]:.6g} | {c['vitcore.score'][i]:.6g} | "
                     f"{c['compat'][i]:.6g} | {c['by the example'][i]:.6g} |")
    lines += ["", "## A batch split in k chunks (foresight's retry after CUDA runs out of memory)", "",
              f"timm-structured ViT, fp64, the same {args.batch} examples; score with k chunks / score of the whole "
              "batch: foresight's `calc_measure(..., split_data=k)`, vitcore.compat's passes with `chunks=k`.", "",
              "| k | measure | foresight | vitcore.compat |", "|---|---|---|---|"]
    for r in ratios:
        lines.append(f"| {r['k']} | {r['measure']} | {r['foresight']:.6g} | {r['vitcore']:.6g} |")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{today()}-foresight-compat.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(path)
    return path


if __name__ == "__main__":
    main()

"""Shared by the proxy tests: small models, the counted tensors, float64 references' plumbing and
tolerances derived from the dtypes' rounding and the problems' sizes.

Tolerances. ``U[dtype]`` is the unit roundoff u (half an ulp of 1). A length-n sum or dot product
computed in any order is within n·u·Σ|terms| of the exact one (Higham, "Accuracy and Stability of
Numerical Algorithms", eq. 3.5, γ_n ≈ n·u): ``bound64(n)`` is that relative bound for float64 with n
the number of multiply-adds the scores depend on (the forward and backward of the batch), which
covers every reduction in the passes however it is ordered; ``param_stats`` sums in float64, so a
float64 model's grad_norm, snip, plain and grasp get no fp32 slack (an fp32 rounding of the
per-tensor sums fails their tests). Ill-conditioned host steps (eigenvalues, log-determinants, ratios of small
spreads) get first-order perturbation bounds in their own tests.
"""
import copy

import torch
from torch import nn

from vitcore.cost import vit_cost
from vitcore.model import ViT, ViTConfig

from vitcore.proxies import PROXIES, UNITS

LAYERS = (nn.Linear, nn.Conv2d)
VIT_ONLY = tuple(p for p in PROXIES if UNITS[p].vit_only)  # they read a vitcore.ViT's blocks
ANY_MODEL = tuple(p for p in PROXIES if p not in VIT_ONLY)
U = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
TF32 = 2.0**-11  # a GPU's convolutions and matmuls in fp32 run in TF32 by default: 10 mantissa bits


def small_vit_config():
    return ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=12, depth=2,
                     num_heads=[1, 3], mlp_ratio=[2.0, 1.5], head_dim=5)


def small_vit():
    return ViT(small_vit_config())


def small_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 17), nn.ReLU(), nn.Linear(17, 9), nn.GELU(), nn.Linear(9, 5))


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 5),
    )


def bn_net():
    """The BatchNorm model of issue 15 item 4: Conv2d(1,4,3)-BatchNorm2d-ReLU-Flatten-Linear(144,3)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


MODELS = {"vit": small_vit, "mlp": small_mlp}


def macs(model: nn.Module, batch: int) -> int:
    """Multiply-adds of one forward of ``batch`` examples (8x8 one-channel inputs): the problem size."""
    if isinstance(model, ViT):
        return vit_cost(model.config, batch).macs_fwd
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            total += m.weight.numel() * 64  # at most one output position per input pixel
    return batch * total


def bound64(model: nn.Module, batch: int) -> float:
    """Relative bound for a float64 score: γ_n with n the forward + backward multiply-adds (3x forward)."""
    return 3 * macs(model, batch) * U[torch.float64]


def counted(model, which):
    if which == "weights":
        return [m.weight for m in model.modules() if isinstance(m, LAYERS)]
    return list(model.parameters())


def float64_train_copy(model):
    return copy.deepcopy(model).double().train()


def batch(n, seed, dtype=torch.float64, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


class NB201Cell(nn.Module):
    """A NAS-Bench-201 cell (Dong & Yang, ICLR 2020): nodes 0..3, node j = Σ_{i<j} op_ij(node i), the
    six ops listed in edge order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2); each conv is ReLU-Conv-BatchNorm
    with BatchNorm(affine=False, track_running_stats=False), as in NAS-Bench-201's cells."""

    def __init__(self, ops, channels):
        super().__init__()
        assert len(ops) == 6, ops
        self.ops = ops
        self.edges = nn.ModuleList(self._op(op, channels) for op in ops)

    @staticmethod
    def _op(op, c):
        if op in ("nor_conv_1x1", "nor_conv_3x3"):
            k = int(op[-1])
            return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, k, padding=k // 2, bias=False),
                                 nn.BatchNorm2d(c, affine=False, track_running_stats=False))
        if op == "avg_pool_3x3":
            return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        assert op in ("skip_connect", "none"), op
        return nn.Identity()

    def forward(self, x):
        nodes, e = [x], 0
        for j in range(1, 4):
            total = 0
            for i in range(j):
                if self.ops[e] != "none":
                    total = total + self.edges[e](nodes[i])
                e += 1
            nodes.append(total if isinstance(total, torch.Tensor) else torch.zeros_like(x))
        return nodes[3]


def nb201_net(ops=("nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "none", "nor_conv_3x3"),
              channels=3, classes=5):
    """Stem (Conv2d-BatchNorm2d, tracked statistics), two NB201 cells, global pooling, Linear."""
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         NB201Cell(ops, channels), NB201Cell(ops, channels),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

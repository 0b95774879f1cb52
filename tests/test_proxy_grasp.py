"""grasp against float64 double backward with .backward()-style autograd."""
import pytest
import torch
import torch.nn.functional as F
from proxy_helpers import MODELS, U, batch, bound64, counted, float64_train_copy

import vitcore


def reference(model, x, y, which):
    """(-Σ θ·Hg, Σ |θ·Hg|) in float64."""
    model = float64_train_copy(model)
    params = counted(model, which)
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    gf = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    hg = torch.autograd.grad(sum((gi * fi).sum() for gi, fi in zip(g, gf)), params)
    terms = [p * h for p, h in zip(params, hg)]
    return -sum(t.sum().item() for t in terms), sum(t.abs().sum().item() for t in terms)


@pytest.mark.parametrize("which", ["all", "weights"])
@pytest.mark.parametrize("make", MODELS)
def test_grasp_matches_float64(make, which, triton_off):
    torch.manual_seed(7)
    model = MODELS[make]().double()
    x, y = batch(7, seed=8)
    got = vitcore.score(model, x, y, proxies=["grasp"], params=which)["grasp"]
    value, scale = reference(model, x, y, which)
    # double backward is ~2x the backward's work: 2·bound64 relative to Σ|θ·Hg| (param_stats sums in float64)
    assert abs(got - value) <= 2 * bound64(model, 7) * scale


class _Attention(torch.nn.Module):
    """One multi-head self-attention layer and a head, its attention by ``F.scaled_dot_product_attention`` (as
    timm's and nn.MultiheadAttention's) or, with ``manual``, by softmax(q kᵀ / sqrt(d)) v written out."""

    def __init__(self, manual: bool):
        super().__init__()
        self.qkv, self.head, self.manual = torch.nn.Linear(8, 24), torch.nn.Linear(8, 5), manual

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, 2, 4).permute(2, 0, 3, 1, 4)
        o = (torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v if self.manual
             else F.scaled_dot_product_attention(q, k, v))
        return self.head(o.transpose(1, 2).reshape(B, N, 8).mean(1))


def test_grasp_differentiates_through_pytorchs_fused_attention():
    """PyTorch's flash and memory-efficient attention have no double backward; the Hessian pass runs SDPA
    on its math backend, so a model calling SDPA gets the grasp of the same model written out."""
    torch.manual_seed(3)
    sdpa = _Attention(manual=False).double()
    manual = _Attention(manual=True).double()
    manual.load_state_dict(sdpa.state_dict())
    x, y = torch.randn(6, 7, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    got = vitcore.score(sdpa, x, y, proxies=["grasp"])["grasp"]
    value, scale = reference(manual, x, y, "all")
    B, N = 6, 7
    macs = B * N * 8 * 24 + B * 2 * (2 * N * N * 4) + B * 8 * 5  # qkv, q kᵀ and p v of 2 heads, head
    assert abs(got - value) <= 2 * 3 * macs * U[torch.float64] * scale  # as bound64: forward + backward, doubled

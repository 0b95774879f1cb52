"""The ViT's attention choice (vitcore, sdpa, eager, auto) and building a ViT on its device."""
import math

import pytest
import torch

from conftest import DEVICE
from test_model import rounding_bound

import vitcore
import vitcore.attention_choice as choice
from vitcore.cost import vit_cost
from vitcore.model import ViT, ViTConfig, trunc_normal_
from vitcore.ops.dispatch import eager

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=5, embed_dim=24, depth=2, num_heads=[3, 1],
                mlp_ratio=2.0)  # N' = 17 tokens, d = 8 and 24


def _out_and_grads(model, x):
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    return [t.detach().double().cpu() for t in (out, *grads)]


@pytest.mark.parametrize("attention", choice.ATTENTION_CHOICES)
def test_every_choice_matches_float64(attention, triton_on):
    """Each choice in fp32 (vitcore: the Triton kernel, interpreted on CPU) against a float64 eager copy
    of the same weights, outputs and every gradient, within fp32's rounding bound for the model's work."""
    model = ViT(CFG, attention=attention, device=DEVICE, seed=3)
    ref = ViT(CFG, attention="eager", device="cpu", seed=0).double()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    n = 3 * vit_cost(CFG, 3).macs_fwd  # forward and backward
    got, want = _out_and_grads(model, x.to(DEVICE)), _out_and_grads(ref, x.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=rounding_bound(torch.float32, n, b.abs().max().item()), rtol=0)


@pytest.mark.parametrize("dtype, tokens, head_dim, triton, expected", [
    (torch.float32, 577, 64, True, True),
    (torch.float32, 4097, 64, True, True),
    (torch.float32, 576, 64, True, False),
    (torch.float32, 197, 64, True, False),
    (torch.float32, 730, 40, True, False),  # a PiT's first stage: a head dim the report did not measure
    (torch.float32, 4097, 96, True, False),  # measured slower (padded to a 128 tile)
    (torch.float32, 4097, 64, False, False),  # no kernel (a CPU tensor): vitcore would be its eager reference
    (torch.bfloat16, 4097, 64, True, False),
    (torch.float16, 577, 64, True, False),
    (torch.float64, 4097, 64, True, False),
])
def test_auto_follows_the_table(dtype, tokens, head_dim, triton, expected):
    assert choice.auto_uses_vitcore(dtype, tokens, head_dim, triton) is expected


@pytest.mark.parametrize("min_tokens, head_dims, runs", [
    (17, (8, 24), ["vitcore", "vitcore"]), (18, (8, 24), ["sdpa", "sdpa"]), (17, (8,), ["vitcore", "sdpa"]),
])
def test_auto_runs_what_the_table_picks(min_tokens, head_dims, runs, triton_on, monkeypatch):
    """auto's forward calls vitcore's flash_attention from the table's N' on (here moved down to the
    ViT's 17 tokens) for the table's head dims (here the blocks' 8 and 24), and SDPA elsewhere."""
    calls = []
    flash, sdpa = choice.flash_attention, choice.F.scaled_dot_product_attention
    monkeypatch.setitem(choice.AUTO_VITCORE_MIN_TOKENS, torch.float32, min_tokens)
    monkeypatch.setattr(choice, "AUTO_VITCORE_HEAD_DIMS", head_dims)
    monkeypatch.setattr(choice, "flash_attention", lambda *a: calls.append("vitcore") or flash(*a))
    monkeypatch.setattr(choice.F, "scaled_dot_product_attention", lambda *a: calls.append("sdpa") or sdpa(*a))
    ViT(CFG, attention="auto", device=DEVICE, seed=0)(torch.randn(2, 1, 8, 8, device=DEVICE))
    assert calls == runs


@pytest.mark.parametrize("attention", ["sdpa", "auto", "vitcore"])
def test_eager_block_runs_the_reference(attention, triton_on, monkeypatch):
    """Inside ``eager()`` (GraSP's double backward, synflow's float64) every choice is the eager reference."""
    monkeypatch.setitem(choice.AUTO_VITCORE_MIN_TOKENS, torch.float32, 1)
    monkeypatch.setattr(choice, "AUTO_VITCORE_HEAD_DIMS", (8, 24))  # auto would pick vitcore outside eager()
    model = ViT(CFG, attention=attention, device=DEVICE, seed=0)
    x = torch.randn(2, 1, 8, 8, device=DEVICE)
    with eager():
        out = model(x)
    reference = ViT(CFG, attention="eager", device=DEVICE, seed=0)
    assert torch.equal(out, reference(x))


def test_grasp_differentiates_twice_through_sdpa():
    model = ViT(CFG, attention="sdpa", device=DEVICE, seed=0)
    x, y = torch.randn(4, 1, 8, 8, device=DEVICE), torch.arange(4, device=DEVICE)
    s = vitcore.score(model, x, y, proxies=["grasp", "grad_norm"])
    assert math.isfinite(s["grasp"]) and s["grad_norm"] > 0


@pytest.mark.parametrize("attention", ["vitcore", "sdpa", "eager", "auto"])
def test_same_seed_and_device_same_weights(attention):
    rng = torch.get_rng_state()
    a = ViT(CFG, attention=attention, device=DEVICE, seed=11)
    b = ViT(CFG, attention="eager", device=DEVICE, seed=11)
    c = ViT(CFG, device=DEVICE, seed=12)
    assert torch.equal(torch.get_rng_state(), rng)  # a seed uses its own generator
    assert a.config.attention == attention and b.config.attention == "eager"
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert p.device.type == torch.device(DEVICE).type and not p.is_meta
        assert torch.equal(p, q), name
        if p.numel() > 1 and p.std() > 0:  # not a LayerNorm's ones or a zero bias
            assert not torch.equal(p, r), name


def test_without_a_seed_the_device_generator_draws():
    torch.manual_seed(5)
    a = ViT(CFG, device=DEVICE)
    torch.manual_seed(5)
    b = ViT(CFG, device=DEVICE)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_initial_values():
    model = ViT(CFG, device=DEVICE, seed=0)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            assert not m.bias.any() and m.weight.abs().max() <= 2.0 and m.weight.std() > 0
    assert model.cls_token.abs().max() < 1e-4 and model.pos_embed.std() > 0


@pytest.mark.parametrize("std, a, b", [(0.02, -2.0, 2.0), (1.0, -1.0, 0.5), (0.5, 0.25, 3.0)])
def test_trunc_normal_moments(std, a, b):
    """Mean and variance of N(0, std²) truncated to [a, b] (the closed forms), within 6 standard errors."""
    n = 400_000
    x = trunc_normal_(torch.empty(n, dtype=torch.float64), std, a, b, torch.Generator().manual_seed(0))
    assert a <= x.min() and x.max() <= b
    alpha, beta = a / std, b / std
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: (1 + math.erf(z / math.sqrt(2))) / 2  # noqa: E731
    mass = cdf(beta) - cdf(alpha)
    mean = std * (pdf(alpha) - pdf(beta)) / mass
    var = std ** 2 * (1 + (alpha * pdf(alpha) - beta * pdf(beta)) / mass - ((pdf(alpha) - pdf(beta)) / mass) ** 2)
    assert abs(x.mean().item() - mean) <= 6 * math.sqrt(var / n)
    assert abs(x.var().item() - var) <= 6 * var * math.sqrt(2 / n)


@pytest.mark.parametrize("make, error, message", [
    (lambda: ViTConfig(attention="flash"), ValueError, "attention='flash'; valid: vitcore, sdpa, eager, auto"),
    (lambda: ViT(CFG, attention=1), TypeError, "attention=1 must be a string"),
    (lambda: ViT(CFG, seed=-1), ValueError, "seed=-1 must be a non-negative int"),
    (lambda: ViT(CFG, seed=1.5), ValueError, "seed=1.5 must be a non-negative int"),
])
def test_bad_arguments_are_named(make, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_fused_false_is_eager():
    assert ViT(CFG, fused=False, seed=0).config.attention == "eager"
    assert ViT(CFG, attention="sdpa", seed=0).config.attention == "sdpa"

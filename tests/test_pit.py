"""PiT (vitcore.pit): the network against a float64 reference written here, its parameter count derived
by hand, its config and architecture checks, the "pit" space, and the ViT-only proxies on it."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE

import vitcore
from vitcore.pit import PiT, PiTConfig
from vitcore.proxies import score
from vitcore.proxies.dss import dss_weights
from vitcore.proxies.lswag import lswag_layers
from vitcore.proxies.meco import meco_layers
from vitcore.space import Arch, PiTArch, PiTSpace, arch_from_dict, get_space, sample

# odd sizes everywhere: a 5x5 grid pooled to 3x3 then 2x2, heads 3 wide, an MLP ratio of 1.5
SMALL = PiTConfig(img_size=20, patch_size=6, stride=3, in_chans=2, num_classes=5, base_dim=3, depth=(1, 2, 1),
                  num_heads=(1, 3, 3), mlp_ratio=1.5, attention="eager")


def reference_forward(p: dict, c: PiTConfig, x: torch.Tensor) -> torch.Tensor:
    """PiT written out from the module docstring, in float64, from the state dict ``p``."""
    p = {k: v.double() for k, v in p.items()}
    x = x.double()

    def ln(t, prefix):
        mu = t.mean(-1, keepdim=True)
        var = (t - mu).square().mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * p[prefix + ".weight"] + p[prefix + ".bias"]

    def lin(t, prefix):
        return t @ p[prefix + ".weight"].T + p[prefix + ".bias"]

    grid = F.conv2d(x, p["patch_embed.weight"], p["patch_embed.bias"], stride=c.stride) + p["pos_embed"]
    cls = p["cls_token"].expand(x.shape[0], -1, -1)
    for s, (blocks, heads) in enumerate(zip(c.depth, c.num_heads)):
        if s:
            pool = f"pools.{s - 1}"
            grid = F.conv2d(grid, p[pool + ".conv.weight"], p[pool + ".conv.bias"], stride=2, padding=1,
                            groups=grid.shape[1])
            cls = lin(cls, pool + ".fc")
        B, D, g, _ = grid.shape
        t = torch.cat([cls, grid.reshape(B, D, g * g).transpose(1, 2)], 1)  # (B, N', D)
        for i in range(blocks):
            b = f"stages.{s}.{i}"
            q, k, v = lin(ln(t, b + ".norm1"), b + ".attn.qkv").reshape(B, -1, 3, heads, c.base_dim).unbind(2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c.base_dim)
            o = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, -1, D)
            t = t + lin(o, b + ".attn.proj")
            h = lin(ln(t, b + ".norm2"), b + ".mlp.fc1")
            t = t + lin(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), b + ".mlp.fc2")
        cls, grid = t[:, :1], t[:, 1:].transpose(1, 2).reshape(B, D, g, g)
    return lin(ln(cls[:, 0], "norm"), "head")


def pit_param_count(base_dim, depth, num_heads, mlp_ratio, in_chans=3, num_classes=100, img=224, patch=16, stride=8):
    """Parameters of a PiT counted by hand: embedding, blocks, poolings, final norm and head."""
    D = [base_dim * h for h in num_heads]
    g = (img - patch) // stride + 1
    n = in_chans * patch * patch * D[0] + D[0] + D[0] * g * g + D[0]  # patch conv, positional embedding, class token
    for width, blocks in zip(D, depth):
        hidden = int(mlp_ratio * width)
        per_block = 4 * width + (3 * width * width + 3 * width) + (width * width + width) \
            + (width * hidden + hidden) + (hidden * width + width)  # 2 LayerNorms, QKV, W^O, fc1, fc2
        n += blocks * per_block
    for a, b in zip(D, D[1:]):
        n += b * 9 + b + a * b + b  # depthwise 3x3 conv (one input channel per group), class-token Linear
    return n + 2 * D[-1] + D[-1] * num_classes + num_classes  # final norm, head


@pytest.mark.parametrize("arch", [
    dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=6),
    dict(base_dim=32, depth=[1, 6, 6], num_heads=[2, 8, 8], mlp_ratio=4),
    dict(base_dim=40, depth=[3, 4, 2], num_heads=[8, 8, 8], mlp_ratio=2),
])
def test_parameter_count_matches_a_count_by_hand(arch):
    model = arch_from_dict(arch).config(224, 3, 100).build(device="meta")
    assert sum(p.numel() for p in model.parameters()) == pit_param_count(**arch)


@pytest.mark.parametrize("name, base_dim, heads, depth, millions", [
    ("PiT-XS", 48, (2, 4, 8), (2, 6, 4), 10.6), ("PiT-S", 48, (3, 6, 12), (2, 6, 4), 23.5),
    ("PiT-B", 64, (4, 8, 16), (3, 6, 4), 73.8),
])
def test_the_papers_models_have_the_papers_parameter_counts(name, base_dim, heads, depth, millions):
    """Heo et al. (ICCV 2021), Table 3: parameters in millions, printed to one decimal (ImageNet, 224²)."""
    cfg = PiTConfig(base_dim=base_dim, num_heads=heads, depth=depth, num_classes=1000)
    count = sum(p.numel() for p in cfg.build(device="meta").parameters())
    assert round(count / 1e6, 1) == millions, name


def test_mlp_hidden_width_is_truncated_as_the_source_does():
    """pit_subnet.py's MLP is int(D_s · mlp_ratio) wide (naver-ai/pit's too): 1.5 · 9 = 13.5 gives 13, not
    round's 14; 1.5 · 3 = 4.5 gives 4 either way."""
    model = SMALL.build(device="meta")
    assert [b.mlp.fc1.out_features for stage in model.stages for b in stage] == [4, 13, 13, 13]


def test_token_counts_at_224():
    assert PiTConfig().grids == (27, 14, 7) and PiTConfig().num_tokens == (730, 197, 50)
    assert SMALL.grids == (5, 3, 2)


@pytest.mark.parametrize("attention", ["eager", "vitcore"])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_and_gradients_match_the_float64_reference(seed, attention, request):
    """Eager attention, and vitcore's flash-attention kernel (interpreted on CPU) on every stage's
    token count (26, 10, 5) with heads 3 wide."""
    if attention == "vitcore":
        request.getfixturevalue("triton_on")
    model = SMALL.build(seed=seed, device=DEVICE, attention=attention)
    x = torch.randn(3, 2, 20, 20, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    out = model(x)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(out.square().sum(), list(params.values()))

    ref_params = {k: v.detach().double().cpu().requires_grad_() for k, v in params.items()}
    ref = reference_forward(ref_params, SMALL, x.cpu())
    ref_grads = torch.autograd.grad(ref.square().sum(), list(ref_params.values()))
    # fp32 rounding: a few u·sqrt(n) of the largest magnitude, n the multiply-adds behind one value; on a
    # GPU u is TF32's (cuDNN convolutions run in TF32 by default, the kernel's dots may)
    n = 3 * sum(p.numel() for p in params.values()) * max(SMALL.num_tokens)
    u = 2.0**-24 if DEVICE == "cpu" else 2.0**-11
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        bound = 4 * u * math.sqrt(n) * want.abs().max().item()
        torch.testing.assert_close(got.detach().double().cpu(), want, atol=bound, rtol=0)


def test_double_precision_model_matches_the_reference_to_float64_rounding():
    model = SMALL.build(seed=3).double()
    x = torch.randn(2, 2, 20, 20, dtype=torch.float64)
    ref = reference_forward(dict(model.named_parameters()), SMALL, x)
    n = 3 * sum(p.numel() for p in model.parameters()) * max(SMALL.num_tokens)  # as in the float32 test
    torch.testing.assert_close(model(x), ref, atol=4 * 2.0**-53 * math.sqrt(n) * ref.abs().max().item(), rtol=0)


def test_gradcheck_on_the_input():
    model = PiTConfig(img_size=8, patch_size=4, stride=2, in_chans=1, num_classes=2, base_dim=2, depth=(1, 1),
                      num_heads=(1, 2), mlp_ratio=1.0, attention="eager").build(seed=0).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,))


def test_same_seed_same_weights_and_initialisation():
    a, b = SMALL.build(seed=7), SMALL.build(seed=7)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(a.norm.weight, torch.ones_like(a.norm.weight))
    assert all(not m.bias.any() for m in a.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    assert a.stages[0][0].norm1.eps == 1e-6
    conv = a.pools[0].conv.weight  # LeCun normal over a fan-in of 9, truncated at ±2
    assert conv.abs().max() <= 2 and 0 < conv.std() < 1


def test_initialisation_draws_the_docstrings_scales():
    """PiT-Ti: the convolutions LeCun normal (std sqrt(1 / fan_in)), the positional embedding, class token and
    Linear weights N(0, .02²). n draws give a sample std within 6/sqrt(2n) of the true one (relative, the
    sample std's standard error is about 1/sqrt(2n)); n >= 1152 here, so within 13%."""
    model = PiTConfig().build(seed=0)
    want = {"patch_embed.weight": math.sqrt(1 / (3 * 16 * 16)), "pools.0.conv.weight": 1 / 3,
            "pools.1.conv.weight": 1 / 3, "pos_embed": 0.02, "cls_token": 0.02, "stages.1.0.attn.qkv.weight": 0.02,
            "pools.0.fc.weight": 0.02, "head.weight": 0.02}
    params = dict(model.named_parameters())
    for name, std in want.items():
        p = params[name].detach().double()
        assert abs(p.std().item() / std - 1) <= 6 / math.sqrt(2 * p.numel()), name
        assert abs(p.mean().item()) <= 6 * std / math.sqrt(p.numel()), name


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_heads=(2, 3, 6)), ValueError, r"3 heads after 2"),
    (dict(depth=(2, 6)), ValueError, r"one entry per stage"),
    (dict(depth=()), TypeError, r"depth=\(\)"),
    (dict(depth=(2, 0, 4)), ValueError, r"depth=\(2, 0, 4\)"),
    (dict(num_heads=(2, 4.5, 8)), TypeError, r"num_heads"),
    (dict(mlp_ratio=0), ValueError, r"mlp_ratio=0"),
    (dict(mlp_ratio=True), ValueError, r"mlp_ratio=True"),
    (dict(img_size=8), ValueError, r"patch_size=16 is larger than img_size=8"),
    (dict(stride=0), ValueError, r"stride=0"),
    (dict(base_dim=2.5), TypeError, r"base_dim=2.5"),
])
def test_config_errors_name_the_bad_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        PiTConfig(**kwargs)


def test_forward_refuses_a_wrong_input():
    model = SMALL.build(seed=0)
    with pytest.raises(ValueError, match=r"input shape \(1, 3, 20, 20\) does not match \(B, 2, 20, 20\)"):
        model(torch.zeros(1, 3, 20, 20))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])
    with pytest.raises(TypeError, match="PiTConfig"):
        PiT({"base_dim": 3})


def test_arch_json_round_trip_id_and_defaults():
    given = {"base_dim": 16, "mlp_ratio": 6, "depth": [2, 8, 4], "num_heads": [2, 4, 4]}
    arch = arch_from_dict(given)
    assert isinstance(arch, PiTArch) and (arch.patch_size, arch.stride) == (16, 8)
    assert arch == arch_from_dict({**given, "patch_size": 16, "stride": 8}) == PiTArch.from_json(arch.to_json())
    assert arch_from_dict({**arch.to_dict(), "id": arch.id}) == arch
    assert arch_from_dict({**given, "head_dim": None}) == arch_from_dict({**given, "head_dim": 16}) == arch
    assert arch.id != arch_from_dict({**given, "stride": 16}).id
    # whole numbers of another type (a float-typed tool's 16.0) are the same architecture, the same id
    floats = arch_from_dict({**given, "base_dim": 16.0, "patch_size": np.int64(16), "stride": 8.0})
    assert floats == arch and floats.id == arch.id and type(floats.base_dim) is int
    # the canonical JSON and the id are pinned so ids never change between versions
    assert arch.to_json() == ('{"base_dim":16,"depth":[2,8,4],"mlp_ratio":6.0,"num_heads":[2,4,4],'
                              '"patch_size":16,"stride":8}')
    assert arch.id == "67b7286d45cf"
    assert isinstance(arch_from_dict({"embed_dim": 8, "depth": 1, "num_heads": [1], "mlp_ratio": [2.0],
                                      "patch_size": 4}), Arch)


@pytest.mark.parametrize("fields, error, message", [
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4]), ValueError, "must have exactly the fields"),
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=6, head_dim=64), ValueError,
     "head_dim=64: a PiT's heads are base_dim=16 wide"),
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=6, embed_dim=64), ValueError,
     "must have exactly the fields"),
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=[6, 6, 6]), TypeError, r"mlp_ratio=\[6, 6, 6\]"),
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[4, 2, 4], mlp_ratio=6), ValueError, "2 heads after 4"),
    (dict(base_dim=16, depth="284", num_heads=[2, 4, 4], mlp_ratio=6), TypeError, "depth='284'"),
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=6, id="0" * 12), ValueError, "does not match"),
    # the patch size was named img_size (it is checked as the smallest image), the depth's entries "per block"
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=6, patch_size=None), TypeError,
     r"^patch_size=None must be an int"),
    (dict(base_dim=16, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=6, patch_size=0), ValueError,
     r"^patch_size=0 must be positive"),
    (dict(base_dim=16, depth=None, num_heads=[2, 4, 4], mlp_ratio=6), TypeError, r"depth=None .* one entry per stage$"),
    (dict(base_dim=16.5, depth=[2, 8, 4], num_heads=[2, 4, 4], mlp_ratio=6), TypeError, r"^base_dim=16.5 must be an int"),
])
def test_bad_arch_fields_name_the_problem(fields, error, message):
    with pytest.raises(error, match=message):
        arch_from_dict(fields)


def test_pit_space_size_is_the_count_of_its_valid_architectures():
    space = get_space("pit")
    heads = [h for h in itertools.product((2, 4, 8), repeat=3) if h[1] % h[0] == 0 and h[2] % h[1] == 0]
    assert len(heads) == 10 and sorted(space.heads_sequences()) == sorted(heads)
    assert space.size == 4 * 4 * 3 * 3 * 3 * len(heads)
    tiny = PiTSpace(name="tiny", img_size=8, in_chans=1, num_classes=2, patch_size=4, stride=2, base_dims=(2, 3),
                    mlp_ratios=(1.0,), stage_depths=((1, 2), (1,)), stage_heads=((1, 2), (2, 3)))
    drawn = sample(tiny, tiny.size, seed=0)  # every architecture, each once
    assert len({a.id for a in drawn}) == tiny.size == 2 * 2 * 3  # heads (1, 2), (1, 3), (2, 2)
    with pytest.raises(ValueError, match="holds 12 distinct"):
        sample(tiny, 13)


def test_pit_space_samples_are_valid_distinct_and_repeatable():
    space = get_space("pit")
    archs = sample(space, 40, seed=5)
    assert archs == sample(space, 40, seed=5) and len({a.id for a in archs}) == 40
    for a in archs:
        assert a.base_dim in space.base_dims and a.mlp_ratio in space.mlp_ratios
        assert all(d in c for d, c in zip(a.depth, space.stage_depths))
        assert all(b % h == 0 for h, b in zip(a.num_heads, a.num_heads[1:]))
    with pytest.raises(ValueError, match="no heads sequence"):
        PiTSpace(name="bad", img_size=8, in_chans=1, num_classes=2, patch_size=4, stride=2, base_dims=(2,),
                 mlp_ratios=(1.0,), stage_depths=((1,), (1,)), stage_heads=((4,), (6,)))


@pytest.mark.filterwarnings("ignore:.*saturated")  # 6 examples: swap's count is saturated, and said so
def test_block_reading_proxies_see_every_stage():
    model = SMALL.build(seed=0)
    blocks = sum(SMALL.depth)
    assert len(meco_layers(model)) == blocks and len(lswag_layers(model)) == 4 * blocks
    msa, mlp = dss_weights(model)
    assert len(msa) == 2 * blocks and len(mlp) == 2 * blocks + 1  # the head counts with the MLPs
    x, y = torch.randn(6, 2, 20, 20), torch.randint(0, 5, (6,))
    scores = score(model, x, y, proxies=list(vitcore.PROXIES))
    assert set(scores) == set(vitcore.PROXIES)
    assert all(math.isfinite(v) for v in scores.values()), scores


def test_score_archs_scores_pits_and_reads_them_back(tmp_path):
    archs = sample(PiTSpace(name="tiny", img_size=8, in_chans=1, num_classes=3, patch_size=4, stride=2,
                            base_dims=(2, 3), mlp_ratios=(2.0,), stage_depths=((1,), (1, 2)),
                            stage_heads=((1,), (1, 2))), 3, seed=0)
    batch = vitcore.Batch(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]), 3, "test")
    out = tmp_path / "scores.jsonl"
    records = vitcore.score_archs(archs, batch, str(out), proxies=["params", "nwot"], device="cpu")
    assert [r["id"] for r in records] == [a.id for a in archs] and all("scores" in r for r in records)
    for r, a in zip(records, archs):
        assert r["scores"]["params"] == pit_param_count(a.base_dim, a.depth, a.num_heads, a.mlp_ratio, in_chans=1,
                                                        num_classes=3, img=8, patch=4, stride=2)
    assert vitcore.read_archs(str(out)) == archs

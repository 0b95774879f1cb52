"""timm models through vitcore: the attention routed through vitcore's op against timm's own forward and
backward (float64 references); a timm ViT holding a vitcore ViT's weights scores as that ViT with every
proxy; every proxy finite on ViT-Tiny and DeiT-S; ``vitcore score --family timm`` end to end.

timm is an optional extra: without it this file is skipped, except where VITCORE_TEST_TIMM=1 (CI's
.ci/run sets it), where a missing timm fails instead of skipping.
"""
import copy
import json
import math
import os
from functools import partial

import pytest
import torch
from torch import nn

from conftest import DEVICE
from proxy_helpers import U
from vitcore.attention_choice import ATTENTION_CHOICES
from vitcore.cli import main
from vitcore.cost import vit_cost
from vitcore.data import load_batch
from vitcore.model import ViT, ViTConfig
from vitcore.proxies import PROXIES, ProxyFailed, score
from vitcore.proxies.base import find_vit_blocks, vit_blocks
from vitcore.runs import read_results, score_archs

if os.environ.get("VITCORE_TEST_TIMM") == "1":
    import timm  # CI: a missing timm is a failure, not a skip
else:
    timm = pytest.importorskip("timm")

from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from vitcore.timm_attention import TimmAttention, use_vitcore_attention  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps


def timm_vit(img_size, patch_size, embed_dim, num_heads, depth=2, **kwargs):
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=3, num_classes=7, embed_dim=embed_dim,
                             depth=depth, num_heads=num_heads, mlp_ratio=2.0, qkv_bias=True, **kwargs)


def forward_backward(model, x, w):
    """(output, d(Σ w·out)/dx, and that gradient for every parameter) of one forward and backward."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    grads = torch.autograd.grad((out * w).sum(), [x, *model.parameters()])
    return [out.detach(), *grads]


# (image, patch, D, heads, timm options): N' = 10 with d = 5, N' = 2 with d = 48, N' = 1 (one patch and no
# class token), q/k LayerNorms (qk_norm)
SHAPES = [(12, 4, 20, 4, {}), (8, 8, 48, 1, {}), (4, 4, 12, 2, dict(class_token=False, global_pool="avg")),
          (12, 4, 18, 3, dict(qk_norm=True))]


@pytest.mark.parametrize("attention", ATTENTION_CHOICES)
@pytest.mark.parametrize("img, patch, dim, heads, options", SHAPES)
def test_routed_attention_matches_timms_forward_and_backward(attention, img, patch, dim, heads, options):
    """Output, input gradient and every parameter gradient: the routed model in float64 against timm's own
    in float64 (within float64 rounding of the problem's size); in float32 within twice timm's own
    float32 error plus a few float32 roundings of a length-D reduction (STYLE.md's rule)."""
    torch.manual_seed(0)
    model = timm_vit(img, patch, dim, heads, **options).eval()
    x = torch.randn(3, 3, img, img, dtype=torch.float64)
    w = torch.randn(3, 7, dtype=torch.float64)
    ref64 = forward_backward(copy.deepcopy(model).double(), x, w)
    timm32 = forward_backward(model, x.float(), w.float())
    routed = copy.deepcopy(model)
    assert use_vitcore_attention(routed, attention) == 2
    assert all(isinstance(b.attn, TimmAttention) and b.attn.attention == attention for b in routed.blocks)
    assert routed.state_dict().keys() == model.state_dict().keys()
    n = 3 * vit_cost(ViTConfig(img_size=img, patch_size=patch, embed_dim=dim, num_heads=heads, depth=2,
                               mlp_ratio=2.0), 3).macs_fwd  # forward + backward multiply-adds
    # the scale of the terms: a gradient that cancels to ~0 (k_norm's bias: softmax ignores a shift of k)
    # is judged by the magnitudes it was summed from, not by its own
    scale = max(ref.abs().max() for ref in ref64)
    for ours, ref in zip(forward_backward(copy.deepcopy(routed).double(), x, w), ref64):
        assert ours.dtype == torch.float64
        assert (ours - ref).abs().max() <= n * U[torch.float64] * scale
    for ours, theirs, ref in zip(forward_backward(routed, x.float(), w.float()), timm32, ref64):
        atol = 4 * EPS32 * math.sqrt(dim) * scale
        assert (ours.double() - ref).abs().max() <= 2 * (theirs.double() - ref).abs().max() + atol


def test_routed_attention_runs_vitcores_kernel(triton_on):
    """``vitcore`` with the Triton kernel forced (interpreted on CPU): fp32 against timm's float64 forward
    and backward, within twice timm's own fp32 error plus the kernel's fp32 rounding at this size."""
    torch.manual_seed(1)
    model = timm_vit(12, 4, 20, 4).to(DEVICE)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, device=DEVICE)
    w = torch.randn(2, 7, dtype=torch.float64, device=DEVICE)
    ref64 = forward_backward(copy.deepcopy(model).double(), x, w)
    timm32 = forward_backward(model, x.float(), w.float())
    use_vitcore_attention(model, "vitcore")
    scale = max(ref.abs().max() for ref in ref64)
    for ours, theirs, ref in zip(forward_backward(model, x.float(), w.float()), timm32, ref64):
        assert torch.isfinite(ours).all()
        atol = 8 * EPS32 * math.sqrt(20) * scale
        assert (ours.double() - ref).abs().max() <= 2 * (theirs.double() - ref).abs().max() + atol


def test_routing_again_changes_the_choice_and_bad_input_is_refused():
    model = timm_vit(8, 4, 12, 2)
    assert use_vitcore_attention(model, "sdpa") == 2
    assert use_vitcore_attention(model, "eager") == 2 and model.blocks[1].attn.attention == "eager"
    assert use_vitcore_attention(nn.Sequential(nn.Linear(2, 2)), "auto") == 0
    with pytest.raises(ValueError, match="attention='flash'; valid: vitcore, sdpa, eager, auto"):
        use_vitcore_attention(model, "flash")
    with pytest.raises(ValueError, match=r"blocks.0.attn: attention dropout p=0.1; vitcore's attention has none"):
        use_vitcore_attention(timm_vit(8, 4, 12, 2, attn_drop_rate=0.1), "auto")
    with pytest.raises(ValueError, match="non-causal without a mask"):
        model.blocks[0].attn(torch.randn(1, 5, 12), attn_mask=torch.zeros(5, 5))
    from timm.layers import Attention
    with pytest.raises(ValueError, match="model is itself a Attention, which cannot be replaced in place"):
        use_vitcore_attention(Attention(12, 2), "auto")  # it was counted as routed and gained a child ""
    assert use_vitcore_attention(model.blocks[0].attn, "sdpa") == 1 and model.blocks[0].attn.attention == "sdpa"


def test_an_attention_shared_by_two_blocks_is_routed_in_both():
    """named_modules lists a shared module once: only its first place was routed (round four, case 16)."""
    model = timm_vit(8, 4, 12, 2)
    model.blocks[1].attn = model.blocks[0].attn
    assert use_vitcore_attention(model, "eager") == 1
    assert isinstance(model.blocks[1].attn, TimmAttention) and model.blocks[1].attn is model.blocks[0].attn


def vitcore_as_timm(vit: ViT) -> nn.Module:
    """A timm VisionTransformer of ``vit``'s shape (one head count and MLP ratio for every block, LayerNorm
    eps 1e-5 as vitcore's) holding ``vit``'s weights: the same function, parameter for parameter."""
    c = vit.config
    model = VisionTransformer(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans,
                              num_classes=c.num_classes, embed_dim=c.embed_dim, depth=c.depth,
                              num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                              norm_layer=partial(nn.LayerNorm, eps=1e-5))
    state = {k.replace("patch_embed.", "patch_embed.proj.", 1): v for k, v in vit.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.filterwarnings("ignore:.*distinct patterns:RuntimeWarning")
def test_a_timm_vit_with_vitcores_weights_scores_as_vitcores_vit():
    """Every registered proxy, float64 (so the comparison isolates the two implementations, not fp32
    noise): the scores agree within γ_n = n·u64 relative, n the forward + backward multiply-adds."""
    config = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=5, embed_dim=24, depth=2, num_heads=3,
                       mlp_ratio=1.5)
    vit = ViT(config, seed=3)
    theirs = vitcore_as_timm(vit)
    use_vitcore_attention(theirs, "auto")  # as the timm family runs it; eager inside float64 and H·g passes
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (10,), generator=g)
    vit64, theirs64 = copy.deepcopy(vit).double(), theirs.double()
    assert torch.allclose(vit64(x), theirs64(x), rtol=0, atol=1e-12)
    ours, timms = score(vit64, x, y, proxies=PROXIES), score(theirs64, x, y, proxies=PROXIES)
    bound = 3 * vit_cost(config, 10).macs_fwd * U[torch.float64]
    for p in PROXIES:
        assert math.isfinite(ours[p]), p
        assert abs(ours[p] - timms[p]) <= bound * abs(ours[p]), (p, ours[p], timms[p])


@pytest.mark.filterwarnings("ignore:.*distinct patterns:RuntimeWarning")  # SWAP may saturate on 10 images
def test_in_fp32_too_a_timm_vit_with_vitcores_weights_scores_as_vitcores_vit():
    """The same pair in float32, as a run scores them: each proxy within twice γ_n = n·u32 relative (the
    worst-case rounding of either model's n forward + backward multiply-adds, Higham eq. 3.5)."""
    config = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=20, depth=2, num_heads=2,
                       mlp_ratio=2.0)
    vit = ViT(config, seed=5)
    theirs = vitcore_as_timm(vit)
    use_vitcore_attention(theirs, "auto")
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(10, 1, 8, 8, generator=g), torch.randint(0, 5, (10,), generator=g)
    ours, timms = score(vit, x, y, proxies=PROXIES), score(theirs, x, y, proxies=PROXIES)
    bound = 2 * 3 * vit_cost(config, 10).macs_fwd * U[torch.float32]
    assert bound < 0.5  # a bound that can fail
    for p in PROXIES:
        assert abs(ours[p] - timms[p]) <= bound * abs(ours[p]), (p, ours[p], timms[p])


@pytest.mark.filterwarnings("ignore:.*distinct patterns:RuntimeWarning")  # SWAP saturates at 2^8 on 8 images
@pytest.mark.parametrize("name, dim, depth", [("vit_tiny_patch16_224", 192, 12), ("deit_small_patch16_224", 384, 12)])
def test_every_proxy_is_finite_on_timm_vit_tiny_and_deit_s(tmp_path, name, dim, depth):
    """The named timm networks at 32x32 (4 patches of 16, N' = 5) on 8 synthetic images, every proxy,
    through the timm family (built from a record, attention routed)."""
    batch = load_batch("synthetic", 8, 0, _Shape(32, 3, 10))
    (record,) = score_archs([{"model": name, "img_size": 32}], batch, str(tmp_path / "r.jsonl"), proxies=PROXIES,
                            device="cpu", family="timm")
    assert "error" not in record and "proxy_errors" not in record, record
    assert all(math.isfinite(v) for v in record["scores"].values()), record["scores"]
    model = timm.create_model(name, img_size=32, num_classes=10)
    assert record["params"] == sum(p.numel() for p in model.parameters())
    assert len(model.blocks) == depth and model.embed_dim == dim


class _Shape:
    """The image shape synthetic data is drawn for (what load_batch reads of a search space)."""

    def __init__(self, img_size, in_chans, num_classes):
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes


def test_the_block_adapter_knows_timm_vits_and_names_what_it_needs():
    model = timm_vit(8, 4, 12, 2)
    assert find_vit_blocks(model) == list(model.blocks)
    assert find_vit_blocks(timm.create_model("resnet18", num_classes=3)) is None
    for proxy in ("dss", "meco", "lswag", "az_expressivity", "az_trainability"):
        with pytest.raises(TypeError, match=rf"{proxy} needs a vitcore ViT or PiT or a timm VisionTransformer .*"
                                            r"attn.qkv, attn.proj, mlp.fc1, mlp.fc2, norm2.*got ResNet"):
            score(timm.create_model("resnet18", num_classes=3), torch.randn(4, 3, 16, 16),
                  torch.randint(0, 3, (4,)), proxies=[proxy])
    with pytest.raises(ProxyFailed, match="meco failed: TypeError: meco reads the GELU activations of the blocks' "
                                          "MLPs; VisionTransformer's blocks have none"):
        score(timm_vit(8, 4, 12, 2, act_layer=nn.SiLU), torch.randn(4, 3, 8, 8), torch.randint(0, 7, (4,)),
              proxies=["meco"])
    model.blocks[1].mlp.fc2 = nn.Identity()
    with pytest.raises(TypeError, match=r"VisionTransformer.blocks\[1\].mlp.fc2 is a Identity, not an nn.Linear"):
        vit_blocks(model, "dss", "it tells MSA from MLP layers")


RECORDS = [{"model": "vit_tiny_patch16_224", "patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 3},
           {"model": "deit_tiny_patch16_224", "patch_size": 2, "depth": 1, "embed_dim": 24, "num_heads": 2},
           {"id": "wide", "model": "vit_small_patch16_224", "patch_size": 4, "depth": 1, "embed_dim": 96,
            "num_heads": 6}]
CLI_PROXIES = "grad_norm,snip,dss,meco"


def _score(tmp_path, out, *extra):
    archs = tmp_path / "timm.jsonl"
    archs.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return main(["score", "--family", "timm", "--archs", str(archs), "--batch-size", "8", "--proxies", CLI_PROXIES,
                 "--device", "cpu", "--out", str(out), *extra])


def test_vitcore_score_family_timm_end_to_end(tmp_path, capsys, threads_of_workers):
    """Results lines on the 8x8 digits (timm's img_size, in_chans, num_classes from the batch), --resume,
    --workers 2 equal to one worker (with as many threads), and vitcore evaluate on them."""
    one = tmp_path / "one.jsonl"
    threads_of_workers(2)
    assert _score(tmp_path, one) == 0
    assert "3 scored, 0 failed" in capsys.readouterr().out
    records = read_results(str(one))
    assert [r["arch"] for r in records] == RECORDS and records[2]["id"] == "wide"
    for r in records:
        assert r["settings"]["family"] == "timm" and r["settings"]["builder"] == "vitcore.families:timm_builder"
        assert r["settings"]["attention"] == "auto" and all(math.isfinite(v) for v in r["scores"].values())
    first = records[0]
    model = timm.create_model("vit_tiny_patch16_224", patch_size=4, depth=2, embed_dim=48, num_heads=3, img_size=8,
                              in_chans=1, num_classes=10)
    assert first["params"] == sum(p.numel() for p in model.parameters())

    before = one.read_text()
    assert _score(tmp_path, one, "--resume") == 0
    assert one.read_text() == before

    two = tmp_path / "two.jsonl"
    assert _score(tmp_path, two, "--workers", "2") == 0
    by_id = {r["id"]: r for r in read_results(str(two))}
    assert {i: r["scores"] for i, r in by_id.items()} == {r["id"]: r["scores"] for r in records}

    truth = tmp_path / "truth.csv"
    truth.write_text("id,acc_mean\n" + "".join(f"{r['id']},{acc}\n" for r, acc in zip(records, (0.5, 0.7, 0.6))))
    assert main(["evaluate", "--scores", str(one), "--truth", str(truth), "--out", str(tmp_path / "ev")]) == 0
    text = (tmp_path / "ev" / "evaluation.md").read_text()
    assert all(text.count(f"| {p} |") == 1 for p in CLI_PROXIES.split(","))


def test_timm_records_are_checked_before_scoring(tmp_path):
    for bad, message in (({"depth": 2}, r'line 1: a timm record needs a "model" string'),
                         ({"model": "no_such_net"}, r"line 1: 'no_such_net' is not a timm model")):
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
        with pytest.raises(SystemExit) as stop:
            main(["score", "--family", "timm", "--archs", str(tmp_path / "bad.jsonl"), "--out",
                  str(tmp_path / "r.jsonl")])
        assert stop.value.code == 2
    assert not (tmp_path / "r.jsonl").exists()


def test_a_timm_cnn_builds_and_a_headless_record_is_its_own_error(tmp_path):
    """img_size was given to every timm model, so no convolutional one built; a record with
    num_classes=0 (no head) had its features scored as logits and ranked first (round four, cases 3, 12)."""
    batch = load_batch("digits", 8, 0, _Shape(8, 1, 10))
    records = score_archs([{"id": "r18", "model": "resnet18"},
                           {"id": "headless", "model": "vit_tiny_patch16_224", "patch_size": 4, "depth": 1,
                            "embed_dim": 24, "num_heads": 2, "num_classes": 0},
                           {"id": "fixed", "model": "vit_tiny_patch16_224", "patch_size": 4, "depth": 1,
                            "embed_dim": 24, "num_heads": 2, "img_size": 32}],
                          batch, str(tmp_path / "r.jsonl"), proxies=["grad_norm", "synflow"], device="cpu", family="timm")
    assert math.isfinite(records[0]["scores"]["grad_norm"]), records[0]
    assert records[0]["params"] == sum(p.numel() for p in timm.create_model("resnet18", in_chans=1,
                                                                            num_classes=10).parameters())
    assert records[1]["error"].startswith("ValueError: the model returned 24 class scores per example, not the 0 it "
                                          "is scored for (num_classes)")
    assert records[2]["error"].startswith("AssertionError: Input height (8) doesn't match model (32)")

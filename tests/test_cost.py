import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitcore.cost import COMPONENTS, msa_macs, vit_cost
from vitcore.model import ViT, ViTConfig

CONFIGS = [
    ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=2),
    ViTConfig(  # per-block heads and ratios, head_dim != D/H, odd sizes, no qkv bias
        img_size=12, patch_size=4, in_chans=3, num_classes=7, embed_dim=40, depth=3,
        num_heads=(1, 3, 4), mlp_ratio=(1.52, 2.0, 3.3), head_dim=20, qkv_bias=False,  # 1.52·40 rounds up
    ),
    ViTConfig(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=(3, 6), mlp_ratio=4.0),
    ViTConfig(  # heads embed_dim / num_heads wide per block (AutoFormer's trained networks): E = D
        img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=24, depth=3,
        num_heads=(3, 4, 2), mlp_ratio=(3.5, 4.0, 3.5), head_dim=None,
    ),
]


@pytest.mark.parametrize("n, d, proj, core", [(1, 1, 4, 2), (197, 192, 4 * 197 * 192**2, 2 * 197**2 * 192),
                                              (3, 5, 300, 90)])
def test_msa_macs_terms(n, d, proj, core):
    m = msa_macs(n, d)
    assert (m.proj, m.core, m.total) == (proj, core, proj + core)


def test_msa_macs_crossover_at_2d_and_inner_width():
    d = 96
    assert msa_macs(2 * d, d).proj == msa_macs(2 * d, d).core
    assert msa_macs(2 * d - 1, d).core < msa_macs(2 * d - 1, d).proj
    m = msa_macs(10, 6, inner=8)  # 2 heads of 4 on a width-6 stream
    assert (m.proj, m.core) == (3 * 10 * 6 * 8 + 10 * 8 * 6, 2 * 10 * 10 * 8)


@pytest.mark.parametrize("args, error, match", [((0, 4), ValueError, "n=0"), ((4, -1), ValueError, "d=-1"),
                                               ((4.0, 4), TypeError, "n=4.0"), ((True, 4), TypeError, "n=True"),
                                               ((4, 4, 0), ValueError, "inner=0")])
def test_msa_macs_rejects_bad_sizes_naming_them(args, error, match):
    with pytest.raises(error, match=match):
        msa_macs(*args)


def test_vit_cost_hand_counted():
    """CONFIGS[0] by hand: D=32, 2 heads of 16, N'=5 (4 patches + cls), MLP hidden 128, 10 classes."""
    c = vit_cost(CONFIGS[0], batch=2)
    assert c.macs == {
        "patch_embed": 2 * 4 * (1 * 4 * 4) * 32,  # B · patches · C·p² · D
        "msa_proj": 2 * 4 * 5 * 32 * 32,  # B · 4N'D²
        "msa_core": 2 * 2 * 5 * 5 * 32,  # B · 2N'²D
        "mlp": 2 * 2 * 5 * 32 * 128,  # B · 2N'·D·h
        "head": 2 * 32 * 10,  # B · D · classes, class token only
    }
    assert c.flops_fwd == 2 * sum(c.macs.values())
    assert c.flops_bwd == 2 * (2 * (c.macs_fwd - c.macs["patch_embed"]) + c.macs["patch_embed"])
    params = (16 * 32 + 32) + 32 + 5 * 32  # patch conv, cls, pos
    params += 2 * 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)  # block
    params += 2 * 32 + 32 * 10 + 10  # final norm, head
    assert c.params == params
    assert set(c.macs) == set(COMPONENTS) and len(c.blocks) == 1


@pytest.mark.parametrize("config", CONFIGS)
def test_params_match_the_model(config):
    assert vit_cost(config).params == sum(p.numel() for p in ViT(config).parameters())


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("config", CONFIGS)
def test_flops_match_flop_counter_mode(config, batch):
    """FlopCounterMode counts matmuls, convolutions and attention, 2 FLOPs per MAC, as vit_cost does."""
    torch.manual_seed(0)
    model = ViT(config)
    x = torch.randn(batch, config.in_chans, config.img_size, config.img_size)
    cost = vit_cost(config, batch)
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    assert fwd.get_total_flops() == cost.flops_fwd
    with FlopCounterMode(display=False) as both:
        model(x).sum().backward()
    assert both.get_total_flops() == cost.flops_fwd_bwd
    counts = both.get_flop_counts()
    assert sum(counts["ViT.patch_embed"].values()) == 2 * 2 * cost.macs["patch_embed"]  # fwd + weight grad
    assert sum(counts["ViT.head"].values()) == 3 * 2 * cost.macs["head"]


def test_per_block_head_width_keeps_attention_width_at_D():
    """head_dim=None: every block attends in E = H·(D/H) = D dimensions, so its MSA costs 4N'D² + 2N'²D."""
    c = vit_cost(CONFIGS[3], batch=1)
    N, D = 17, 24
    assert all(b["msa_proj"] == 4 * N * D * D and b["msa_core"] == 2 * N * N * D for b in c.blocks)


def test_vit_cost_rejects_bad_arguments():
    with pytest.raises(TypeError, match="ViTConfig"):
        vit_cost({"embed_dim": 16}, 1)
    with pytest.raises(ValueError, match="batch=0"):
        vit_cost(CONFIGS[0], 0)

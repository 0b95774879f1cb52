"""Shared cases for the ViT-native proxies' tests (dss, swap, meco, lswag): small ViTs with odd sizes
(5 or 17 tokens, widths 12 and 15, heads of width D/H: 12/3 = 4, 15/5 = 3, an MLP of ratio 1), a small
PiT whose stages differ in tokens and width (26 tokens 3 wide, then 10 tokens 9 wide), and the float64
copies their references run on."""
import torch
from torch import nn

import vitcore
from vitcore.model import Block, ViTConfig
from vitcore.pit import PiTConfig

CONFIGS = {
    "tiny": ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=12, depth=2,
                      num_heads=[1, 3], mlp_ratio=[2.0, 1.5]),  # N' = 5
    "odd": ViTConfig(img_size=8, patch_size=2, in_chans=3, num_classes=7, embed_dim=15, depth=3,
                     num_heads=[5, 3, 1], mlp_ratio=[4.0, 3.5, 1.0]),  # N' = 17
    # grid 5x5 then 3x3: N' = 26, then 10; D = 3, then 9 (MLP hidden 4, then 13)
    "pit": PiTConfig(img_size=12, patch_size=4, stride=2, in_chans=2, num_classes=5, base_dim=3, depth=(1, 2),
                     num_heads=(1, 3), mlp_ratio=1.5, attention="eager"),
}
EPS32 = torch.finfo(torch.float32).eps


def make_model(name, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return CONFIGS[name].build(attention="eager").to(dtype)


def make_batch(name, B, seed, dtype=torch.float32):
    c = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, c.in_chans, c.img_size, c.img_size, generator=g, dtype=dtype)
    return x, torch.randint(0, c.num_classes, (B,), generator=g)


def copy64(model):
    m = model.config.build(attention="eager").double()
    m.load_state_dict(model.state_dict())
    return m


def blocks(model):
    """The Blocks of a ViT or a PiT (every stage's), in forward order."""
    return [b for b in model.modules() if isinstance(b, Block)]


def block_linears(model):
    return [m for b in blocks(model) for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]


def score_one(model, x, y, name, **kw):
    return vitcore.score(model, x, y, proxies=[name], **kw)[name]


def swap_reference(model, x):
    """The number of distinct columns of the (B, U) GELU-input sign matrix, by a Python set."""
    m = copy64(model)
    codes = []
    hooks = [a.register_forward_pre_hook(lambda mod, args: codes.append((args[0] > 0).reshape(len(x), -1)))
             for a in m.modules() if isinstance(a, nn.GELU)]
    with torch.no_grad():
        m(x.double())
    for h in hooks:
        h.remove()
    active = torch.cat(codes, 1).numpy()  # (B, U)
    return len({tuple(col) for col in active.T})

"""DSS, MeCo, SWAP and L-SWAG against straightforward float64 implementations written here.

Each reference loops layer by layer (and example by example for L-SWAG) on a float64 copy of the
model, with numpy's nuclear norms, correlations and eigenvalues; the proxies batch and reduce on the
device. Odd sizes: 5 or 17 tokens, widths 12 and 15, heads of width D/H (12/3 = 4, 15/5 = 3).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitcore.model import MLP, MSA, Block, ViT, ViTConfig
from vitcore.native.dss import dss, dss_reduce
from vitcore.native.lswag import lswag
from vitcore.native.meco import meco
from vitcore.native.swap import count_distinct_rows, pack_patterns, swap, swap_reduce

CONFIGS = {
    "tiny": ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=12, depth=2,
                      num_heads=[1, 3], mlp_ratio=[2.0, 1.5]),  # N' = 5
    "odd": ViTConfig(img_size=8, patch_size=2, in_chans=3, num_classes=7, embed_dim=15, depth=3,
                     num_heads=[5, 3, 1], mlp_ratio=[4.0, 3.5, 1.0]),  # N' = 17, an MLP with ratio 1
}
EPS32 = torch.finfo(torch.float32).eps


def _model(name, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return ViT(CONFIGS[name], fused=False).to(dtype)


def _batch(name, B, seed, dtype=torch.float32):
    c = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, c.in_chans, c.img_size, c.img_size, generator=g, dtype=dtype)
    return x, torch.randint(0, c.num_classes, (B,), generator=g)


def _copy64(model):
    m = ViT(model.config, fused=False).double()
    m.load_state_dict(model.state_dict())
    return m


def _block_linears(model):
    return [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]


# -- DSS --------------------------------------------------------------------------------------

def _dss_reference(model):
    m = _copy64(model)
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    c = model.config
    m.eval()
    m(torch.ones(1, c.in_chans, c.img_size, c.img_size, dtype=torch.float64)).sum().backward()
    total = 0.0
    for mod in m.modules():
        if isinstance(mod, MSA):
            for lin in (mod.qkv, mod.proj):
                w, g = lin.weight.detach().numpy(), lin.weight.grad.numpy()
                total += np.linalg.norm(g, "nuc") * np.linalg.norm(w, "nuc")
        elif isinstance(mod, MLP):
            for lin in (mod.fc1, mod.fc2):
                total += np.abs(lin.weight.grad.numpy() * lin.weight.detach().numpy()).sum()
    total += np.abs(m.head.weight.grad.numpy() * m.head.weight.detach().numpy()).sum()
    return total


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_dss_matches_float64_loop(name, seed):
    model = _model(name, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = model.config
    got = dss(model, torch.Size((c.in_chans, c.img_size, c.img_size)))
    assert got.dtype == torch.float64 and got.ndim == 0
    # synflow's pass runs in float64 on the float32 weights' exact values: only summation order differs
    assert got.item() == pytest.approx(_dss_reference(model), rel=1e-10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched


def test_dss_reduce_groups_shapes_and_skips_missing_gradients():
    g = torch.Generator().manual_seed(3)
    shapes = [(9, 5), (5, 5), (9, 5), (7, 3)]
    W = [torch.randn(s, generator=g) for s in shapes]
    G = [torch.randn(s, generator=g) for s in shapes]
    G[3] = None
    ref = sum(np.linalg.norm(gi.double().numpy(), "nuc") * np.linalg.norm(w.double().numpy(), "nuc")
              for w, gi in zip(W, G) if gi is not None)
    mlp_w, mlp_g = [torch.randn(4, 6, generator=g)], [torch.randn(4, 6, generator=g)]
    ref += np.abs(mlp_w[0].double().numpy() * mlp_g[0].double().numpy()).sum()
    assert dss_reduce(W, G, mlp_w, mlp_g).item() == pytest.approx(ref, rel=1e-12)


def test_dss_refuses_a_model_that_is_not_a_vit():
    with pytest.raises(TypeError, match="vitcore.ViT"):
        dss(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.Size((1, 2, 2)))


# -- MeCo -------------------------------------------------------------------------------------

def _meco_reference(model, x):
    m = _copy64(model)
    maps = []
    hooks = [b.mlp.act.register_forward_hook(lambda mod, a, out: maps.append(out[0].detach().numpy()))
             for b in m.blocks]
    with torch.no_grad():
        m(x[:1].double())
    for h in hooks:
        h.remove()
    total = 0.0
    for f in maps:  # (N', C)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(f)
        corr[~np.isfinite(corr)] = 0
        total += np.linalg.eigvalsh(corr).min()
    return total, maps


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_meco_matches_float64_loop(name, B):
    model = _model(name, B)
    x, _ = _batch(name, B, seed=10 + B)
    ref, maps = _meco_reference(model, x)
    exact = meco(_copy64(model), x.double())
    assert exact.dtype == torch.float64 and exact.ndim == 0
    assert exact.item() == pytest.approx(ref, rel=1e-9, abs=1e-9)
    # fp32 features: each correlation entry moves by a few eps·sqrt(C), an eigenvalue by at most
    # N' times that (Weyl); summed over the layers
    bound = sum(20 * EPS32 * f.shape[0] * np.sqrt(f.shape[1]) for f in maps)
    assert abs(meco(model, x).item() - ref) <= bound


def test_meco_zeroes_the_correlation_of_a_constant_row():
    # a token whose features are all equal has no correlation: its row and column become 0
    f = torch.randn(4, 9, dtype=torch.float64)
    f[2] = 1.5
    from vitcore.native.meco import meco_reduce

    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(f.numpy())
    corr[~np.isfinite(corr)] = 0
    assert meco_reduce([f]).item() == pytest.approx(np.linalg.eigvalsh(corr).min(), abs=1e-12)
    assert meco_reduce([f]).item() == pytest.approx(0.0, abs=1e-12)  # the zeroed row gives λ = 0


# -- SWAP -------------------------------------------------------------------------------------

def _swap_reference(model, x):
    m = _copy64(model)
    codes = []
    hooks = [a.register_forward_pre_hook(lambda mod, args: codes.append((args[0] > 0).reshape(len(x), -1)))
             for a in m.modules() if isinstance(a, nn.GELU)]
    with torch.no_grad():
        m(x.double())
    for h in hooks:
        h.remove()
    active = torch.cat(codes, 1).numpy()  # (B, U)
    return len({tuple(col) for col in active.T})


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 2, 7])
def test_swap_matches_a_set_of_patterns(name, B):
    model = _model(name, B + 20)
    x, _ = _batch(name, B, seed=B)
    got = swap(_copy64(model), x.double())
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == _swap_reference(model, x)


@pytest.mark.parametrize("B", [1, 62, 63, 64, 131])
def test_distinct_patterns_across_word_boundaries(B):
    g = torch.Generator().manual_seed(B)
    base = torch.rand(B, 40, generator=g) > 0.5  # (B, U)
    active = torch.cat([base, base[:, :15], base[:, 3:9]], 1)  # repeated neurons
    active = active[:, torch.randperm(active.shape[1], generator=g)]
    words = pack_patterns(active)
    assert words.shape == (active.shape[1], -(-B // 63))
    expected = len({tuple(col.tolist()) for col in active.T})
    assert swap_reduce(active).item() == expected
    assert count_distinct_rows(words).item() == torch.unique(words, dim=0).shape[0]


@pytest.mark.parametrize("proxy", [swap, meco])
def test_activation_proxies_refuse_a_model_that_is_not_a_vit(proxy):
    with pytest.raises(TypeError, match="vitcore.ViT"):
        proxy(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.randn(3, 1, 2, 2))


def test_one_shared_pass_gives_each_proxy_its_own_value():
    from vitcore.native.lswag import lswag_reduce
    from vitcore.native.meco import meco_reduce
    from vitcore.native.passes import native_pass

    model = _copy64(_model("odd", 5))
    x, y = _batch("odd", 4, seed=5, dtype=torch.float64)
    p = native_pass(model, x, y, F.cross_entropy, active=True, meco=True, lswag=True)
    assert swap_reduce(p.active).item() == swap(model, x).item()
    assert meco_reduce(p.meco_maps).item() == pytest.approx(meco(model, x).item(), rel=1e-12, abs=1e-12)
    assert lswag_reduce(p.lswag_terms, p.active).item() == pytest.approx(lswag(model, x, y).item(), rel=1e-12)


# -- L-SWAG -----------------------------------------------------------------------------------

def _lswag_reference(model, x, y):
    m = _copy64(model)
    weights = [lin.weight for lin in _block_linears(m)]
    per_example = [[] for _ in weights]
    for b in range(len(x)):  # one example at a time: ℓ_b's own gradient
        loss = F.cross_entropy(m(x[b:b + 1].double()), y[b:b + 1])
        for i, gw in enumerate(torch.autograd.grad(loss, weights)):
            per_example[i].append(gw.numpy())
    lam = 0.0
    for grads in per_example:
        std = np.stack(grads).std(0)
        s = (1 / std[std > 0]).sum()
        lam += np.log(s) if s > 0 else 0.0
    return lam * _swap_reference(model, x)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [2, 5])
def test_lswag_matches_per_example_float64_loop(name, B):
    model = _model(name, 30 + B)
    x, y = _batch(name, B, seed=40 + B)
    ref = _lswag_reference(model, x, y)
    got = lswag(_copy64(model), x.double(), y)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(ref, rel=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_lswag_needs_two_examples_and_a_vit():
    model = _model("tiny", 0)
    x, y = _batch("tiny", 1, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        lswag(model, x, y)
    with pytest.raises(TypeError, match="vitcore.ViT"):
        lswag(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))


def test_the_blocks_layers_are_the_ones_hooked():
    model = _model("odd", 0)
    assert len(_block_linears(model)) == 4 * len([b for b in model.modules() if isinstance(b, Block)])

import math

import pytest
import torch

from conftest import DEVICE

import vitcore
from vitcore.cost import vit_cost
from vitcore.model import ViT, ViTConfig


def _rows(*rows):
    """Digit strings -> a float64 matrix: "100" is the row [1, 0, 0]."""
    return torch.tensor([[float(c) for c in r] for r in rows], dtype=torch.float64)


# The worked MSA example: two tokens of width 6, two heads of width 3.
X = torch.tensor([[1, 0, 1, 2, 1, 1], [1, 2, 0, 1, 1, 1]], dtype=torch.float64)
WQ = torch.stack([_rows("100", "010", "001", "110", "011", "111"), _rows("012", "212", "121", "110", "001", "010")])
WK = torch.stack([_rows("110", "011", "111", "012", "210", "331"), _rows("000", "000", "000", "001", "100", "131")])
WV = torch.stack([_rows("321", "123", "121", "212", "111", "313"), _rows("324", "423", "001", "110", "111", "313")])
WO = _rows("100100", "010020", "111112", "222110", "210120", "000010")
GOLDEN_MACS = 4 * 2 * 6 * 6 + 2 * 2 * 2 * 6  # projections 4N'DE + core 2N'²E, N' = 2, D = E = 6


def rounding_bound(dtype, n, scale):
    """A few u·sqrt(n)·max|x| for a result built from n multiply-adds of magnitude up to ``scale``;
    u is TF32's for fp32 on a GPU (flash attention's tl.dot rounds its inputs to TF32 there)."""
    u = {torch.float64: 2.0**-53, torch.float32: 2.0**-24 if DEVICE == "cpu" else 2.0**-11}[dtype]
    return 4 * u * math.sqrt(n) * scale


def test_msa_golden_example():
    heads, out = vitcore.msa(X, WQ, WK, WV, WO)
    expected_heads = torch.tensor(
        [
            [[11.9827, 8.0173, 10.0518], [11.9472, 8.0528, 10.1584]],
            [[9.6324, 6.2710, 9.4517], [9.1209, 6.0518, 9.0863]],
        ],
        dtype=torch.float64,
    )
    expected_out = torch.tensor(
        [
            [53.8415, 43.6050, 29.3167, 37.9380, 57.7126, 20.1036],
            [52.4510, 42.5048, 28.4002, 37.2783, 56.5749, 20.3169],
        ],
        dtype=torch.float64,
    )
    # the expected values are printed to 4 decimals: within 5e-5, plus float64 rounding
    atol = 5e-5 + rounding_bound(torch.float64, GOLDEN_MACS, expected_out.abs().max().item())
    torch.testing.assert_close(heads, expected_heads, atol=atol, rtol=0)
    torch.testing.assert_close(out, expected_out, atol=atol, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_msa_golden_example_through_the_model_msa(fused, triton_on):
    """The same numbers through the ViT's MSA module (fused QKV Linear, W^O Linear); fused=True runs
    the Triton flash-attention kernel (interpreted on CPU) in float32."""
    block = vitcore.model.MSA(dim=6, num_heads=2, head_dim=3, qkv_bias=False, fused=fused).double()
    with torch.no_grad():
        # nn.Linear computes x @ W^T; the QKV output is laid out (3, H, d).
        wqkv = torch.stack([WQ, WK, WV])  # (3, H, D, d)
        block.qkv.weight.copy_(wqkv.permute(0, 1, 3, 2).reshape(3 * 2 * 3, 6))
        block.proj.weight.copy_(WO.T)
        block.proj.bias.zero_()
    _, expected = vitcore.msa(X, WQ, WK, WV, WO)
    if fused:  # the kernels take no float64: run the module in float32
        block = block.float().to(DEVICE)
        out = block(X[None].float().to(DEVICE))[0].double().cpu()
        atol = rounding_bound(torch.float32, GOLDEN_MACS, expected.abs().max().item())
        torch.testing.assert_close(out, expected, atol=atol, rtol=0)
    else:
        atol = rounding_bound(torch.float64, GOLDEN_MACS, expected.abs().max().item())
        torch.testing.assert_close(block(X[None])[0], expected, atol=atol, rtol=0)


def test_vit_fused_and_eager_attention_agree(triton_on):
    """The switch: the same weights with flash attention (Triton, interpreted) and eager attention,
    each within fp32's rounding bound of a float64 eager copy (outputs and every gradient)."""
    cfg = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=16, depth=2,
                    num_heads=[2, 1], mlp_ratio=2.0, head_dim=16)
    torch.manual_seed(0)
    fused, eager = ViT(cfg, fused=True).to(DEVICE), ViT(cfg, fused=False).to(DEVICE)
    eager.load_state_dict(fused.state_dict())
    ref = ViT(cfg, fused=False).double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(3, 1, 8, 8)
    n = 3 * vit_cost(cfg, 3).macs_fwd  # forward and backward
    results = []
    for model, xx in ((fused, x.to(DEVICE)), (eager, x.to(DEVICE)), (ref, x.double())):
        out = model(xx)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        results.append([t.detach().double().cpu() for t in (out, *grads)])
    for got in results[:2]:
        for a, b in zip(got, results[2]):
            torch.testing.assert_close(a, b, atol=rounding_bound(torch.float32, n, b.abs().max().item()), rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embed_dim=10, num_heads=3), "embed_dim=10 is not divisible by num_heads=3"),
        (dict(img_size=8, patch_size=16), "patch_size=16 is larger than img_size=8"),
        (dict(img_size=30, patch_size=4), "img_size=30 is not divisible by patch_size=4"),
        (dict(depth=0), "depth=0"),
        (dict(embed_dim=-4), "embed_dim=-4"),
        (dict(depth=2, num_heads=(3, 3, 3)), "num_heads=(3, 3, 3) has 3 entries"),
        (dict(depth=2, mlp_ratio=(4.0, 0.0)), "mlp_ratio=(4.0, 0.0)"),
        (dict(head_dim=0), "head_dim=0"),
    ],
)
def test_config_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ViTConfig(**kwargs)


def test_config_type_errors():
    with pytest.raises(TypeError, match="num_heads"):
        ViTConfig(num_heads=2.5)
    with pytest.raises(TypeError, match="img_size"):
        ViTConfig(img_size="224")


@pytest.mark.parametrize("batch", [1, 3])
def test_vit_per_block_heads_and_independent_head_dim(batch):
    cfg = ViTConfig(
        img_size=12, patch_size=4, in_chans=2, num_classes=7, embed_dim=20, depth=3,
        num_heads=[1, 3, 2], mlp_ratio=[2.0, 3.5, 1.0], head_dim=8,
    )
    model = ViT(cfg)
    assert cfg.num_heads == (1, 3, 2) and cfg.num_tokens == 10
    assert [b.attn.qkv.out_features for b in model.blocks] == [24, 72, 48]
    assert [b.mlp.fc1.out_features for b in model.blocks] == [40, 70, 20]
    y = model(torch.randn(batch, 2, 12, 12))
    assert y.shape == (batch, 7) and torch.isfinite(y).all()


def test_vit_rejects_wrong_input_shape():
    model = ViT(ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2))
    with pytest.raises(ValueError, match=r"input shape \(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))


def test_msa_validates_shapes():
    with pytest.raises(ValueError, match="wo has shape"):
        vitcore.msa(X, WQ, WK, WV, WO[:5])
    with pytest.raises(ValueError, match="wk has shape"):
        vitcore.msa(X, WQ, WK[:, :5], WV, WO)


@pytest.mark.parametrize("call, error, message", [
    (lambda: ViT({"embed_dim": 16}), TypeError, r"config must be a ViTConfig, got dict: build one with ViTConfig\(\*\*d\)"),
    (lambda: ViT(None), TypeError, "config must be a ViTConfig, got NoneType"),
    (lambda: ViT(ViTConfig(), fused="yes"), TypeError, "fused='yes' must be a bool"),
    (lambda: ViTConfig(head_dim="64"), TypeError, "head_dim='64' must be a positive int or None"),
    (lambda: ViTConfig(qkv_bias="no"), TypeError, "qkv_bias='no' must be a bool"),
    (lambda: ViT(ViTConfig(img_size=8, patch_size=4, depth=1))(None), TypeError, "input must be a torch.Tensor"),
    (lambda: vitcore.msa(X.numpy(), WQ, WK, WV, WO), TypeError, "x must be a torch.Tensor, got ndarray"),
    (lambda: vitcore.msa(X.long(), WQ, WK, WV, WO), TypeError, r"x.dtype=torch.int64: expected a floating dtype"),
    # issue 26, case 12: these failed inside torch
    (lambda: vitcore.msa(X, WQ.float(), WK, WV, WO), TypeError,
     r"wq is torch.float32 on cpu but x is torch.float64 on cpu: give all five tensors one dtype and device"),
    (lambda: vitcore.msa(X, WQ, WK, WV, WO.half()), TypeError, r"wo is torch.float16 on cpu but x is torch.float64"),
    (lambda: vitcore.msa(X, WQ, WK, WV.to("meta"), WO), TypeError, r"wv is torch.float64 on meta but x is"),
    (lambda: vitcore.msa(X.to_sparse(), WQ, WK, WV, WO), TypeError, r"x.layout=torch.sparse_coo: expected a dense"),
    (lambda: ViT(TINY, seed=2**64), ValueError, r"seed=18446744073709551616 must be a non-negative int below 2\*\*64"),
    (lambda: ViT(TINY, seed=-1), ValueError, r"seed=-1 must be a non-negative int below 2\*\*64"),
    (lambda: ViT(TINY, seed=1.0), ValueError, r"seed=1.0 must be a non-negative int"),
    (lambda: ViT(TINY, device="gpu"), ValueError, r"device='gpu' is not a device torch knows"),
    (lambda: ViT(TINY, device=0.5), TypeError, r"device=0.5 must be a str, a torch.device or None"),
    (lambda: ViT(TINY, device=f"cuda:{torch.cuda.device_count()}"), ValueError,
     rf"device='cuda:{torch.cuda.device_count()}': (no CUDA GPU is available here|this machine has)"),
])
def test_public_entry_points_name_bad_values(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_heads_embed_dim_over_num_heads_per_block():
    """head_dim=None: each block's heads are D / H wide, so QKV maps D to 3D whatever H."""
    cfg = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=12, depth=3,
                    num_heads=[1, 3, 4], mlp_ratio=2.0)
    model = ViT(cfg)
    assert [b.attn.head_dim for b in model.blocks] == [12, 4, 3]
    assert [b.attn.qkv.out_features for b in model.blocks] == [36, 36, 36]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def _within_std(x: torch.Tensor, std: float) -> bool:
    """Sample standard deviation of x (n values of N(0, std²), truncation at ±2 negligible for std
    <= .1) within 6 standard errors of std: |s - std| <= 6 · std / sqrt(2n)."""
    return abs(x.double().std().item() - std) <= 6 * std / math.sqrt(2 * x.numel())


def test_vit_initial_distributions():
    """timm's initialisation, per group: Linear weights N(0, .02²) truncated, the patch embedding
    N(0, 1/fan_in) truncated, the class token N(0, 1e-6²), LayerNorm weights 1, every bias 0."""
    cfg = ViTConfig(img_size=14, patch_size=7, in_chans=5, num_classes=7, embed_dim=48, depth=3,
                    num_heads=[1, 3, 2], mlp_ratio=[2.0, 3.0, 1.5], head_dim=None)
    model = ViT(cfg, device=DEVICE, seed=3)
    linear = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert _within_std(linear, 0.02) and _within_std(model.pos_embed, 0.02)
    assert _within_std(model.patch_embed.weight, math.sqrt(1 / (5 * 7 * 7)))
    assert 0 < model.cls_token.abs().max() < 1e-5
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm)):
            assert not m.bias.any()


def test_grouped_draw_equals_one_draw_over_the_concatenation():
    shapes = [(3, 5), (7,), (2, 1, 4), (1,)]
    tensors = [torch.full(s, float("nan")) for s in shapes]
    vitcore.model.grouped_draw(tensors, lambda t: t.uniform_(generator=torch.Generator().manual_seed(1)))
    flat = torch.empty(sum(math.prod(s) for s in shapes)).uniform_(generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat([t.flatten() for t in tensors]), flat)


@pytest.mark.parametrize("make", [
    lambda: vitcore.model.MSA(dim=40, num_heads=3, head_dim=24),
    lambda: vitcore.model.MLP(dim=40, hidden=100),
    lambda: vitcore.model.Block(40, 3, 24, 2.5, True, "eager"),
])
def test_blocks_built_alone_are_initialised(make):
    """MSA, MLP and Block outside a ViT initialise themselves (a ViT builds them with init=False)."""
    torch.manual_seed(0)
    block = make()
    weights = torch.cat([m.weight.flatten() for m in block.modules() if isinstance(m, torch.nn.Linear)])
    assert _within_std(weights, 0.02)
    assert all(not m.bias.any() for m in block.modules() if isinstance(m, torch.nn.Linear))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight))
               for m in block.modules() if isinstance(m, torch.nn.LayerNorm))


@pytest.mark.parametrize("ours, torchs", [
    (lambda: vitcore.model.linear(5, 7, True, "cpu"), lambda: torch.nn.Linear(5, 7)),
    (lambda: vitcore.model.linear(5, 7, False, "cpu"), lambda: torch.nn.Linear(5, 7, bias=False)),
    (lambda: vitcore.model.layer_norm(9, "cpu"), lambda: torch.nn.LayerNorm(9)),
], ids=["linear", "linear-no-bias", "layer_norm"])
def test_layers_built_without_init_are_torchs_layers(ours, torchs):
    """``linear`` and ``layer_norm`` skip the constructor, so every attribute torch's own sets must be
    there: the same instance attributes, parameter slots (a missing bias registered as None, as
    nn.Linear(bias=False) does), shapes, repr and state_dict keys."""
    a, b = ours(), torchs()
    assert type(a) is type(b) and sorted(vars(a)) == sorted(vars(b))
    assert {k: None if p is None else p.shape for k, p in a._parameters.items()} == \
        {k: None if p is None else p.shape for k, p in b._parameters.items()}
    assert repr(a) == repr(b) and list(a.state_dict()) == list(b.state_dict())


TINY = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)


def test_the_largest_seed_builds():
    """manual_seed takes 64-bit seeds: 2**64 - 1 is the last one ViT accepts."""
    a, b = ViT(TINY, seed=2**64 - 1), ViT(TINY, seed=2**64 - 1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", torch.device("cuda")])
def test_a_cuda_model_without_a_gpu_is_a_value_error(device):
    """ViT(cfg, device="cuda") without a GPU raised torch's AssertionError (issue 26, case 12)."""
    with pytest.raises(ValueError, match=r"device=.*cuda.*: no CUDA GPU is available here .* build the model on 'cpu'"):
        ViT(TINY, device=device)
    with pytest.raises(ValueError, match="no CUDA GPU is available here"):
        TINY.build(device="cuda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_an_input_of_another_dtype_than_the_model_is_named(dtype):
    """score(model, x.double(), y) on a float32 ViT failed inside conv2d ("Input type (double) and bias
    type (float) should be the same"); under autocast the inputs it casts (fp16, bf16, fp32) are fine."""
    model, x = ViT(TINY, seed=0), torch.randn(2, 1, 8, 8)
    with pytest.raises(TypeError, match=f"input dtype {dtype} does not match the model's torch.float32"):
        model(x.to(dtype))
    with pytest.raises(TypeError, match="input dtype torch.int64 does not match"):
        model(x.long())
    with pytest.raises(TypeError, match="input.layout=torch.sparse_coo: expected a dense"):
        model(x.to_sparse())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.half()).shape == (2, 3)
        with pytest.raises(TypeError, match="input dtype torch.float64 does not match .* not float64"):
            model(x.double())
    assert model.double()(x.double()).dtype == torch.float64

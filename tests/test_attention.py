"""flash_attention: the Triton kernels (interpreted on CPU) against a float64 eager reference."""
import contextlib
import math
import random

import numpy as np
import pytest
import torch

from conftest import DEVICE, requires_cuda, requires_triton
from vitcore.ops import attention_ref, dispatch, flash_attention

# (B, H, N', d) with odd cases (N' = 1, 7, 197, 300; d = 40, 54, 80) and a few batch / head counts: every
# head dim at the short lengths and at ViT's N' = 197, and at one more long length each (256: a whole number
# of tiles; 300: two tiles and a tail), so that each long length meets one- and two-part head dims.
HEAD_DIMS = [16, 40, 54, 64, 80]  # one part (16, 54 in 64, 64), two parts (40 = 32 + 16 of which 8 masked, 80)
CASES = ([(B, H, N, d) for B, H, N in [(2, 3, 1), (1, 2, 7), (1, 2, 197)] for d in HEAD_DIMS]
         + [(2, 1, 256, d) for d in (16, 80)] + [(1, 1, 300, d) for d in (40, 54, 64)])
# Bounds come from rounding and the problem's size (``_bound``), never from another implementation's
# error alone. Each dtype travels with the two unit roundoffs the kernels work with:
#   eps_dot: relative error per product of the score / gradient dots. fp32 on CPU: the interpreter's
#     fp32 dots (eps32); on a GPU "highest" runs tf32x3, which drops the lo*lo term and rounds the lo
#     parts: 3 * 2^-22 < 2^-21 per product. fp16 / bf16 products are exact in the fp32 accumulators.
#   eps_io: the rounding of P / dS to the input dtype before their dots and of the stored outputs
#     (0 for fp32).
EPS32 = torch.finfo(torch.float32).eps
FP32_DOT_EPS = EPS32 if DEVICE == "cpu" else 2.0**-21
DTYPES = [
    pytest.param(torch.float32, FP32_DOT_EPS, 0.0, id="fp32"),
    pytest.param(torch.float16, EPS32, torch.finfo(torch.float16).eps, id="fp16"),
    # the interpreter's bf16 tl.dot is wrong (flash_attention runs eager there: test_bf16_on_the_interpreter...)
    pytest.param(torch.bfloat16, EPS32, torch.finfo(torch.bfloat16).eps, id="bf16", marks=requires_cuda),
]
FP32 = (FP32_DOT_EPS, 0.0)


@pytest.fixture
def poisoned(monkeypatch):
    """The launchers allocate O, dQ, dK and dV filled with NaN: an element a kernel leaves unwritten fails."""
    from vitcore.kernels import attention, attention_bwd

    def nan_bhnd_like(x):
        B, H, N, d = x.shape
        return torch.full((B, N, H, d), float("nan"), device=x.device, dtype=x.dtype).transpose(1, 2)

    for launchers in (attention, attention_bwd):
        monkeypatch.setattr(launchers, "_bhnd_like", nan_bhnd_like)


def _packed_qkv(B, H, N, d, dtype, seed=0):
    """q, k, v (B, H, N', d): strided views of one (B, N', 3, H, d) tensor, as a QKV projection makes."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, N, 3, H, d, generator=gen).to(device=DEVICE, dtype=dtype)  # (B, N', 3, H, d)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N', d)


def _run(fn, q, k, v, do, **kwargs):
    """Output and the gradients of <out, do> w.r.t. q, k, v (leaves sharing the inputs' strides)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves, do.to(out.dtype))
    return out, grads


def _max_err(a, ref64):
    return (a.double() - ref64).abs().max().item()


def _bound(q, k, size, eps_dot, eps_io, scale=None):
    """What rounding allows for outputs of size ``size``: 2 eps_dot (sqrt(N') + max|s|) size + 2 eps_io size.

    eps_dot term: sqrt(N') for a length-N' sum of rounded terms; max|s| = max|q k^T| * scale because
    exp(s) of a rounded logit is off by a relative eps·|s| (a sharp softmax, scale = 1, loses more).
    Measured on the interpreter (fp32): errors up to 0.65 of eps (sqrt(N') + max|s|) max|ref64|.
    eps_io term: P (or dS) rounded to the input dtype is off by eps_io/2 per term of a sum whose
    terms' weights add up to about one output, and the stored output by eps_io/2 of itself: eps_io
    size in all. Measured on the interpreter (fp16, this file's grid and d = 1, 3, 5): up to 0.88
    eps16 times the largest output. The factor 2 on each leaves over 2x.
    ``size`` is the largest of the four outputs and of the terms summed (v, dO): a gradient that
    cancels to 0 (N' = 1: dQ = dK = 0) still carries the rounding of terms the size of the others, and
    O = Σ p v is off by eps_io/2 · max|v| however much the average shrinks |O|.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s_max = (q.double() @ k.double().transpose(-2, -1)).abs().max().item() * abs(scale)  # (B, H, N', N')
    return 2 * eps_dot * (math.sqrt(k.shape[2]) + s_max) * size + 2 * eps_io * size  # sums run over the N' keys


def _assert_close_to_ref(q, k, v, eps_dot, eps_io, **kwargs):
    """Ours (flash_attention) vs float64 eager: within 2x eager's own error in the inputs' dtype plus
    what rounding allows (``_bound``); the rounding term alone must cover ours, so a machine whose
    eager is luckier cannot fail it."""
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(q.shape, generator=gen).to(q.device)
    ours = _run(flash_attention, q, k, v, do, **kwargs)
    torch_lowp = _run(attention_ref, q, k, v, do, **kwargs)
    ref64 = _run(attention_ref, q.double(), k.double(), v.double(), do.double(), **kwargs)
    names = ["out", "dq", "dk", "dv"]
    size = max(r.abs().max().item() for r in [ref64[0], *ref64[1], v, do])  # outputs and the summed terms
    rounding = _bound(q, k, size, eps_dot, eps_io, kwargs.get("scale"))
    for name, a, b, r in zip(names, [ours[0], *ours[1]], [torch_lowp[0], *torch_lowp[1]], [ref64[0], *ref64[1]]):
        assert a.shape == r.shape and a.dtype == q.dtype, name
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err, bound = _max_err(a, r), 2 * _max_err(b, r) + rounding
        assert err <= bound, f"{name}: max|ours - ref64| = {err:.3g} > {bound:.3g}"
    return ours


@requires_triton
@pytest.mark.parametrize("dtype, eps_dot, eps_io", DTYPES)
@pytest.mark.parametrize("B, H, N, d", CASES)
def test_matches_float64_reference(triton_on, poisoned, B, H, N, d, dtype, eps_dot, eps_io):
    q, k, v = _packed_qkv(B, H, N, d, dtype, seed=N * d + H)
    out, grads = _assert_close_to_ref(q, k, v, eps_dot, eps_io)
    # The result is a (B, H, N', d) view of (B, N', H, d) memory, and so are the gradients.
    for t in (out, *grads):
        assert t.shape == (B, H, N, d) and t.transpose(1, 2).is_contiguous()
    assert out.transpose(1, 2).reshape(B, N, H * d).data_ptr() == out.data_ptr()


@requires_triton
@pytest.mark.parametrize("dtype, eps_dot, eps_io", DTYPES)
@pytest.mark.parametrize("B, H, N, d", [(2, 2, 7, 3), (1, 3, 197, 5), (1, 1, 17, 1), (2, 1, 9, 36), (1, 2, 33, 96),
                                        (1, 1, 20, 136)])
def test_head_dims_padded_and_in_two_parts(triton_on, poisoned, B, H, N, d, dtype, eps_dot, eps_io):
    """d < 16 pads the tile to 16 for tl.dot and masks the padding (the golden example has d = 3); d = 36
    (32 + 16, 12 masked), 96 (64 + 32), 136 (128 + 16, 8 masked) check every column of both parts."""
    q, k, v = _packed_qkv(B, H, N, d, dtype, seed=N + d)
    _assert_close_to_ref(q, k, v, eps_dot, eps_io)


@pytest.mark.parametrize("d, parts", [(1, (16, 0)), (16, (16, 0)), (24, (32, 0)), (36, (32, 16)), (48, (32, 16)),
                                      (54, (64, 0)), (72, (64, 16)), (96, (64, 32)), (100, (128, 0)),
                                      (136, (128, 16)), (192, (128, 64)), (256, (256, 0))])
def test_head_dim_parts(d, parts):
    from vitcore.kernels.attention import head_dim_parts

    assert head_dim_parts(d) == parts


def test_padding_is_at_most_a_quarter_where_the_dot_minimum_allows():
    """Padded columns <= 25% for every d >= 24 but 33-35, where 48 columns (the least multiple of 16, tl.dot's
    least reduction length) are the least any split can compute; the padded width is that least multiple of
    16 for every d <= 96."""
    from vitcore.kernels.attention import head_dim_parts, padded_fraction

    for d in range(1, 257):
        main, tail = head_dim_parts(d)
        assert main >= 16 and main & (main - 1) == 0 and (tail == 0 or (tail >= 16 and tail & (tail - 1) == 0))
        assert d <= main + tail and (tail == 0 or main < d)
        if d <= 96:
            assert main + tail == 16 * math.ceil(d / 16), d
        if d >= 24 and d not in (33, 34, 35):
            assert padded_fraction(d) <= 0.25, d


@pytest.mark.parametrize("d, heads, expected", [(64, 3, 16), (72, 3, 8), (54, 3, 2), (5, 3, 1), (40, 2, 8)])
def test_row_align_divides_every_row_stride(d, heads, expected):
    from vitcore.kernels.attention import row_align

    q, k, v = _packed_qkv(2, heads, 7, d, torch.float32)  # batch stride 3 N' H d, token 3 H d, head d
    assert row_align((*q.stride(), *k.stride(), *v.stride(), heads, 7)) == expected
    assert all(s % expected == 0 for t in (q, k, v) for s in t.stride()[:3])


def test_row_align_is_the_power_of_two_of_the_strides_gcd():
    """On random strides (zeros among them: expanded tensors), the launch path's bitwise row_align equals
    the definition: the largest power of two <= 16 dividing the gcd of the batch, head and token strides;
    the d strides and H, N' do not enter."""
    from vitcore.kernels.attention import row_align

    rng = random.Random(7)
    for _ in range(500):
        strides = [rng.choice([0, rng.randrange(1, 10**6), 16 * rng.randrange(1, 10**4)]) for _ in range(12)]
        ints = (*strides, rng.randrange(1, 64), rng.randrange(1, 4096))
        g = math.gcd(*(s for i, s in enumerate(strides) if i % 4 != 3))
        expected = min(16, g & -g) if g else 16
        assert row_align(ints) == expected, ints


@requires_triton
@pytest.mark.parametrize("scale", [0.05, 1.0])  # 1.0 at d=64: scores of std 8, a peaked softmax
def test_custom_scale(triton_on, scale):
    q, k, v = _packed_qkv(2, 2, 150, 64, torch.float32, seed=7)
    _assert_close_to_ref(q, k, v, *FP32, scale=scale)


@requires_triton
@pytest.mark.parametrize("dtype, eps_dot, eps_io", DTYPES)
@pytest.mark.parametrize("scale", [0.0, -0.3, 1e-30])
def test_zero_negative_and_tiny_scales(triton_on, poisoned, scale, dtype, eps_dot, eps_io):
    """A zero scale (a uniform softmax; dQ = dK = 0), a negative one (the softmax of -|scale| q.k) and a tiny
    one: fp16 / bf16 fold the sign into q and keep a positive scale after the dot (``split_scale``), and dK,
    accumulated against the scaled q, is rescaled by 0 rather than 0 / 0 for a zero scale."""
    q, k, v = _packed_qkv(1, 2, 37, 24, dtype, seed=3)
    _assert_close_to_ref(q, k, v, eps_dot, eps_io, scale=scale)
    if dtype == torch.float32 and 0 < abs(scale) < 1e-20:  # dQ, dK ~ scale: the bound above is absolute, so
        do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.device)  # also relative ones
        _, (dq, dk, _) = _run(flash_attention, q, k, v, do, scale=scale)
        _, (ref_dq, ref_dk, _) = _run(attention_ref, q.double(), k.double(), v.double(), do.double(), scale=scale)
        for name, a, r in (("dq", dq, ref_dq), ("dk", dk, ref_dk)):
            bound = _bound(q, k, r.abs().max().item(), eps_dot, eps_io, scale)
            assert _max_err(a, r) <= bound, f"{name}: {_max_err(a, r):.3g} > {bound:.3g}"


@requires_triton
def test_contiguous_and_transposed_inputs(triton_on):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 70, 32, generator=gen).to(DEVICE)  # contiguous (B, H, N', d)
    k = torch.randn(1, 70, 2, 32, generator=gen).to(DEVICE).transpose(1, 2)  # (B, H, N', d) view
    v = torch.randn(1, 2, 32, 70, generator=gen).to(DEVICE).transpose(2, 3)  # d not innermost
    _assert_close_to_ref(q, k, v, *FP32)


@requires_triton
def test_poisoned_outputs_are_overwritten(triton_on, poisoned):
    """Every element of O, dQ, dK and dV is written: they start as NaN."""
    q, k, v = _packed_qkv(2, 2, 100, 80, torch.float32, seed=11)
    out, grads = _assert_close_to_ref(q, k, v, *FP32)
    for t in (out, *grads):
        assert not t.isnan().any()


@requires_triton
def test_launcher_writes_into_given_output(triton_on):
    from vitcore.kernels import attention as _kernels

    q, k, v = _packed_qkv(1, 2, 33, 16, torch.float32, seed=5)
    out = torch.full((1, 33, 2, 16), float("nan"), device=DEVICE).transpose(1, 2)
    o, stats = _kernels.attention_fwd(q, k, v, 0.25, out=out)
    assert o is out and stats.shape == (1, 2, 2, 33)
    ref = attention_ref(q.double(), k.double(), v.double(), 0.25)
    assert _max_err(o, ref) <= _bound(q, k, ref.abs().max().item(), *FP32, scale=0.25)
    scores = q.double() @ k.double().transpose(-2, -1) * 0.25 / math.log(2)  # base 2, (B, H, N', N')
    m_ref = scores.amax(-1)
    log2l_ref = (scores - m_ref[..., None]).exp2().sum(-1).log2()  # (B, H, N')
    score_err = _bound(q, k, 1.0, *FP32, scale=0.25) / math.log(2)  # the rounding of the base-2 scores
    assert _max_err(stats[:, :, 0], m_ref) <= score_err
    # l sums exp2 of N' rounded differences: log2 of it moves by their rounding and N' roundings of the sum
    assert _max_err(stats[:, :, 1], log2l_ref) <= 2 * score_err + 2 * 33 * EPS32


def test_eager_fallback_is_the_reference(triton_off):
    q, k, v = _packed_qkv(2, 3, 9, 24, torch.float32, seed=2)
    do = torch.randn(q.shape, device=q.device)
    ours = _run(flash_attention, q, k, v, do)
    ref = _run(attention_ref, q, k, v, do)
    assert ours[0].is_contiguous()  # the eager layout: the kernel's output is a (B, N', H, d) view
    for a, b in zip([ours[0], *ours[1]], [ref[0], *ref[1]]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("setting, dtype, expected", [
    ("highest", torch.float32, "tf32x3"), ("high", torch.float32, "tf32"), ("medium", torch.float32, "tf32"),
    ("highest", torch.float16, "tf32"), ("highest", torch.bfloat16, "tf32"),
])
def test_dot_precision_follows_the_fp32_matmul_setting(setting, dtype, expected):
    from vitcore.kernels.attention import dot_precision

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        assert dot_precision(dtype) == expected
    finally:
        torch.set_float32_matmul_precision(previous)


def test_float64_runs_the_reference(triton_on):
    q, k, v = _packed_qkv(1, 2, 9, 16, torch.float64, seed=4)
    out = flash_attention(q, k, v)
    assert out.dtype == torch.float64 and out.is_contiguous()  # eager layout, not the kernel's
    torch.testing.assert_close(out, attention_ref(q, k, v))


@pytest.mark.parametrize(
    "shapes, dtypes, match",
    [
        ([(2, 3, 8, 16), (2, 3, 8, 16), (2, 24, 16)], None, "ndim=3"),
        ([(2, 3, 8, 16), (2, 3, 9, 16), (2, 3, 9, 16)], None, r"k=\(2, 3, 9, 16\)"),
        ([(2, 3, 8, 16)] * 3, (torch.float32, torch.float16, torch.float32), "k=torch.float16"),
        ([(2, 3, 8, 16)] * 3, (torch.complex64,) * 3, "q.dtype=torch.complex64"),
        ([(2, 3, 8, 16)] * 3, (torch.int32,) * 3, "q.dtype=torch.int32"),
        ([(1, 1, 4, 320)] * 3, None, "d=320"),
        ([(2, 3, 0, 16)] * 3, None, r"\(2, 3, 0, 16\)"),
    ],
)
def test_bad_inputs_raise(shapes, dtypes, match):
    dtypes = dtypes or (torch.float32,) * 3
    q, k, v = [torch.zeros(s, dtype=dt) for s, dt in zip(shapes, dtypes)]
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v)


@pytest.mark.parametrize("args, error, match", [
    (([1.0], torch.zeros(2, 4), torch.zeros(2, 4)), TypeError, "q must be a torch.Tensor, got list"),
    ((torch.zeros(2, 4), torch.zeros(4), torch.zeros(2, 4)), ValueError, r"k has shape \(4,\)"),
    ((torch.zeros(2, 4), torch.zeros(3, 5), torch.zeros(3, 4)), ValueError, "do not chain"),
    ((torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, 4)), ValueError, "do not chain"),
])
def test_reference_bad_inputs_raise(args, error, match):
    with pytest.raises(error, match=match):
        attention_ref(*args)


def test_bad_devices_scale_and_types_raise():
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="k=meta"):
        flash_attention(q, q.to("meta"), q)
    with pytest.raises(ValueError, match="scale=nan"):
        flash_attention(q, q, q, scale=float("nan"))
    with pytest.raises(ValueError, match="scale=1000000000000000000000000000000000.* must be a finite number"):
        flash_attention(q, q, q, scale=10**400)  # an int past float64: was float()'s OverflowError
    with pytest.raises(TypeError, match="v must be a torch.Tensor, got list"):
        flash_attention(q, q, [1.0])
    with pytest.raises(ValueError, match="scale=np.True_ must be a finite number"):
        flash_attention(q, q, q, scale=np.bool_(True))


@pytest.mark.parametrize("scale", [np.float32(0.5), np.float64(0.5), np.int64(1)])
def test_a_numpy_scale_is_the_number_it_holds(scale):
    """SDPA takes NumPy scalars (a scale read from an array); they were refused as not numbers."""
    q, k, v = torch.randn(3, 1, 2, 5, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flash_attention(q, k, v, scale=scale), flash_attention(q, k, v, scale=float(scale)))


@requires_cuda
@pytest.mark.parametrize("dtype, eps_dot, eps_io", [DTYPES[0], DTYPES[2]])
@pytest.mark.parametrize("B, H, N, d", [(2, 3, 1025, 96), (1, 2, 577, 128), (1, 1, 300, 256), (4, 12, 197, 32)])
def test_large_shapes_cuda(triton_on, B, H, N, d, dtype, eps_dot, eps_io):
    q, k, v = _packed_qkv(B, H, N, d, dtype, seed=N + d)
    _assert_close_to_ref(q, k, v, eps_dot, eps_io)


@requires_cuda
def test_tf32_when_matmul_precision_is_high(triton_on):
    """fp32 under "high": TF32 dots with operands rounded to TF32 (cvt.rna), as cuBLAS rounds them: the
    error is within 1.5x of eager attention's under the same setting, plus the fp32 rounding bound."""
    q, k, v = _packed_qkv(2, 4, 197, 64, torch.float32, seed=13)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.device)
    ref64 = _run(attention_ref, q.double(), k.double(), v.double(), do.double())
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        ours = _run(flash_attention, q, k, v, do)
        eager_tf32 = _run(attention_ref, q, k, v, do)
    finally:
        torch.set_float32_matmul_precision(previous)
    flat = lambda r: [r[0], *r[1]]  # noqa: E731
    size = max(r.abs().max().item() for r in flat(ref64))
    rounding = _bound(q, k, size, EPS32, 0.0)
    for name, a, b, r in zip(["out", "dq", "dk", "dv"], flat(ours), flat(eager_tf32), flat(ref64)):
        err, bound = _max_err(a, r), 1.5 * _max_err(b, r) + rounding
        assert err <= bound, f"{name}: max|ours - ref64| = {err:.3g} > 1.5 x eager TF32's + rounding = {bound:.3g}"


@requires_cuda
def test_long_sequence_memory_is_linear(triton_on):
    """N' = 16384, H = 16: an N' x N' score buffer alone would need 8 GiB in bf16."""
    q, k, v = [t.requires_grad_() for t in _packed_qkv(1, 16, 16384, 64, torch.bfloat16, seed=17)]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = flash_attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 512 * 2**20, f"peak extra memory {extra / 2**20:.0f} MiB"
    assert all(torch.isfinite(t).all() for t in (out, *grads))
    # The first 64 query rows against float64.
    q64, k64, v64 = (t.detach().double() for t in (q, k, v))
    ref = attention_ref(q64[:, :, :64], k64, v64)
    size = max(ref.abs().max().item(), v64.abs().max().item())  # O averages 16384 values of v
    bound = _bound(q64[:, :, :64], k64, size, EPS32, torch.finfo(torch.bfloat16).eps)
    assert _max_err(out[:, :, :64], ref) <= bound


@requires_triton
def test_bf16_on_the_interpreter_runs_the_reference(triton_on, monkeypatch):
    """The interpreter multiplies bf16 bit patterns in tl.dot (off by ~8e8 here): the eager reference runs."""
    if DEVICE != "cpu":
        pytest.skip("compiled kernels compute bf16")
    monkeypatch.setattr(dispatch, "_warned_dtypes", set())
    q, k, v = _packed_qkv(1, 2, 40, 32, torch.bfloat16, seed=21)
    with pytest.warns(UserWarning, match="bfloat16"):
        out = flash_attention(q, k, v)
    assert torch.equal(out, attention_ref(q, k, v))


# -- the whole range of logits float32 holds (issue 26, case 5) --
# Inputs whose logits q k^T / sqrt(d) run from ~1 to ~1e38: random, identical in every row (a uniform
# softmax however large), q = k (a dominant diagonal) and every logit <= 0 (down to -1e37).
RANGE_KINDS = ["random", "identical", "q = k", "very negative"]
# 4e18: |q.k| up to ~5e38, past fp32's largest value, for logits up to ~1.3e38 (the kernels' limit is 2.4e38)
RANGE_SCALES = {torch.float32: (1.0, 1e3, 1e9, 4e18), torch.float16: (1.0, 32.0, 200.0),
                torch.bfloat16: (1.0, 32.0, 1e9, 4e18)}  # fp16 holds |q| <= 65504: logits up to ~2e5 here


def _range_inputs(kind, big, dtype, B=1, H=2, N=37, d=16):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, H, N, d, generator=gen, dtype=torch.float64) for _ in range(3))
    if kind == "identical":
        q = k = q[..., :1, :].expand_as(q)
    elif kind == "q = k":
        k = q
    elif kind == "very negative":
        q, k = q.abs(), -k.abs()
    return tuple((t * s).to(DEVICE, dtype).contiguous() for t, s in ((q, big), (k, big), (v, 1.0)))


def _assert_range(q, k, v, eps_dot, eps_io):
    """flash_attention vs float64: finite everywhere, and within 2x SDPA's error in the same dtype (PyTorch's
    own fused kernel) plus what rounding allows (``_bound``: its eps·max|s| term is the logits' own rounding)."""
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(6)).to(q.device)
    ours = _run(flash_attention, q, k, v, do)
    sdpa = _run(torch.nn.functional.scaled_dot_product_attention, q, k, v, do)
    ref64 = _run(attention_ref, q.double(), k.double(), v.double(), do.double())
    size = max(r.abs().max().item() for r in [ref64[0], *ref64[1], v, do])
    rounding = _bound(q, k, size, eps_dot, eps_io)
    names = ["out", "dq", "dk", "dv"]
    for name, a, b, r in zip(names, [ours[0], *ours[1]], [sdpa[0], *sdpa[1]], [ref64[0], *ref64[1]]):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = _max_err(a, r)
        bound = 2 * torch.nan_to_num(torch.tensor(_max_err(b, r)), nan=math.inf).item() + rounding
        assert err <= bound, f"{name}: max|ours - ref64| = {err:.3g} > {bound:.3g}"
    return ours, ref64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", RANGE_KINDS)
def test_eager_attention_over_the_whole_range_of_logits(triton_off, dtype, kind):
    """The eager path (the CPU fallback and attention="eager") computes fp16 / bf16 in float32 and scales q
    and k by sqrt(scale) first, as SDPA does: its forward and backward stay finite and within SDPA's error,
    for logits up to ~1e38 in float32."""
    eps_io = 0.0 if dtype == torch.float32 else torch.finfo(dtype).eps
    for big in RANGE_SCALES[dtype]:
        _assert_range(*_range_inputs(kind, big, dtype), EPS32, eps_io)


def test_eager_fp16_logits_past_fp16s_range_are_exact(triton_off):
    """Issue 26, case 5: fp16 q = k of size ~32 at d = 64 make q·k ~ 65 000 on the diagonal, past fp16's
    largest value, before the 1/8 scale: the eager path returned inf / NaN where SDPA is exact."""
    gen = torch.Generator().manual_seed(7)
    q = (torch.randn(2, 2, 9, 64, generator=gen) * 32).to(DEVICE, torch.float16)
    v = torch.randn(2, 2, 9, 64, generator=gen).to(DEVICE, torch.float16)
    assert (q.double() @ q.double().transpose(-2, -1)).abs().max() > torch.finfo(torch.float16).max
    ours, ref64 = _assert_range(q, q, v, EPS32, torch.finfo(torch.float16).eps)
    # the softmax is one-hot on the diagonal: out = v up to fp16's rounding of v
    assert _max_err(ours[0], ref64[0]) <= torch.finfo(torch.float16).eps * v.abs().max().item()


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", RANGE_KINDS)
def test_kernels_over_the_whole_range_of_logits(triton_on, poisoned, dtype, kind):
    """The Triton forward and backward on the same range: finite everywhere (fp32 scales q before q.k, so
    q.k past fp32's range with a representable logit is not inf; the backward's recomputed probabilities
    are capped at 1, so a logit recomputed a rounding above the forward's is not inf either) and
    within 2x SDPA's error plus rounding, whose eps·max|s| term is the logits' own rounding: the interpreter's
    dot rounds equal logits apart at some tile positions (identical rows at max|s| 1e3 to 1e9), which a softmax
    that large turns into other probabilities. Logits exact in any order: the next test."""
    eps_dot, eps_io = (FP32_DOT_EPS, 0.0) if dtype == torch.float32 else (EPS32, torch.finfo(dtype).eps)
    for big in RANGE_SCALES[dtype]:
        _assert_range(*_range_inputs(kind, big, dtype), eps_dot, eps_io)


@pytest.mark.parametrize("fn", [flash_attention, attention_ref])
@pytest.mark.parametrize("which", [0, 2])
def test_sparse_inputs_are_named(fn, which):
    """A sparse q, k or v failed inside torch ("expand is unsupported for Sparse tensors"; issue 26, case 12)."""
    args = [torch.randn(1, 2, 5, 8) for _ in range(3)]
    args[which] = args[which].to_sparse()
    with pytest.raises(TypeError, match=f"{'qkv'[which]}.layout=torch.sparse_coo: expected a dense"):
        fn(*args)


def test_eager_reference_names_mixed_dtypes():
    with pytest.raises(ValueError, match="q, k, v dtypes differ: q=torch.float32, k=torch.float16"):
        attention_ref(torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.float16), torch.zeros(3, 4))


def _tied_inputs(logit, ties, dtype, B=1, H=2, N=37, d=24, seed=8):
    """q, k, v whose logits are exact in any summation order: every q and k row is a multiple of the first unit
    vector, so q.k is one product. Every query's top logit is ``logit`` (scale 1/sqrt(d) included), shared by the
    first ``ties`` keys; the other keys' logits are at most logit - |logit| / 2 (exp of that difference underflows
    for |logit| >= 1e3). Returns q, k, v (B, H, N', d) and the exact P (float64)."""
    gen = torch.Generator().manual_seed(seed)
    c = math.sqrt(abs(logit) * math.sqrt(d))  # q.k / sqrt(d) = c^2 / sqrt(d) = |logit| for unit factors
    q = torch.zeros(B, H, N, d, dtype=torch.float64)
    k = torch.zeros_like(q)
    q[..., 0] = math.copysign(c, logit)
    factors = torch.rand(B, H, N, generator=gen, dtype=torch.float64) - 0.5 if logit > 0 else \
        1.5 + torch.rand(B, H, N, generator=gen, dtype=torch.float64)  # the others' logits: below the top's
    factors[..., :ties] = 1.0
    k[..., 0] = c * factors
    v = torch.randn(B, H, N, d, generator=gen, dtype=torch.float64)
    p = torch.zeros(B, H, N, N, dtype=torch.float64)
    p[..., :ties] = 1.0 / ties
    return tuple(t.to(DEVICE, dtype) for t in (q, k, v)), p


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ties", [1, 2, 3])
@pytest.mark.parametrize("logit", [1e3, 1e9, 1e30, -1e3, -1e30])
def test_kernels_at_huge_logits_are_as_exact_as_the_softmax(triton_on, poisoned, dtype, ties, logit):
    """Logits from 1e3 to 1e30 in magnitude, positive or negative, each row's top shared by 1-3 keys: the
    softmax is exactly 1 / ties on the tied keys and 0 elsewhere (exp underflows), so O and dV are averages of
    V and dO rows and the float64 reference is exact but for its own rounding. The Triton path gives them to the
    rounding of an average, however large the logits, as the eager path does: the forward keeps the row maximum
    and log2 of the row sum apart (m + log2(ties) rounds to m past 2^25), the backward recomputes the forward's
    scores bitwise and zeroes dS where P is exactly 1, so dQ and dK are exactly 0 at one-hot rows. With ties,
    dS carries the rounding of dP - delta, bounded entry by entry from |dO| |V| and |dO| |O|, and dQ, dK that
    times |K| or |Q|: each output entry against its own bound."""
    if dtype == torch.float16 and abs(logit) > 1e5:
        pytest.skip("fp16 holds |q|, |k| <= 65504: logits up to ~1e9 / sqrt(d) at most")
    (q, k, v), p = _tied_inputs(logit, ties, dtype)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    ref_out, (ref_dq, ref_dk, ref_dv) = _run(attention_ref, q.double(), k.double(), v.double(), do.double())
    p64 = torch.softmax(q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
    assert _max_err(p64, p) <= 1e-15  # the premise: these P (exp(-500) and below are 0 in fp32)
    eps_dot = FP32_DOT_EPS if dtype == torch.float32 else EPS32  # per product of the fp32 dots
    eps_io = 0.0 if dtype == torch.float32 else torch.finfo(dtype).eps  # O, dS and the outputs rounded to dtype
    eps = EPS32 + eps_io
    N, d = q.shape[2], q.shape[3]
    vmax, domax = v.abs().max().item(), do.abs().max().item()
    # dS_ij = P_ij (dP_ij - delta_i): dP_ij = dO_i.V_j and delta_i = dO_i.O_i are d-term sums (2 d eps_dot of
    # their terms' magnitudes), O_i is rounded to dtype (eps_io), and dS to dtype (eps_io |dS|); per entry
    abs_dp = do.double().abs() @ v.double().abs().transpose(-2, -1)  # (B, H, N', N')
    abs_delta = (do.double().abs() * ref_out.abs()).sum(-1, keepdim=True)  # (B, H, N', 1)
    ref_ds = p * (do.double() @ v.double().transpose(-2, -1) - (do.double() * ref_out).sum(-1, keepdim=True))
    ds_err = p * (2 * d * eps_dot * (abs_dp + abs_delta) + eps_io * abs_delta) + eps_io * ref_ds.abs()
    scale = 1 / math.sqrt(d)
    bounds = {"out": (ties + 1) * eps * vmax,  # an average of `ties` rows, and its storing
              "dv": (N + 1) * eps * domax,  # a sum over the N' queries
              # dQ = scale dS K, dK = scale dS^T Q: the entries' errors, and the sums' and storing's roundings
              "dq": scale * ds_err @ k.double().abs() + (ties + 1) * eps * ref_dq.abs(),
              "dk": scale * ds_err.transpose(-2, -1) @ q.double().abs() + (N + 1) * eps * ref_dk.abs()}
    subnormal = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # dtype's least step: exp(-500) terms flush to 0
    for on_eager in (False, True):
        with dispatch.eager() if on_eager else contextlib.nullcontext():
            out, (dq, dk, dv) = _run(flash_attention, q, k, v, do)
        for name, a, r in (("out", out, ref_out), ("dq", dq, ref_dq), ("dk", dk, ref_dk), ("dv", dv, ref_dv)):
            err = (a.double() - r).abs()
            over = (err - bounds[name] - subnormal).max().item()  # entrywise where the bound is a tensor
            assert over <= 0, f"{'eager' if on_eager else 'triton'} {name}: over its bound by {over:.3g}"
        if ties == 1:
            assert not dq.any() and not dk.any(), "eager" if on_eager else "triton"


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_at_huge_random_logits_recompute_the_forwards_probabilities(triton_on, poisoned, dtype):
    """Random q and k so large that every row of P is one-hot (its top logit at least 200 above the rest, in
    base 2, checked): dV sums the dO rows of the queries whose top is each key and dQ, dK are exactly 0, if and
    only if the backward recomputes the forward's scores bitwise. Unlike the tied inputs above, these q.k are
    sums of d products, rounded by the dot of each kernel's own tile shapes (on a GPU each phase's config:
    the check that the MMA rounds an entry alike in every kernel); N' = 97 over several blocks, d = 40 in
    two parts."""
    gen = torch.Generator().manual_seed(11)
    B, H, N, d = 1, 2, 97, 40
    big = 1e3  # |logit| ~ 1e6; |q|, |k| < 6e3, within fp16's 65504
    q, k = (torch.randn(B, H, N, d, generator=gen, dtype=torch.float64) * big for _ in range(2))
    v, do = (torch.randn(B, H, N, d, generator=gen, dtype=torch.float64) for _ in range(2))
    q, k, v, do = (t.to(DEVICE, dtype) for t in (q, k, v, do))
    s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(d) / math.log(2)  # base 2
    top2 = s.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 200  # the premise: exp2 of the others underflows in fp32
    p = torch.nn.functional.one_hot(s.argmax(-1), N).double()  # (B, H, N', N')
    eps = EPS32 + (0.0 if dtype == torch.float32 else torch.finfo(dtype).eps)
    for on_eager in (False, True):
        with dispatch.eager() if on_eager else contextlib.nullcontext():
            out, (dq, dk, dv) = _run(flash_attention, q, k, v, do)
        path = "eager" if on_eager else "triton"
        assert _max_err(out, p @ v.double()) <= eps * v.abs().max().item(), path
        ref_dv = p.transpose(-2, -1) @ do.double()  # each key's queries' dO rows, summed
        assert _max_err(dv, ref_dv) <= (N + 1) * eps * do.abs().max().item(), path
        assert not dq.any() and not dk.any(), path

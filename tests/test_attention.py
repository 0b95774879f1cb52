"""flash_attention: the Triton kernels (interpreted on CPU) against a float64 eager reference."""
import math

import pytest
import torch

from conftest import DEVICE, requires_cuda, requires_triton
from vitcore.ops import attention_ref, dispatch, flash_attention

# (B, H, N') x d: the grid the issue asks for, every list with odd cases (N' = 1, 7, 197, 300;
# d = 48, 80), a few batch / head counts.
LENGTHS = [(2, 3, 1), (1, 2, 7), (1, 2, 197), (2, 1, 256), (1, 1, 300)]
HEAD_DIMS = [16, 48, 64, 80]
# fp32: no fixed atol (None): the bound comes from the problem (``_rounding_bound``); the GPU's tf32x3
# dots add the earlier margin on top.
FP32_ATOL = None if DEVICE == "cpu" else 5e-5
# dtype, atol: ours must satisfy max|ours - ref64| <= 2 * max|torch_dtype - ref64| + atol.
DTYPES = [
    pytest.param(torch.float32, FP32_ATOL, id="fp32"),
    pytest.param(torch.float16, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, 1e-2, id="bf16", marks=requires_cuda),  # the interpreter has no bf16
]


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


def _rounding_bound(q, k, size, scale=None):
    """What fp32 rounding allows for outputs of size ``size``: 2 eps (sqrt(N') + max|s|) size.

    sqrt(N') for a length-N' sum of rounded terms; max|s| = max|q k^T| * scale because exp(s) of a
    rounded logit is off by a relative eps·|s| (a sharp softmax, scale = 1, loses more). Measured on
    the interpreter: errors up to 0.65 of eps (sqrt(N') + max|s|) max|ref64|, so the factor 2 leaves 3x.
    ``size`` is the largest of the four outputs: a gradient that cancels to 0 (N' = 1: dQ = dK = 0)
    still carries the rounding of terms the size of the others.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s_max = (q.double() @ k.double().transpose(-2, -1)).abs().max().item() * abs(scale)  # (B, H, N', N')
    return 2 * torch.finfo(torch.float32).eps * (math.sqrt(q.shape[2]) + s_max) * size


def _assert_close_to_ref(q, k, v, atol, **kwargs):
    """Ours (flash_attention) vs float64 eager, judged against eager in the inputs' dtype; fp32 adds
    the rounding its problem size allows (``_rounding_bound``) to ``atol`` (None: 0)."""
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(q.shape, generator=gen).to(q.device)
    ours = _run(flash_attention, q, k, v, do, **kwargs)
    torch_lowp = _run(attention_ref, q, k, v, do, **kwargs)
    ref64 = _run(attention_ref, q.double(), k.double(), v.double(), do.double(), **kwargs)
    names = ["out", "dq", "dk", "dv"]
    size = max(r.abs().max().item() for r in [ref64[0], *ref64[1]])
    fp32 = _rounding_bound(q, k, size, kwargs.get("scale")) if q.dtype == torch.float32 else 0.0
    for name, a, b, r in zip(names, [ours[0], *ours[1]], [torch_lowp[0], *torch_lowp[1]], [ref64[0], *ref64[1]]):
        assert a.shape == r.shape and a.dtype == q.dtype, name
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err, bound = _max_err(a, r), 2 * _max_err(b, r) + (atol or 0.0) + fp32
        assert err <= bound, f"{name}: max|ours - ref64| = {err:.3g} > {bound:.3g}"
    return ours


@requires_triton
@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("B, H, N", LENGTHS)
def test_matches_float64_reference(triton_on, poisoned, B, H, N, d, dtype, atol):
    q, k, v = _packed_qkv(B, H, N, d, dtype, seed=N * d + H)
    out, grads = _assert_close_to_ref(q, k, v, atol)
    # The result is a (B, H, N', d) view of (B, N', H, d) memory, and so are the gradients.
    for t in (out, *grads):
        assert t.shape == (B, H, N, d) and t.transpose(1, 2).is_contiguous()
    assert out.transpose(1, 2).reshape(B, N, H * d).data_ptr() == out.data_ptr()


@requires_triton
@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("B, H, N, d", [(2, 2, 7, 3), (1, 3, 197, 5), (1, 1, 17, 1)])
def test_head_dims_below_the_dot_minimum(triton_on, poisoned, B, H, N, d, dtype, atol):
    """d < 16 pads the tile to 16 for tl.dot and masks the padding (the golden example has d = 3)."""
    q, k, v = _packed_qkv(B, H, N, d, dtype, seed=N + d)
    _assert_close_to_ref(q, k, v, atol)


@requires_triton
@pytest.mark.parametrize("scale", [0.05, 1.0])  # 1.0 at d=64: scores of std 8, a peaked softmax
def test_custom_scale(triton_on, scale):
    q, k, v = _packed_qkv(2, 2, 150, 64, torch.float32, seed=7)
    _assert_close_to_ref(q, k, v, FP32_ATOL, scale=scale)


@requires_triton
def test_contiguous_and_transposed_inputs(triton_on):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 70, 32, generator=gen).to(DEVICE)  # contiguous (B, H, N', d)
    k = torch.randn(1, 70, 2, 32, generator=gen).to(DEVICE).transpose(1, 2)  # (B, H, N', d) view
    v = torch.randn(1, 2, 32, 70, generator=gen).to(DEVICE).transpose(2, 3)  # d not innermost
    _assert_close_to_ref(q, k, v, FP32_ATOL)


@requires_triton
def test_poisoned_outputs_are_overwritten(triton_on, poisoned):
    """Every element of O, dQ, dK and dV is written: they start as NaN."""
    q, k, v = _packed_qkv(2, 2, 100, 80, torch.float32, seed=11)
    out, grads = _assert_close_to_ref(q, k, v, FP32_ATOL)
    for t in (out, *grads):
        assert not t.isnan().any()


@requires_triton
def test_launcher_writes_into_given_output(triton_on):
    from vitcore.kernels import attention as _kernels

    q, k, v = _packed_qkv(1, 2, 33, 16, torch.float32, seed=5)
    out = torch.full((1, 33, 2, 16), float("nan"), device=DEVICE).transpose(1, 2)
    o, lse = _kernels.attention_fwd(q, k, v, 0.25, out=out)
    assert o is out and lse.shape == (1, 2, 33)
    torch.testing.assert_close(o, attention_ref(q, k, v, 0.25), atol=1e-5, rtol=1e-5)
    scores = q.double() @ k.double().transpose(-2, -1) * 0.25  # (B, H, N', N')
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1) / math.log(2), atol=1e-5, rtol=1e-5)


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


def test_bad_devices_scale_and_types_raise():
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="k=meta"):
        flash_attention(q, q.to("meta"), q)
    with pytest.raises(ValueError, match="scale=nan"):
        flash_attention(q, q, q, scale=float("nan"))
    with pytest.raises(TypeError, match="v must be a torch.Tensor, got list"):
        flash_attention(q, q, [1.0])


@requires_cuda
@pytest.mark.parametrize("dtype, atol", [(torch.float32, FP32_ATOL), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("B, H, N, d", [(2, 3, 1025, 96), (1, 2, 577, 128), (1, 1, 300, 256), (4, 12, 197, 32)])
def test_large_shapes_cuda(triton_on, B, H, N, d, dtype, atol):
    q, k, v = _packed_qkv(B, H, N, d, dtype, seed=N + d)
    _assert_close_to_ref(q, k, v, atol)


@requires_cuda
def test_tf32_when_matmul_precision_is_high(triton_on):
    """fp32 under "high": TF32 dots. Triton feeds fp32 registers to the TF32 MMA, which truncates
    the low mantissa bits where cuBLAS rounds them, so the atol allows ~10 TF32 ulps (2^-11 each)."""
    q, k, v = _packed_qkv(2, 4, 197, 64, torch.float32, seed=13)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        _assert_close_to_ref(q, k, v, 5e-3)
    finally:
        torch.set_float32_matmul_precision(previous)


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
    assert _max_err(out[:, :, :64], ref) < 2e-2


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

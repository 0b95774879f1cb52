"""param_stats: the multi-tensor Triton reduction (interpreted on CPU) and its eager fallback vs float64."""
import math

import pytest
import torch
from conftest import DEVICE

from vitcore.ops import param_stats, param_stats_ref

SIZES = [(1,), (3,), (4097,), (65537,), (0,), (197, 3), (48, 80)]


def _pairs(shapes, g_dtype, w_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(DEVICE, w_dtype) for s in shapes]
    grads = [(1e-3 * torch.randn(s, generator=gen)).to(DEVICE, g_dtype) for s in shapes]
    return params, grads


EPS64 = torch.finfo(torch.float64).eps


def _assert_close(out, ref, params):
    """Per column, relative to the sum of the terms' magnitudes (Σg·θ, signed, on the scale of Σ|g·θ|).

    The bound is float64 rounding at the problem's size: fp32/fp16/bf16 values are exact in float64
    and so are the products of two of them (48 bits < 53); fp64 products round once. A length-n sum
    in any order is then off by at most (n - 1) eps64 Σ|terms| (Higham, Accuracy and Stability, 4.2),
    for ours and for the float64 reference alike: 2 (n + 1) eps64 Σ|terms| per row, exact zeros for
    an empty tensor.
    """
    assert out.dtype == torch.float64 and out.shape == ref.shape
    assert out.device.type == DEVICE
    out = out.cpu()
    ref = ref.cpu()
    scale = ref.abs()
    scale[:, 2] = ref[:, 1]
    n = torch.tensor([float(p.numel()) for p in params], dtype=torch.float64)[:, None]  # (T, 1)
    err = (out - ref).abs()
    assert torch.isfinite(out).all()
    assert (err <= 2 * (n + 1) * EPS64 * scale).all(), f"max err {err.max().item():.3g}"


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "g_dtype, w_dtype",
    [
        (torch.float32, torch.float32),
        (torch.float16, torch.float16),
        (torch.float16, torch.float32),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.bfloat16),  # the interpreter loads bf16 right (it is tl.dot it gets wrong)
        (torch.bfloat16, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_param_stats_matches_float64(fused, g_dtype, w_dtype, monkeypatch):
    monkeypatch.setenv("VITCORE_TRITON", "1" if fused else "0")
    params, grads = _pairs(SIZES, g_dtype, w_dtype)
    _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype, big", [(torch.float32, 1e20), (torch.float64, 1e150)])
def test_squared_sums_do_not_overflow(fused, dtype, big, monkeypatch):
    """A loss scaled by 1e20 on a small Linear model: Σg² ~ 1e40 passes fp32's 3.4e38 on the way,
    and grad_norm = sqrt(Σ Σg²) is finite in float64 (it was inf, on fp32 and float64 models)."""
    monkeypatch.setenv("VITCORE_TRITON", "1" if fused else "0")
    gen = torch.Generator().manual_seed(12)
    model = torch.nn.Linear(7, 3).to(DEVICE, dtype)
    x = torch.randn(5, 7, generator=gen).to(DEVICE, dtype)
    loss = model(x).square().sum() * big
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    assert torch.isinf(sum(g.float().square().sum() for g in grads)) or dtype == torch.float64
    out = param_stats(params, grads)
    _assert_close(out, param_stats_ref(params, grads), params)
    norm = out[:, 0].sum().sqrt().item()
    true = math.sqrt(sum((g.double() ** 2).sum().item() for g in grads))
    assert math.isfinite(norm) and abs(norm - true) <= 4 * EPS64 * true * sum(p.numel() for p in params)


class _CountLaunches:
    """Wraps the kernel's launcher: counts launches."""

    def __init__(self, launch):
        self.launch, self.launches = launch, 0

    def __call__(self, *args):
        self.launches += 1
        return self.launch(*args)


@pytest.fixture
def kernels(triton_on, monkeypatch):
    """The kernel module with an empty plan cache and a launch counter."""
    from vitcore.kernels import param_stats as _kernels

    monkeypatch.setattr(_kernels, "_PLANS", {})
    counter = _CountLaunches(_kernels._launch)
    monkeypatch.setattr(_kernels, "_launch", counter)
    _kernels.counter = counter
    yield _kernels
    del _kernels.counter


def _n_plans(kernels):
    return sum(map(len, kernels._PLANS.values()))


def test_mixed_dtypes_one_launch(kernels):
    # every (g, θ) dtype pair of fp32/fp16/fp64 in one list, interleaved: one launch, one output
    dtypes = [torch.float32, torch.float16, torch.float64]
    shapes = [(5,), (4097,), (1,), (33, 7), (300,), (2,), (1025,), (8, 8), (3000,)]
    params, grads = [], []
    for k, s in enumerate(shapes):
        p, g = _pairs([s], dtypes[k % 3], dtypes[(k // 3) % 3], seed=k)
        params += p
        grads += g
    _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)
    assert kernels.counter.launches == 1


def test_fresh_grads_each_call_hit_the_plan(kernels):
    # what vitcore.score does: new gradient tensors (new addresses) and new detached weight views
    # every call; the plan is built once, the addresses are the kernel's per-call input
    params, _ = _pairs(SIZES, torch.float32, torch.float32, seed=8)
    for step in range(3):
        _, grads = _pairs(SIZES, torch.float32, torch.float32, seed=10 + step)
        views = [p.detach() for p in params]
        _assert_close(param_stats(views, grads), param_stats_ref(params, grads), params)
    assert _n_plans(kernels) == 1 and kernels.counter.launches == 3


def test_cached_plan_sees_new_values(kernels):
    # the cache holds the layout, never results: new gradient values at the same addresses
    params, grads = _pairs([(4097,), (5,)], torch.float32, torch.float32, seed=5)
    param_stats(params, grads)
    for g in grads:
        g.mul_(2.0)
    _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)
    assert _n_plans(kernels) == 1


@pytest.mark.parametrize("change", ["transposed", "strided", "permuted", "fp16", "shape"])
def test_changed_grad_layout_on_a_cached_plan(kernels, change):
    gen = torch.Generator().manual_seed(9)
    params = [torch.randn(s, generator=gen).to(DEVICE) for s in [(48, 80), (6, 4, 5), (197,)]]
    grads = [torch.randn(p.shape, generator=gen).to(DEVICE) for p in params]
    param_stats(params, grads)  # a plan for contiguous fp32 gradients
    if change == "transposed":
        grads[0] = torch.randn(80, 48, generator=gen).to(DEVICE).t()
    elif change == "strided":
        grads[0] = torch.randn(48, 160, generator=gen).to(DEVICE)[:, ::2]
    elif change == "permuted":  # no 2-D view: copied
        grads[1] = torch.randn(4, 5, 6, generator=gen).to(DEVICE).permute(2, 0, 1)
    elif change == "fp16":
        grads[2] = grads[2].half()
    else:
        grads[2] = torch.randn(198, generator=gen).to(DEVICE)
        with pytest.raises(ValueError, match=r"grads\[2\]\.shape=\(198,\) != params\[2\]"):
            param_stats(params, grads)
        return
    assert not grads[0].is_contiguous() or not grads[1].is_contiguous() or grads[2].dtype == torch.half
    _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)
    assert _n_plans(kernels) == 2  # the changed layout got its own plan
    grads = [torch.randn(p.shape, generator=gen).to(DEVICE) for p in params]
    _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)
    assert _n_plans(kernels) == 2  # and the first plan still serves contiguous gradients


@pytest.mark.parametrize("fused", [True, False])
def test_non_contiguous_views(fused, monkeypatch):
    monkeypatch.setenv("VITCORE_TRITON", "1" if fused else "0")
    gen = torch.Generator().manual_seed(1)

    def r(*s):
        return torch.randn(*s, generator=gen).to(DEVICE)

    params = [
        r(40, 30).t(),  # transposed
        r(50, 20)[:, ::2],  # strided columns
        r(6, 4, 5).permute(2, 0, 1),  # no 2-D view: copied on every call
        r(101)[1:],  # contiguous, 4 bytes off 16-byte alignment
        r(7, 9)[2:5],  # row slice: contiguous, offset
        r(1, 1).expand(3, 4),  # zero strides
        r(64, 64),
        r(4099)[3:],  # fp32 contiguous, 12 bytes off alignment: the generic path
    ]
    grads = [
        r(30, 40),  # contiguous g with a transposed θ
        r(20, 50).t()[:, ::2],  # transposed and strided
        r(4, 5, 6).permute(1, 2, 0),
        r(100),
        r(3, 18)[:, ::2],
        r(3, 4),
        r(64, 128)[:, 32:96],  # row stride 128
        r(4096),
    ]
    for _ in range(2):  # a fresh plan, then the cached one
        _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape", [(1,), (197,), (768, 3)])
def test_single_tensor(fused, shape, monkeypatch):
    monkeypatch.setenv("VITCORE_TRITON", "1" if fused else "0")
    params, grads = _pairs([shape], torch.float32, torch.float32, seed=2)
    _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)


def test_many_tiny_tensors(triton_on):
    gen = torch.Generator().manual_seed(3)
    shapes = [(int(n),) for n in torch.randint(1, 9, (500,), generator=gen)]
    params, grads = _pairs(shapes, torch.float32, torch.float32, seed=3)
    _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)


def test_deterministic_and_every_output_written(kernels, monkeypatch):
    params, grads = _pairs(SIZES + [(3000,)] * 3, torch.float16, torch.float32, seed=4)
    first = param_stats(params, grads)
    # poison every float buffer the launcher allocates (partials and output), rebuild the plan
    empty = torch.empty

    def poisoned(*a, **k):
        t = empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)
    kernels._PLANS.clear()
    second = param_stats(params, grads)  # a fresh plan
    third = param_stats(params, grads)  # the cached plan
    fresh = [g.clone() for g in grads]  # the same values at new addresses
    fourth = param_stats(params, fresh)
    for out in (second, third, fourth):
        assert torch.equal(first, out)  # bit-identical, no NaN
    (plan,) = kernels._PLANS[tuple(p.data_ptr() for p in params)]
    assert plan.n_chunks > plan.n_tensors  # multi-chunk tensors: the ticketed combine ran
    for ws in plan.workspaces.values():
        assert not ws.counters.any()  # every counter reset for the next launch


def test_one_key_several_layouts(kernels):
    # x and x.t() share a data pointer but not a layout: two plans under one key, both right
    params, grads = _pairs([(48, 80)], torch.float32, torch.float32, seed=7)
    views = [params[0].t()], [grads[0].t().contiguous()]
    for _ in range(2):
        _assert_close(param_stats(params, grads), param_stats_ref(params, grads), params)
        _assert_close(param_stats(*views), param_stats_ref(*views), views[0])
    assert len(kernels._PLANS) == 1 and _n_plans(kernels) == 2


@pytest.mark.parametrize("guard", ["default", "python"])
def test_metadata_guard(guard):
    from vitcore.kernels import launch

    make = launch.MetadataGuard if guard == "default" else launch.PythonGuard
    ts = [torch.randn(4, 6), torch.randn(5).half()]
    g = make(*ts)
    assert g.check(*ts)
    assert g.check(torch.randn(4, 6), torch.randn(5).half())  # new tensors, same metadata
    assert g.check(torch.randn(4, 7)[:, :6].contiguous(), torch.randn(5).half())
    assert not g.check(torch.randn(6, 4).t(), ts[1])  # strides
    assert not g.check(torch.randn(4, 7)[:, :6], ts[1])  # row stride
    assert not g.check(torch.randn(4, 5), ts[1])  # shape
    assert not g.check(ts[0], ts[1].float())  # dtype
    assert not g.check(ts[0], [0.0] * 5)  # not a tensor


def test_fused_and_eager_agree(triton_on, monkeypatch):
    params, grads = _pairs(SIZES, torch.float16, torch.float32, seed=6)
    fused = param_stats(params, grads)
    monkeypatch.setenv("VITCORE_TRITON", "0")
    _assert_close(fused, param_stats(params, grads), params)  # both float64 sums of exact products


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "case, error, match",
    [
        ("lengths", ValueError, r"len\(params\)=2 != len\(grads\)=1"),
        ("empty", ValueError, "empty"),
        ("shape", ValueError, r"grads\[1\]\.shape=\(4, 3\) != params\[1\]\.shape=\(3, 4\)"),
        ("device", ValueError, r"grads\[1\]\.device=meta"),
        ("dtype", TypeError, r"params\[0\]\.dtype=torch\.int64"),
        ("type", TypeError, r"grads\[0\] is a list"),
        ("tensors", TypeError, r"params must be a sequence of tensors, got one tensor of shape \(5,\)"),
        ("none", TypeError, "grads must be a sequence of tensors, got NoneType"),
        ("sparse weight", TypeError, r"params\[1\]\.layout=torch\.sparse_coo: expected a dense"),
        ("sparse grad", TypeError, r"grads\[0\]\.layout=torch\.sparse_coo: expected a dense"),
    ],
)
def test_errors_name_the_bad_value(fused, case, error, match, monkeypatch):
    monkeypatch.setenv("VITCORE_TRITON", "1" if fused else "0")
    w = [torch.randn(5, device=DEVICE), torch.randn(3, 4, device=DEVICE)]
    g = [torch.randn(5, device=DEVICE), torch.randn(3, 4, device=DEVICE)]
    if case == "lengths":
        g = g[:1]
    elif case == "empty":
        w, g = [], []
    elif case == "shape":
        g[1] = torch.randn(4, 3, device=DEVICE)
    elif case == "device":
        g[1] = torch.empty(3, 4, device="meta")
    elif case == "dtype":
        w[0] = torch.arange(5, device=DEVICE)
    elif case == "type":
        g[0] = [1.0] * 5
    elif case == "tensors":  # two tensors instead of two sequences: rows would be iterated
        w, g = w[0], g[0]
    elif case == "none":
        g = None
    elif case == "sparse weight":  # issue 26, case 12: it failed inside torch (no data pointer)
        w[1] = w[1].to_sparse()
    elif case == "sparse grad":
        g[0] = g[0].to_sparse()
    with pytest.raises(error, match=match):
        param_stats(w, g)
    with pytest.raises(error, match=match):
        param_stats_ref(w, g)

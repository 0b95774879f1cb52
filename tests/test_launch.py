"""The kernels' launch path on CPU: the specialisation key against Triton's own, the direct launcher's
cache (a fake compiled kernel stands in for the GPU), the tuned-config table, TF32 rounding."""
import contextlib
import gc
import itertools
import json
import logging
import math
import weakref

import pytest
import torch

from conftest import requires_cuda, requires_triton

triton = pytest.importorskip("triton")
from triton.runtime.jit import BaseBackend, native_specialize_impl  # noqa: E402

from vitcore.kernels import attention, launch  # noqa: E402
from vitcore.ops import attention_ref, flash_attention  # noqa: E402

INTS = [0, 1, 2, 15, 16, 17, 32, 48, -1, -16, 197, 2**31 - 16, 2**31 - 1, 2**31, 2**32 + 16, -2**31,
        -2**31 - 1, 2**63 - 1, 2**63, 2**64 - 16]


def _triton_class(arg, specialize):
    return native_specialize_impl(BaseBackend, arg, False, specialize, True)


@pytest.mark.parametrize("specialize", [True, False])
def test_int_class_is_at_least_as_fine_as_triton(specialize):
    """Two ints in one class get one specialisation from the installed Triton; every Triton class
    is told apart."""
    for a, b in itertools.product(INTS, INTS):
        same_ours = launch.int_class(a, specialize) == launch.int_class(b, specialize)
        same_triton = _triton_class(a, specialize) == _triton_class(b, specialize)
        assert same_triton or not same_ours, (a, b)
        if specialize:  # the key is exactly Triton's classes, not finer
            assert same_ours == same_triton, (a, b)


def test_pointer_class_matches_triton():
    base = {dt: torch.zeros(64, dtype=dt) for dt in (torch.float32, torch.float16, torch.bfloat16, torch.int64)}
    views = [t[i:] for t in base.values() for i in range(4)]
    for a, b in itertools.product(views, views):
        key = launch.spec_key([a], [], [], (), ())
        same_ours = key == launch.spec_key([b], [], [], (), ())
        assert same_ours == (_triton_class(a, True) == _triton_class(b, True)), (a.dtype, b.dtype)


@pytest.mark.parametrize("version, interpreting, direct", [
    ("3.6.0", False, True), ("3.9.0", False, True), ("3.6.1", False, True),
    ("3.7.1", False, False), ("3.5.1", False, False), ("3.10.0", False, False), ("4.0.0", False, False),
    ("3.6.0", True, False),
])
def test_direct_launch_only_where_the_internals_were_read(version, interpreting, direct):
    problem = launch.direct_problem(version, interpreting)
    assert (problem is None) == direct
    if not direct:
        assert "kernel[grid]" in problem


@triton.jit(do_not_specialize=["n"])
def _toy_kernel(X, Y, stride, n, scale, BLOCK: triton.language.constexpr):
    """Every kind of parameter the launchers pass: pointers, ints (one not specialised), a float, a constexpr."""
    pass


class _FakeCompiled:
    """What the launcher keeps from a compiled kernel; ``run`` records the direct launches."""

    function, packed_metadata = "cufunction", "packed"

    def __init__(self, log):
        self.log = log

    def run(self, *args):
        self.log.append(args)


@pytest.fixture
def toy(monkeypatch):
    """A CachedLauncher of ``_toy_kernel`` taking the direct path, with Triton's ordinary launch faked."""
    lau = launch.CachedLauncher(_toy_kernel)
    lau.problem = None
    lau.ordinary, lau.direct = [], []

    def ordinary(grid, args, meta, num_warps, num_stages):
        lau.ordinary.append((grid, args, meta))
        return _FakeCompiled(lau.direct)

    monkeypatch.setattr(lau, "_ordinary", ordinary)
    monkeypatch.setattr(launch, "_stream", lambda index: 7)
    return lau


def _call(lau, x, y, stride=32, n=100, block=64, warps=4):
    lau((3,), (x, y), (stride, n), (0.5,), {"BLOCK": block}, warps, 2)


def test_the_same_call_reuses_its_entry(toy):
    x, y = torch.zeros(64), torch.zeros(64)
    _call(toy, x, y)
    assert len(toy.ordinary) == 1 and not toy.direct  # the first call compiles through Triton
    _call(toy, x, y)
    _call(toy, torch.zeros(64), torch.zeros(64))  # other tensors, same classes
    assert len(toy.ordinary) == 1 and len(toy.direct) == 2
    # the direct launch: grid padded to 3-D, the stream, the kernel, no hooks, args then constexprs
    assert toy.direct[0][:9] == (3, 1, 1, 7, "cufunction", "packed", None, None, None)
    assert toy.direct[0][9:] == (x, y, 32, 100, 0.5, 64)
    assert len(toy.kernels) == 1


@pytest.mark.parametrize("change, new_kernel", [
    ("dtype", True), ("alignment", True), ("constexpr", True), ("warps", True),
    ("divisibility", True), ("one", True), ("i64", True),
    ("same class", False), ("do_not_specialize", False), ("float", False),
])
def test_a_changed_specialisation_gets_a_new_entry(toy, change, new_kernel):
    buf = torch.zeros(80)
    x, y = buf[:64], torch.zeros(64)
    _call(toy, x, y)
    kwargs = {}
    if change == "dtype":
        x = x.half()
    elif change == "alignment":
        x = buf[1:65]  # 4 bytes past a 16-byte boundary
    elif change == "constexpr":
        kwargs["block"] = 128
    elif change == "warps":
        kwargs["warps"] = 8
    elif change == "divisibility":
        kwargs["stride"] = 33
    elif change == "one":
        kwargs["stride"] = 1  # Triton makes an int equal to 1 a constant
    elif change == "i64":
        kwargs["stride"] = 2**32
    elif change == "same class":
        kwargs["stride"] = 48
    elif change == "do_not_specialize":
        kwargs["n"] = 16  # n is do_not_specialize: only its width counts
    if change == "float":
        toy((3,), (x, y), (32, 100), (2.0,), {"BLOCK": 64}, 4, 2)
    else:
        _call(toy, x, y, **kwargs)
    assert len(toy.kernels) == (2 if new_kernel else 1)
    assert len(toy.ordinary) == (2 if new_kernel else 1)
    assert len(toy.direct) == (0 if new_kernel else 1)


def test_an_unexpected_kernel_object_falls_back(toy, monkeypatch, caplog):
    monkeypatch.setattr(toy, "_ordinary", lambda *a: toy.ordinary.append(a) or object())
    x, y = torch.zeros(64), torch.zeros(64)
    with caplog.at_level(logging.INFO, logger="vitcore.kernels"):
        for _ in range(3):
            _call(toy, x, y)
    assert len(toy.ordinary) == 3 and not toy.kernels and "without run/function" in toy.problem
    assert sum("without run/function" in r.message for r in caplog.records) == 1


def test_cache_is_bounded(toy, monkeypatch):
    monkeypatch.setattr(launch, "_CACHE_SIZE", 4)
    x, y = torch.zeros(64), torch.zeros(64)
    for stride in range(16, 16 * 10, 16):
        _call(toy, x, y, stride=stride)
    assert len(toy.calls) == 4 and len(toy.kernels) == 1


def test_launch_hooks_take_the_ordinary_path(toy, monkeypatch):
    x, y = torch.zeros(64), torch.zeros(64)
    _call(toy, x, y)
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", lambda *a: None)
    _call(toy, x, y)
    assert len(toy.ordinary) == 2 and not toy.direct


class _Loaded:
    """A compiled kernel whose launcher does not hold it (Triton 3.9's ``run`` is the launcher object, not a
    bound method): only the cache's own reference keeps it, and with it its module, alive."""

    function, packed_metadata = "cufunction", "packed"

    def __init__(self, log):
        self.run = lambda *args: log.append(args)


def test_the_compiled_kernel_is_kept_alive(toy, monkeypatch):
    made = []

    def ordinary(grid, args, meta, num_warps, num_stages):
        kernel = _Loaded(toy.direct)
        made.append(weakref.ref(kernel))
        return kernel

    monkeypatch.setattr(toy, "_ordinary", ordinary)
    x, y = torch.zeros(64), torch.zeros(64)
    _call(toy, x, y)
    gc.collect()
    assert made[0]() is not None  # Triton 3.9's CompiledKernel.__del__ would unload the module
    _call(toy, x, y)
    assert len(made) == 1 and len(toy.direct) == 1


@pytest.mark.parametrize("group, name, value", [
    ("runtime", "debug", True), ("compilation", "instrumentation_mode", "fpsan"),
])
def test_tritons_compile_options_are_in_the_key(toy, monkeypatch, group, name, value):
    """Triton compiles another kernel when its debug / instrumentation knobs change: so does the cache."""
    if not hasattr(getattr(triton.knobs, group), name):
        pytest.skip(f"Triton {triton.__version__} has no knobs.{group}.{name}")
    x, y = torch.zeros(64), torch.zeros(64)
    _call(toy, x, y)
    monkeypatch.setattr(getattr(triton.knobs, group), name, value)
    _call(toy, x, y)
    assert len(toy.ordinary) == 2 and not toy.direct and len(toy.kernels) == 2
    _call(toy, x, y)
    assert len(toy.ordinary) == 2 and len(toy.direct) == 1


def test_every_launch_runs_on_the_tensors_device(toy, monkeypatch):
    current = []

    @contextlib.contextmanager
    def on_device(t):
        current.append(t.device)
        yield
        current.pop()

    monkeypatch.setattr(launch, "on_device", on_device)
    seen = []
    ordinary = toy._ordinary
    monkeypatch.setattr(toy, "_ordinary", lambda *a: seen.append(list(current)) or ordinary(*a))
    monkeypatch.setattr(launch, "_stream", lambda index: seen.append(list(current)) or 7)
    x, y = torch.zeros(64), torch.zeros(64)
    _call(toy, x, y)  # compiled through Triton
    _call(toy, x, y)  # launched directly
    assert seen == [[x.device], [x.device]] and len(toy.direct) == 1


def test_on_device_switches_only_to_another_cuda_device(monkeypatch):
    assert isinstance(launch.on_device(torch.zeros(1)), contextlib.nullcontext)

    class OnGpu1:
        device = torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "device", lambda index: ("current device", index))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert launch.on_device(OnGpu1()) == ("current device", 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert isinstance(launch.on_device(OnGpu1()), contextlib.nullcontext)


@requires_triton
def test_fallback_is_said_once(triton_on, caplog, monkeypatch):
    if not launch._interpreting():
        pytest.skip("compiled kernels launch directly")
    lau = launch.CachedLauncher(attention._attention_fwd_kernel)
    assert "interpreter" in lau.problem
    monkeypatch.setattr(attention._FWD, "launcher", lau)
    q = torch.randn(1, 1, 5, 16)
    with caplog.at_level(logging.INFO, logger="vitcore.kernels"):
        flash_attention(q, q, q)
        flash_attention(q, q, q)
    assert sum("interpreter" in r.message for r in caplog.records) == 1


# -- the tuned table --
@pytest.fixture
def table(monkeypatch):
    """An empty tuned table and autotuning switched on (the interpreter normally skips it)."""
    monkeypatch.setattr(attention, "_TUNED", {})
    monkeypatch.setattr(attention, "_new_entries", [])
    monkeypatch.setattr(attention, "_AUTOTUNE", True)
    return attention._TUNED


def _listed(phase, n_ctx, elsize=4):
    """The autotune candidates when every config fits (the interpreter compiles nothing)."""
    return attention.choose(attention.config_order(phase, n_ctx, elsize), lambda c: attention.FITS, autotune=True)


@requires_triton
def test_autotune_once_per_key(triton_on, table, monkeypatch):
    timed = []

    def fake_bench(fn, return_mode):
        fn()  # one real (interpreted) launch per candidate
        timed.append(fn.args[4]["BLOCK_N"])
        return 1.0 / fn.args[4]["BLOCK_N"]  # the widest inner block "wins"

    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    q = torch.randn(1, 2, 9, 16)
    first = flash_attention(q, q, q)
    n_candidates = len(_listed("fwd", 9))
    assert len(timed) == n_candidates  # every candidate timed once
    second = flash_attention(q, q, q)
    assert len(timed) == n_candidates  # the same key: no re-tuning
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    (key,) = table
    assert key[0] == "fwd" and key[2:] == ("float32", 9, 16, attention.dot_precision(torch.float32), 16)
    assert table[key][1] == max(timed)
    q10 = torch.randn(1, 2, 10, 16)
    flash_attention(q10, q10, q10)  # another N': tuned anew
    assert len(table) == 2 and len(timed) == n_candidates + len(_listed("fwd", 10))


def test_table_round_trip(table, tmp_path):
    table[("fwd", "NVIDIA H200", "bfloat16", 197, 64, "tf32", 16)] = (64, 64, 4, 3)
    table[("dkdv", "NVIDIA H200", "float16", 197, 72, "tf32", 8)] = (128, 32, 4, 3)
    path = str(tmp_path / "tuned.json")
    assert attention.save_tuned(path) == 2
    saved = dict(table)
    table.clear()
    assert attention.load_tuned(path) == 2
    assert table == saved
    assert attention.tuned_configs() == {  # the JSON-ready view the reports record
        "dkdv": {"('NVIDIA H200', 'float16', 197, 72, 'tf32', 8)":
                 "BLOCK_N: 128, BLOCK_M: 32, num_warps: 4, num_stages: 3"},
        "fwd": {"('NVIDIA H200', 'bfloat16', 197, 64, 'tf32', 16)":
                "BLOCK_M: 64, BLOCK_N: 64, num_warps: 4, num_stages: 3"},
    }
    json.dumps(attention.tuned_configs())


def test_loaded_configs_are_used_without_tuning(triton_on, table, tmp_path, monkeypatch):
    key = ("fwd", "cpu", "float32", 9, 16, attention.dot_precision(torch.float32), 16)
    path = tmp_path / "tuned.json"
    doc = {"format": 2, "triton": triton.__version__, "entries": [{"key": list(key), "config": [32, 16, 4, 1]}]}
    path.write_text(json.dumps(doc))
    attention.load_tuned(str(path))
    seen = []
    monkeypatch.setattr(attention.Launchable, "_tune", lambda *a: pytest.fail("re-tuned a loaded key"))
    real = attention._FWD.launcher.__call__

    class Spy:
        def __call__(self, grid, tensors, ints, floats, meta, warps, stages):
            seen.append((grid, meta["BLOCK_M"], meta["BLOCK_N"], warps, stages))
            return real(grid, tensors, ints, floats, meta, warps, stages)

    monkeypatch.setattr(attention._FWD, "launcher", Spy())
    q = torch.randn(1, 2, 9, 16)
    torch.testing.assert_close(flash_attention(q, q, q), attention_ref(q, q, q), atol=1e-5, rtol=1e-5)
    assert seen == [((2, 1), 32, 16, 4, 1)]


@pytest.mark.parametrize("content, match", [
    ("not json", "not a tuned-config table"),
    ('{"format": 1, "entries": []}', "format 2 expected"),
    ('{"format": 2, "triton": "0.0.1", "entries": []}', "tuned with Triton 0.0.1"),
    ('{"format": 2, "triton": "%s", "entries": [{"key": ["fwd"], "config": [1, 2, 3, 4]}]}', "entry 0"),
    ('{"format": 2, "triton": "%s", "entries": [{"key": ["up", "x", "f", 1, 2, "t", 16], "config": [1, 2, 3, 4]}]}',
     "entry 0"),
    ('{"format": 2, "triton": "%s", "entries": [{"key": ["fwd", "x", "f", 1, 2, "t", 16], "config": [0, 2, 3, 4]}]}',
     "entry 0"),
])
def test_bad_tables_are_refused(table, tmp_path, content, match):
    path = tmp_path / "tuned.json"
    path.write_text(content.replace("%s", triton.__version__))
    with pytest.raises(ValueError, match=match):
        attention.load_tuned(str(path))
    assert not table


# -- TF32 rounding (the kernels' cvt.rna.tf32.f32 is PTX: here the rule itself) --
def tf32_rna(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> TF32 as ``cvt.rna.tf32.f32`` (PTX ISA): keep 10 explicit mantissa bits, round to
    nearest with ties away from zero. Adding half of the last kept bit (0x1000) to the sign-magnitude
    bit pattern, then clearing the 13 dropped bits, does exactly that for either sign."""
    bits = x.view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _tf32_reference(v: float) -> float:
    """The same rounding through float64 arithmetic: |v| = m 2^e, m in [0.5, 1) has 11 significant bits."""
    if v == 0.0:
        return v
    m, e = math.frexp(abs(v))
    return math.copysign(math.floor(m * 2**11 + 0.5) * 2.0 ** (e - 11), v)


def test_tf32_rounding_rule():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=gen) * torch.logspace(-30, 30, 4096)
    # halfway cases: 12 significant bits, the last one set, in [0.5, 1)
    ties = (torch.randint(2**10, 2**11, (64,), generator=gen).double() + 0.5) * 2.0 ** -11
    x = torch.cat([x, ties.float(), -ties.float(), torch.tensor([0.0, 1.0, -1.0, 3e38])])
    ours = tf32_rna(x)
    expected = torch.tensor([_tf32_reference(v) for v in x.tolist()], dtype=torch.float64)
    assert torch.equal(ours.double(), expected)
    rel = ((ours.double() - x.double()).abs() / x.double().abs().clamp_min(1e-300))
    assert rel.max() <= 2.0 ** -11  # half a TF32 ulp; truncation allows a whole one (2^-10)
    truncated = (x.view(torch.int32) & ~0x1FFF).view(torch.float32)
    assert ((truncated.double() - x.double()).abs() / x.double().abs().clamp_min(1e-300)).max() > 2.0 ** -11


def test_public_table_functions(table, tmp_path):
    from vitcore.ops import load_tuned, save_tuned

    table[("fwd", "NVIDIA H200", "float16", 197, 64, "tf32", 16)] = (64, 64, 4, 3)
    assert save_tuned(tmp_path / "t.json") == 1
    table.clear()
    assert load_tuned(tmp_path / "t.json") == 1 and len(table) == 1
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        save_tuned(3)
    with pytest.raises(FileNotFoundError):
        load_tuned(tmp_path / "missing.json")


def test_env_table_is_loaded_and_saved_back(table, tmp_path, monkeypatch):
    path = tmp_path / "tuned.json"
    table[("fwd", "cpu", "float32", 9, 16, "tf32", 16)] = (32, 16, 4, 1)
    attention.save_tuned(str(path))
    table.clear()
    at_exit = []
    monkeypatch.setattr(attention.atexit, "register", at_exit.append)
    monkeypatch.setenv("VITCORE_TUNED", str(path))
    attention._load_env_table()
    assert len(table) == 1 and len(at_exit) == 1
    at_exit[0]()  # nothing new tuned: the file is left alone
    assert json.loads(path.read_text())["entries"][0]["config"] == [32, 16, 4, 1]
    table[("dq", "cpu", "float32", 9, 16, "tf32", 16)] = (64, 32, 4, 1)
    attention._new_entries.append(("dq", "cpu", "float32", 9, 16, "tf32", 16))
    at_exit[0]()
    assert len(json.loads(path.read_text())["entries"]) == 2


@requires_cuda
def test_direct_launches_on_the_gpu(triton_on):
    """On a GPU with Triton 3.6 or 3.9 the second call of a shape launches the compiled kernels directly
    and gives bit-identical results (same kernel, same config)."""
    from vitcore.kernels import attention_bwd
    from vitcore.ops import param_stats, param_stats_ref

    launchers = [attention._FWD.launcher, attention_bwd._DQ.launcher, attention_bwd._DKDV.launcher]
    assert all(lau.problem is None for lau in launchers), launchers[0].problem
    q, k, v = (torch.randn(2, 3, 197, 64, device="cuda", requires_grad=True) for _ in range(3))
    first = [flash_attention(q, k, v)]
    first += torch.autograd.grad(first[0], (q, k, v), torch.ones_like(first[0]))
    second = [flash_attention(q, k, v)]
    second += torch.autograd.grad(second[0], (q, k, v), torch.ones_like(second[0]))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(lau.calls and lau.kernels for lau in launchers)
    params = [torch.randn(s, device="cuda") for s in [(768, 3), (5,), (70000,)]]
    grads = [torch.randn_like(p) for p in params]
    outs = [param_stats(params, grads) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    # the sums of non-negative terms (Σg², Σ|g·θ|, Σθ²): float64 rounding, 2 (n + 1) eps64 relative
    cols = [0, 1, 3]
    rtol = 2 * (70000 + 1) * torch.finfo(torch.float64).eps
    torch.testing.assert_close(outs[1][:, cols], param_stats_ref(params, grads)[:, cols], rtol=rtol, atol=0)


# -- configs chosen by what the compiler reports --
SM80_LIMIT = 163 * 1024


def _fake_rank(phase, config):
    """Compiled configs as the test pretends: 3 stages overflow an A100's shared memory, 8 warps spill."""
    if config[3] >= 3:
        return None  # e.g. 180,224 B > 166,912 B
    return 64 if config[2] == 8 else attention.FITS


RANKS = {
    "all fit": lambda c: attention.FITS,
    "2 stages fit": lambda c: attention.FITS if c[3] < 3 else None,
    "fallbacks only": lambda c: attention.FITS if c in attention.FALLBACK_CONFIGS[1:] else None,
    "listed spill": lambda c: 8 * c[0] if c not in attention.FALLBACK_CONFIGS else None,
    "first spills": lambda c: 16 if c == attention.config_order("dq", 197, 4)[0] else attention.FITS,
    "every one spills": lambda c: 1000 - c[1] if c[3] < 3 else None,  # the widest inner block spills least
}


@pytest.mark.parametrize("autotune", [False, True])
@pytest.mark.parametrize("case", list(RANKS))
def test_choose_prefers_fitting_then_least_spilled(case, autotune):
    order = attention.config_order("dq", 197, 4)
    listed = [c for c in order if c not in attention.FALLBACK_CONFIGS]
    rank = RANKS[case]
    asked = []
    chosen = attention.choose(order, lambda c: asked.append(c) or rank(c), autotune)
    assert all(rank(c) is not None for c in chosen)  # never one over the limit
    fitting = [c for c in order if rank(c) is not None]
    clean = [c for c in fitting if rank(c) == attention.FITS]
    if autotune:
        listed_clean = [c for c in listed if c in clean]
        # every listed clean config, else the first clean fallback, else every fitting config timed
        assert chosen == (listed_clean or clean[:1] or fitting)
    elif clean:  # the first that does not spill; nothing compiled past it
        assert chosen == clean[:1] and asked == order[:order.index(clean[0]) + 1]
    else:  # every one spills: the least, the earlier on a tie
        least = min(rank(c) for c in fitting)
        assert chosen == [next(c for c in fitting if rank(c) == least)]


def test_nothing_fits_is_an_error():
    with pytest.raises(RuntimeError, match="no attention config fits"):
        attention.choose(attention.config_order("dkdv", 197, 4), lambda c: None, autotune=False)


@pytest.fixture
def compiled(monkeypatch):
    """The kernels' config choice as on an A100: the interpreter's shortcut off, the device's limit and
    what the compiler reports faked, and every launch recorded (nothing runs)."""
    from vitcore.kernels import attention_bwd

    monkeypatch.setattr(attention, "_INTERPRET", False)
    monkeypatch.setattr(attention, "smem_limit", lambda index: SM80_LIMIT)
    monkeypatch.setattr(attention.Launchable, "rank",
                        lambda self, args, meta, config, grid, limit: _fake_rank(self.phase, config))
    launched = []

    class Spy:
        def __init__(self, phase):
            self.phase = phase

        def __call__(self, grid, tensors, ints, floats, meta, warps, stages):
            outer = meta[attention._OUTER[self.phase]]
            inner = meta[attention._INNER[self.phase]]
            launched.append((self.phase, (outer, inner, warps, stages)))

    for lau in (attention._FWD, attention_bwd._DQ, attention_bwd._DKDV):
        monkeypatch.setattr(lau, "launcher", Spy(lau.phase))
        monkeypatch.setattr(lau, "chosen", {})
    return launched


def _forward_and_backward():
    from vitcore.kernels import attention_bwd

    q = torch.randn(1, 2, 197, 72)
    o, stats = attention.attention_fwd(q, q, q, 0.125)
    attention_bwd.attention_bwd(torch.randn_like(q), q, q, q, o, stats, 0.125)


@pytest.mark.parametrize("autotune", [False, True])
def test_no_config_over_the_devices_limit_is_launched(compiled, table, monkeypatch, autotune):
    monkeypatch.setattr(attention, "_AUTOTUNE", autotune)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, return_mode: fn() or 1.0)
    for _ in range(2):
        _forward_and_backward()
    assert {phase for phase, _ in compiled} == {"fwd", "dq", "dkdv"}
    assert all(_fake_rank(phase, c) == attention.FITS for phase, c in compiled)
    for phase in ("fwd", "dq", "dkdv"):
        order = attention.config_order(phase, 197, 4)
        unspilled = [c for c in order if _fake_rank(phase, c) == attention.FITS]
        used = [c for p, c in compiled if p == phase]
        if autotune:  # every listed config that fits unspilled timed once, then the winner launched
            listed = [c for c in unspilled if c not in attention.FALLBACK_CONFIGS] or unspilled[:1]
            assert used[:len(listed)] == listed and set(used) == set(listed)
        else:  # the first that fits unspilled, on both calls
            assert used == [unspilled[0]] * 2


def test_smem_limit_comes_from_the_device(monkeypatch):
    class Props:
        shared_memory_per_block_optin = 101_376

    class Utils:
        @staticmethod
        def get_device_properties(index):
            return {"max_shared_mem": 232_448}

    class Driver:
        utils = Utils

    attention.smem_limit.cache_clear()
    try:
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props())
        assert attention.smem_limit(0) == 101_376
        attention.smem_limit.cache_clear()
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: object())  # an older torch
        monkeypatch.setattr(triton.runtime.driver, "_active", Driver())
        assert attention.smem_limit(0) == 232_448
    finally:
        attention.smem_limit.cache_clear()

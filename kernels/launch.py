"""Direct launches of compiled Triton kernels: the host path without ``JITFunction.run``'s per-call work.

``kernel[grid](*args)`` binds the arguments, computes their specialisation and builds a cache key on
every call (about 12.5 µs with 19 arguments, Triton's own figure; vLLM measured 8.7 µs against 4.5 µs
for a direct launch). ``CachedLauncher`` does that once per *specialisation key* and then calls the
compiled kernel's launcher directly.

The key (``spec_key``) covers everything Triton specialises on, or finer:
  - each pointer's dtype and whether its address is 16-byte aligned;
  - each integer's type (i32 / i64 / u64) and, unless the kernel marks it ``do_not_specialize``,
    whether it equals 1 (Triton makes it a constant) and whether it is divisible by 16;
  - the constexpr values (block sizes, head dim, dot precision, ...), num_warps and num_stages;
  - the device index, and Triton's compile options read from its knobs at launch time (``debug``,
    ``instrumentation_mode``, and ``fpsan_homomorphic_casts`` where the release has it): a kernel compiled
    with another setting is another kernel.
Floats are always fp32 arguments and do not enter the key. ``tests/test_launch.py`` checks that two
calls with the same key get the same specialisation from the installed Triton
(``native_specialize_impl``).

Fallback: Triton 3.6 (the GPU machines) and 3.9 (the CPU machines) launch a ``CompiledKernel`` the
same way (``kernel.run(grid0, grid1, grid2, stream, function, packed_metadata, launch_metadata,
enter_hook, exit_hook, *args)``, read in both versions' ``runtime/jit.py``). Any other release, a
kernel object without those attributes, and Triton's interpreter (which compiles nothing) take the
ordinary ``kernel[grid](...)`` on every call; ``direct_problem()`` says why, logged once per kernel
(INFO on the interpreter, WARNING otherwise).
A launch hook (a profiler) added to ``triton.knobs.runtime`` also takes the ordinary path; without
one the direct launch passes None for the hooks, which both versions' C launchers then skip.

Every launch, ordinary or direct, runs with the tensors' device set as the current one (``on_device``):
Triton compiles, loads and launches for the current device. The cache holds the ``CompiledKernel`` itself,
not only its launcher and function handle: Triton 3.9's ``CompiledKernel.__del__`` unloads the module.
"""
import contextlib
import functools
import inspect
import logging
from typing import Optional, Sequence

import torch
import triton

from vitcore.ops.dispatch import env_flag

_LOG = logging.getLogger("vitcore.kernels")
_RELEASES = ((3, 6), (3, 9))  # whose JITFunction.run and launchers were read (module docstring)
_I32, _I64, _U64 = 0, 1, 2
_CACHE_SIZE = 1024  # keys kept per kernel (each a few hundred bytes); the oldest is dropped past it


def int_class(x: int, specialize: bool) -> tuple:
    """Triton's specialisation class of an int argument: (type, == 1, divisible by 16)."""
    if -2**31 <= x < 2**31:
        width = _I32
    elif 2**63 <= x < 2**64:
        width = _U64
    else:
        width = _I64
    return (width, x == 1, x % 16 == 0) if specialize else (width,)


def spec_key(tensors: Sequence[torch.Tensor], ints: Sequence[int], specialize: Sequence[bool],
             constexprs: tuple, options: tuple) -> tuple:
    """The launch-cache key: pointer classes, integer classes, constexprs and options (see module)."""
    device = tensors[0].device.index
    ptrs = tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors])
    return (device, ptrs, tuple(map(int_class, ints, specialize)), constexprs, options)


def _release(version: str) -> tuple:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def direct_problem(triton_version: str, interpreting: bool) -> Optional[str]:
    """Why compiled kernels cannot be launched directly here (None: they can)."""
    if interpreting:
        return "Triton's interpreter compiles no kernels: every launch goes through kernel[grid](...)"
    if _release(triton_version) not in _RELEASES:
        read = ", ".join(f"{major}.{minor}" for major, minor in _RELEASES)
        return (f"Triton {triton_version}: the direct launch was written against Triton {read}; "
                "using the ordinary kernel[grid](...) launch")
    return None


def _interpreting() -> bool:
    return env_flag("TRITON_INTERPRET", False)


def _stream(device_index: int) -> int:
    """The current CUDA stream's handle, as Triton's own launch reads it."""
    return triton.runtime.driver.active.get_current_stream(device_index)


def _parameters(fn) -> tuple:
    """(specialise flag per parameter, constexpr names) of a JITFunction or an InterpretedFunction."""
    jit = getattr(fn, "fn", fn)
    dns = getattr(fn, "do_not_specialize", None) or getattr(fn, "kwargs", {}).get("do_not_specialize") or ()
    params = list(inspect.signature(jit).parameters.values())
    constexpr = tuple(p.name for p in params if "constexpr" in str(p.annotation))
    specialize = tuple(p.name not in dns and i not in dns for i, p in enumerate(params))
    return specialize, constexpr


def on_device(t: torch.Tensor):
    """A context in which ``t``'s CUDA device is the current one (nothing to do if it is, or on the CPU)."""
    index = t.device.index
    if index is None or t.device.type != "cuda" or index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(index)


def compile_options(fn) -> tuple:
    """The compile options ``JITFunction.run`` reads from Triton's knobs on every launch (those this
    release has), as a tuple for the cache key."""
    knobs = triton.knobs
    return (bool(getattr(fn, "debug", False)) or bool(knobs.runtime.debug),
            getattr(knobs.compilation, "instrumentation_mode", None),
            getattr(knobs.compilation, "fpsan_homomorphic_casts", None))


def _hooked(hook) -> bool:
    """Whether a launch hook is set: Triton 3.6 and 3.9 keep a ``HookChain``, empty unless a profiler adds to it."""
    return hook is not None and bool(getattr(hook, "calls", True))


_ptr = torch.Tensor.data_ptr
_low_bits = (15).__and__  # address mod 16, applied by map() without a Python frame


class CachedLauncher:
    """Launch ``fn`` (a ``@triton.jit`` kernel whose parameters are: pointers, ints, floats,
    constexprs, in that order) directly after the first call for each specialisation key.

    Two levels, so that a hit costs hashing, not classifying: ``calls`` maps the raw call (device,
    the int values, the first pointer's dtype, every address mod 16, constexprs, options, Triton's
    compile options) to the compiled kernel; a miss there computes ``spec_key`` and looks in ``kernels``, which holds one
    compiled kernel per specialisation; a miss there too launches through ``kernel[grid](...)``
    (Triton compiles or finds its own cached binary) and keeps the kernel it returns. The raw key
    assumes what vitcore's launchers guarantee: every pointer's dtype is fixed by the first one's.
    """

    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "fn", fn).__name__
        self.specialize, self.constexpr_names = _parameters(fn)
        self.calls = {}  # raw call -> (launcher function, CUfunction, packed metadata, CompiledKernel)
        self.kernels = {}  # spec_key -> the same entry
        self.problem = direct_problem(triton.__version__, _interpreting())
        self._said = False

    def _ordinary(self, grid, args, meta, num_warps, num_stages):
        return self.fn[grid](*args, **meta, num_warps=num_warps, num_stages=num_stages)

    def _compiled(self, grid, tensors, ints, args, meta, constexprs, num_warps, num_stages, options):
        """The compiled kernel for this call's specialisation (launching it, if it is new)."""
        key = spec_key(tensors, ints, self.specialize[len(tensors):], constexprs, (num_warps, num_stages, options))
        entry = self.kernels.get(key)
        if entry is None:
            kernel = self._ordinary(grid, args, meta, num_warps, num_stages)  # compiles, launches
            if not all(hasattr(kernel, name) for name in ("run", "function", "packed_metadata")):
                self.problem = (f"Triton {triton.__version__} returned a {type(kernel).__name__} without "
                                "run/function/packed_metadata; using the ordinary kernel[grid](...) launch")
                return None, True
            # the kernel too: dropping the last reference to it would unload its module (Triton 3.9)
            entry = self.kernels[key] = (kernel.run, kernel.function, kernel.packed_metadata, kernel)
            return entry, True
        return entry, False

    def __call__(self, grid: tuple, tensors: tuple, ints: tuple, floats: tuple, meta: dict,
                 num_warps: int, num_stages: int) -> None:
        """Launch on ``grid`` (a 1- to 3-tuple) with ``meta`` the constexprs by name."""
        with on_device(tensors[0]):
            self._launch(grid, tensors, ints, (*tensors, *ints, *floats), meta, num_warps, num_stages)

    def _launch(self, grid, tensors, ints, args, meta, num_warps, num_stages):
        if self.problem is not None:
            if not self._said:
                level = logging.INFO if _interpreting() else logging.WARNING  # expected there; a surprise here
                _LOG.log(level, "%s: %s", self.name, self.problem)
                self._said = True
            self._ordinary(grid, args, meta, num_warps, num_stages)
            return
        knobs = triton.knobs.runtime
        if _hooked(knobs.launch_enter_hook) or _hooked(knobs.launch_exit_hook):
            self._ordinary(grid, args, meta, num_warps, num_stages)  # a profiler wants its metadata
            return
        constexprs = tuple(map(meta.__getitem__, self.constexpr_names))
        device = tensors[0].device.index
        options = compile_options(self.fn)
        call = (device, ints, tensors[0].dtype, tuple(map(_low_bits, map(_ptr, tensors))), constexprs,
                num_warps, num_stages, options)
        entry = self.calls.get(call)
        if entry is None:
            entry, launched = self._compiled(grid, tensors, ints, args, meta, constexprs, num_warps, num_stages,
                                             options)
            if entry is None:  # not a kernel this file can launch: said on the next call
                return
            if len(self.calls) >= _CACHE_SIZE:
                self.calls.pop(next(iter(self.calls)))
            self.calls[call] = entry
            if launched:
                return
        run, function, packed, _ = entry
        grid = (*grid, 1, 1)
        run(grid[0], grid[1], grid[2], _stream(device), function, packed, None, None, None, *args, *constexprs)


# -- metadata guards: what a cached plan checks before it is reused --
def _python_signature(tensors: Sequence[torch.Tensor]) -> tuple:
    return (tuple(map(type, tensors)), tuple(t.dtype for t in tensors),
            tuple(t.device for t in tensors), tuple(t.shape for t in tensors),
            tuple(t.stride() for t in tensors))


class PythonGuard:
    """Fallback for ``TensorGuards``: the same metadata compared through Python maps."""

    def __init__(self, *tensors: torch.Tensor):
        self._sig = _python_signature(tensors)

    def check(self, *tensors) -> bool:
        if not all(isinstance(t, torch.Tensor) for t in tensors):
            return False
        return _python_signature(tensors) == self._sig


def _make_guard_type():
    try:
        from torch._C._dynamo.guards import TensorGuards
    except ImportError:
        return PythonGuard
    # the keyword arguments are required: without them some versions crash in C++
    return functools.partial(TensorGuards, dynamic_dims_sizes=None, dynamic_dims_strides=None)


# ``MetadataGuard(*tensors).check(*others)``: True when the others have the same types, dtypes, devices,
# sizes and strides (the C++ check torch.compile runs per call; PythonGuard where it is missing)
MetadataGuard = _make_guard_type()

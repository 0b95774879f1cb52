"""Per-tensor gradient statistics for a whole model: Σg², Σ|g·θ|, Σg·θ, Σθ² in one launch.

Supported: any number of (gradient, weight) pairs of equal shape, any sizes (0 and 1 element
included), fp32 / fp16 / bf16 / fp64 in any mix (g and θ may differ), contiguous or strided tensors
whose layout collapses to a 2-D strided view (slices, transposes, ``x[:, ::2]``). Anything else (a
permuted 3-D view that does not collapse) is copied with ``.contiguous()`` on every call.
Accumulates in float64 and outputs float64 (T, 4): every product of two fp32 values is exact in
float64 and no sum of squares of fp32/fp16/bf16 values can overflow it (an fp32 accumulator overflows
once Σg² passes 3.4e38, e.g. gradients of 1e20; fp64 inputs keep their own precision). The fp64
arithmetic is about 7 operations per element pair: by the published fp64 rates of H100/H200 it
should stay under the memory time, on GPUs with 1/64-rate fp64 it may not (neither measured).
Fast paths: contiguous, 16-byte aligned fp32/fp32, bf16/bf16 and fp16/fp16 pairs; every other
pair takes the generic (strided, per-load dtype) path.

Design, for the real caller: ``vitcore.score`` passes fresh gradients from ``torch.autograd.grad``
and fresh ``p.detach()`` views of the weights on every call, so nothing may be keyed on tensor
identity, and the one host sync of a score call may not gain a second one here.
- A *plan* depends on the tensors' metadata only, never on their addresses: the tensors are cut
  into chunks of ``chunk_size`` elements (a multiple of BLOCK, sized to the whole GPU), and a static
  int64 table holds one row per tensor (numel, first chunk, chunk count, kind = dtype codes +
  layout, 2-D strides) plus the chunk -> tensor map (largest tensors first, so the small ones fill
  the tail). It is built, validated and uploaded (pinned, non-blocking) on a miss only.
- Lookup: plans are found by the tuple of the weights' data pointers (a model's weights stay put
  across calls, whatever Python objects view them) and confirmed by one C++ metadata guard over
  every g and θ (dtype, device, sizes, strides, dispatch keys: Dynamo's ``TensorGuards``, the check
  ``torch.compile`` runs per call; a map-based Python check where it is missing). A failed guard
  (a gradient turned non-contiguous, ``model.half()``, a new shape) validates and builds a new
  plan, so a changed layout can cost time but never give a wrong answer.
- Per call, the data pointers of g and θ go to the kernel in an int64 table (C-level maps of
  ``data_ptr``), uploaded from pinned memory with a non-blocking copy: no host sync. A table is
  reused while the addresses repeat (the caching allocator often hands autograd the same blocks).
  The kernel casts each address to a typed pointer; 16-byte alignment is tested in the kernel, so
  the host checks nothing per address.
- One launch (``_param_stats_kernel``), one program per chunk: it adds its chunk in fp64. A tensor
  of one chunk writes its output row directly. Otherwise the program writes its 4 partial sums,
  takes a ticket from the tensor's counter (integer ``atomic_add``, acq_rel at GPU scope, after a
  CTA barrier: the classic threadfence reduction, as in Inductor's ``x_grid_barrier``), and the
  program that draws the tensor's last ticket adds that tensor's partials in chunk order (L2-only
  loads) and resets the counter. No float atomics and a fixed order: bit-identical results run
  after run. Combining per tensor keeps the serial tail one tensor long.
- Partials and counters are cached per (plan, CUDA stream): calls on one stream are ordered, calls
  on two streams never share them. Under CUDA-graph capture an address table uploaded during the
  capture is kept alive with the plan, since replays copy from its pinned buffer.
"""
import functools
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import triton
import triton.language as tl

from .launch import CachedLauncher, MetadataGuard as _Guard

_NF: tl.constexpr = tl.constexpr(9)  # int64 fields per tensor row of the static table
_TABLE_FIELDS = ("numel", "first_chunk", "n_chunks", "kind",
                 "n_cols", "stride_g0", "stride_g1", "stride_w0", "stride_w1")
assert len(_TABLE_FIELDS) == _NF.value

# dtype codes; kind = code(g) + 4 * code(θ) + 16 * (not both contiguous)
_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
_STRIDED = 16
_F32_F32: tl.constexpr = tl.constexpr(0)
_F16_F16: tl.constexpr = tl.constexpr(1 + 4 * 1)
_BF16_BF16: tl.constexpr = tl.constexpr(2 + 4 * 2)

BLOCK = 1024  # elements a program loads per step (8 per thread with 4 warps)
BLOCK_C = 64  # chunk partials the combining program adds per step
MAX_CHUNK = 64 * BLOCK  # longest chunk; longer ones would leave SMs idle on small models
PROGRAMS_PER_SM = 16  # aim for this many chunks per SM so the GPU stays busy on ViT-Ti too
_PLAN_CACHE_SIZE = 32  # weight-pointer keys kept (LRU)
_PLAN_VARIANTS = 4  # plans kept per key (the same weights seen with different layouts)
_TABLES_PER_STREAM = 4  # address tables kept per (plan, stream): grads and GraSP's Hg alternate


# -- device code --
@triton.jit
def _load_f64(addr, code, offs, mask):
    """Elements ``offs`` of the tensor at int64 address ``addr`` with dtype ``code``, as fp64."""
    if code == 0:
        x = tl.load(addr.to(tl.pointer_type(tl.float32)) + offs, mask=mask, other=0.0).to(tl.float64)
    elif code == 1:
        x = tl.load(addr.to(tl.pointer_type(tl.float16)) + offs, mask=mask, other=0.0).to(tl.float64)
    elif code == 2:
        x = tl.load(addr.to(tl.pointer_type(tl.bfloat16)) + offs, mask=mask, other=0.0).to(tl.float64)
    else:
        x = tl.load(addr.to(tl.pointer_type(tl.float64)) + offs, mask=mask, other=0.0)
    return x


@triton.jit
def _accumulate(acc_gg, acc_agw, acc_gw, acc_ww, g, w):
    """The four running sums after adding fp64 blocks g and θ elementwise."""
    gw = g * w
    return acc_gg + g * g, acc_agw + tl.abs(gw), acc_gw + gw, acc_ww + w * w


@triton.jit
def _contiguous_sums(G, W, start, length, BLOCK: tl.constexpr):
    """Σg², Σ|g·θ|, Σg·θ, Σθ² over elements [start, start + length) of contiguous typed pointers
    G, W, hinted 16-byte aligned by the caller (a hint on an argument here would be lost); full
    blocks unmasked (a masked load of a runtime length would not vectorise), then the ragged tail
    masked."""
    acc_gg = tl.zeros([BLOCK], dtype=tl.float64)
    acc_agw = tl.zeros([BLOCK], dtype=tl.float64)
    acc_gw = tl.zeros([BLOCK], dtype=tl.float64)
    acc_ww = tl.zeros([BLOCK], dtype=tl.float64)
    n_full = length - length % BLOCK
    for i in range(0, n_full, BLOCK):
        offs = tl.max_contiguous(tl.multiple_of(start + i + tl.arange(0, BLOCK), BLOCK), BLOCK)
        g = tl.load(G + offs).to(tl.float64)
        w = tl.load(W + offs).to(tl.float64)
        acc_gg, acc_agw, acc_gw, acc_ww = _accumulate(acc_gg, acc_agw, acc_gw, acc_ww, g, w)
    if n_full < length:
        idx = n_full + tl.arange(0, BLOCK)
        mask = idx < length
        g = tl.load(G + start + idx, mask=mask, other=0.0).to(tl.float64)
        w = tl.load(W + start + idx, mask=mask, other=0.0).to(tl.float64)
        acc_gg, acc_agw, acc_gw, acc_ww = _accumulate(acc_gg, acc_agw, acc_gw, acc_ww, g, w)
    return tl.sum(acc_gg, axis=0), tl.sum(acc_agw, axis=0), tl.sum(acc_gw, axis=0), tl.sum(acc_ww, axis=0)


@triton.jit
def _strided_sums(g_addr, w_addr, kind, start, length, row, BLOCK: tl.constexpr):
    """The same sums for any dtype pair and any 2-D strided layout (strides from the table row)."""
    n_cols = tl.load(row + 4)
    stride_g0 = tl.load(row + 5)
    stride_g1 = tl.load(row + 6)
    stride_w0 = tl.load(row + 7)
    stride_w1 = tl.load(row + 8)
    code_g = kind % 4
    code_w = (kind // 4) % 4
    acc_gg = tl.zeros([BLOCK], dtype=tl.float64)
    acc_agw = tl.zeros([BLOCK], dtype=tl.float64)
    acc_gw = tl.zeros([BLOCK], dtype=tl.float64)
    acc_ww = tl.zeros([BLOCK], dtype=tl.float64)
    for i in range(0, length, BLOCK):
        idx = start + i + tl.arange(0, BLOCK)  # (BLOCK,) element indices in the tensor
        mask = i + tl.arange(0, BLOCK) < length
        r = idx // n_cols
        col = idx - r * n_cols
        g = _load_f64(g_addr, code_g, r * stride_g0 + col * stride_g1, mask)
        w = _load_f64(w_addr, code_w, r * stride_w0 + col * stride_w1, mask)
        acc_gg, acc_agw, acc_gw, acc_ww = _accumulate(acc_gg, acc_agw, acc_gw, acc_ww, g, w)
    return tl.sum(acc_gg, axis=0), tl.sum(acc_agw, axis=0), tl.sum(acc_gw, axis=0), tl.sum(acc_ww, axis=0)


@triton.jit
def _param_stats_kernel(
    # Pointers
    TABLE,  # int64: (T, _NF) static tensor rows, then the chunk -> tensor map
    ADDRS,  # int64 (T, 2): this call's data pointers of g and θ
    PARTIALS,  # fp64 (n_chunks, 4): a chunk's Σg², Σ|g·θ|, Σg·θ, Σθ² (multi-chunk tensors only)
    COUNTERS,  # int32 (T,): chunks of the tensor finished in this launch; 0 between launches
    OUT,  # fp64 (T, 4)
    # Sizes
    chunk_map_start,  # where the chunk -> tensor map starts in TABLE (T * _NF)
    chunk_size,  # elements per chunk, a multiple of BLOCK
    # Meta-parameters
    BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # -- which tensor, which part of it --
    c = tl.program_id(0)
    t = tl.load(TABLE + chunk_map_start + c)
    row = TABLE + t * _NF
    numel = tl.load(row + 0)
    first_chunk = tl.load(row + 1)
    n_chunks = tl.load(row + 2)
    kind = tl.load(row + 3)
    g_addr = tl.load(ADDRS + 2 * t)
    w_addr = tl.load(ADDRS + 2 * t + 1)
    start = (c - first_chunk) * chunk_size  # first element of this chunk, int64
    length = tl.minimum(numel - start, chunk_size)

    # -- this chunk's sums: a vectorised loop per common dtype pair, else the generic one --
    aligned = ((g_addr | w_addr) % 16) == 0  # chunk starts are BLOCK elements apart: aligned too
    if aligned & (kind == _F32_F32):
        s_gg, s_agw, s_gw, s_ww = _contiguous_sums(
            tl.multiple_of(g_addr.to(tl.pointer_type(tl.float32)), 16),
            tl.multiple_of(w_addr.to(tl.pointer_type(tl.float32)), 16),
            start, length, BLOCK)
    elif aligned & (kind == _BF16_BF16):
        s_gg, s_agw, s_gw, s_ww = _contiguous_sums(
            tl.multiple_of(g_addr.to(tl.pointer_type(tl.bfloat16)), 16),
            tl.multiple_of(w_addr.to(tl.pointer_type(tl.bfloat16)), 16),
            start, length, BLOCK)
    elif aligned & (kind == _F16_F16):
        s_gg, s_agw, s_gw, s_ww = _contiguous_sums(
            tl.multiple_of(g_addr.to(tl.pointer_type(tl.float16)), 16),
            tl.multiple_of(w_addr.to(tl.pointer_type(tl.float16)), 16),
            start, length, BLOCK)
    else:
        s_gg, s_agw, s_gw, s_ww = _strided_sums(g_addr, w_addr, kind, start, length, row, BLOCK)
    cols = tl.arange(0, 4)
    sums = tl.where(cols == 0, s_gg, tl.where(cols == 1, s_agw, tl.where(cols == 2, s_gw, s_ww)))

    # -- one chunk: the tensor's row; several: partials, ticket, the last one combines --
    if n_chunks == 1:
        tl.store(OUT + t * 4 + cols, sums)
    else:
        tl.store(PARTIALS + c * 4 + cols, sums)
        tl.debug_barrier()  # every thread's partial store precedes the release below
        ticket = tl.atomic_add(COUNTERS + t, 1, sem="acq_rel", scope="gpu")
        if ticket == n_chunks - 1:  # the other chunks' partials are visible (acquire)
            tl.debug_barrier()
            acc = tl.zeros([BLOCK_C, 4], dtype=tl.float64)
            for i in range(0, n_chunks, BLOCK_C):  # fixed chunk order: deterministic
                rows = i + tl.arange(0, BLOCK_C)
                ptrs = PARTIALS + (first_chunk + rows)[:, None] * 4 + cols[None, :]  # (BLOCK_C, 4)
                # .cg: read L2, never a stale L1 line another tensor's combine brought in
                acc += tl.load(ptrs, mask=(rows < n_chunks)[:, None], other=0.0, cache_modifier=".cg")
            tl.store(OUT + t * 4 + cols, tl.sum(acc, axis=0))
            tl.store(COUNTERS + t, 0)  # ready for the next launch (stream-ordered)


# -- host: plans --
class _Workspace(NamedTuple):
    partials: torch.Tensor  # fp64 (n_chunks, 4)
    counters: torch.Tensor  # int32 (T,), zero between launches
    tables: Dict[tuple, torch.Tensor]  # (g pointers, θ pointers) -> int64 (T, 2) on the device


class _Plan(NamedTuple):
    guard: object  # checks the metadata of params + grads
    n_tensors: int
    n_chunks: int
    chunk_size: int
    table: torch.Tensor  # int64 static rows + chunk map, on the device
    copies: Tuple[int, ...]  # pairs without a 2-D view: made contiguous on every call
    device: torch.device
    workspaces: Dict[Optional[int], _Workspace]  # by CUDA stream (None on CPU)
    keepalive: List[torch.Tensor]  # pinned tables copied inside a CUDA-graph capture


_ptr = torch.Tensor.data_ptr
_PLANS: Dict[tuple, List[_Plan]] = {}  # θ data pointers -> plans (LRU order)


def _as_2d(g: torch.Tensor, w: torch.Tensor) -> Optional[Tuple[int, int, int, int, int]]:
    """(n_cols, stride_g0, stride_g1, stride_w0, stride_w1) viewing g and w as one 2-D layout."""
    dims: List[List[int]] = []  # [size, stride g, stride w], size-1 dims dropped, mergeable merged
    for size, sg, sw in zip(g.shape, g.stride(), w.stride()):
        if size == 1:
            continue
        if dims and dims[-1][1] == sg * size and dims[-1][2] == sw * size:
            dims[-1] = [dims[-1][0] * size, sg, sw]
        else:
            dims.append([size, sg, sw])
    if len(dims) > 2:
        return None
    if not dims:  # 0 or 1 element
        return (1, 0, 1, 0, 1)
    if len(dims) == 1:
        size, sg, sw = dims[0]
        return (size, 0, sg, 0, sw)
    (_, sg0, sw0), (n_cols, sg1, sw1) = dims
    return (n_cols, sg0, sg1, sw0, sw1)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few programs per tensor, so tests cover multi-chunk tensors


def _chunk_size(total: int, device: torch.device) -> int:
    target = -(-total // (PROGRAMS_PER_SM * _num_sms(device)))
    return min(MAX_CHUNK, max(BLOCK, triton.next_power_of_2(target)))


def _host_table(shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An empty int64 CPU table, pinned when it is bound for a GPU (non-blocking upload)."""
    return torch.empty(shape, dtype=torch.int64, pin_memory=device.type == "cuda")


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` (pinned for a GPU) on ``device`` with a non-blocking copy: no host sync. PyTorch's
    caching host allocator keeps the pinned block alive until the copy has run."""
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


def _build_plan(params: List[torch.Tensor], grads: List[torch.Tensor]) -> _Plan:
    guard = _Guard(*params, *grads)
    n = len(params)
    device = params[0].device
    layouts = [_as_2d(g, w) for g, w in zip(grads, params)]
    copies = tuple(i for i, lay in enumerate(layouts) if lay is None)
    numel = np.array([w.numel() for w in params], dtype=np.int64)
    chunk_size = _chunk_size(int(numel.sum()), device)
    n_chunks = np.maximum(1, -(-numel // chunk_size))  # (T,); an empty tensor still writes its row
    rows = np.zeros((n, _NF.value), dtype=np.int64)
    rows[:, 0] = numel
    rows[:, 2] = n_chunks
    for i, (w, g, lay) in enumerate(zip(params, grads, layouts)):
        contiguous = lay is None or (g.is_contiguous() and w.is_contiguous())
        rows[i, 3] = _CODES[g.dtype] + 4 * _CODES[w.dtype] + (0 if contiguous else _STRIDED)
        rows[i, 4:] = (max(int(numel[i]), 1), 0, 1, 0, 1) if contiguous else lay
    order = np.argsort(-numel, kind="stable")  # largest first: small tensors fill the tail
    rows[order, 1] = np.cumsum(n_chunks[order]) - n_chunks[order]
    chunk_map = np.repeat(order, n_chunks[order]).astype(np.int64)
    flat = np.concatenate([rows.reshape(-1), chunk_map])
    table = _host_table(flat.shape, device)
    table.numpy()[:] = flat
    return _Plan(guard, n, int(n_chunks.sum()), chunk_size, _to_device(table, device), copies,
                 device, {}, [])


def _lookup(key: tuple, params: List[torch.Tensor], grads: List[torch.Tensor]) -> Optional[_Plan]:
    plans = _PLANS.get(key)
    if plans is None:
        return None
    for plan in plans:
        if plan.n_tensors == len(grads) and plan.guard.check(*params, *grads):
            _PLANS[key] = _PLANS.pop(key)  # most recently used last
            return plan
    return None


def _remember(key: tuple, plan: _Plan) -> None:
    plans = _PLANS.pop(key, [])
    _PLANS[key] = [plan] + plans[:_PLAN_VARIANTS - 1]
    if len(_PLANS) > _PLAN_CACHE_SIZE:
        _PLANS.pop(next(iter(_PLANS)))  # least recently used


def _workspace(plan: _Plan) -> _Workspace:
    stream = None
    if plan.device.type == "cuda":
        stream = triton.runtime.driver.active.get_current_stream(plan.device.index)
    ws = plan.workspaces.get(stream)
    if ws is None:
        ws = _Workspace(torch.empty((plan.n_chunks, 4), dtype=torch.float64, device=plan.device),
                        torch.zeros(plan.n_tensors, dtype=torch.int32, device=plan.device), {})
        plan.workspaces[stream] = ws
    return ws


def _addresses(plan: _Plan, ws: _Workspace, g_ptrs: tuple, w_ptrs: tuple) -> torch.Tensor:
    """int64 (T, 2) data pointers of g and θ on the device; uploaded only when they changed."""
    key = (g_ptrs, w_ptrs)
    table = ws.tables.get(key)
    if table is None:
        host = _host_table((plan.n_tensors, 2), plan.device)
        view = host.numpy()
        view[:, 0] = g_ptrs
        view[:, 1] = w_ptrs
        table = _to_device(host, plan.device)
        if plan.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            plan.keepalive.append(host)
        if len(ws.tables) >= _TABLES_PER_STREAM:
            ws.tables.pop(next(iter(ws.tables)))
        ws.tables[key] = table
    return table


def find_plan(params: List[torch.Tensor], grads: List[torch.Tensor]) -> Optional[_Plan]:
    """The cached plan whose metadata guard accepts these tensors, or None (the caller validates the
    tensors, then calls ``make_plan``). A hit means tensors of exactly this metadata were validated
    before. A non-tensor or a sparse tensor in ``params`` finds none, so that the caller's checks name it."""
    try:
        key = tuple(map(_ptr, params))
    except (TypeError, AttributeError, RuntimeError):  # RuntimeError: a sparse tensor has no data pointer
        return None
    return _lookup(key, params, grads)


def cached_plans() -> int:
    """How many plans the cache holds (every weight-pointer key, every layout variant)."""
    return sum(map(len, _PLANS.values()))


def clear_plans() -> None:
    """Forget every cached plan: the next call on any tensors validates and builds anew."""
    _PLANS.clear()


def make_plan(params: List[torch.Tensor], grads: List[torch.Tensor]) -> _Plan:
    """Build and cache the plan for validated tensors."""
    plan = _build_plan(params, grads)
    _remember(tuple(map(_ptr, params)), plan)
    return plan


def param_stats(plan: _Plan, params: List[torch.Tensor], grads: List[torch.Tensor]) -> torch.Tensor:
    """(T, 4) float64 Σg², Σ|g·θ|, Σg·θ, Σθ² per tensor, with ``plan`` from ``find_plan``/``make_plan``."""
    if plan.copies:
        params, grads = list(params), list(grads)
        for i in plan.copies:
            params[i], grads[i] = params[i].contiguous(), grads[i].contiguous()
    ws = _workspace(plan)
    addrs = _addresses(plan, ws, tuple(map(_ptr, grads)), tuple(map(_ptr, params)))
    out = torch.empty((plan.n_tensors, 4), dtype=torch.float64, device=plan.device)
    _launch((plan.n_chunks,), (plan.table, addrs, ws.partials, ws.counters, out),
            (plan.n_tensors * _NF.value, plan.chunk_size), (), _META, 4, 3)
    return out


_META = dict(BLOCK=BLOCK, BLOCK_C=BLOCK_C)
_launch = CachedLauncher(_param_stats_kernel)

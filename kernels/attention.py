"""Flash attention in Triton: forward and backward, non-causal, for the ViT's multi-head self-attention.

Supported:
  - q, k, v of shape (B, H, N', d) with any strides (e.g. views of the packed (B, N', 3, H, d) QKV
    projection: nothing is copied); one sequence length N' >= 1 for q, k and v (masked tails, no
    multiple-of-block requirement);
  - head dims 1..256, powers of two or not (5, 48, 80, 96): computed in at most two column parts, each a
    power of two of at least 16 (``tl.dot``'s least reduction length), masked past d; 48 = 32 + 16,
    72 = 64 + 16 (of which 8 masked), 54 in one part of 64 (``head_dim_parts``). At most 25% of the
    computed columns are padding for d >= 24 but 33-35;
  - float16, bfloat16 (fp32 accumulation) and float32. float32 follows
    ``torch.get_float32_matmul_precision()``: "highest" -> Triton's "tf32x3" dot (fp32 accuracy on the
    tensor cores), "high" / "medium" -> "tf32", with every fp32 dot operand rounded to TF32 first
    (``cvt.rna.tf32.f32``, as cuBLAS does; the MMA alone truncates). Compiled kernels only: the
    interpreter computes fp32 dots in full precision. Not yet run on a GPU.
  - logits (scale * q.k) up to fp32's largest value / log2(e) = 2.4e38 in magnitude, where scale * log2(e)
    and, in fp32, q * scale * log2(e) are within fp32's range: fp32 q is scaled before the dot
    (``split_scale``), so q.k may itself be past fp32's range. The forward saves each row's maximum m and
    log2 of its sum l apart (m + log2(l) in fp32 drops log2(l) once |m| > 2^25 log2(l)). The backward
    recomputes the scores with the forward's operands in the forward's roles and the exponent as the
    forward does, (q.k - m) qk_scale, a product no compiler fuses into an FMA with the difference (the PTX
    of the fused form rounds a row's top score apart from m), so a one-hot or tied row gets exactly the
    forward's P; its recomputed P is capped at 1. The scores are bitwise the forward's on the interpreter,
    whose phases use tiles of one shape; on a GPU only if the MMA rounds an entry alike at any tile shape,
    not yet checked on one. dQ and dK of a row within a few roundings of one-hot (1 - max P up to about
    d + N' / BLOCK_N roundings of O's dtype: ~1e-6 in fp32, ~1e-3 in fp16) carry the rounding of
    delta = rowsum(dO * O) times |K| or |Q|, as FlashAttention's backward does, an error of the order of
    the true value there; the eager reference, which takes delta from its own P and dP, does not. Where P is
    exactly 1, dS is set to 0 (``_score_grads``), which is exact for a one-hot row.
Not supported: causal or arbitrary masks, dropout, different lengths or head dims for q, k and v.

Outputs (O, dQ, dK, dV) are written laid out (B, N', H, d) and returned as (B, H, N', d) views, so the
output projection's ``.transpose(1, 2).reshape(B, N', H * d)`` is free. Extra memory is O(N') per
(batch, head): the row maximum and log2 row sum (forward) and delta = rowsum(dO * O) (backward), never N' x N'.

The forward kernel, its launcher and the launch machinery the backward shares (block sizes,
autotuning) are here; the backward's two kernels (dQ, then dK and dV; deterministic, no atomics) and
their launcher ``attention_bwd`` are in ``kernels/attention_bwd.py``.

Block sizes are autotuned once per (phase, device, dtype, N', d, dot precision, row alignment ``ALIGN``):
every candidate config is timed with ``triton.testing.do_bench`` and the fastest kept in a table that
``save_tuned(path)`` / ``load_tuned(path)`` write and read (``VITCORE_TUNED=path`` loads it at import
and writes it back at exit when something new was tuned), so a scoring run tunes nothing twice.
``VITCORE_AUTOTUNE=0`` (and Triton's interpreter, ``TRITON_INTERPRET=1``) skip the search and use the
first listed config that fits. Either way a config is compiled first and launched only if its compiled
shared memory is within the device's per-block limit (``torch.cuda.get_device_properties``), so the
99 KB of an RTX 3090 / 4090 and the 163 KB of an A100 are never overrun; ``python -m bench.compile_check``
compiles every config for sm_80, sm_86, sm_89 and sm_90 on any machine (docs/compile-check.md). Launches go through ``kernels/launch.py``: after the first call of a
specialisation the compiled kernel is launched directly.
"""
import atexit
import functools
import json
import math
import os
from typing import Dict, Optional

import torch
import triton
import triton.language as tl

from vitcore.ops.dispatch import env_flag

from .launch import CachedLauncher, on_device

LOG2E = 1.4426950408889634  # 1/ln 2: softmax runs in base 2 (exp2 is one MUFU instruction)
_INTERPRET = env_flag("TRITON_INTERPRET", False)
_AUTOTUNE = env_flag("VITCORE_AUTOTUNE", True) and not _INTERPRET
_ROUND_TF32 = not _INTERPRET  # cvt.rna.tf32.f32 is PTX: compiled kernels only


# ----------------------------------------------------------------------------------------------
# TF32 operands
# ----------------------------------------------------------------------------------------------
@triton.jit
def _tf32(x, ROUND_TF32: tl.constexpr):
    """``x`` (fp32) rounded to TF32 (10 mantissa bits, to nearest, ties away from zero) when
    ROUND_TF32, else unchanged. The TF32 tensor-core MMA reads only the top 19 bits of each fp32
    operand, i.e. truncates; cuBLAS rounds first, and so does this (PTX ``cvt.rna.tf32.f32``; its
    result is a .b32 register holding an fp32 bit pattern with the low 13 bits zero)."""
    if ROUND_TF32:
        x = tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,f", [x], dtype=tl.uint32,
                                      is_pure=True, pack=1).to(tl.float32, bitcast=True)
    return x


# ----------------------------------------------------------------------------------------------
# Tiles
# ----------------------------------------------------------------------------------------------
@triton.jit
def _tile(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c, MASK_R: tl.constexpr, MASK_C: tl.constexpr):
    """The tile ptr[offs_r, offs_c] (rows x columns), zero where a masked dimension's offset is past its size
    (``n_r`` rows, ``n_c`` columns)."""
    ptrs = ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c
    if MASK_R and MASK_C:
        x = tl.load(ptrs, mask=(offs_r[:, None] < n_r) & (offs_c[None, :] < n_c), other=0.0)
    elif MASK_R:
        x = tl.load(ptrs, mask=offs_r[:, None] < n_r, other=0.0)
    elif MASK_C:
        x = tl.load(ptrs, mask=offs_c[None, :] < n_c, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _aligned(stride, ALIGN: tl.constexpr):
    """``stride``, which the launcher checked is a multiple of ALIGN (``row_align``), in a form the compiler
    knows is one: Triton's own specialisation only knows whether an int is divisible by 16, so without this
    a row stride such as packed QKV's 3 H d = 648 (d = 72) makes every load scalar."""
    return (stride // ALIGN) * ALIGN


@triton.jit
def _head(ptr, off_b, off_h, stride_b, stride_h, stride_n, ALIGN: tl.constexpr):
    """``ptr`` moved to batch ``off_b``, head ``off_h``, and the token stride: every stride known to the compiler
    as a multiple of ALIGN elements (``_aligned``), so loads along d are vectorised."""
    return ptr + off_b * _aligned(stride_b, ALIGN) + off_h * _aligned(stride_h, ALIGN), _aligned(stride_n, ALIGN)


@triton.jit
def _store(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c, x):
    """ptr[offs_r, offs_c] = x in ptr's dtype, where the row offset is below ``n_r`` and the column's below ``n_c``."""
    ptrs = ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c
    tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=(offs_r[:, None] < n_r) & (offs_c[None, :] < n_c))


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
# The head dim d is computed in two column parts, each a power of two (``head_dim_parts``): columns
# [0, D_MAIN) and, when D_TAIL > 0, [D_MAIN, D_MAIN + D_TAIL). A part's tile is masked past d. Every dot
# over d is the sum of the two parts' dots; every (rows, d) accumulator is two. With D_TAIL = 0 the tail
# variables are a placeholder 0.0 that no code reads.
@triton.jit
def _attention_fwd_inner(
    acc0, acc1, l_i, m_i, q0, q1,  # running output (two column parts), row sums, row maxima (base 2), query tile
    K, V, stride_kn, stride_kd, stride_vn, stride_vd,
    lo, hi, N_CTX, qk_scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUND_TF32: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KEYS: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    d0 = tl.arange(0, D_MAIN)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kT0 = _tile(K, d0, cols, stride_kd, stride_kn, HEAD_DIM, N_CTX, HEAD_DIM < D_MAIN, MASK_KEYS)  # (D_MAIN, BLOCK_N)
        v0 = _tile(V, cols, d0, stride_vn, stride_vd, N_CTX, HEAD_DIM, MASK_KEYS, HEAD_DIM < D_MAIN)  # (BLOCK_N, D_MAIN)
        # -- scores, in base-2 units --
        qk = tl.dot(q0, _tf32(kT0, ROUND_TF32), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if D_TAIL > 0:
            d1 = tl.arange(0, D_TAIL)
            kT1 = _tile(K + D_MAIN * stride_kd, d1, cols, stride_kd, stride_kn, HEAD_DIM - D_MAIN, N_CTX,
                        HEAD_DIM < D_MAIN + D_TAIL, MASK_KEYS)  # (D_TAIL, BLOCK_N)
            v1 = _tile(V + D_MAIN * stride_vd, cols, d1, stride_vn, stride_vd, N_CTX, HEAD_DIM - D_MAIN,
                       MASK_KEYS, HEAD_DIM < D_MAIN + D_TAIL)  # (BLOCK_N, D_TAIL)
            qk = tl.dot(q1, _tf32(kT1, ROUND_TF32), qk, input_precision=DOT_PRECISION)
        if MASK_KEYS:
            qk = tl.where(cols[None, :] < N_CTX, qk, float("-inf"))
        # -- online softmax update; qk_scale > 0 multiplies a difference, never fused with it into an FMA
        # (that would round the row's top score apart from its maximum; the backward computes the same) --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2((qk - m_new[:, None]) * qk_scale)
        alpha = tl.exp2((m_i - m_new) * qk_scale)  # rescales what was accumulated under the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        p = _tf32(p.to(V.dtype.element_ty), ROUND_TF32)
        acc0 = tl.dot(p, _tf32(v0, ROUND_TF32), acc0 * alpha[:, None], input_precision=DOT_PRECISION)
        if D_TAIL > 0:
            acc1 = tl.dot(p, _tf32(v1, ROUND_TF32), acc1 * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc0, acc1, l_i, m_i


@triton.jit(do_not_specialize=["H", "N_CTX"])
def _attention_fwd_kernel(
    # Pointers
    Q, K, V, O, STATS,
    # Strides
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    # Sizes and scales
    H, N_CTX, q_scale, qk_scale,  # q_scale * qk_scale = softmax scale / ln 2 (``split_scale``)
    # Meta-parameters
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUND_TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # (batch, head) on axis 0: its limit is 2^31 - 1, axis 1's 65535
    pid_m = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q, stride_qn = _head(Q, off_b, off_h, stride_qb, stride_qh, stride_qn, ALIGN)
    K, stride_kn = _head(K, off_b, off_h, stride_kb, stride_kh, stride_kn, ALIGN)
    V, stride_vn = _head(V, off_b, off_h, stride_vb, stride_vh, stride_vn, ALIGN)
    O, stride_on = _head(O, off_b, off_h, stride_ob, stride_oh, stride_on, ALIGN)
    STATS += pid_bh.to(tl.int64) * 2 * N_CTX

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d0 = tl.arange(0, D_MAIN)
    q0 = _tile(Q, rows, d0, stride_qn, stride_qd, N_CTX, HEAD_DIM, True, HEAD_DIM < D_MAIN)  # (BLOCK_M, D_MAIN)
    q0 = _tf32((q0 * q_scale).to(Q.dtype.element_ty), ROUND_TF32)
    acc0 = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    q1, acc1 = 0.0, 0.0  # no tail part
    if D_TAIL > 0:
        d1 = tl.arange(0, D_TAIL)
        q1 = _tile(Q + D_MAIN * stride_qd, rows, d1, stride_qn, stride_qd, N_CTX, HEAD_DIM - D_MAIN, True,
                   HEAD_DIM < D_MAIN + D_TAIL)  # (BLOCK_M, D_TAIL)
        q1 = _tf32((q1 * q_scale).to(Q.dtype.element_ty), ROUND_TF32)
        acc1 = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # -- full key blocks, no key mask --
    n_full = (N_CTX // BLOCK_N) * BLOCK_N
    acc0, acc1, l_i, m_i = _attention_fwd_inner(
        acc0, acc1, l_i, m_i, q0, q1, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        0, n_full, N_CTX, qk_scale,
        HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_N, False,
    )
    # -- ragged tail block (e.g. the 197th token), masked --
    if n_full < N_CTX:
        acc0, acc1, l_i, m_i = _attention_fwd_inner(
            acc0, acc1, l_i, m_i, q0, q1, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            n_full, N_CTX, N_CTX, qk_scale,
            HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_N, True,
        )
    # -- epilogue: normalise, save the row maximum and log2 of the row sum (base 2) for the backward --
    tl.store(STATS + rows, m_i, mask=rows < N_CTX)
    tl.store(STATS + N_CTX + rows, tl.log2(l_i), mask=rows < N_CTX)
    _store(O, rows, d0, stride_on, stride_od, N_CTX, HEAD_DIM, acc0 / l_i[:, None])
    if D_TAIL > 0:
        _store(O + D_MAIN * stride_od, rows, d1, stride_on, stride_od, N_CTX, HEAD_DIM - D_MAIN, acc1 / l_i[:, None])


# ----------------------------------------------------------------------------------------------
# Block sizes
# ----------------------------------------------------------------------------------------------
# (outer block, inner block, num_warps, num_stages). The outer block is the rows a program owns
# (queries for fwd / dq, keys for dkdv); the inner block is what its loop steps over. Listed in order of
# preference: without autotuning the first whose *compiled* shared memory fits the device without spilling
# registers is launched; autotuning times every listed one that does (``choose``). The fallbacks follow
# when none does (fp32 at large head dims on GPUs with 99 KB per block); ``bench/compile_check.py``
# compiles them all for sm_80..sm_90.
# The 8-warp and narrow configs after the first four are there for fp32 at head-dim widths 64-128, where
# ptxas spills the 4-warp ones (the fp32 dK, dV accumulators alone take 2 * 64 * width / 128 registers per
# thread); the last of each list were added where the compile check found a fp32 head of two parts (72, 80,
# 96) spilling in every earlier one on sm_80.
_CONFIGS = {
    "fwd": [(64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 16, 8, 2)],
    "dq": [(64, 32, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2),
           (32, 16, 8, 1)],
    "dkdv": [(64, 32, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 8, 2), (64, 16, 8, 2),
             (32, 32, 4, 2), (64, 16, 8, 1)],
}
FALLBACK_CONFIGS = [(64, 32, 4, 2), (64, 32, 4, 1), (32, 32, 4, 1), (32, 16, 4, 1), (16, 16, 4, 1)]
# The interpreter's one config per phase: every dot over d sees 64 query rows and 32 keys (dK/dV's outer block
# is the keys), so the backward's recomputed scores are bitwise the forward's (NumPy's matmul, the interpreter's
# dot, rounds an entry differently at other shapes); it runs ragged tails and BLOCK_M != BLOCK_N.
_INTERPRET_CONFIG = {"fwd": (64, 32, 4, 1), "dq": (64, 32, 4, 1), "dkdv": (32, 64, 4, 1)}
_OUTER = {"fwd": "BLOCK_M", "dq": "BLOCK_M", "dkdv": "BLOCK_N"}
_INNER = {"fwd": "BLOCK_N", "dq": "BLOCK_N", "dkdv": "BLOCK_M"}


def head_dim_parts(head_dim: int) -> tuple:
    """(D_MAIN, D_TAIL): the column parts head dim d is computed in, powers of two of at least 16 (``tl.dot``'s
    least reduction length) with D_TAIL = 0 when one part covers d. D_MAIN is the largest power of two <= d
    (16 for d < 16), D_TAIL the least power of two that covers the rest; where that equals D_MAIN, one part
    of twice the width does the same work in fewer dots. E.g. 48 -> (32, 16), 54 -> (64, 0), 72 -> (64, 16),
    96 -> (64, 32). The padded width is then the least multiple of 16 >= d for d <= 96 and wastes at most
    25% of it for every d >= 24 but 33-35 (48 columns: 27-31%); below 24 the 16-column minimum decides."""
    main = max(16, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - main
    if rest <= 0:
        return main, 0
    tail = max(16, triton.next_power_of_2(rest))
    return (2 * main, 0) if tail == main else (main, tail)


def row_align(ints: tuple) -> int:
    """ALIGN: the largest power of two, at most 16, that divides every batch, head and token stride (in
    elements). ``ints`` are a kernel's int arguments: each 4-D tensor's four strides in turn, then H and N'.
    The kernels hand ALIGN to the compiler (``_aligned``) so loads along d are vectorised (and pipelined
    through shared memory) wherever the layout allows. A power of two divides every stride exactly when it
    divides their bitwise OR, whose lowest set bit this is (no gcd on the launch path)."""
    bits = 0
    for i in range(0, len(ints) - 2, 4):
        bits |= ints[i] | ints[i + 1] | ints[i + 2]
    return min(16, bits & -bits) if bits else 16


def padded_fraction(head_dim: int) -> float:
    """The share of the computed head-dim columns that are padding, 1 - d / (D_MAIN + D_TAIL)."""
    return 1 - head_dim / sum(head_dim_parts(head_dim))


def config_order(phase: str, n_ctx: int, elsize: int) -> list:
    """The configs tried for ``phase`` at sequence length N' = ``n_ctx`` and element size ``elsize``
    (bytes), in order of preference: the listed ones (less those mostly masked at this N'), then the
    fallbacks."""
    listed = [c for c in _CONFIGS[phase] if not (c[0] > 64 and n_ctx <= 64)]  # a 128-row tile, mostly masked
    return listed + [c for c in FALLBACK_CONFIGS if c not in listed]


def _n_listed(order: list) -> int:
    return sum(c not in FALLBACK_CONFIGS for c in order)


FITS = 0  # the rank of a compiled config within shared memory whose registers do not spill


def choose(order: list, rank, autotune: bool) -> list:
    """The configs to launch, by what the compiler reports: ``rank(config)`` is None when its compiled
    shared memory exceeds the device's per-block limit, else the local memory its registers spill to,
    bytes per thread (FITS = 0: none). Configs over the limit are never returned. Without autotuning:
    the first config in ``order`` that FITS, asking ``rank`` no further; when every one spills, the one
    that spills least (the earlier on a tie). Autotuning: every listed config that FITS, else the first
    fallback that does; when every one spills, every one that fits, to be timed. Raises RuntimeError
    when nothing fits."""
    n_listed = _n_listed(order)
    ranks = {}

    def walk(configs, stop):  # rank in order, up to the first that FITS if ``stop``
        for c in configs:
            ranks[c] = rank(c)
            if stop and ranks[c] == FITS:
                return

    if autotune:
        walk(order[:n_listed], stop=False)
        if FITS not in ranks.values():
            walk(order[n_listed:], stop=True)
    else:
        walk(order, stop=True)
    fitting = [c for c in order if ranks.get(c) is not None]
    if not fitting:
        raise RuntimeError(f"no attention config fits this GPU's shared memory (tried {order})")
    clean = [c for c in fitting if ranks[c] == FITS]
    if not clean:
        return fitting if autotune else [min(fitting, key=ranks.get)]
    listed_clean = [c for c in clean if c in order[:n_listed]]
    return listed_clean if autotune and listed_clean else clean[:1]


@functools.lru_cache(maxsize=None)
def smem_limit(index: int) -> int:
    """The shared memory a block may use on CUDA device ``index``, bytes: the opt-in per-block maximum
    (163 KB on A100, 99 KB on sm_86 / sm_89, 227 KB on H100), as torch reports it, else as Triton does."""
    limit = getattr(torch.cuda.get_device_properties(index), "shared_memory_per_block_optin", None)
    if limit is None:  # an older torch: Triton's figure, the one its launch checks against
        limit = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return int(limit)


# The tuned table: (phase, device name, dtype, N', d, dot precision, ALIGN) -> (outer, inner, warps, stages).
# Filled once per key by autotuning, or by ``load_tuned``; ``VITCORE_TUNED=path`` loads it at import
# and writes it back at exit when this process tuned something new.
_TUNED: Dict[tuple, tuple] = {}
_TUNED_ENV = "VITCORE_TUNED"
_TUNED_FORMAT = 2
_new_entries = []


_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


@functools.lru_cache(maxsize=None)
def _device_name(index: Optional[int]) -> str:
    return "cpu" if index is None else torch.cuda.get_device_name(index)


class Launchable:
    """A phase's kernel: its config (chosen once per key, then read from ``_TUNED`` / ``chosen``) and its
    direct launcher (``kernels/launch.py``). Per call: two dict lookups, the grid from cached block sizes.

    A config is launched only if its compiled shared memory (Triton's ``metadata.shared``, known after
    compiling and before loading) is within the device's per-block limit (``smem_limit``), with
    autotuning on or off, and one that spills registers only when none fits without (``choose``)."""

    def __init__(self, phase: str, kernel):
        self.phase = phase
        self.launcher = CachedLauncher(kernel)
        self.chosen: Dict[tuple, tuple] = {}  # key -> config, without autotuning

    def meta(self, tensors: tuple, ints: tuple, head_dim: int, dot_precision: str) -> dict:
        """The constexprs of a launch, less the block sizes."""
        q = tensors[0]
        main, tail = head_dim_parts(head_dim)
        return dict(HEAD_DIM=head_dim, D_MAIN=main, D_TAIL=tail, DOT_PRECISION=dot_precision,
                    ROUND_TF32=_ROUND_TF32 and q.dtype == torch.float32 and dot_precision == "tf32",
                    ALIGN=row_align(ints))

    def rank(self, args: tuple, meta: dict, config: tuple, grid: tuple, limit: int) -> Optional[int]:
        """``config`` compiled for these arguments on the current device, not launched (Triton keeps the
        kernel: its first launch compiles nothing): None if its shared memory (``metadata.shared``) is over
        ``limit``, else loaded, and its local memory in bytes per thread (Triton's ``n_spills`` counts
        4-byte words): FITS = 0 when its registers do not spill."""
        outer, inner, warps, stages = config
        m = {**meta, _OUTER[self.phase]: outer, _INNER[self.phase]: inner}
        kernel = self.launcher.fn.warmup(*args, grid=grid, **m, num_warps=warps, num_stages=stages)
        if kernel.metadata.shared > limit:
            return None
        kernel._init_handles()  # loads the module: n_regs and n_spills (Triton 3.6 and 3.9)
        return 4 * kernel.n_spills

    def _configs(self, tensors, ints, floats, meta, n_bh, n_ctx, autotune):
        q = tensors[0]
        order = config_order(self.phase, n_ctx, q.element_size())
        if _INTERPRET:  # nothing is compiled: shared memory is no limit
            return choose(order, lambda c: FITS, autotune) if autotune else [_INTERPRET_CONFIG[self.phase]]
        limit = smem_limit(q.device.index)
        args = (*tensors, *ints, *floats)
        with on_device(q):  # Triton compiles for the current device
            return choose(order, lambda c: self.rank(args, meta, c, (n_bh, 1), limit), autotune)

    def _tune(self, key, candidates, tensors, ints, floats, meta, n_bh, n_ctx):
        """Time every candidate config once (median of Triton's ``do_bench``) and keep the fastest.
        The kernels only write their outputs, so repeated launches are harmless."""
        outer_name, inner_name = _OUTER[self.phase], _INNER[self.phase]
        timed = []
        for outer, inner, warps, stages in candidates:
            m = {**meta, outer_name: outer, inner_name: inner}
            grid = (n_bh, triton.cdiv(n_ctx, outer))
            run = functools.partial(self.launcher, grid, tensors, ints, floats, m, warps, stages)
            timed.append((triton.testing.do_bench(run, return_mode="median"), (outer, inner, warps, stages)))
        config = min(timed)[1]
        _TUNED[key] = config
        _new_entries.append(key)
        return config

    def launch(self, tensors: tuple, ints: tuple, floats: tuple, n_ctx: int, n_bh: int, head_dim: int,
               dot_precision: str) -> None:
        q = tensors[0]
        meta = self.meta(tensors, ints, head_dim, dot_precision)
        key = (self.phase, _device_name(q.device.index), _DTYPE_NAMES[q.dtype], n_ctx, head_dim, dot_precision,
               meta["ALIGN"])
        config = _TUNED.get(key) if _AUTOTUNE else self.chosen.get(key)
        if config is None:
            candidates = self._configs(tensors, ints, floats, meta, n_bh, n_ctx, _AUTOTUNE)
            if _AUTOTUNE:
                config = self._tune(key, candidates, tensors, ints, floats, meta, n_bh, n_ctx)
            else:
                config = self.chosen[key] = candidates[0]
        outer, inner, warps, stages = config
        meta[_OUTER[self.phase]], meta[_INNER[self.phase]] = outer, inner
        self.launcher((n_bh, triton.cdiv(n_ctx, outer)), tensors, ints, floats, meta, warps, stages)


def tuned_configs() -> dict:
    """{phase: {"(device, dtype, N', d, dot precision, ALIGN)": "BLOCK_M: .., BLOCK_N: .., num_warps: .., num_stages: .."}}
    of every config autotuned or loaded so far in this process (strings: it goes into JSON reports)."""
    table: Dict[str, dict] = {}
    for (phase, *rest), (outer, inner, warps, stages) in sorted(_TUNED.items()):
        config = f"{_OUTER[phase]}: {outer}, {_INNER[phase]}: {inner}, num_warps: {warps}, num_stages: {stages}"
        table.setdefault(phase, {})[str(tuple(rest))] = config
    return table


def save_tuned(path: str) -> int:
    """Write the tuned table to ``path`` (JSON, replaced atomically); returns the entries written."""
    rows = [{"key": list(k), "config": list(c)} for k, c in _TUNED.items()]
    doc = {"format": _TUNED_FORMAT, "triton": triton.__version__, "entries": rows}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return len(rows)


def load_tuned(path: str) -> int:
    """Add the table in ``path`` (written by ``save_tuned``) to this process's; returns the entries
    read. Entries for another device or Triton release are kept but never match (the key names the
    device; a different Triton release is refused: its compiled kernels time differently)."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a tuned-config table ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != _TUNED_FORMAT or not isinstance(doc.get("entries"), list):
        raise ValueError(f"{path}: not a tuned-config table (format {_TUNED_FORMAT} expected)")
    if doc.get("triton") != triton.__version__:
        raise ValueError(f"{path} was tuned with Triton {doc.get('triton')}, this is {triton.__version__}")
    table = {}
    for i, row in enumerate(doc["entries"]):
        key, config = (row.get("key"), row.get("config")) if isinstance(row, dict) else (None, None)
        if not (isinstance(key, list) and len(key) == 7 and key[0] in _CONFIGS and isinstance(config, list)
                and len(config) == 4 and all(isinstance(x, int) and x > 0 for x in config)):
            raise ValueError(f"{path}: entry {i} is malformed: {row!r}")
        table[tuple(key)] = tuple(config)
    _TUNED.update(table)
    return len(table)


def _load_env_table() -> None:
    path = os.environ.get(_TUNED_ENV)
    if path:
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or not os.path.isdir(folder):  # checked now, not when it is written at exit
            raise ValueError(f"{_TUNED_ENV}={path!r}: expected a file path in an existing folder (the tuned-config "
                             "table, read now and written at exit)")
        if os.path.isfile(path):
            load_tuned(path)
        atexit.register(lambda: _new_entries and save_tuned(path))


_load_env_table()
_FWD = Launchable("fwd", _attention_fwd_kernel)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def dot_precision(dtype: torch.dtype) -> str:
    """Triton's ``tl.dot`` input precision for ``dtype`` under PyTorch's fp32 matmul setting."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"  # TF32 for fp32; ignored for fp16 / bf16 operands


def split_scale(dtype: torch.dtype, sm_scale: float) -> tuple:
    """(q_scale, qk_scale), whose product is sm_scale / ln 2: the scores in base 2 are dot(q * q_scale, k)
    * qk_scale, with qk_scale > 0, so the kernels take a row's maximum of q.k before the scale and compute
    (q.k - max) * qk_scale (``_attention_fwd_inner``). fp32 scales q before the dot (qk_scale 1), so that q.k
    does not overflow before the scale (logits up to fp32's largest / log2(e), 2.4e38); fp16 / bf16 after it,
    since their products are exact in the fp32 accumulator (|q.k| <= 65504^2 * 256) and a scaled fp16 q would
    be rounded once more: q_scale is then the sign (-1 and 1 are exact), or 0 for a zero scale."""
    base2 = sm_scale * LOG2E
    if dtype == torch.float32 or base2 == 0:
        return base2, 1.0
    return math.copysign(1.0, base2), abs(base2)


def _bhnd_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised (B, H, N', d) tensor laid out (B, N', H, d) in memory."""
    B, H, N, d = x.shape
    return torch.empty((B, N, H, d), device=x.device, dtype=x.dtype).transpose(1, 2)


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.dim() == 4 and t.shape == tensors[0].shape, (t.shape, tensors[0].shape)
        assert t.dtype == tensors[0].dtype and t.device == tensors[0].device
        # Offsets inside one (batch, head) slice are int32 in the kernels.
        assert (t.shape[2] - 1) * abs(t.stride(2)) + (t.shape[3] - 1) * abs(t.stride(3)) < 2**31
    assert tensors[0].dtype in (torch.float16, torch.bfloat16, torch.float32), tensors[0].dtype
    assert 1 <= tensors[0].shape[-1] <= 256, tensors[0].shape


def attention_fwd(q, k, v, sm_scale: float, out=None):
    """O = softmax(q k^T sm_scale) v and the softmax's row statistics, q/k/v (B, H, N', d).

    Returns (o, stats): o (B, H, N', d) laid out (B, N', H, d) (``out`` if given); stats (B, H, 2, N')
    fp32: the row maximum m of dot(q * q_scale, k) (``stats[:, :, 0]``) and log2 of the row sum l of
    exp2((q.k - m) qk_scale) (``stats[:, :, 1]``), with ``split_scale``'s q_scale and qk_scale; for fp32
    (qk_scale 1) m is the base-2 scores' maximum and the log-sum-exp (base 2) is m + log2(l). They are kept
    apart because m + log2(l) in fp32 drops log2(l) once |m| passes 2^24 log2(l) (two tied keys at logit
    1e9), and the backward's probabilities would then be wrong.
    """
    _check(q, k, v)
    B, H, N, d = q.shape
    o = _bhnd_like(q) if out is None else out
    _check(q, o)
    stats = torch.empty((B, H, 2, N), device=q.device, dtype=torch.float32)
    ints = (*q.stride(), *k.stride(), *v.stride(), *o.stride(), H, N)
    _FWD.launch((q, k, v, o, stats), ints, split_scale(q.dtype, sm_scale), N, B * H, d, dot_precision(q.dtype))
    return o, stats

"""Flash attention in Triton: forward and backward, non-causal, for the ViT's multi-head self-attention.

Supported:
  - q, k, v of shape (B, H, N', d) with any strides (e.g. views of the packed (B, N', 3, H, d) QKV
    projection: nothing is copied); one sequence length N' >= 1 for q, k and v (masked tails, no
    multiple-of-block requirement);
  - head dims 1..256, powers of two or not (5, 48, 80, 96: the tile is padded to the next power of
    two, at least 16 for ``tl.dot``, and masked);
  - float16, bfloat16 (fp32 accumulation) and float32. float32 follows
    ``torch.get_float32_matmul_precision()``: "highest" -> Triton's "tf32x3" dot (fp32 accuracy on the
    tensor cores), "high" / "medium" -> "tf32".
Not supported: causal or arbitrary masks, dropout, different lengths or head dims for q, k and v.

Outputs (O, dQ, dK, dV) are written laid out (B, N', H, d) and returned as (B, H, N', d) views, so the
output projection's ``.transpose(1, 2).reshape(B, N', H * d)`` is free. Extra memory is O(N') per
(batch, head): the row log-sum-exp (forward) and delta = rowsum(dO * O) (backward), never N' x N'.

The forward kernel, its launcher and the launch machinery the backward shares (block sizes,
autotuning) are here; the backward's two kernels (dQ, then dK and dV; deterministic, no atomics) and
their launcher ``attention_bwd`` are in ``kernels/attention_bwd.py``.

Block sizes are autotuned per (N', d, dtype, dot precision). ``VITCORE_AUTOTUNE=0`` (and Triton's
interpreter, ``TRITON_INTERPRET=1``) skip the search and use one fixed config per kernel.
"""
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # 1/ln 2: softmax runs in base 2 (exp2 is one MUFU instruction)
# Shared-memory budget for the (rough) tile estimate below: H100 has 227 KiB per block, and the
# compiler adds layout-conversion buffers (transposes, the O tile of the delta phase) it does not count.
_SMEM_BYTES = 160 * 1024
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_AUTOTUNE = os.environ.get("VITCORE_AUTOTUNE", "1") != "0" and not _INTERPRET


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _attention_fwd_inner(
    acc, l_i, m_i, q,  # running output, row sums, row maxima (base 2, scaled), query tile
    K, V, stride_kn, stride_kd, stride_vn, stride_vd,
    lo, hi, N_CTX, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, MASK_KEYS: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kT_ptrs = K + offs_d[:, None] * stride_kd + cols[None, :] * stride_kn  # (D_PAD, BLOCK_N)
        v_ptrs = V + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BLOCK_N, D_PAD)
        if MASK_KEYS:
            kT = tl.load(kT_ptrs, mask=(offs_d[:, None] < HEAD_DIM) & (cols[None, :] < N_CTX), other=0.0)
            v = tl.load(v_ptrs, mask=(cols[:, None] < N_CTX) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        elif HEAD_DIM == D_PAD:
            kT = tl.load(kT_ptrs)
            v = tl.load(v_ptrs)
        else:
            kT = tl.load(kT_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        # -- scores, in base-2 units --
        qk = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASK_KEYS:
            qk = tl.where(cols[None, :] < N_CTX, qk, float("-inf"))
        # -- online softmax update --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)  # (BLOCK_M, D_PAD)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["H", "N_CTX"])
def _attention_fwd_kernel(
    # Pointers
    Q, K, V, O, LSE,
    # Strides
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    # Sizes and scale
    H, N_CTX, qk_scale,  # qk_scale = softmax scale / ln 2
    # Meta-parameters
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # (batch, head) on axis 0: its limit is 2^31 - 1, axis 1's 65535
    pid_m = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    O += off_b * stride_ob + off_h * stride_oh
    LSE += pid_bh.to(tl.int64) * N_CTX

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    io_mask = (rows[:, None] < N_CTX) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=io_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    # -- full key blocks, no key mask --
    n_full = (N_CTX // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attention_fwd_inner(
        acc, l_i, m_i, q, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        0, n_full, N_CTX, qk_scale,
        HEAD_DIM, D_PAD, DOT_PRECISION, BLOCK_N, False,
    )
    # -- ragged tail block (e.g. the 197th token), masked --
    if n_full < N_CTX:
        acc, l_i, m_i = _attention_fwd_inner(
            acc, l_i, m_i, q, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            n_full, N_CTX, N_CTX, qk_scale,
            HEAD_DIM, D_PAD, DOT_PRECISION, BLOCK_N, True,
        )
    # -- epilogue: normalise, save the row log-sum-exp (base 2) for the backward --
    acc = acc / l_i[:, None]
    tl.store(LSE + rows, m_i + tl.log2(l_i), mask=rows < N_CTX)
    o_ptrs = O + rows[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=io_mask)


# ----------------------------------------------------------------------------------------------
# Block sizes
# ----------------------------------------------------------------------------------------------
# (outer block, inner block, num_warps, num_stages). The outer block is the rows a program owns
# (queries for fwd / dq, keys for dkdv); the inner block is what its loop steps over.
_CONFIGS = {
    "fwd": [(64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
    "dq": [(64, 32, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2)],
    "dkdv": [(64, 32, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2)],
}
_INTERPRET_CONFIG = (64, 32, 4, 1)  # one config: the interpreter runs tails and BLOCK_M != BLOCK_N
_SMALLEST_CONFIG = (32, 32, 4, 1)  # when nothing listed fits (fp32 at d = 256)
_OUTER = {"fwd": "BLOCK_M", "dq": "BLOCK_M", "dkdv": "BLOCK_N"}
_INNER = {"fwd": "BLOCK_N", "dq": "BLOCK_N", "dkdv": "BLOCK_M"}
# Tiles held in shared memory: outer tiles once, inner tiles once per pipeline stage.
_TILES = {"fwd": (1, 2), "dq": (2, 2), "dkdv": (2, 2)}


def _smem_bytes(phase, outer, inner, stages, d_pad, elsize):
    n_outer, n_inner = _TILES[phase]
    return (n_outer * outer + n_inner * max(stages, 1) * inner) * d_pad * elsize


def _make_config(phase, outer, inner, warps, stages):
    meta = {_OUTER[phase]: outer, _INNER[phase]: inner}
    return triton.Config(meta, num_warps=warps, num_stages=stages)


def _pruner(phase):
    def prune(configs, named_args, **kwargs):
        d_pad = kwargs["D_PAD"]
        elsize = named_args["Q"].element_size()
        n_ctx = named_args["N_CTX"]
        kept = []
        for c in configs:
            outer, inner = c.kwargs[_OUTER[phase]], c.kwargs[_INNER[phase]]
            if _smem_bytes(phase, outer, inner, c.num_stages, d_pad, elsize) > _SMEM_BYTES:
                continue
            if outer > 64 and n_ctx <= 64:  # one short sequence: a 128-row tile is mostly masked
                continue
            kept.append(c)
        return kept or [_make_config(phase, *_SMALLEST_CONFIG)]

    return prune


def _default_config(phase, d_pad, elsize):
    """The fixed config used without autotuning: the first listed one that fits shared memory."""
    if _INTERPRET:
        return _INTERPRET_CONFIG
    for outer, inner, warps, stages in _CONFIGS[phase]:
        for s in range(stages, 0, -1):
            if _smem_bytes(phase, outer, inner, s, d_pad, elsize) <= _SMEM_BYTES:
                return outer, inner, warps, s
    return _SMALLEST_CONFIG


_KEY = ["N_CTX", "HEAD_DIM", "DOT_PRECISION"]  # the autotuner adds the tensors' dtypes to the key
_TUNERS = {}  # phase -> its autotuner, whose cache holds the chosen configs


class Launchable:
    """A phase's kernel with its autotuned wrapper; ``launch`` picks one per ``_AUTOTUNE``."""

    def __init__(self, phase: str, kernel):
        self.phase, self.plain = phase, kernel
        self.tuned = triton.autotune(
            configs=[_make_config(phase, *c) for c in _CONFIGS[phase]],
            key=_KEY,
            prune_configs_by={"early_config_prune": _pruner(phase)},
        )(kernel)
        _TUNERS[phase] = self.tuned

    def launch(self, args, n_ctx, n_bh, head_dim, dot_precision, elsize):
        phase = self.phase
        d_pad = max(16, triton.next_power_of_2(head_dim))
        meta = dict(HEAD_DIM=head_dim, D_PAD=d_pad, DOT_PRECISION=dot_precision)
        outer_name = _OUTER[phase]
        if _AUTOTUNE:
            grid = lambda m: (n_bh, triton.cdiv(n_ctx, m[outer_name]))  # noqa: E731
            self.tuned[grid](*args, **meta)
        else:
            outer, inner, warps, stages = _default_config(phase, d_pad, elsize)
            meta.update({outer_name: outer, _INNER[phase]: inner})
            self.plain[(n_bh, triton.cdiv(n_ctx, outer))](*args, **meta, num_warps=warps, num_stages=stages)


def tuned_configs() -> dict:
    """{phase: {autotuner key: chosen config}} of every call autotuned so far in this process."""
    return {phase: {str(key): str(cfg) for key, cfg in tuner.cache.items()} for phase, tuner in _TUNERS.items()}


_FWD = Launchable("fwd", _attention_fwd_kernel)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def dot_precision(dtype: torch.dtype) -> str:
    """Triton's ``tl.dot`` input precision for ``dtype`` under PyTorch's fp32 matmul setting."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"  # TF32 for fp32; ignored for fp16 / bf16 operands


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
    """O = softmax(q k^T sm_scale) v and the row log-sum-exp (base 2), q/k/v (B, H, N', d).

    Returns (o, lse): o (B, H, N', d) laid out (B, N', H, d) (``out`` if given), lse (B, H, N') fp32.
    """
    _check(q, k, v)
    B, H, N, d = q.shape
    o = _bhnd_like(q) if out is None else out
    _check(q, o)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    args = (q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(), H, N, sm_scale * LOG2E)
    _FWD.launch(args, N, B * H, d, dot_precision(q.dtype), q.element_size())
    return o, lse

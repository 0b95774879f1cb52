"""Flash attention's backward: two kernels and their launcher ``attention_bwd``.

Two kernels, both deterministic (no atomics): ``_attention_bwd_dq_kernel`` first computes
delta = rowsum(dO * O) for its query rows (the "preprocess" phase, fused here to save a launch and a
read of dO) and dQ; ``_attention_bwd_dkdv_kernel`` then computes dK and dV for a block of keys,
reading delta back. Both recompute the probabilities from the forward's row log-sum-exp (base 2),
so nothing N' x N' is stored. Same support as the forward: any strides, any N' (masked tails),
head dims 1..256 padded to D_PAD, fp16 / bf16 / fp32.
"""
import torch
import triton
import triton.language as tl

from .attention import Launchable, _bhnd_like, _check, _tf32, dot_precision, split_scale


@triton.jit
def _attention_bwd_dq_inner(
    dq, q, do, lse, delta,  # dQ accumulator and this block's query-side tiles / row statistics
    K, V, stride_kn, stride_kd, stride_vn, stride_vd,
    lo, hi, N_CTX, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_TF32: tl.constexpr,
    BLOCK_N: tl.constexpr, MASK_KEYS: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = K + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd  # (BLOCK_N, D_PAD)
        vT_ptrs = V + offs_d[:, None] * stride_vd + cols[None, :] * stride_vn  # (D_PAD, BLOCK_N)
        if MASK_KEYS:
            k = tl.load(k_ptrs, mask=(cols[:, None] < N_CTX) & (offs_d[None, :] < HEAD_DIM), other=0.0)
            vT = tl.load(vT_ptrs, mask=(offs_d[:, None] < HEAD_DIM) & (cols[None, :] < N_CTX), other=0.0)
        elif HEAD_DIM == D_PAD:
            k = tl.load(k_ptrs)
            vT = tl.load(vT_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
            vT = tl.load(vT_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
        k = _tf32(k, ROUND_TF32)
        vT = _tf32(vT, ROUND_TF32)
        # -- recompute the probabilities from the saved log-sum-exp --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        # min(., 0): p <= 1 exactly; a recomputed logit a rounding above the forward's (huge logits) is not inf
        p = tl.exp2(tl.minimum(qk * qk_scale - lse[:, None], 0.0))
        if MASK_KEYS:
            p = tl.where(cols[None, :] < N_CTX, p, 0.0)
        # -- dS = P * (dP - delta), dQ += dS K --
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(_tf32(ds.to(k.dtype), ROUND_TF32), k, dq, input_precision=DOT_PRECISION)  # (BLOCK_M, D_PAD)
    return dq


@triton.jit(do_not_specialize=["H", "N_CTX"])
def _attention_bwd_dq_kernel(
    # Pointers
    Q, K, V, O, DO, LSE, DELTA, DQ,
    # Strides
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    # Sizes and scales
    H, N_CTX, sm_scale, q_scale, qk_scale,  # q_scale * qk_scale = sm_scale / ln 2 (``split_scale``)
    # Meta-parameters
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_TF32: tl.constexpr,
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
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += pid_bh.to(tl.int64) * N_CTX
    DELTA += pid_bh.to(tl.int64) * N_CTX

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = rows < N_CTX
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=io_mask, other=0.0)
    do = tl.load(DO + rows[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=io_mask, other=0.0)
    o = tl.load(O + rows[:, None] * stride_on + offs_d[None, :] * stride_od, mask=io_mask, other=0.0)
    # -- preprocess: delta = rowsum(dO * O), read again by the dK/dV kernel --
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(DELTA + rows, delta, mask=row_ok)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    q = _tf32((q * q_scale).to(Q.dtype.element_ty), ROUND_TF32)  # q only makes the scores here
    do = _tf32(do, ROUND_TF32)

    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    n_full = (N_CTX // BLOCK_N) * BLOCK_N
    dq = _attention_bwd_dq_inner(
        dq, q, do, lse, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        0, n_full, N_CTX, qk_scale,
        HEAD_DIM, D_PAD, DOT_PRECISION, ROUND_TF32, BLOCK_N, False,
    )
    if n_full < N_CTX:
        dq = _attention_bwd_dq_inner(
            dq, q, do, lse, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            n_full, N_CTX, N_CTX, qk_scale,
            HEAD_DIM, D_PAD, DOT_PRECISION, ROUND_TF32, BLOCK_N, True,
        )
    dq_ptrs = DQ + rows[:, None] * stride_dqn + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)


@triton.jit
def _attention_bwd_dkdv_inner(
    dk, dv, k, v,  # accumulators and this block's key / value tiles
    Q, DO, LSE, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
    lo, hi, N_CTX, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, MASK_ROWS: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        qT_ptrs = Q + offs_d[:, None] * stride_qd + rows[None, :] * stride_qn  # (D_PAD, BLOCK_M)
        do_ptrs = DO + rows[:, None] * stride_don + offs_d[None, :] * stride_dod  # (BLOCK_M, D_PAD)
        if MASK_ROWS:
            qT = tl.load(qT_ptrs, mask=(offs_d[:, None] < HEAD_DIM) & (rows[None, :] < N_CTX), other=0.0)
            do = tl.load(do_ptrs, mask=(rows[:, None] < N_CTX) & (offs_d[None, :] < HEAD_DIM), other=0.0)
            lse = tl.load(LSE + rows, mask=rows < N_CTX, other=0.0)
            delta = tl.load(DELTA + rows, mask=rows < N_CTX, other=0.0)
        else:
            if HEAD_DIM == D_PAD:
                qT = tl.load(qT_ptrs)
                do = tl.load(do_ptrs)
            else:
                qT = tl.load(qT_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
                do = tl.load(do_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
            lse = tl.load(LSE + rows)
            delta = tl.load(DELTA + rows)
        qT = _tf32(qT, ROUND_TF32)
        do = _tf32(do, ROUND_TF32)
        # -- P^T from the saved log-sum-exp; dV += P^T dO --
        qkT = tl.dot(k, qT, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        pT = tl.exp2(tl.minimum(qkT * qk_scale - lse[None, :], 0.0))  # p <= 1, as in the dQ kernel
        if MASK_ROWS:
            pT = tl.where(rows[None, :] < N_CTX, pT, 0.0)
        dv = tl.dot(_tf32(pT.to(do.dtype), ROUND_TF32), do, dv, input_precision=DOT_PRECISION)  # (BLOCK_N, D_PAD)
        # -- dS^T = P^T * (dP^T - delta), dK += dS^T Q --
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        dsT = pT * (dpT - delta[None, :])
        dsT = _tf32(dsT.to(qT.dtype), ROUND_TF32)
        dk = tl.dot(dsT, tl.trans(qT), dk, input_precision=DOT_PRECISION)  # (BLOCK_N, D_PAD)
    return dk, dv


@triton.jit(do_not_specialize=["H", "N_CTX"])
def _attention_bwd_dkdv_kernel(
    # Pointers
    Q, K, V, DO, LSE, DELTA, DK, DV,
    # Strides
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,  # dV is allocated with dK's layout
    # Sizes and scales
    H, N_CTX, sm_scale, q_scale, qk_scale,  # q_scale * qk_scale = sm_scale / ln 2 (``split_scale``)
    # Meta-parameters
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # (batch, head) on axis 0: its limit is 2^31 - 1, axis 1's 65535
    pid_n = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DK += off_b * stride_dkb + off_h * stride_dkh
    DV += off_b * stride_dkb + off_h * stride_dkh
    LSE += pid_bh.to(tl.int64) * N_CTX
    DELTA += pid_bh.to(tl.int64) * N_CTX

    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    io_mask = (cols[:, None] < N_CTX) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=io_mask, other=0.0)
    v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=io_mask, other=0.0)
    k = _tf32((k * q_scale).to(K.dtype.element_ty), ROUND_TF32)  # k only makes the scores here: q's scale on it
    v = _tf32(v, ROUND_TF32)

    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    m_full = (N_CTX // BLOCK_M) * BLOCK_M
    dk, dv = _attention_bwd_dkdv_inner(
        dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
        0, m_full, N_CTX, qk_scale,
        HEAD_DIM, D_PAD, DOT_PRECISION, ROUND_TF32, BLOCK_M, False,
    )
    if m_full < N_CTX:
        dk, dv = _attention_bwd_dkdv_inner(
            dk, dv, k, v, Q, DO, LSE, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
            m_full, N_CTX, N_CTX, qk_scale,
            HEAD_DIM, D_PAD, DOT_PRECISION, ROUND_TF32, BLOCK_M, True,
        )
    out_offs = cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    tl.store(DK + out_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=io_mask)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=io_mask)


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------
_DQ = Launchable("dq", _attention_bwd_dq_kernel)
_DKDV = Launchable("dkdv", _attention_bwd_dkdv_kernel)


def attention_bwd(do, q, k, v, o, lse, sm_scale: float):
    """dQ, dK, dV (each (B, H, N', d) laid out (B, N', H, d)) from dO and the forward's o and lse."""
    _check(q, k, v, o, do)
    B, H, N, d = q.shape
    assert lse.shape == (B, H, N) and lse.is_contiguous() and lse.dtype == torch.float32
    precision = dot_precision(q.dtype)
    dq, dk, dv = _bhnd_like(q), _bhnd_like(k), _bhnd_like(v)
    delta = torch.empty_like(lse)  # (B, H, N') rowsum(dO * O), written by the dQ kernel
    scales = (sm_scale, *split_scale(q.dtype, sm_scale))
    strides = (*q.stride(), *k.stride(), *v.stride())
    _DQ.launch((q, k, v, o, do, lse, delta, dq), (*strides, *o.stride(), *do.stride(), *dq.stride(), H, N),
               scales, N, B * H, d, precision)
    _DKDV.launch((q, k, v, do, lse, delta, dk, dv), (*strides, *do.stride(), *dk.stride(), H, N),
                 scales, N, B * H, d, precision)
    return dq, dk, dv

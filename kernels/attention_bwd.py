"""Flash attention's backward: two kernels and their launcher ``attention_bwd``.

Two kernels, both deterministic (no atomics): ``_attention_bwd_dq_kernel`` first computes
delta = rowsum(dO * O) for its query rows (the "preprocess" phase, fused here to save a launch and a
read of dO) and dQ; ``_attention_bwd_dkdv_kernel`` then computes dK and dV for a block of keys,
reading delta back. Both recompute the probabilities from the forward's row log-sum-exp (base 2),
so nothing N' x N' is stored. Same support as the forward: any strides, any N' (masked tails),
head dims 1..256 in the forward's column parts (``head_dim_parts``), fp16 / bf16 / fp32.
"""
import torch
import triton
import triton.language as tl

from .attention import Launchable, _bhnd_like, _check, _head, _store, _tf32, _tile, dot_precision, split_scale


@triton.jit
def _attention_bwd_dq_inner(
    dq0, dq1, q0, q1, do0, do1, lse, delta,  # dQ accumulators, this block's query-side tiles (two column parts)
    K, V, stride_kn, stride_kd, stride_vn, stride_vd,
    lo, hi, N_CTX, qk_scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUND_TF32: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KEYS: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    d0 = tl.arange(0, D_MAIN)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k0 = _tile(K, cols, d0, stride_kn, stride_kd, N_CTX, HEAD_DIM, MASK_KEYS, HEAD_DIM < D_MAIN)  # (BLOCK_N, D_MAIN)
        vT0 = _tile(V, d0, cols, stride_vd, stride_vn, HEAD_DIM, N_CTX, HEAD_DIM < D_MAIN, MASK_KEYS)  # (D_MAIN, BLOCK_N)
        k0 = _tf32(k0, ROUND_TF32)
        # -- recompute the probabilities from the saved log-sum-exp; dP = dO V^T --
        qk = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do0, _tf32(vT0, ROUND_TF32), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if D_TAIL > 0:
            d1 = tl.arange(0, D_TAIL)
            k1 = _tile(K + D_MAIN * stride_kd, cols, d1, stride_kn, stride_kd, N_CTX, HEAD_DIM - D_MAIN,
                       MASK_KEYS, HEAD_DIM < D_MAIN + D_TAIL)  # (BLOCK_N, D_TAIL)
            vT1 = _tile(V + D_MAIN * stride_vd, d1, cols, stride_vd, stride_vn, HEAD_DIM - D_MAIN, N_CTX,
                        HEAD_DIM < D_MAIN + D_TAIL, MASK_KEYS)  # (D_TAIL, BLOCK_N)
            k1 = _tf32(k1, ROUND_TF32)
            qk = tl.dot(q1, tl.trans(k1), qk, input_precision=DOT_PRECISION)
            dp = tl.dot(do1, _tf32(vT1, ROUND_TF32), dp, input_precision=DOT_PRECISION)
        # min(., 0): p <= 1 exactly; a recomputed logit a rounding above the forward's (huge logits) is not inf
        p = tl.exp2(tl.minimum(qk * qk_scale - lse[:, None], 0.0))
        if MASK_KEYS:
            p = tl.where(cols[None, :] < N_CTX, p, 0.0)
        # -- dS = P * (dP - delta), dQ += dS K --
        ds = _tf32((p * (dp - delta[:, None])).to(K.dtype.element_ty), ROUND_TF32)
        dq0 = tl.dot(ds, k0, dq0, input_precision=DOT_PRECISION)  # (BLOCK_M, D_MAIN)
        if D_TAIL > 0:
            dq1 = tl.dot(ds, k1, dq1, input_precision=DOT_PRECISION)  # (BLOCK_M, D_TAIL)
    return dq0, dq1


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
    DO, stride_don = _head(DO, off_b, off_h, stride_dob, stride_doh, stride_don, ALIGN)
    DQ, stride_dqn = _head(DQ, off_b, off_h, stride_dqb, stride_dqh, stride_dqn, ALIGN)
    LSE += pid_bh.to(tl.int64) * N_CTX
    DELTA += pid_bh.to(tl.int64) * N_CTX

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N_CTX
    d0 = tl.arange(0, D_MAIN)
    mask_d0: tl.constexpr = HEAD_DIM < D_MAIN
    q0 = _tile(Q, rows, d0, stride_qn, stride_qd, N_CTX, HEAD_DIM, True, mask_d0)  # (BLOCK_M, D_MAIN)
    do0 = _tile(DO, rows, d0, stride_don, stride_dod, N_CTX, HEAD_DIM, True, mask_d0)
    o0 = _tile(O, rows, d0, stride_on, stride_od, N_CTX, HEAD_DIM, True, mask_d0)
    # -- preprocess: delta = rowsum(dO * O), read again by the dK/dV kernel --
    delta = tl.sum(do0.to(tl.float32) * o0.to(tl.float32), 1)  # (BLOCK_M,)
    q0 = _tf32((q0 * q_scale).to(Q.dtype.element_ty), ROUND_TF32)  # q only makes the scores here
    do0 = _tf32(do0, ROUND_TF32)
    dq0 = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    q1, do1, dq1 = 0.0, 0.0, 0.0  # no tail part
    if D_TAIL > 0:
        d1 = tl.arange(0, D_TAIL)
        mask_d1: tl.constexpr = HEAD_DIM < D_MAIN + D_TAIL
        q1 = _tile(Q + D_MAIN * stride_qd, rows, d1, stride_qn, stride_qd, N_CTX, HEAD_DIM - D_MAIN, True, mask_d1)
        do1 = _tile(DO + D_MAIN * stride_dod, rows, d1, stride_don, stride_dod, N_CTX, HEAD_DIM - D_MAIN, True,
                    mask_d1)  # (BLOCK_M, D_TAIL)
        o1 = _tile(O + D_MAIN * stride_od, rows, d1, stride_on, stride_od, N_CTX, HEAD_DIM - D_MAIN, True, mask_d1)
        delta += tl.sum(do1.to(tl.float32) * o1.to(tl.float32), 1)
        q1 = _tf32((q1 * q_scale).to(Q.dtype.element_ty), ROUND_TF32)
        do1 = _tf32(do1, ROUND_TF32)
        dq1 = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
    tl.store(DELTA + rows, delta, mask=row_ok)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)

    n_full = (N_CTX // BLOCK_N) * BLOCK_N
    dq0, dq1 = _attention_bwd_dq_inner(
        dq0, dq1, q0, q1, do0, do1, lse, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        0, n_full, N_CTX, qk_scale,
        HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_N, False,
    )
    if n_full < N_CTX:
        dq0, dq1 = _attention_bwd_dq_inner(
            dq0, dq1, q0, q1, do0, do1, lse, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            n_full, N_CTX, N_CTX, qk_scale,
            HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_N, True,
        )
    _store(DQ, rows, d0, stride_dqn, stride_dqd, N_CTX, HEAD_DIM, dq0 * sm_scale)
    if D_TAIL > 0:
        _store(DQ + D_MAIN * stride_dqd, rows, d1, stride_dqn, stride_dqd, N_CTX, HEAD_DIM - D_MAIN, dq1 * sm_scale)


@triton.jit
def _attention_bwd_dkdv_inner(
    dk0, dk1, dv0, dv1, k0, k1, v0, v1,  # accumulators and this block's key / value tiles (two column parts)
    Q, DO, LSE, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
    lo, hi, N_CTX, qk_scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUND_TF32: tl.constexpr, BLOCK_M: tl.constexpr, MASK_ROWS: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    d0 = tl.arange(0, D_MAIN)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        qT0 = _tile(Q, d0, rows, stride_qd, stride_qn, HEAD_DIM, N_CTX, HEAD_DIM < D_MAIN, MASK_ROWS)  # (D_MAIN, BLOCK_M)
        do0 = _tile(DO, rows, d0, stride_don, stride_dod, N_CTX, HEAD_DIM, MASK_ROWS, HEAD_DIM < D_MAIN)  # (BLOCK_M, D_MAIN)
        if MASK_ROWS:
            lse = tl.load(LSE + rows, mask=rows < N_CTX, other=0.0)
            delta = tl.load(DELTA + rows, mask=rows < N_CTX, other=0.0)
        else:
            lse = tl.load(LSE + rows)
            delta = tl.load(DELTA + rows)
        qT0 = _tf32(qT0, ROUND_TF32)
        do0 = _tf32(do0, ROUND_TF32)
        # -- P^T from the saved log-sum-exp; dP^T = V dO^T --
        qkT = tl.dot(k0, qT0, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        dpT = tl.dot(v0, tl.trans(do0), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if D_TAIL > 0:
            d1 = tl.arange(0, D_TAIL)
            qT1 = _tile(Q + D_MAIN * stride_qd, d1, rows, stride_qd, stride_qn, HEAD_DIM - D_MAIN, N_CTX,
                        HEAD_DIM < D_MAIN + D_TAIL, MASK_ROWS)  # (D_TAIL, BLOCK_M)
            do1 = _tile(DO + D_MAIN * stride_dod, rows, d1, stride_don, stride_dod, N_CTX, HEAD_DIM - D_MAIN,
                        MASK_ROWS, HEAD_DIM < D_MAIN + D_TAIL)  # (BLOCK_M, D_TAIL)
            qT1 = _tf32(qT1, ROUND_TF32)
            do1 = _tf32(do1, ROUND_TF32)
            qkT = tl.dot(k1, qT1, qkT, input_precision=DOT_PRECISION)
            dpT = tl.dot(v1, tl.trans(do1), dpT, input_precision=DOT_PRECISION)
        pT = tl.exp2(tl.minimum(qkT * qk_scale - lse[None, :], 0.0))  # p <= 1, as in the dQ kernel
        if MASK_ROWS:
            pT = tl.where(rows[None, :] < N_CTX, pT, 0.0)
        # -- dV += P^T dO; dS^T = P^T * (dP^T - delta), dK += dS^T Q --
        dsT = _tf32((pT * (dpT - delta[None, :])).to(Q.dtype.element_ty), ROUND_TF32)
        pT = _tf32(pT.to(DO.dtype.element_ty), ROUND_TF32)
        dv0 = tl.dot(pT, do0, dv0, input_precision=DOT_PRECISION)  # (BLOCK_N, D_MAIN)
        dk0 = tl.dot(dsT, tl.trans(qT0), dk0, input_precision=DOT_PRECISION)  # (BLOCK_N, D_MAIN)
        if D_TAIL > 0:
            dv1 = tl.dot(pT, do1, dv1, input_precision=DOT_PRECISION)  # (BLOCK_N, D_TAIL)
            dk1 = tl.dot(dsT, tl.trans(qT1), dk1, input_precision=DOT_PRECISION)
    return dk0, dk1, dv0, dv1


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
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUND_TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # (batch, head) on axis 0: its limit is 2^31 - 1, axis 1's 65535
    pid_n = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    Q, stride_qn = _head(Q, off_b, off_h, stride_qb, stride_qh, stride_qn, ALIGN)
    K, stride_kn = _head(K, off_b, off_h, stride_kb, stride_kh, stride_kn, ALIGN)
    V, stride_vn = _head(V, off_b, off_h, stride_vb, stride_vh, stride_vn, ALIGN)
    DO, stride_don = _head(DO, off_b, off_h, stride_dob, stride_doh, stride_don, ALIGN)
    DV, _ = _head(DV, off_b, off_h, stride_dkb, stride_dkh, stride_dkn, ALIGN)
    DK, stride_dkn = _head(DK, off_b, off_h, stride_dkb, stride_dkh, stride_dkn, ALIGN)
    LSE += pid_bh.to(tl.int64) * N_CTX
    DELTA += pid_bh.to(tl.int64) * N_CTX

    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d0 = tl.arange(0, D_MAIN)
    mask_d0: tl.constexpr = HEAD_DIM < D_MAIN
    k0 = _tile(K, cols, d0, stride_kn, stride_kd, N_CTX, HEAD_DIM, True, mask_d0)  # (BLOCK_N, D_MAIN)
    v0 = _tile(V, cols, d0, stride_vn, stride_vd, N_CTX, HEAD_DIM, True, mask_d0)
    k0 = _tf32((k0 * q_scale).to(K.dtype.element_ty), ROUND_TF32)  # k only makes the scores here: q's scale on it
    v0 = _tf32(v0, ROUND_TF32)
    dk0 = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    dv0 = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    k1, v1, dk1, dv1 = 0.0, 0.0, 0.0, 0.0  # no tail part
    if D_TAIL > 0:
        d1 = tl.arange(0, D_TAIL)
        mask_d1: tl.constexpr = HEAD_DIM < D_MAIN + D_TAIL
        k1 = _tile(K + D_MAIN * stride_kd, cols, d1, stride_kn, stride_kd, N_CTX, HEAD_DIM - D_MAIN, True, mask_d1)
        v1 = _tile(V + D_MAIN * stride_vd, cols, d1, stride_vn, stride_vd, N_CTX, HEAD_DIM - D_MAIN, True, mask_d1)
        k1 = _tf32((k1 * q_scale).to(K.dtype.element_ty), ROUND_TF32)  # (BLOCK_N, D_TAIL)
        v1 = _tf32(v1, ROUND_TF32)
        dk1 = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)
        dv1 = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)

    m_full = (N_CTX // BLOCK_M) * BLOCK_M
    dk0, dk1, dv0, dv1 = _attention_bwd_dkdv_inner(
        dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
        0, m_full, N_CTX, qk_scale,
        HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_M, False,
    )
    if m_full < N_CTX:
        dk0, dk1, dv0, dv1 = _attention_bwd_dkdv_inner(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, Q, DO, LSE, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
            m_full, N_CTX, N_CTX, qk_scale,
            HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_M, True,
        )
    _store(DK, cols, d0, stride_dkn, stride_dkd, N_CTX, HEAD_DIM, dk0 * sm_scale)
    _store(DV, cols, d0, stride_dkn, stride_dkd, N_CTX, HEAD_DIM, dv0)
    if D_TAIL > 0:
        _store(DK + D_MAIN * stride_dkd, cols, d1, stride_dkn, stride_dkd, N_CTX, HEAD_DIM - D_MAIN, dk1 * sm_scale)
        _store(DV + D_MAIN * stride_dkd, cols, d1, stride_dkn, stride_dkd, N_CTX, HEAD_DIM - D_MAIN, dv1)


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

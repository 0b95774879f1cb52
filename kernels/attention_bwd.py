"""Flash attention's backward: two kernels and their launcher ``attention_bwd``.

Two kernels, both deterministic (no atomics): ``_attention_bwd_dq_kernel`` first computes
delta = rowsum(dO * O) for its query rows (the "preprocess" phase, fused here to save a launch and a
read of dO) and dQ; ``_attention_bwd_dkdv_kernel`` then computes dK and dV for a block of keys,
reading delta back. Both recompute the probabilities from the forward's row maximum and log2 row sum
(base 2), computing the scores as the forward does (``_probabilities``), so nothing N' x N' is stored.
Same support as the forward: any strides, any N' (masked tails), head dims 1..256 in the forward's column
parts (``head_dim_parts``), fp16 / bf16 / fp32.
"""
import torch
import triton
import triton.language as tl

from .attention import Launchable, _bhnd_like, _check, _head, _store, _tf32, _tile, dot_precision, split_scale


@triton.jit
def _rows(ptr, rows, N_CTX, MASK: tl.constexpr):
    """ptr[rows], fp32 per-row values (the row statistics, delta); 0 past N' where MASK."""
    if MASK:
        x = tl.load(ptr + rows, mask=rows < N_CTX, other=0.0)
    else:
        x = tl.load(ptr + rows)
    return x


@triton.jit
def _probabilities(qk, qk_scale, m, log2l):
    """P = exp2((qk - m) qk_scale - log2(l)) for the scores qk and the forward's row maximum ``m`` and log2 row
    sum ``log2l`` (rows on axis 0). qk is computed as the forward's (the same operands in the same roles) and
    the exponent's first part as the forward's, so a one-hot row gives exactly 1 and 0. min(., 0): p <= 1
    even where a compiler computed qk another way."""
    return tl.exp2(tl.minimum((qk - m[:, None]) * qk_scale, 0.0) - log2l[:, None])


@triton.jit
def _score_grads(p, dp, delta):
    """dS = P * (dP - delta) (rows on axis 0), and exactly 0 where P is exactly 1. P rounds to 1 only where
    the row sum l did, so the row's other probabilities sum to at most about one rounding of 1 per key block
    (what each block adds to l below half an ulp is lost), and the true dS, P (1 - P) times a difference of
    dP's, is of the order of the rounding of dP - delta itself (see the module docstring of
    ``kernels/attention.py``); 0 is exact for a one-hot row, where that rounding times |K| (dQ) or |Q| (dK),
    huge at such logits, would otherwise stand where the gradient is 0, as the eager reference gives it."""
    return tl.where(p < 1.0, p * (dp - delta[:, None]), 0.0)


@triton.jit
def _attention_bwd_dq_inner(
    dq0, dq1, q0, q1, do0, do1, m, log2l, delta,  # dQ accumulators, this block's query-side tiles (two column
    # parts), the forward's row statistics (``attention_fwd``), rowsum(dO * O)
    K, V, stride_kn, stride_kd, stride_vn, stride_vd,
    lo, hi, N_CTX, qk_scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUND_TF32: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KEYS: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    d0 = tl.arange(0, D_MAIN)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        # K^T and V^T tiles (D_MAIN, BLOCK_N), loaded as the forward loads K^T: its scores' dot, operand for operand
        kT0 = _tf32(_tile(K, d0, cols, stride_kd, stride_kn, HEAD_DIM, N_CTX, HEAD_DIM < D_MAIN, MASK_KEYS), ROUND_TF32)
        vT0 = _tile(V, d0, cols, stride_vd, stride_vn, HEAD_DIM, N_CTX, HEAD_DIM < D_MAIN, MASK_KEYS)
        # -- recompute the probabilities from the forward's row statistics; dP = dO V^T --
        qk = tl.dot(q0, kT0, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do0, _tf32(vT0, ROUND_TF32), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if D_TAIL > 0:
            d1 = tl.arange(0, D_TAIL)
            kT1 = _tile(K + D_MAIN * stride_kd, d1, cols, stride_kd, stride_kn, HEAD_DIM - D_MAIN, N_CTX,
                        HEAD_DIM < D_MAIN + D_TAIL, MASK_KEYS)  # (D_TAIL, BLOCK_N)
            vT1 = _tile(V + D_MAIN * stride_vd, d1, cols, stride_vd, stride_vn, HEAD_DIM - D_MAIN, N_CTX,
                        HEAD_DIM < D_MAIN + D_TAIL, MASK_KEYS)  # (D_TAIL, BLOCK_N)
            kT1 = _tf32(kT1, ROUND_TF32)
            qk = tl.dot(q1, kT1, qk, input_precision=DOT_PRECISION)
            dp = tl.dot(do1, _tf32(vT1, ROUND_TF32), dp, input_precision=DOT_PRECISION)
        p = _probabilities(qk, qk_scale, m, log2l)
        if MASK_KEYS:
            p = tl.where(cols[None, :] < N_CTX, p, 0.0)
        # -- dS = P * (dP - delta), dQ += dS K --
        ds = _tf32(_score_grads(p, dp, delta).to(K.dtype.element_ty), ROUND_TF32)
        dq0 = tl.dot(ds, tl.trans(kT0), dq0, input_precision=DOT_PRECISION)  # (BLOCK_M, D_MAIN)
        if D_TAIL > 0:
            dq1 = tl.dot(ds, tl.trans(kT1), dq1, input_precision=DOT_PRECISION)  # (BLOCK_M, D_TAIL)
    return dq0, dq1


@triton.jit(do_not_specialize=["H", "N_CTX"])
def _attention_bwd_dq_kernel(
    # Pointers
    Q, K, V, O, DO, STATS, DELTA, DQ,
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
    STATS += pid_bh.to(tl.int64) * 2 * N_CTX
    DELTA += pid_bh.to(tl.int64) * N_CTX

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d0 = tl.arange(0, D_MAIN)
    mask_d0: tl.constexpr = HEAD_DIM < D_MAIN
    q0 = _tile(Q, rows, d0, stride_qn, stride_qd, N_CTX, HEAD_DIM, True, mask_d0)  # (BLOCK_M, D_MAIN)
    do0 = _tile(DO, rows, d0, stride_don, stride_dod, N_CTX, HEAD_DIM, True, mask_d0)
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
        q1 = _tf32((q1 * q_scale).to(Q.dtype.element_ty), ROUND_TF32)
        do1 = _tf32(do1, ROUND_TF32)
        dq1 = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
    # -- preprocess: delta = rowsum(dO * O), read again by the dK/dV kernel --
    o0 = _tile(O, rows, d0, stride_on, stride_od, N_CTX, HEAD_DIM, True, mask_d0)
    delta = tl.sum(do0.to(tl.float32) * o0.to(tl.float32), 1)  # (BLOCK_M,)
    if D_TAIL > 0:
        o1 = _tile(O + D_MAIN * stride_od, rows, d1, stride_on, stride_od, N_CTX, HEAD_DIM - D_MAIN, True, mask_d1)
        delta += tl.sum(do1.to(tl.float32) * o1.to(tl.float32), 1)
    tl.store(DELTA + rows, delta, mask=rows < N_CTX)
    m = _rows(STATS, rows, N_CTX, True)
    log2l = _rows(STATS + N_CTX, rows, N_CTX, True)

    n_full = (N_CTX // BLOCK_N) * BLOCK_N
    dq0, dq1 = _attention_bwd_dq_inner(
        dq0, dq1, q0, q1, do0, do1, m, log2l, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        0, n_full, N_CTX, qk_scale,
        HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_N, False,
    )
    if n_full < N_CTX:
        dq0, dq1 = _attention_bwd_dq_inner(
            dq0, dq1, q0, q1, do0, do1, m, log2l, delta, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            n_full, N_CTX, N_CTX, qk_scale,
            HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_N, True,
        )
    _store(DQ, rows, d0, stride_dqn, stride_dqd, N_CTX, HEAD_DIM, dq0 * sm_scale)
    if D_TAIL > 0:
        _store(DQ + D_MAIN * stride_dqd, rows, d1, stride_dqn, stride_dqd, N_CTX, HEAD_DIM - D_MAIN, dq1 * sm_scale)


@triton.jit
def _attention_bwd_dkdv_inner(
    dk0, dk1, dv0, dv1, kT0, kT1, vT0, vT1,  # accumulators and this block's key / value tiles (two column parts)
    Q, DO, STATS, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
    lo, hi, N_CTX, q_scale, qk_scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROUND_TF32: tl.constexpr, BLOCK_M: tl.constexpr, MASK_ROWS: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    d0 = tl.arange(0, D_MAIN)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        q0 = _tile(Q, rows, d0, stride_qn, stride_qd, N_CTX, HEAD_DIM, MASK_ROWS, HEAD_DIM < D_MAIN)
        do0 = _tile(DO, rows, d0, stride_don, stride_dod, N_CTX, HEAD_DIM, MASK_ROWS, HEAD_DIM < D_MAIN)
        m = _rows(STATS, rows, N_CTX, MASK_ROWS)
        log2l = _rows(STATS + N_CTX, rows, N_CTX, MASK_ROWS)
        delta = _rows(DELTA, rows, N_CTX, MASK_ROWS)
        q0 = _tf32((q0 * q_scale).to(Q.dtype.element_ty), ROUND_TF32)  # the forward's q: its scores, bitwise
        do0 = _tf32(do0, ROUND_TF32)
        # -- P and dP = dO V^T as the forward and the dQ kernel compute them, (BLOCK_M, BLOCK_N) --
        qk = tl.dot(q0, kT0, input_precision=DOT_PRECISION)
        dp = tl.dot(do0, vT0, input_precision=DOT_PRECISION)
        if D_TAIL > 0:
            d1 = tl.arange(0, D_TAIL)
            q1 = _tile(Q + D_MAIN * stride_qd, rows, d1, stride_qn, stride_qd, N_CTX, HEAD_DIM - D_MAIN,
                       MASK_ROWS, HEAD_DIM < D_MAIN + D_TAIL)  # (BLOCK_M, D_TAIL)
            do1 = _tile(DO + D_MAIN * stride_dod, rows, d1, stride_don, stride_dod, N_CTX, HEAD_DIM - D_MAIN,
                        MASK_ROWS, HEAD_DIM < D_MAIN + D_TAIL)
            q1 = _tf32((q1 * q_scale).to(Q.dtype.element_ty), ROUND_TF32)
            do1 = _tf32(do1, ROUND_TF32)
            qk = tl.dot(q1, kT1, qk, input_precision=DOT_PRECISION)
            dp = tl.dot(do1, vT1, dp, input_precision=DOT_PRECISION)
        p = _probabilities(qk, qk_scale, m, log2l)
        if MASK_ROWS:
            p = tl.where(rows[:, None] < N_CTX, p, 0.0)
        # -- dV += P^T dO; dS = P * (dP - delta), dK += dS^T (q * q_scale), scaled by dk_scale at the end --
        ds = _tf32(_score_grads(p, dp, delta).to(Q.dtype.element_ty), ROUND_TF32)
        p = _tf32(p.to(DO.dtype.element_ty), ROUND_TF32)
        dv0 = tl.dot(tl.trans(p), do0, dv0, input_precision=DOT_PRECISION)  # (BLOCK_N, D_MAIN)
        dk0 = tl.dot(tl.trans(ds), q0, dk0, input_precision=DOT_PRECISION)
        if D_TAIL > 0:
            dv1 = tl.dot(tl.trans(p), do1, dv1, input_precision=DOT_PRECISION)  # (BLOCK_N, D_TAIL)
            dk1 = tl.dot(tl.trans(ds), q1, dk1, input_precision=DOT_PRECISION)
    return dk0, dk1, dv0, dv1


@triton.jit(do_not_specialize=["H", "N_CTX"])
def _attention_bwd_dkdv_kernel(
    # Pointers
    Q, K, V, DO, STATS, DELTA, DK, DV,
    # Strides
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,  # dV is allocated with dK's layout
    # Sizes and scales
    H, N_CTX, dk_scale, q_scale, qk_scale,  # q_scale * qk_scale = sm_scale / ln 2 (``split_scale``); dK is
    # accumulated against q * q_scale, as the scores are, and dk_scale = sm_scale / q_scale (0 for a zero scale)
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
    STATS += pid_bh.to(tl.int64) * 2 * N_CTX
    DELTA += pid_bh.to(tl.int64) * N_CTX

    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d0 = tl.arange(0, D_MAIN)
    mask_d0: tl.constexpr = HEAD_DIM < D_MAIN
    # K^T and V^T tiles (D_MAIN, BLOCK_N), as the forward's and the dQ kernel's dots take them
    kT0 = _tf32(_tile(K, d0, cols, stride_kd, stride_kn, HEAD_DIM, N_CTX, mask_d0, True), ROUND_TF32)
    vT0 = _tf32(_tile(V, d0, cols, stride_vd, stride_vn, HEAD_DIM, N_CTX, mask_d0, True), ROUND_TF32)
    dk0 = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    dv0 = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    kT1, vT1, dk1, dv1 = 0.0, 0.0, 0.0, 0.0  # no tail part
    if D_TAIL > 0:
        d1 = tl.arange(0, D_TAIL)
        mask_d1: tl.constexpr = HEAD_DIM < D_MAIN + D_TAIL
        kT1 = _tile(K + D_MAIN * stride_kd, d1, cols, stride_kd, stride_kn, HEAD_DIM - D_MAIN, N_CTX, mask_d1, True)
        vT1 = _tile(V + D_MAIN * stride_vd, d1, cols, stride_vd, stride_vn, HEAD_DIM - D_MAIN, N_CTX, mask_d1, True)
        kT1 = _tf32(kT1, ROUND_TF32)  # (D_TAIL, BLOCK_N)
        vT1 = _tf32(vT1, ROUND_TF32)
        dk1 = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)
        dv1 = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)

    m_full = (N_CTX // BLOCK_M) * BLOCK_M
    dk0, dk1, dv0, dv1 = _attention_bwd_dkdv_inner(
        dk0, dk1, dv0, dv1, kT0, kT1, vT0, vT1, Q, DO, STATS, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
        0, m_full, N_CTX, q_scale, qk_scale,
        HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_M, False,
    )
    if m_full < N_CTX:
        dk0, dk1, dv0, dv1 = _attention_bwd_dkdv_inner(
            dk0, dk1, dv0, dv1, kT0, kT1, vT0, vT1, Q, DO, STATS, DELTA, stride_qn, stride_qd, stride_don,
            stride_dod, m_full, N_CTX, N_CTX, q_scale, qk_scale,
            HEAD_DIM, D_MAIN, D_TAIL, DOT_PRECISION, ROUND_TF32, BLOCK_M, True,
        )
    _store(DK, cols, d0, stride_dkn, stride_dkd, N_CTX, HEAD_DIM, dk0 * dk_scale)
    _store(DV, cols, d0, stride_dkn, stride_dkd, N_CTX, HEAD_DIM, dv0)
    if D_TAIL > 0:
        _store(DK + D_MAIN * stride_dkd, cols, d1, stride_dkn, stride_dkd, N_CTX, HEAD_DIM - D_MAIN, dk1 * dk_scale)
        _store(DV + D_MAIN * stride_dkd, cols, d1, stride_dkn, stride_dkd, N_CTX, HEAD_DIM - D_MAIN, dv1)


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------
_DQ = Launchable("dq", _attention_bwd_dq_kernel)
_DKDV = Launchable("dkdv", _attention_bwd_dkdv_kernel)


def attention_bwd(do, q, k, v, o, stats, sm_scale: float):
    """dQ, dK, dV (each (B, H, N', d) laid out (B, N', H, d)) from dO and the forward's o and row
    statistics ``stats`` (B, H, 2, N') fp32 (``attention_fwd``)."""
    _check(q, k, v, o, do)
    B, H, N, d = q.shape
    assert stats.shape == (B, H, 2, N) and stats.is_contiguous() and stats.dtype == torch.float32
    precision = dot_precision(q.dtype)
    dq, dk, dv = _bhnd_like(q), _bhnd_like(k), _bhnd_like(v)
    delta = torch.empty((B, H, N), device=q.device, dtype=torch.float32)  # rowsum(dO * O), written by the dQ kernel
    q_scale, qk_scale = split_scale(q.dtype, sm_scale)
    dk_scale = sm_scale / q_scale if q_scale else 0.0
    strides = (*q.stride(), *k.stride(), *v.stride())
    _DQ.launch((q, k, v, o, do, stats, delta, dq), (*strides, *o.stride(), *do.stride(), *dq.stride(), H, N),
               (sm_scale, q_scale, qk_scale), N, B * H, d, precision)
    _DKDV.launch((q, k, v, do, stats, delta, dk, dv), (*strides, *do.stride(), *dk.stride(), H, N),
                 (dk_scale, q_scale, qk_scale), N, B * H, d, precision)
    return dq, dk, dv

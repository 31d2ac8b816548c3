"""Triton kernels of the block-sparse attention backend: forward, and a deterministic backward.

Vocabulary (as in the launchers): ``B, H, S, D`` batch, heads, tokens, head dim; ``BS`` the mask's
block size (64 or 128); ``BLOCK_M`` / ``BLOCK_N`` the query / key rows of one tile, each dividing
``BS`` (a mask block is walked in ``BS // BLOCK_*`` sub-tiles); ``S_PAD = nb * BS``.

Which blocks are computed comes from the mask's padded CSR lists (``BlockSparseMask``):

- forward and dq (one program per query tile): ``kv_indices[b, h, row, :kv_counts[b, h, row]]``,
  the kept key blocks of the tile's mask row, ascending;
- dk/dv (one program per key tile): ``q_indices[b, h, col, :q_counts[b, h, col]]``.

Programs are launched heaviest mask row (column) first (``ROW_ORDER`` / ``COL_ORDER``): axis 0 is
the rank in that order, axis 1 is ``b * H + h``, so the programs in flight share one head's K/V in
L2 and the long rows do not end up in the last wave.

Masking. Keys ``j >= kv_limit = min(S, key_lengths[b])`` are excluded. Because the kept key blocks
are ascending, a row's list is ``[full blocks..., at most one partial block, blocks past the
limit...]``: the main loop runs the full blocks with no masking at all, one masked tail handles the
block that holds ``kv_limit``, and the blocks past it are skipped. Query rows ``>= S`` are only in
the last mask row; they are loaded as zeros and never stored.

Numerics: softmax in base 2 (``exp2``) with ``log2(e)`` folded into the score scale; the
log-sum-exp saved for the backward is in that base-2 unit (``lse2 = m + log2(l)``), ``+inf`` for a
row with no allowed key, whose output is 0 and whose gradients are 0. ``qk_scale = scale * log2(e)``
keeps its sign; only the forward's running max needs to know it (``NEG_SCALE``: scale, then max).

Memory access: plain pointer tiles (any strides with a unit last stride; what the interpreter and
pre-Hopper GPUs run) or, with ``USE_TMA``, Hopper tensor-memory-accelerator descriptors over the
4-D ``[B, H, S, D]`` view (rows past ``S`` are zero-filled by the hardware and clipped on store).

Code layout. Each kernel is a prologue (``_program_tile``: which tile this program computes; for
query tiles ``_q_tile_prologue`` also splits the row at ``kv_limit``), one or two ``_walk`` loops
over its index list with the kernel's step (``_fwd_step``: the online-softmax update, ``_dq_step``,
``_dkdv_step``), and a store. Tensors read row for row together travel as a pair (``_slice_pair``,
``_load_pair``); compile-time settings as a constexpr tuple ``C``; the masking of a loop as its
``MASKED`` constexpr. Triton inlines every helper and resolves every constexpr branch, so each
compiled variant is the code that a hand-written kernel of that variant would be (the PTX was
checked to be identical, instruction for instruction, when the kernels were restructured this way).
"""

from __future__ import annotations

import triton
import triton.language as tl


# ----------------------------------------------------------------------------- tile helpers
@triton.jit
def _load_tile(
    src, b, h, row0, stride_s, limit, BLOCK: tl.constexpr, D: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr
):
    """Rows ``row0 .. row0 + BLOCK`` of one (b, h) slice -> ``[BLOCK, D]``.

    ``src``: a TMA descriptor over ``[B, H, S, D]`` (USE_TMA) or a pointer already offset to the
    (b, h) slice. ``MASKED``: rows ``>= limit`` read as 0 (pointer path; TMA zero-fills past S).
    """
    if USE_TMA:
        return src.load([b, h, row0, 0]).reshape(BLOCK, D)
    else:
        offs_r = tl.arange(0, BLOCK)
        ptrs = src + row0.to(tl.int64) * stride_s + (offs_r[:, None] * stride_s + tl.arange(0, D)[None, :])
        if MASKED:
            return tl.load(ptrs, mask=(row0 + offs_r)[:, None] < limit, other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def _store_tile(dst, b, h, row0, stride_s, limit, value, BLOCK: tl.constexpr, D: tl.constexpr, USE_TMA: tl.constexpr):
    """Store ``value [BLOCK, D]`` into rows ``row0 ..`` of one (b, h) slice; rows ``>= limit`` untouched."""
    if USE_TMA:
        dst.store([b, h, row0, 0], value.reshape(1, 1, BLOCK, D))
    else:
        offs_r = tl.arange(0, BLOCK)
        ptrs = dst + row0.to(tl.int64) * stride_s + (offs_r[:, None] * stride_s + tl.arange(0, D)[None, :])
        tl.store(ptrs, value, mask=(row0 + offs_r)[:, None] < limit)


@triton.jit
def _slice_src(T, b, h, stride_b, stride_h, USE_TMA: tl.constexpr):
    """The (b, h) slice's base: the descriptor itself (TMA) or the offset pointer."""
    if USE_TMA:
        return T
    else:
        return T + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def _list_offset(b, h, row, stride_ib, stride_ih, stride_ir):
    """Offset of mask row (column) ``row``'s index list in ``[Bm, Hm, nb, W]``, in int64: per-head
    lists at 64-token blocks and long videos pass 2^31 entries."""
    return b.to(tl.int64) * stride_ib + h.to(tl.int64) * stride_ih + row.to(tl.int64) * stride_ir


@triton.jit
def _split_row(idx_row, count, kv_limit, BS: tl.constexpr):
    """For an ascending list of key blocks, ``(n_full, has_tail)``.

    ``n_full``: entries whose block lies wholly below ``kv_limit`` (they need no masking);
    ``has_tail``: whether entry ``n_full`` is the block that holds ``kv_limit`` (partly valid).
    Entries after that lie past the limit and are skipped. One load in the common case (last entry
    below the limit), a binary search otherwise.
    """
    thr = kv_limit // BS  # first block that is not wholly valid
    last = tl.load(idx_row + tl.maximum(count - 1, 0))
    n_full = count
    if (count > 0) & (last >= thr):
        lo = count * 0
        hi = count - 1  # idx[hi] >= thr: the answer is in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            below = tl.load(idx_row + mid) < thr
            lo = tl.where(below, mid + 1, lo)
            hi = tl.where(below, hi, mid)
        n_full = lo
    nxt = tl.load(idx_row + tl.minimum(n_full, tl.maximum(count - 1, 0)))
    has_tail = (n_full < count) & (nxt == thr) & (kv_limit % BS != 0)
    return n_full, has_tail


@triton.jit
def _kv_limit(KEY_LEN, b, S, HAS_KEY_LEN: tl.constexpr):
    if HAS_KEY_LEN:
        return tl.minimum(tl.maximum(tl.load(KEY_LEN + b), 0), S)
    else:
        return S + b * 0


@triton.jit
def _sub_tile_start(idx_row, it, BS: tl.constexpr, BLOCK: tl.constexpr):
    """First row of sub-tile ``it`` of a block list walked in ``BLOCK``-row tiles (``BS // BLOCK`` per block)."""
    SUB: tl.constexpr = BS // BLOCK
    if SUB == 1:
        return tl.load(idx_row + it) * BS
    else:
        return tl.load(idx_row + it // SUB) * BS + (it % SUB) * BLOCK


@triton.jit
def _program_tile(ORDER, H, stride_cb, stride_ch, BS: tl.constexpr, BLOCK: tl.constexpr):
    """Which tile a program computes: ``(bh, b, h, cnt_off, blk, row0)``.

    Axis 1 is the head ``bh = b * H + h``; axis 0 the rank, in the head's launch ``ORDER``
    (``[Bm, Hm, nb]``, ``cnt_off`` into it and the counts), of mask row (column) ``blk``, walked in
    ``BS // BLOCK`` tiles of ``BLOCK`` rows; ``row0``: the tile's first row.
    """
    SUB: tl.constexpr = BS // BLOCK
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    cnt_off = b * stride_cb + h * stride_ch
    blk = tl.load(ORDER + cnt_off + pid // SUB)
    row0 = blk * BS + (pid % SUB) * BLOCK
    return bh, b, h, cnt_off, blk, row0


@triton.jit
def _q_tile_prologue(lists, KEY_LEN, H, S, BS: tl.constexpr, BLOCK_M: tl.constexpr, HAS_KEY_LEN: tl.constexpr):
    """Where a query-tile program (forward, dQ) stands: ``(bh, b, h, m0, idx_row, kv_limit, n_full, has_tail)``.

    ``lists = (KV_IDX, KV_CNT, ROW_ORDER, stride_ib, stride_ih, stride_ir, stride_cb, stride_ch)``;
    ``m0``: the tile's first query row; ``idx_row``: its mask row's key-block list; ``n_full``,
    ``has_tail``: that list split at ``kv_limit`` (``_split_row``). One helper so that the two
    kernels cannot drift apart in how they pick and split their row.
    """
    KV_IDX, KV_CNT, ROW_ORDER, stride_ib, stride_ih, stride_ir, stride_cb, stride_ch = lists
    bh, b, h, cnt_off, row, m0 = _program_tile(ROW_ORDER, H, stride_cb, stride_ch, BS, BLOCK_M)
    count = tl.load(KV_CNT + cnt_off + row)
    idx_row = KV_IDX + _list_offset(b, h, row, stride_ib, stride_ih, stride_ir)
    kv_limit = _kv_limit(KEY_LEN, b, S, HAS_KEY_LEN)
    n_full, has_tail = _split_row(idx_row, count, kv_limit, BS)
    return bh, b, h, m0, idx_row, kv_limit, n_full, has_tail


@triton.jit
def _tail_stop(full_stop, kv_limit, BS: tl.constexpr, BLOCK_N: tl.constexpr):
    """End of the masked tail that starts at sub-tile ``full_stop``: only the sub-tiles holding valid keys."""
    return full_stop + tl.cdiv(kv_limit - (kv_limit // BS) * BS, BLOCK_N)


@triton.jit
def _mma(a, b, acc, DOT_PREC: tl.constexpr, INTERPRET: tl.constexpr):
    """``a @ b (+ acc)`` with float32 accumulation."""
    if INTERPRET:
        # Triton 3.6's interpreter multiplies bfloat16 tiles as raw 16-bit integers: multiply in
        # float32 instead (16-bit float products are exact in float32, as on the tensor cores).
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PREC)


@triton.jit
def _walk(STEP: tl.constexpr, state, args, start, stop, C: tl.constexpr, MASKED: tl.constexpr):
    """The index-list walk of every kernel: ``state = STEP(state, args, it, C, MASKED)`` for the
    sub-tiles ``it`` in ``[start, stop)`` of the program's list.

    ``state``: the accumulators, carried by the one ``for`` loop that the GPU software-pipelines;
    ``args``: what each step reads (a tuple); ``C``: the kernel's compile-time settings (a tuple of
    constexprs); ``MASKED``: the masking this loop applies (constexpr, so a masked and an unmasked
    loop each compile without the other's branches).
    """
    for it in range(start, stop):
        state = STEP(state, args, it, C, MASKED)
    return state


@triton.jit
def _slice_pair(X, Y, b, h, stride_xb, stride_xh, stride_xs, stride_yb, stride_yh, stride_ys, USE_TMA: tl.constexpr):
    """The (b, h) slices of two ``[B, H, S, D]`` tensors read row for row together (K and V, or Q and
    dO), with their row strides: ``(x_src, y_src, stride_xs, stride_ys)``, a pair for ``_load_pair``."""
    x_src = _slice_src(X, b, h, stride_xb, stride_xh, USE_TMA)
    y_src = _slice_src(Y, b, h, stride_yb, stride_yh, USE_TMA)
    return x_src, y_src, stride_xs, stride_ys


@triton.jit
def _load_pair_at(
    pair, b, h, row0, limit, BLOCK: tl.constexpr, D: tl.constexpr, USE_TMA: tl.constexpr, MASKED: tl.constexpr
):
    """``(x, y)``: rows ``row0 .. row0 + BLOCK`` of both tensors of ``pair`` (``_slice_pair``), ``[BLOCK, D]``."""
    x_src, y_src, stride_xs, stride_ys = pair
    x = _load_tile(x_src, b, h, row0, stride_xs, limit, BLOCK, D, USE_TMA, MASKED)
    y = _load_tile(y_src, b, h, row0, stride_ys, limit, BLOCK, D, USE_TMA, MASKED)
    return x, y


@triton.jit
def _load_pair(
    pair,
    idx_row,
    it,
    b,
    h,
    limit,
    BS: tl.constexpr,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    USE_TMA: tl.constexpr,
    MASKED: tl.constexpr,
):
    """``(row0, x, y)``: the tiles of sub-tile ``it`` of the block list at ``idx_row`` (``_load_pair_at``)."""
    row0 = _sub_tile_start(idx_row, it, BS, BLOCK)
    x, y = _load_pair_at(pair, b, h, row0, limit, BLOCK, D, USE_TMA, MASKED)
    return row0, x, y


# ----------------------------------------------------------------------------- forward
@triton.jit
def _fwd_step(state, args, it, C: tl.constexpr, MASKED: tl.constexpr):
    """Online-softmax update of one query tile with key sub-tile ``it`` of the row's list.

    ``state = (acc [BLOCK_M, D], l_i [BLOCK_M], m_i [BLOCK_M])`` float32; ``args = (q, kv, idx_row,
    b, h, kv_limit, qk_scale)`` with ``kv`` the K/V pair (``_slice_pair``).
    """
    BS, BLOCK_M, BLOCK_N, D, USE_TMA, DOT_PREC, INTERPRET, NEG_SCALE = C
    acc, l_i, m_i = state
    q, kv, idx_row, b, h, kv_limit, qk_scale = args
    n0, k, v = _load_pair(kv, idx_row, it, b, h, kv_limit, BS, BLOCK_N, D, USE_TMA, MASKED)
    qk = _mma(q, tl.trans(k), None, DOT_PREC, INTERPRET)  # [BLOCK_M, BLOCK_N]
    if MASKED:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        qk = tl.where(offs_n[None, :] < kv_limit, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        qk = qk - m_new[:, None]
        if USE_TMA:
            # TMA zero-fills past S only: a NaN value past key_lengths would reach p @ v as 0 * NaN.
            v = tl.where(offs_n[:, None] < kv_limit, v, 0.0)
    elif NEG_SCALE:
        qk = qk * qk_scale
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        qk = qk - m_new[:, None]
    else:
        # qk_scale > 0, so max(qk) * qk_scale == max(qk * qk_scale): one FMA per score below.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        qk = qk * qk_scale - m_new[:, None]
    p = tl.math.exp2(qk)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = _mma(p.to(v.dtype), v, acc, DOT_PREC, INTERPRET)
    return acc, l_i, m_new


# The parameters grouped by role, a group a line (`fmt: skip`: ruff format would put each on its own line).
@triton.jit(do_not_specialize=["stride_ib", "stride_ih", "stride_ir", "stride_cb", "stride_ch"])
def _fwd_kernel(
    Q, K, V, O,  # [B, H, S, D]: pointers, or TMA descriptors (USE_TMA)
    LSE,  # [B, H, S_PAD] float32, base 2
    KV_IDX, KV_CNT, ROW_ORDER,  # the mask rows' key-block lists [Bm, Hm, nb, W], counts and launch order [Bm, Hm, nb]
    KEY_LEN,  # [B] int32 (read when HAS_KEY_LEN)
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    stride_ib, stride_ih, stride_ir, stride_cb, stride_ch,  # of the lists; of the counts and orders
    H, S, S_PAD, qk_scale,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, HAS_KEY_LEN: tl.constexpr,
    NEG_SCALE: tl.constexpr, USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr, OUT_DTYPE: tl.constexpr,
    INTERPRET: tl.constexpr,
):  # fmt: skip
    """One program: query rows ``m0 .. m0 + BLOCK_M`` of head ``(b, h)``. Writes O and LSE (base 2)."""
    lists = (KV_IDX, KV_CNT, ROW_ORDER, stride_ib, stride_ih, stride_ir, stride_cb, stride_ch)
    bh, b, h, m0, idx_row, kv_limit, n_full, has_tail = _q_tile_prologue(lists, KEY_LEN, H, S, BS, BLOCK_M, HAS_KEY_LEN)

    q_src = _slice_src(Q, b, h, stride_qb, stride_qh, USE_TMA)
    kv = _slice_pair(K, V, b, h, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, USE_TMA)
    q = _load_tile(q_src, b, h, m0, stride_qs, S, BLOCK_M, D, USE_TMA, True)

    C: tl.constexpr = (BS, BLOCK_M, BLOCK_N, D, USE_TMA, DOT_PREC, INTERPRET, NEG_SCALE)
    args = (q, kv, idx_row, b, h, kv_limit, qk_scale)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    # Key sub-tiles before the masked tail. Computed here, not in the prologue, so that the PTX stays
    # the same instruction for instruction as before the prologue was shared.
    full_stop = n_full * (BS // BLOCK_N)
    state = _walk(_fwd_step, (acc, l_i, m_i), args, 0, full_stop, C, False)
    if has_tail:
        state = _walk(_fwd_step, state, args, full_stop, _tail_stop(full_stop, kv_limit, BS, BLOCK_N), C, True)
    acc, l_i, m_i = state

    # A row that saw no key has l == 0 and acc == 0: output 0, lse +inf (so the backward's p is 0).
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_key, m_i + tl.math.log2(l_safe), float("inf"))
    offs_m = m0 + tl.arange(0, BLOCK_M)
    tl.store(LSE + bh.to(tl.int64) * S_PAD + offs_m, lse)
    o_dst = _slice_src(O, b, h, stride_ob, stride_oh, USE_TMA)
    _store_tile(o_dst, b, h, m0, stride_os, S, out.to(OUT_DTYPE), BLOCK_M, D, USE_TMA)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _load_rows(T, b, h, offs, offs_d, ok, stride_b, stride_h, stride_s):
    """Rows ``offs`` (where ``ok``, else 0) of the (b, h) slice of a ``[B, H, S, D]`` tensor, int64 offsets."""
    ptrs = T + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + offs[:, None].to(tl.int64) * stride_s
    return tl.load(ptrs + offs_d[None, :], mask=ok, other=0.0)


@triton.jit
def _bwd_delta_kernel(
    O,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_os,
    stride_db,
    stride_dh,
    stride_ds,
    H,
    S,
    S_PAD,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
):
    """``delta[b, h, i] = sum_d O * dO`` (float32) for ``i < S``, 0 for the padding rows up to S_PAD."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    ok = offs[:, None] < S
    o = _load_rows(O, b, h, offs, offs_d, ok, stride_ob, stride_oh, stride_os)
    do = _load_rows(DO, b, h, offs, offs_d, ok, stride_db, stride_dh, stride_ds)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * S_PAD + offs, delta)


@triton.jit
def _dq_step(dq, args, it, C: tl.constexpr, MASKED: tl.constexpr):
    """``dq [BLOCK_M, D]`` float32 plus key sub-tile ``it``'s term; ``args = (q, do, lse, delta, kv,
    idx_row, b, h, kv_limit, qk_scale)`` with ``kv`` the K/V pair (``_slice_pair``)."""
    BS, BLOCK_M, BLOCK_N, D, USE_TMA, DOT_PREC, INTERPRET = C
    q, do, lse, delta, kv, idx_row, b, h, kv_limit, qk_scale = args
    n0, k, v = _load_pair(kv, idx_row, it, b, h, kv_limit, BS, BLOCK_N, D, USE_TMA, MASKED)
    s = _mma(q, tl.trans(k), None, DOT_PREC, INTERPRET)  # [BLOCK_M, BLOCK_N]
    p = tl.math.exp2(s * qk_scale - lse[:, None])
    if MASKED:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        p = tl.where(offs_n[None, :] < kv_limit, p, 0.0)
    dp = _mma(do, tl.trans(v), None, DOT_PREC, INTERPRET)
    ds = p * (dp - delta[:, None])
    return _mma(ds.to(k.dtype), k, dq, DOT_PREC, INTERPRET)


# The parameters grouped by role, a group a line (`fmt: skip`: ruff format would put each on its own line).
@triton.jit(do_not_specialize=["stride_ib", "stride_ih", "stride_ir", "stride_cb", "stride_ch"])
def _bwd_dq_kernel(
    Q, K, V, DO, DQ,  # [B, H, S, D]: pointers, or TMA descriptors (USE_TMA)
    LSE, DELTA,  # [B, H, S_PAD] float32
    KV_IDX, KV_CNT, ROW_ORDER,  # the mask rows' key-block lists, counts and launch order (as in the forward)
    KEY_LEN,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dqb, stride_dqh, stride_dqs,
    stride_ib, stride_ih, stride_ir, stride_cb, stride_ch,
    H, S, S_PAD, qk_scale, ds_scale,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, HAS_KEY_LEN: tl.constexpr,
    USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr, OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """One program: dQ of query rows ``m0 .. m0 + BLOCK_M``, walking the row's key blocks like the forward."""
    lists = (KV_IDX, KV_CNT, ROW_ORDER, stride_ib, stride_ih, stride_ir, stride_cb, stride_ch)
    bh, b, h, m0, idx_row, kv_limit, n_full, has_tail = _q_tile_prologue(lists, KEY_LEN, H, S, BS, BLOCK_M, HAS_KEY_LEN)

    qdo = _slice_pair(Q, DO, b, h, stride_qb, stride_qh, stride_qs, stride_dob, stride_doh, stride_dos, USE_TMA)
    kv = _slice_pair(K, V, b, h, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, USE_TMA)
    q, do = _load_pair_at(qdo, b, h, m0, S, BLOCK_M, D, USE_TMA, True)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    lse = tl.load(LSE + bh.to(tl.int64) * S_PAD + offs_m)
    delta = tl.load(DELTA + bh.to(tl.int64) * S_PAD + offs_m)

    C: tl.constexpr = (BS, BLOCK_M, BLOCK_N, D, USE_TMA, DOT_PREC, INTERPRET)
    args = (q, do, lse, delta, kv, idx_row, b, h, kv_limit, qk_scale)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    full_stop = n_full * (BS // BLOCK_N)  # key sub-tiles before the masked tail
    dq = _walk(_dq_step, dq, args, 0, full_stop, C, False)
    if has_tail:
        dq = _walk(_dq_step, dq, args, full_stop, _tail_stop(full_stop, kv_limit, BS, BLOCK_N), C, True)
    dq_dst = _slice_src(DQ, b, h, stride_dqb, stride_dqh, USE_TMA)
    _store_tile(dq_dst, b, h, m0, stride_dqs, S, (dq * ds_scale).to(OUT_DTYPE), BLOCK_M, D, USE_TMA)


@triton.jit
def _dkdv_step(state, args, it, C: tl.constexpr, MASKED: tl.constexpr):
    """``state = (dk, dv)`` ``[BLOCK_N, D]`` float32 plus query sub-tile ``it``'s terms.

    ``args = (k, v, qdo, LSE_BH, DELTA_BH, idx_row, b, h, n0, S, kv_limit, qk_scale)`` with ``qdo``
    the Q/dO pair (``_slice_pair``); ``MASKED = (MASK_Q, MASK_K)``: mask query rows ``>= S``, key
    rows ``>= kv_limit``.
    """
    BS, BLOCK_M, BLOCK_N, D, USE_TMA, DOT_PREC, INTERPRET = C
    MASK_Q, MASK_K = MASKED
    dk, dv = state
    k, v, qdo, LSE_BH, DELTA_BH, idx_row, b, h, n0, S, kv_limit, qk_scale = args
    m0, q, do = _load_pair(qdo, idx_row, it, b, h, S, BS, BLOCK_M, D, USE_TMA, MASK_Q)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    lse = tl.load(LSE_BH + offs_m)
    delta = tl.load(DELTA_BH + offs_m)
    s_t = _mma(k, tl.trans(q), None, DOT_PREC, INTERPRET)  # [BLOCK_N, BLOCK_M]
    p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
    if MASK_K:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        p_t = tl.where(offs_n[:, None] < kv_limit, p_t, 0.0)
    dv = _mma(p_t.to(do.dtype), do, dv, DOT_PREC, INTERPRET)
    dp_t = _mma(v, tl.trans(do), None, DOT_PREC, INTERPRET)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = _mma(ds_t.to(q.dtype), q, dk, DOT_PREC, INTERPRET)
    return dk, dv


@triton.jit
def _dkdv_walk(state, args, n_full_sub, q_tail, n_tail_sub, C: tl.constexpr, MASK_K: tl.constexpr):
    """A key tile's walk of its column: the full query sub-tiles, then, if ``q_tail``, the first
    ``n_tail_sub`` sub-tiles of the last query block (rows past S masked)."""
    state = _walk(_dkdv_step, state, args, 0, n_full_sub, C, (False, MASK_K))
    if q_tail:
        state = _walk(_dkdv_step, state, args, n_full_sub, n_full_sub + n_tail_sub, C, (True, MASK_K))
    return state


# The parameters grouped by role, a group a line (`fmt: skip`: ruff format would put each on its own line).
@triton.jit(do_not_specialize=["stride_ib", "stride_ih", "stride_ir", "stride_cb", "stride_ch"])
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV,  # [B, H, S, D]: pointers, or TMA descriptors (USE_TMA)
    LSE, DELTA,  # [B, H, S_PAD] float32
    Q_IDX, Q_CNT, COL_ORDER,  # the mask columns' query-block lists, counts and launch order
    KEY_LEN,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs,
    stride_ib, stride_ih, stride_ir, stride_cb, stride_ch,
    H, S, S_PAD, NB, qk_scale, ds_scale,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, HAS_KEY_LEN: tl.constexpr,
    USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr, OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """One program: dK, dV of key rows ``n0 .. n0 + BLOCK_N``, walking the query blocks that see them."""
    SUB_M: tl.constexpr = BS // BLOCK_M
    bh, b, h, cnt_off, col, n0 = _program_tile(COL_ORDER, H, stride_cb, stride_ch, BS, BLOCK_N)
    kv_limit = _kv_limit(KEY_LEN, b, S, HAS_KEY_LEN)

    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    if n0 < kv_limit:  # keys wholly past the limit get zero gradients
        count = tl.load(Q_CNT + cnt_off + col)
        idx_row = Q_IDX + _list_offset(b, h, col, stride_ib, stride_ih, stride_ir)
        # Only the last query block (NB - 1) has rows past S; it is last in the ascending list.
        last = tl.load(idx_row + tl.maximum(count - 1, 0))
        q_tail = (count > 0) & (last == NB - 1) & (S % BS != 0)
        n_full = tl.where(q_tail, count - 1, count)
        n_tail_sub = tl.cdiv(S - (NB - 1) * BS, BLOCK_M)  # sub-tiles of the last block holding rows < S

        qdo = _slice_pair(Q, DO, b, h, stride_qb, stride_qh, stride_qs, stride_dob, stride_doh, stride_dos, USE_TMA)
        kv = _slice_pair(K, V, b, h, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, USE_TMA)
        k, v = _load_pair_at(kv, b, h, n0, S, BLOCK_N, D, USE_TMA, True)
        lse_bh = LSE + bh.to(tl.int64) * S_PAD
        delta_bh = DELTA + bh.to(tl.int64) * S_PAD
        C: tl.constexpr = (BS, BLOCK_M, BLOCK_N, D, USE_TMA, DOT_PREC, INTERPRET)
        args = (k, v, qdo, lse_bh, delta_bh, idx_row, b, h, n0, S, kv_limit, qk_scale)
        start = n_full * SUB_M
        if n0 + BLOCK_N > kv_limit:  # the key tile crosses the limit: mask its keys
            dk, dv = _dkdv_walk((dk, dv), args, start, q_tail, n_tail_sub, C, True)
        else:
            dk, dv = _dkdv_walk((dk, dv), args, start, q_tail, n_tail_sub, C, False)
    dk_dst = _slice_src(DK, b, h, stride_dkb, stride_dkh, USE_TMA)
    dv_dst = _slice_src(DV, b, h, stride_dvb, stride_dvh, USE_TMA)
    _store_tile(dk_dst, b, h, n0, stride_dks, S, (dk * ds_scale).to(OUT_DTYPE), BLOCK_N, D, USE_TMA)
    _store_tile(dv_dst, b, h, n0, stride_dvs, S, dv.to(OUT_DTYPE), BLOCK_N, D, USE_TMA)

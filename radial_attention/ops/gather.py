"""The gather backend: block-sparse attention in plain PyTorch that computes only the kept blocks.

For devices without Triton (the CPU above all) and for training there: no compiler, no custom
kernel, autograd through ordinary torch ops. Each *unit* of work is one query block of one
(batch item, head); for a unit with ``c`` kept key blocks the backend gathers (``index_select``)
those ``c`` key and value blocks and runs torch's fused attention on them:

    out[unit] [bs, D] = scaled_dot_product_attention(q_blk [bs, D], k_gathered [c*bs, D], v_gathered [c*bs, D])

batched over many units at once (the units are SDPA's batch), so the cost is the kept blocks, not
S^2. On the CPU, SDPA is a flash kernel: scores stay in cache and are recomputed in the backward
pass instead of being stored (an earlier bmm / softmax / bmm version was ~2x slower here).

Units are sorted by their count of kept key blocks and cut into chunks of equal or similar counts,
each padded to its own largest count (a radial mask has one full row and most rows at ~1/3 of the
width: padding every row to the widest would redo the dense work). Equal counts are merged across
a small difference only where that is cheaper than one more chunk (see ``_groups``). A chunk's
gathered keys and values, and its score tile where SDPA has no fused kernel, hold at most
``CHUNK_ELEMENTS`` (2^22) elements, and at least 4 units (or one per thread: SDPA's CPU backward
runs one thread per batch entry). Units with no kept block are never computed: their output is 0.

A boolean ``attn_mask`` (``[units, 1, 1, c*bs]``, only where needed) hides the padding slots of a
chunk (slot ``>= count``), key tokens ``>= S`` in the last block and, with ``key_lengths``, key
tokens ``>= key_lengths[b]``. A unit left with no key at all (only ``key_lengths`` can do that: a
kept block always holds a token ``< S``) attends to all its slots instead and its output is
replaced by 0 (``where``), so it is exactly 0 with zero gradients, never NaN.

NaN follows the mask as in dense attention: only kept blocks are gathered, the padding slots repeat
a kept block, and keys past ``key_lengths`` are zeroed before the gather, so a NaN in a key or
value reaches exactly the rows allowed to see it (a NaN query row stays in its own row).

Numerics: float32 for float16/bfloat16/float32 inputs, float64 for float64; output in q's dtype.
Memory: inputs are copied once into ``[B*H*nb, bs, D]`` blocks of the compute dtype (padded to
``nb*bs`` tokens). Under autograd, plain autograd keeps each chunk's gathered keys and values for
the backward pass (``kept blocks * bs * 2D`` elements, not the probabilities); above
``LEAN_BACKWARD_BYTES`` (256 MiB) a custom backward (``_LeanBackward``) keeps only the blocks and
gathers each chunk again, at the cost of one more SDPA forward per chunk (~5-10% of a step).

Speed on a 2-core CPU (fp32, Wan layouts, radial densities 0.40-0.25): forward 1.4-1.9x and
forward+backward 1.3-1.75x faster than dense SDPA; the gathers take ~15-20% of the time and SDPA
on 64-128 query rows runs at ~70% of its efficiency on a whole sequence.

The work plan (which units go in which chunk, their key block indices) depends only on the mask,
device, B, H, S, D and the chunk budget; it is built once on the CPU and cached on the mask
object. Inside ``torch.compile`` the cached plan of a mask object that already ran eagerly is used
as it is; a mask first seen while tracing (e.g. a raw mask tensor made into a mask in the graph)
gets a plan built in the graph that pads every row to ``nb`` blocks: correct, but the dense amount
of work (run the layer once eagerly, or pass a ``BlockSparseMask`` made outside, to avoid that).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from radial_attention.mask import BlockSparseMask

# A chunk's size, in elements per (unit, kept block) pair: the larger of its score tile
# (bs x bs, materialised only where SDPA has no fused kernel) and its gathered key and value rows
# (bs x 2D). The budget bounds a chunk's memory to 16 MiB per such tensor in float32 (larger
# gathers fall out of the CPU's caches and, above glibc's mmap threshold, pay page faults).
CHUNK_ELEMENTS = 1 << 22
# The fixed cost of one chunk in the same elements (~0.1-0.2 ms of small ops on a CPU core, at
# ~2-3 ns per score element for the fused attention): padding a chunk's units by more than this
# costs more than running them as a separate chunk.
_CHUNK_OVERHEAD = 1 << 16
# Under autograd, keeping every gathered key and value block for the backward pass costs
# (kept blocks) x bs x 2D elements: for a long video many times the size of K and V. Above this
# many bytes the backward gathers each chunk again instead (see ``attention``'s ``lean_backward``).
LEAN_BACKWARD_BYTES = 1 << 28
_MAX_MERGE = 64  # distinct counts considered for one group (bounds the plan's O(K^2) search)


class _Chunk:
    """One batch of units padded to the same width.

    ``units``: int64 ``[n]`` flat unit ids ``(b * H + h) * nb + i``; ``kv``: int64 ``[n, width]`` flat
    ids ``(b * H + h) * nb + j`` of the key blocks to gather (slots past a unit's count repeat a kept
    block and are masked); ``counts``: int64 ``[n]`` kept blocks per unit; ``padded``: some unit has
    fewer than ``width`` kept blocks; ``tail``: the partial last key block (tokens past S) occurs;
    ``nonzero``: every unit has a kept block.
    """

    __slots__ = ("units", "kv", "counts", "width", "padded", "tail", "nonzero")

    def __init__(self, units, kv, counts, width: int, padded: bool, tail: bool, nonzero: bool = True):
        self.units, self.kv, self.counts = units, kv, counts
        self.width, self.padded, self.tail = width, padded, tail
        self.nonzero = nonzero  # every unit has a kept block (False: unknown, inside torch.compile)


class _Plan:
    """The chunks, and ``computed``: int64 ``[n]`` the units of the chunks in chunk order;
    ``complete``: every unit is in some chunk (no unit without kept blocks); ``slots``: key blocks
    gathered per call."""

    __slots__ = ("chunks", "computed", "complete", "slots")

    def __init__(self, chunks: List[_Chunk], computed: torch.Tensor, complete: bool):
        self.chunks, self.computed, self.complete = chunks, computed, complete
        self.slots = sum(c.kv.numel() for c in chunks)  # key blocks gathered per call


def _groups(sorted_counts: List[int], per_block: int, budget: int, min_units: int = 1) -> List[Tuple[int, int, int]]:
    """Cut units sorted by kept-block count into chunks -> [(start, stop, width)].

    Cost model, in elements: a chunk of ``n`` units padded to ``width`` blocks costs
    ``n * width * per_block`` plus a fixed ``_CHUNK_OVERHEAD`` (the few small ops it launches). Runs
    of equal counts are merged into groups by dynamic programming over the distinct counts
    (minimum total cost, each group cut into as few near-equal chunks as the ``budget`` allows).
    A chunk holds at least ``min_units`` units (if its group has them), so chunks of very wide units
    may exceed the budget.
    """
    if not sorted_counts:
        return []
    values, starts = [], []
    for pos, c in enumerate(sorted_counts):
        if not values or c != values[-1]:
            values.append(c)
            starts.append(pos)
    starts.append(len(sorted_counts))
    K = len(values)

    def chunks_of(n_units: int, width: int) -> int:
        per_chunk = max(min_units, budget // (width * per_block))
        return -(-n_units // per_chunk)

    best = [0.0] + [float("inf")] * K  # best[j]: cheapest cut of the first j distinct counts
    cut = [0] * (K + 1)
    for j in range(1, K + 1):
        width = values[j - 1]
        for i in range(j - 1, max(-1, j - 1 - _MAX_MERGE), -1):
            n_units = starts[j] - starts[i]
            cost = best[i] + n_units * width * per_block + _CHUNK_OVERHEAD * chunks_of(n_units, width)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = K
    while j > 0:
        i = cut[j]
        groups.append((starts[i], starts[j], values[j - 1]))
        j = i
    out = []
    for start, stop, width in reversed(groups):
        parts = chunks_of(stop - start, width)
        for p in range(parts):  # near-equal parts: no small leftover chunk
            a = start + (stop - start) * p // parts
            b = start + (stop - start) * (p + 1) // parts
            out.append((a, b, width))
    return out


def _min_units() -> int:
    """Fewest units per chunk: SDPA's CPU backward kernel runs one thread per batch entry (unit),
    so a chunk of one wide unit would leave all but one core idle."""
    if torch.compiler.is_compiling():
        return 4  # torch.get_num_threads() cannot be traced
    return max(4, torch.get_num_threads())


def _per_block(bs: int, D: int) -> int:
    """Elements per (unit, kept block) pair of a chunk: see ``CHUNK_ELEMENTS``."""
    return bs * max(bs, 2 * D)


def _build_plan(mask: BlockSparseMask, device: torch.device, B: int, H: int, S: int, D: int, budget: int) -> _Plan:
    """The chunks for ``mask`` broadcast to ``[B, H]``, built on the CPU and moved to ``device``."""
    bs, nb = mask.block_size, mask.num_blocks
    idx = mask._index("kv_indices", "cpu").to(torch.int64)  # [Bm, Hm, nb, W]
    cnt = mask._index("kv_counts", "cpu").to(torch.int64)  # [Bm, Hm, nb]
    idx = idx.expand(B, H, *idx.shape[2:]).reshape(B * H * nb, -1)
    cnt = cnt.expand(B, H, nb).reshape(-1)
    order = torch.argsort(cnt, stable=True)
    sorted_cnt = cnt[order]
    skip = int((sorted_cnt == 0).sum())  # units with no kept block: never computed, output 0
    order, sorted_cnt = order[skip:], sorted_cnt[skip:]
    chunks = []
    for start, stop, width in _groups(sorted_cnt.tolist(), _per_block(bs, D), budget, _min_units()):
        units = order[start:stop]
        counts = sorted_cnt[start:stop]
        kv_block = idx[units, :width]
        # Slots past the count point at the unit's first kept block: a valid gather, hidden by attn_mask.
        slot_ok = torch.arange(width)[None, :] < counts[:, None]
        kv_block = torch.where(slot_ok, kv_block, kv_block[:, :1])
        kv = (units // nb * nb)[:, None] + kv_block
        tail = bool(S % bs) and bool((kv_block == nb - 1).any())
        padded = bool((counts < width).any())
        chunks.append(_Chunk(units.to(device), kv.to(device), counts.to(device), width, padded, tail))
    return _Plan(chunks, order.to(device), skip == 0)


def _traced_plan(mask: BlockSparseMask, device: torch.device, B: int, H: int, S: int, D: int, budget: int) -> _Plan:
    """A plan from static shapes only, for a mask first seen inside torch.compile: every unit padded
    to ``nb`` blocks (its kept blocks first, the rest masked). Correct, but the dense amount of work."""
    bs, nb = mask.block_size, mask.num_blocks
    d4 = mask._dense4d().to(device).expand(B, H, nb, nb).reshape(B * H * nb, nb)
    cols = torch.arange(nb, device=device)
    kv_block = torch.argsort(torch.where(d4, cols, cols + nb), dim=-1, stable=True)
    counts = d4.sum(dim=-1)
    units = torch.arange(B * H * nb, device=device)
    kv = (units // nb * nb)[:, None] + kv_block
    n = units.shape[0]
    step = max(_min_units(), budget // (nb * _per_block(bs, D)))
    chunks = [
        _Chunk(units[a : a + step], kv[a : a + step], counts[a : a + step], nb, True, bool(S % bs), False)
        for a in range(0, n, step)
    ]
    return _Plan(chunks, units, True)


def _plan(mask: BlockSparseMask, device: torch.device, B: int, H: int, S: int, D: int, budget: int) -> _Plan:
    # Kept in the mask's derived cache, which torch.compile reads while tracing: a mask that ran
    # eagerly keeps its sparse plan inside a compiled graph; one first seen there gets a traced plan.
    return mask.derived(
        ("gather.plan", str(device), B, H, S, D, budget),
        lambda: _build_plan(mask, device, B, H, S, D, budget),
        traced=lambda: _traced_plan(mask, device, B, H, S, D, budget),
    )


def _chunk_mask(c: _Chunk, kl: Optional[torch.Tensor], S: int, H: int, nb: int, bs: int):
    """(attn_mask, has_key) of a chunk: bool ``[n, 1, 1, w*bs]`` or None (every slot's keys may be
    attended to), and bool ``[n, 1, 1]`` or None (every unit has a key)."""
    n, w = c.kv.shape
    device = c.kv.device
    ok = None  # bool [n, w, bs | 1]: the key token may be attended to
    if c.padded:
        ok = (torch.arange(w, device=device) < c.counts[:, None])[:, :, None]  # [n, w, 1]
    if c.tail or kl is not None:
        pos = (c.kv % nb)[:, :, None] * bs + torch.arange(bs, device=device)  # [n, w, bs] key positions
        limit = S if kl is None else kl.index_select(0, c.units // (H * nb))[:, None, None]
        ok = pos < limit if ok is None else ok & (pos < limit)
    if ok is None:
        return None, None
    ok = ok.expand(n, w, bs).reshape(n, 1, 1, w * bs)
    has_key = None
    if kl is not None or not c.nonzero:
        # A unit may be left with no key: let it attend to all its slots (finite, no NaN) and
        # multiply its output by 0, so that output and gradients are exactly 0.
        has_key = ok.any(dim=-1, keepdim=True)  # [n, 1, 1, 1]
        ok = ok | ~has_key
        has_key = has_key[:, 0]
    return ok, has_key


def _sdpa(qc, kc, vc, c: _Chunk, mask, scale: float) -> torch.Tensor:
    """Attention of one chunk from its gathered blocks ``qc [n, bs, D]``, ``kc/vc [n*w, bs, D]`` -> ``[n, bs, D]``.

    Fused attention per unit: on the CPU a flash kernel, whose scores stay in cache and are
    recomputed, not stored, for the backward pass.
    """
    n, w = c.kv.shape
    bs, D = qc.shape[1:]
    ok, has_key = mask
    o = F.scaled_dot_product_attention(
        qc[:, None], kc.view(n, 1, w * bs, D), vc.view(n, 1, w * bs, D), attn_mask=ok, scale=scale
    )[:, 0]
    # where, not o * has_key: a keyless unit attended to masked slots, and 0 * NaN would be NaN.
    return o if has_key is None else torch.where(has_key, o, 0.0)


def _attend(qb, kb, vb, c: _Chunk, mask, scale: float) -> torch.Tensor:
    """Gather one chunk's blocks from ``[B*H*nb, bs, D]`` blocks and attend -> ``[n, bs, D]``."""
    flat = c.kv.reshape(-1)
    return _sdpa(qb.index_select(0, c.units), kb.index_select(0, flat), vb.index_select(0, flat), c, mask, scale)


class _LeanBackward(torch.autograd.Function):
    """All chunks' attention with a backward pass that gathers each chunk again.

    Plain autograd would keep every chunk's gathered keys and values for the backward pass
    (kept blocks x bs x 2D elements: for a long video many times the size of K and V) and scatter
    each chunk's gradient into a zero tensor the size of the whole input. Here the forward keeps
    only the ``[B*H*nb, bs, D]`` blocks; the backward re-gathers one chunk at a time, runs SDPA's
    own backward on it (through ``torch.autograd.grad``, so the same kernel as plain autograd)
    and adds the chunk's gradients into one buffer per input with ``index_add_``. Costs one more
    SDPA forward per chunk; memory stays at one chunk.
    """

    @staticmethod
    def forward(ctx, qb, kb, vb, plan, masks, scale):
        ctx.save_for_backward(qb, kb, vb)
        ctx.plan, ctx.masks, ctx.scale = plan, masks, scale
        with torch.no_grad():
            outs = [_attend(qb, kb, vb, c, m, scale) for c, m in zip(plan.chunks, masks)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        qb, kb, vb = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(qb), torch.zeros_like(kb), torch.zeros_like(vb)
        start = 0
        for c, m in zip(ctx.plan.chunks, ctx.masks):
            n = c.units.shape[0]
            flat = c.kv.reshape(-1)
            with torch.enable_grad():
                qc = qb.index_select(0, c.units).requires_grad_()
                kc = kb.index_select(0, flat).requires_grad_()
                vc = vb.index_select(0, flat).requires_grad_()
                o = _sdpa(qc, kc, vc, c, m, ctx.scale)
                gq, gk, gv = torch.autograd.grad(o, (qc, kc, vc), grad[start : start + n])
            dq.index_add_(0, c.units, gq)
            dk.index_add_(0, flat, gk)
            dv.index_add_(0, flat, gv)
            start += n
        return dq, dk, dv, None, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    *,
    scale: float,
    key_lengths: Optional[torch.Tensor] = None,
    chunk_elements: Optional[int] = None,
    lean_backward: Optional[bool] = None,
) -> torch.Tensor:
    """Block-sparse attention over the kept blocks, by gathering them (plain torch, autograd).

    Args:
        q, k, v: ``[B, H, S, D]`` (any strides), float16/bfloat16/float32/float64, any device.
        mask: ``nb == ceil(S / mask.block_size)``; dense ``[Bm, Hm, nb, nb]``, ``Bm`` in ``(1, B)``,
            ``Hm`` in ``(1, H)``.
        scale: multiplier of ``q . k``.
        key_lengths: optional integer ``[B]`` on q's device; keys ``j >= key_lengths[b]`` are
            excluded for batch item ``b``.
        chunk_elements: chunk budget (default ``CHUNK_ELEMENTS``).
        lean_backward: with gradients, keep only the inputs and gather each chunk again in the
            backward pass (``_LeanBackward``) instead of plain autograd, which keeps every gathered
            key and value block and scatters each chunk's gradient into a zero tensor the size of
            the input. Default: lean when the gathered blocks would take more than
            ``LEAN_BACKWARD_BYTES``; plain inside ``torch.compile`` (the lean backward calls
            ``torch.autograd.grad``, which a traced backward cannot).

    Returns:
        ``[B, H, S, D]`` in q's dtype; a query row with no allowed key is exactly 0.
    """
    B, H, S, D = q.shape
    bs, nb = mask.block_size, mask.num_blocks
    Sp = nb * bs
    device = q.device
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    plan = _plan(mask, device, B, H, S, D, chunk_elements or CHUNK_ELEMENTS)

    def blocks(t):  # [B, H, S, D] -> [B * H * nb, bs, D], compute dtype, zero-padded to nb * bs tokens
        t = t.to(compute)
        if Sp > S:
            t = torch.nn.functional.pad(t, (0, 0, 0, Sp - S))
        return t.reshape(B * H * nb, bs, D)

    kl = None if key_lengths is None else key_lengths.to(torch.int64).clamp(0, S)
    if kl is not None:
        # Keys past key_lengths are only masked, and a masked NaN would still reach SDPA's output
        # (0 * NaN, or NaN + -inf in a score): zero them, as the padding past S is.
        past = (torch.arange(S, device=device)[None, :] >= kl[:, None])[:, None, :, None]  # [B, 1, S, 1]
        k, v = k.masked_fill(past, 0.0), v.masked_fill(past, 0.0)
    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    masks = [_chunk_mask(c, kl, S, H, nb, bs) for c in plan.chunks]
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad and lean_backward is None:
        kept_bytes = plan.slots * bs * D * 2 * qb.element_size()  # every gathered K and V block
        lean_backward = kept_bytes > LEAN_BACKWARD_BYTES and not torch.compiler.is_compiling()
    if needs_grad and lean_backward:
        outs = [_LeanBackward.apply(qb, kb, vb, plan, masks, scale)] if plan.chunks else []
    else:  # inference, or plain autograd through the gathers and SDPA
        outs = [_attend(qb, kb, vb, c, m, scale) for c, m in zip(plan.chunks, masks)]
    if not outs:  # no kept block at all: zeros, still connected to the inputs (zero gradients)
        linked = qb[:0].sum() + kb[:0].sum() + vb[:0].sum()  # sums of empty slices: exactly 0
        return (q.new_zeros(q.shape, dtype=compute) + linked).to(q.dtype)
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)  # [n computed, bs, D], plan order
    # Back to unit order; units without a kept block stay 0.
    base = torch.empty_like(qb) if plan.complete else torch.zeros_like(qb)
    out = base.index_copy(0, plan.computed, o)
    return out.view(B, H, Sp, D)[:, :, :S].to(q.dtype)


def unsupported_reason(q: torch.Tensor, *, requires_grad: bool = False) -> Optional[str]:
    """The gather backend runs everything the api accepts (any device, dtype, head dim, with autograd)."""
    return None

"""The gather backend (plain torch over the kept blocks) against the float64 oracle (radial_attention/testing/oracle.py)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from radial_attention.testing.oracle import (
    attention_problems,
    check_compiled_layer_against_oracle,
    masked_attention_f64,
    random_block_mask,
    token_allowed,
)
from radial_attention.mask import BlockSparseMask, radial_block_mask
from radial_attention.ops import block_sparse_attention, gather, resolve_backend

# (B, H, S, D, block_size, mask batch/head dims)
CASES = [
    (2, 2, 200, 64, 128, ()),  # S not a multiple of the block, batch 2
    (2, 3, 330, 128, 64, ()),  # head dim 128, small blocks, a 10-token tail
    (2, 2, 256, 64, 64, (2, 1)),  # per-batch mask, S a multiple of the block
    (1, 3, 190, 64, 64, (1, 3)),  # per-head mask
    (2, 2, 300, 128, 128, (2, 2)),  # per-batch-and-head mask
    (2, 1, 100, 64, 128, ()),  # a single (partial) block
]


def _qkv(B, H, S, D, dtype=torch.float32, transposed=False, requires_grad=False, generator=None):
    shape = (B, S, H, D) if transposed else (B, H, S, D)
    ts = [torch.randn(*shape, generator=generator).to(dtype) for _ in range(3)]
    if transposed:  # a diffusers [B, S, H, D] tensor viewed as [B, H, S, D]
        ts = [t.transpose(1, 2) for t in ts]
    return [t.requires_grad_(requires_grad) for t in ts]


def _mask(nb, mshape, density=0.5):
    # An empty query row (when there are 2+ blocks) and a full one.
    return random_block_mask(nb, density, mshape, empty_row=0 if nb > 1 else None, full_row=nb - 1)


@pytest.mark.parametrize("B,H,S,D,bs,mshape", CASES)
@pytest.mark.parametrize("transposed", [False, True])
def test_forward_matches_float64_oracle(B, H, S, D, bs, mshape, transposed):
    nb = -(-S // bs)
    m = _mask(nb, mshape)
    q, k, v = _qkv(B, H, S, D, transposed=transposed)
    out = block_sparse_attention(q, k, v, m, block_size=bs, backend="gather")
    assert out.shape == (B, H, S, D) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, bs), atol=2e-6, rtol=1e-5)
    if nb > 1:  # the empty query block gives exact zeros, not NaN
        assert torch.all(out[:, :, :bs] == 0)


@pytest.mark.parametrize("B,H,S,D,bs,mshape", CASES[:5])
def test_key_lengths(B, H, S, D, bs, mshape):
    nb = -(-S // bs)
    m = _mask(nb, mshape, density=0.6)
    # Batch 0 cut inside the last block; batch 1 keeps 3 keys, all in block 0, which some query
    # blocks do not keep: their rows are left with no key at all.
    kl = torch.tensor([S - 5, 3][:B], dtype=torch.int32)
    q, k, v = _qkv(B, H, S, D)
    out = block_sparse_attention(q, k, v, m, block_size=bs, backend="gather", key_lengths=kl)
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, bs, key_lengths=kl), atol=2e-6, rtol=1e-5)
    empty = ~token_allowed(m, B, H, S, bs, kl).any(dim=-1)  # [B, H, S]
    if B > 1:
        assert empty[1].any()  # the case is really exercised
    assert torch.isfinite(out).all() and torch.all(out[empty] == 0)


def test_key_length_zero_empties_a_batch_item():
    m = random_block_mask(2, 0.7, (), full_row=0)
    q, k, v = _qkv(3, 2, 200, 64)
    kl = torch.tensor([200, 0, 129])  # full, no key at all, one key into block 1
    out = block_sparse_attention(q, k, v, m, backend="gather", key_lengths=kl)
    torch.testing.assert_close(
        out.double(), masked_attention_f64(q, k, v, m, 128, key_lengths=kl), atol=2e-6, rtol=1e-5
    )
    assert torch.all(out[1] == 0)


@pytest.mark.parametrize(
    "dtype,atol",
    [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float32, 2e-6), (torch.float64, 1e-12)],
)
def test_dtypes(dtype, atol):
    m = _mask(3, (2, 1))
    q, k, v = _qkv(2, 2, 150, 64, dtype, transposed=True)
    kl = torch.tensor([150, 70])
    out = block_sparse_attention(q, k, v, m, block_size=64, backend="gather", key_lengths=kl)
    assert out.dtype == dtype and out.shape == (2, 2, 150, 64)
    # The oracle reads the same (rounded) inputs; gather computes in float32 (float64 for float64).
    expected = masked_attention_f64(q, k, v, m, 64, key_lengths=kl)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=atol)


def test_all_false_mask_gives_zeros():
    q, k, v = _qkv(2, 2, 130, 64, requires_grad=True)
    m = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    out = block_sparse_attention(q, k, v, m, block_size=64, backend="gather")
    assert out.shape == q.shape and torch.all(out == 0)
    out.sum().backward()
    assert all(torch.all(t.grad == 0) for t in (q, k, v))


@pytest.mark.parametrize("B,H,S,D,bs,mshape", [CASES[0], CASES[1], CASES[2], CASES[4]])
@pytest.mark.parametrize("lean", [None, True, False])  # default (plain autograd at these sizes), lean backward, plain
def test_gradients_match_float64_oracle(B, H, S, D, bs, mshape, lean):
    nb = -(-S // bs)
    m = _mask(nb, mshape, density=0.6)
    kl = torch.tensor([S - 5, 3][:B])  # batch 1: rows with no key (zero gradients, not NaN)
    q, k, v = _qkv(B, H, S, D, transposed=True, requires_grad=True)
    if lean is None:
        out = block_sparse_attention(q, k, v, m, block_size=bs, backend="gather", key_lengths=kl)
    else:  # small chunks, so that a block's gradient gathers contributions from several chunks
        out = gather.attention(
            q,
            k,
            v,
            BlockSparseMask(m, bs),
            scale=D**-0.5,
            key_lengths=kl,
            chunk_elements=bs * bs * 4,
            lean_backward=lean,
        )
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = masked_attention_f64(q64, k64, v64, m, bs, key_lengths=kl)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())
    for name, g, w in zip("qkv", got, want):
        assert g.shape == w.shape and torch.isfinite(g).all(), name
        torch.testing.assert_close(g.double(), w, atol=2e-5, rtol=1e-4, msg=lambda s: f"d{name}: {s}")
    empty = ~token_allowed(m, B, H, S, bs, kl).any(dim=-1)  # [B, H, S]
    assert torch.all(got[0][empty] == 0)  # dq of a row without keys


def _graph_names(t):
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


def test_lean_backward_is_chosen_above_the_byte_threshold(monkeypatch):
    m = _mask(4, ())
    q, k, v = _qkv(1, 2, 250, 64, requires_grad=True)
    small = block_sparse_attention(q, k, v, m, block_size=64, backend="gather")
    assert "_LeanBackwardBackward" not in _graph_names(small)  # 50 KB of gathered blocks: plain autograd
    monkeypatch.setattr(gather, "LEAN_BACKWARD_BYTES", 1000)
    lean = block_sparse_attention(q, k, v, m, block_size=64, backend="gather")
    assert "_LeanBackwardBackward" in _graph_names(lean)
    torch.testing.assert_close(lean, small, atol=0, rtol=0)  # the same forward
    with torch.no_grad():  # no autograd, no lean path
        assert block_sparse_attention(q, k, v, m, block_size=64, backend="gather").grad_fn is None


def test_gradcheck_float64():
    # Tiny float64 problem: three 64-blocks, a 2-token tail, an empty row, rows of different
    # widths (so padded chunks), key_lengths cutting keys; small chunks so several chunks run.
    m = torch.tensor([[True, False, False], [True, True, False], [False, False, False]])
    m = torch.stack([m, torch.tensor([[True, True, True], [False, True, False], [True, False, True]])])[:, None]
    mask = BlockSparseMask(m, 64)
    kl = torch.tensor([130, 40])
    q, k, v = (torch.randn(2, 1, 130, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))

    assert len(gather._plan(mask, q.device, 2, 1, 130, 3, 2 * 64 * 64).chunks) > 1
    for lean in (False, True):  # plain autograd and the lean backward

        def fn(q, k, v):
            return gather.attention(
                q, k, v, mask, scale=0.7, key_lengths=kl, chunk_elements=2 * 64 * 64, lean_backward=lean
            )

        assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5, fast_mode=True)


def test_chunked_equals_one_chunk_and_plan_covers_every_kept_block_once():
    m = _mask(5, (2, 3), density=0.4)
    mask = BlockSparseMask(m, 64)
    q, k, v = _qkv(2, 3, 300, 32)
    kl = torch.tensor([300, 150])
    whole = gather.attention(q, k, v, mask, scale=0.2, key_lengths=kl, chunk_elements=1 << 30)
    small = 3 * 64 * 64
    chunked = gather.attention(q, k, v, mask, scale=0.2, key_lengths=kl, chunk_elements=small)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        whole.double(), masked_attention_f64(q, k, v, m, 64, scale=0.2, key_lengths=kl), atol=2e-6, rtol=1e-5
    )

    plan = gather._plan(mask, q.device, 2, 3, 300, 32, small)
    assert len(plan.chunks) > 2
    units = torch.cat([c.units for c in plan.chunks])
    torch.testing.assert_close(units, plan.computed)
    counts = m.sum(-1).reshape(-1)  # [B * H * nb] kept blocks per unit
    assert sorted(units.tolist()) == torch.nonzero(counts).flatten().tolist()  # each non-empty unit once
    for c in plan.chunks:
        n, w = c.kv.shape
        assert n * 64 * w * 64 <= small or n <= gather._min_units()  # the budget (or the fewest units)
        torch.testing.assert_close(c.counts, counts[c.units])
        for u, kv, cnt in zip(c.units.tolist(), c.kv.tolist(), c.counts.tolist()):
            bh, i = divmod(u, 5)
            assert all(j // 5 == bh for j in kv)  # blocks of the same (batch, head)
            assert [j % 5 for j in kv[:cnt]] == torch.nonzero(m.reshape(6, 5, 5)[bh, i]).flatten().tolist()


def test_groups_cost_model(monkeypatch):
    # Equal counts share chunks; a lone wide row is not padded into narrow ones (nor they into it).
    groups = gather._groups([3] * 10 + [4] * 10 + [40], 128 * 128, 1 << 22)
    assert [g for g in groups if g[2] == 40] == [(20, 21, 40)]
    assert sum(b - a for a, b, _ in groups) == 21 and all(w >= 3 for _, _, w in groups)
    # Without a chunk overhead nothing is ever padded: one width per distinct count.
    monkeypatch.setattr(gather, "_CHUNK_OVERHEAD", 0)
    assert {w for _, _, w in gather._groups([3] * 10 + [4] * 10, 128 * 128, 1 << 22)} == {3, 4}
    monkeypatch.undo()
    # A budget of 2 units of width 4 cuts 10 units into 5 equal chunks.
    assert gather._groups([4] * 10, 128 * 128, 2 * 4 * 128 * 128) == [
        (0, 2, 4),
        (2, 4, 4),
        (4, 6, 4),
        (6, 8, 4),
        (8, 10, 4),
    ]


class _AttentionFlops(TorchFunctionMode):
    """Counts the FLOPs of the attention calls made (SDPA: 4 * Lq * Lk * D per batch and head;
    bmm / matmul / baddbmm: 2 * m * k * n), from their argument shapes."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            self.flops += 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]
        elif func in (torch.bmm, torch.matmul, torch.Tensor.matmul, torch.baddbmm):
            a, b = (args[1], args[2]) if func is torch.baddbmm else (args[0], args[1])
            self.flops += 2 * a.shape[:-1].numel() * a.shape[-1] * b.shape[-1]
        return func(*args, **kwargs)


def test_radial_mask_work_is_the_kept_blocks(monkeypatch):
    """The matmul FLOPs gather runs are the mask's kept blocks (plus bounded padding), not dense S^2."""
    F, T, H, D = 21, 60, 2, 32  # 1,260 tokens, 64-blocks: 20 x 20 blocks
    mask = radial_block_mask(F, T, preset="wan", block_size=64)
    S = F * T
    q, k, v = _qkv(1, H, S, D)
    counts = mask.kv_counts().reshape(-1)
    kept = 4 * D * H * 64 * 64 * int(counts.sum())  # the kept blocks, whole (QK^T and PV)
    distinct = len(set(counts.tolist()))

    def flops():
        with _AttentionFlops() as counter:
            out = gather.attention(q, k, v, mask, scale=D**-0.5, chunk_elements=1 << 22)
        torch.testing.assert_close(
            out.double(), masked_attention_f64(q, k, v, mask.to_dense(), 64), atol=2e-6, rtol=1e-5
        )
        return counter.flops

    # The default plan pads a chunk only where that is cheaper than one more chunk of fixed cost:
    # at most one chunk's overhead (in score elements, 4 * D FLOPs each) per distinct row count.
    got = flops()
    assert kept <= got <= kept + 4 * D * gather._CHUNK_OVERHEAD * distinct
    assert got < 0.6 * 4 * D * H * S * S and mask.density < 0.6
    # Without that overhead no row is padded: exactly the kept blocks.
    monkeypatch.setattr(gather, "_CHUNK_OVERHEAD", 0)
    mask.clear_derived("gather.plan")  # (the preset's mask object is shared: drop the plans after, too)
    try:
        assert flops() == kept
    finally:
        mask.clear_derived("gather.plan")


def test_auto_picks_gather_on_cpu_and_runs_it():
    q, k, v = _qkv(1, 2, 200, 64, requires_grad=True)
    assert resolve_backend("auto", q) == "gather"
    m = _mask(4, ())
    auto = block_sparse_attention(q, k, v, m, block_size=64)
    explicit = block_sparse_attention(q, k, v, m, block_size=64, backend="gather")
    torch.testing.assert_close(auto, explicit, atol=0, rtol=0)


def test_inside_torch_compile_fullgraph_uses_the_cached_sparse_plan(monkeypatch):
    m = _mask(4, (2, 1))
    mask = BlockSparseMask(m, 64)
    kl = torch.tensor([250, 100])
    q, k, v = _qkv(2, 2, 250, 64, transposed=True)
    block_sparse_attention(q, k, v, mask, backend="gather", key_lengths=kl)  # eager: plans the mask

    def no_traced_plan(*args, **kwargs):
        raise AssertionError("the cached plan was not used")

    monkeypatch.setattr(gather, "_traced_plan", no_traced_plan)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(q, k, v, kl):
        return block_sparse_attention(q, k, v, mask, backend="gather", key_lengths=kl)

    check_compiled_layer_against_oracle(layer, q, k, v, m, 64, kl)


def test_inside_torch_compile_fullgraph_with_a_mask_made_in_the_graph():
    # A raw mask tensor becomes a mask object while tracing: the plan is built in the graph
    # (every row padded to nb blocks: the dense amount of work, still the right result).
    m = _mask(4, (2, 1))
    kl = torch.tensor([250, 100])
    q, k, v = _qkv(2, 2, 250, 64, transposed=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(q, k, v, m, kl):
        return block_sparse_attention(q, k, v, m, block_size=64, backend="gather", key_lengths=kl)

    out = layer(q, k, v, m, kl)
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, 64, key_lengths=kl), atol=2e-6, rtol=1e-5)
    assert torch.all(out[:, :, :64] == 0)  # the empty row


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention_problems(head_dims=(8, 64, 128)), st.sampled_from([1, 1 << 22]))  # one unit per chunk, or the default
def test_property_matches_oracle(problem, chunk):
    B, H, S, D, bs, m, kl, transposed, seed = problem
    q, k, v = _qkv(B, H, S, D, transposed=transposed, generator=torch.Generator().manual_seed(seed))
    mask = BlockSparseMask(m, bs)
    out = gather.attention(q, k, v, mask, scale=D**-0.5, key_lengths=kl, chunk_elements=chunk)
    assert out.shape == (B, H, S, D) and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, bs, key_lengths=kl), atol=3e-6, rtol=1e-5)
    empty_rows = ~token_allowed(m, B, H, S, bs, kl).any(dim=-1)  # [B, H, S]
    assert torch.all(out[empty_rows] == 0)

"""Robustness of the op, the mask object and the diffusers hooks (issue 14 items 9-15, issue 15.13).

NaN inputs follow the mask on every CPU backend; mask objects cannot be corrupted through the
caller's tensor or through what they hand out; index lists are built from the kept blocks and
refuse sizes that cannot fit; numbers may be numpy scalars or 0-d tensors, never bools; layout
mistakes get an error that names the fix; apply_radial_attention is all-or-nothing.
"""

import numpy as np
import pytest
import torch

from radial_attention.testing.oracle import check_nan_follows_mask, masked_attention_f64, nan_case
from radial_attention.mask import BlockSparseMask, radial_block_mask
from radial_attention.mask import sparse as sparse_mod
from radial_attention.ops import api, block_sparse_attention, radial_attention


# ------------------------------------------------------------------ item 9: NaN follows the mask
@pytest.mark.parametrize("backend", ["reference", "gather", "flex"])
@pytest.mark.parametrize("use_key_lengths", [False, True], ids=["all-keys", "key-lengths"])
def test_nan_propagates_exactly_where_the_mask_lets_it(backend, use_key_lengths):
    q, k, v, mask, kl = nan_case()
    kl = kl if use_key_lengths else None
    if backend == "flex":
        why = api._reason("flex", q, False)
        if why is not None:
            pytest.skip(why)
    with torch.no_grad():
        out = block_sparse_attention(q, k, v, mask, block_size=64, backend=backend, key_lengths=kl)
    check_nan_follows_mask(out, q, k, v, mask, 64, kl)


def test_nan_case_really_has_rows_that_must_stay_finite():
    # The case above is only a test if some rows see a NaN and others, near them, must not.
    from radial_attention.testing.oracle import expected_nan

    q, k, v, mask, kl = nan_case()
    want = expected_nan(q, k, v, mask, 64, kl)
    rows = want.any(-1)
    assert rows.any() and not rows.all()
    assert not want[0, 1, :64].any()  # a NaN query in the empty block row: the row stays 0
    assert want[1, 0, 64:128, 3].all() and not want[1, 0, 64:128, 2].any()  # a NaN value: one column
    assert not want[1, 0, 128:192].any()  # query block 2 drops key block 0


def test_gather_with_gradients_follows_the_mask_too():
    # Under autograd the gather backend runs another code path (its own or the lean backward).
    q, k, v, mask, kl = nan_case()
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    for lean in (False, True):
        from radial_attention.ops import gather

        out = gather.attention(
            qg, kg, vg, BlockSparseMask(mask, 64), scale=16**-0.5, key_lengths=kl, lean_backward=lean
        )
        check_nan_follows_mask(out, q, k, v, mask, 64, kl)


# ------------------------------------------------------------------ item 10: masks own their data
def test_mask_copies_the_callers_tensor():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 250, 16) for _ in range(3))
    dense = torch.rand(4, 4) < 0.5
    dense[:, 0] = True
    original = dense.clone()
    mask = BlockSparseMask(dense, 64)
    before = {b: block_sparse_attention(q, k, v, mask, backend=b) for b in ("reference", "gather")}
    dense.logical_not_()  # the caller edits its tensor afterwards
    assert torch.equal(mask.to_dense(), original)
    for b in ("reference", "gather"):
        torch.testing.assert_close(block_sparse_attention(q, k, v, mask, backend=b), before[b], atol=0, rtol=0)
    want = masked_attention_f64(q, k, v, original, 64)
    torch.testing.assert_close(before["gather"].double(), want, atol=2e-6, rtol=1e-5)


def test_returned_tensors_cannot_corrupt_the_shared_radial_mask():
    m = radial_block_mask(6, 50, block_size=64)
    dense, kv, kc = m.to_dense(), m.kv_indices(), m.kv_counts()
    d4, qi, on = m.dense4d(), m.q_indices(), m.dense_on("cpu")
    for t in (dense, kv, kc, d4, qi, on):
        t.zero_()
    again = radial_block_mask(6, 50, block_size=64)  # the same cached object
    assert again is m
    assert again.to_dense().any() and again.kv_counts().any() and again.kv_indices().any()
    assert torch.equal(again.kv_counts(), again.to_dense().sum(-1, dtype=torch.int32)[None, None])


# ------------------------------------------------------------------ item 14: index lists, size checks
def test_index_lists_match_a_sort_per_row():
    g = torch.Generator().manual_seed(3)
    dense = torch.rand(2, 3, 37, 37, generator=g) < 0.3
    dense[0, 0, 5] = False  # an empty row
    dense[1, 2, 7] = True  # a full row
    m = BlockSparseMask(dense, 128)
    for idx, cnt, d in ((m.kv_indices(), m.kv_counts(), dense), (m.q_indices(), m.q_counts(), dense.transpose(-1, -2))):
        assert idx.shape[-1] == int(d.sum(-1).max())
        for b in range(2):
            for h in range(3):
                for r in range(37):
                    cols = torch.nonzero(d[b, h, r]).flatten().tolist()
                    assert cnt[b, h, r] == len(cols)
                    assert idx[b, h, r].tolist() == cols + [0] * (idx.shape[-1] - len(cols))


def test_index_lists_too_large_are_refused_with_their_size(monkeypatch):
    monkeypatch.setattr(sparse_mod, "MAX_INDEX_ENTRIES", 1000)
    m = BlockSparseMask(torch.ones(1, 2, 40, 40, dtype=torch.bool), 64)  # 80 rows x 40 = 3200 entries
    with pytest.raises(
        ValueError, match=r"too large for its kv_indices index list: 80 rows x 40 kept blocks .* = 3,200 int32 entries"
    ):
        m.kv_indices()


def test_radial_op_checks_the_length_before_building_the_mask(monkeypatch):
    def no_mask(*a, **k):
        raise AssertionError("the mask was built before the length check")

    monkeypatch.setattr(api, "radial_block_mask", no_mask)
    q = torch.randn(1, 1, 100, 16)
    with pytest.raises(ValueError, match=r"q has S=100 tokens but .* = 100000 \* 100000 \+ 0 = 10000000000"):
        radial_attention(q, q, q, frames=100_000, tokens_per_frame=100_000)


# ------------------------------------------------------------------ issue 15.13: layout and backend hints
def test_bshd_tensor_passed_as_bhsd_names_the_fix():
    S, H = 200, 3
    x = torch.randn(1, S, H, 16)  # diffusers [B, S, H, D], not transposed
    with pytest.raises(ValueError, match=r"looks like \[B, S, H, D\] with S=200: pass q.transpose\(1, 2\)"):
        block_sparse_attention(x, x, x, torch.ones(4, 4, dtype=torch.bool), block_size=64)
    with pytest.raises(
        ValueError, match=r"q has S=3 tokens .* looks like \[B, S, H, D\] with S=200: pass q.transpose\(1, 2\)"
    ):
        radial_attention(x, x, x, frames=4, tokens_per_frame=50, block_size=64)
    # a plain mismatch gets no such hint
    y = torch.randn(1, 3, 300, 16)
    with pytest.raises(ValueError) as e:
        block_sparse_attention(y, y, y, torch.ones(4, 4, dtype=torch.bool), block_size=64)
    assert "transpose" not in str(e.value)


def test_flex_on_cpu_with_gradients_suggests_gather_and_no_grad_really_works():
    q, k, v, mask, _ = nan_case()
    q, k, v = (torch.nan_to_num(t).requires_grad_() for t in (q, k, v))
    if api._reason("flex", q, False) is not None:
        pytest.skip(api._reason("flex", q, False))
    with pytest.raises(ValueError, match=r"use backend='gather' \(the fast CPU path, with gradients\)"):
        block_sparse_attention(q, k, v, mask, block_size=64, backend="flex")
    with torch.no_grad():  # what the message offers must work: FlexAttention itself refuses requires_grad inputs
        out = block_sparse_attention(q, k, v, mask, block_size=64, backend="flex")
    torch.testing.assert_close(
        out.double(), masked_attention_f64(q.detach(), k.detach(), v.detach(), mask, 64), atol=2e-5, rtol=1e-4
    )


# ------------------------------------------------------------------ item 15: numbers
def test_numpy_scalars_and_0d_tensors_are_numbers_bools_are_not():
    want = radial_block_mask(5, 40, block_size=64, decay=0.5, extra_tokens=9)
    got = radial_block_mask(
        np.int64(5), torch.tensor(40), block_size=np.int32(64), decay=np.float32(0.5), extra_tokens=torch.tensor(9)
    )
    assert got is want
    for kwargs, needle in (
        (dict(frames=True), "frames must be a number, got the bool True"),
        (dict(tokens_per_frame=np.bool_(True)), "tokens_per_frame must be a number, got the bool"),
        (dict(decay=True), "decay must be a positive finite number, got True"),
        (dict(frames=2.0), "frames must be an integer, got 2.0"),
        (dict(frames=torch.tensor([5])), r"frames must be a number or a 0-d tensor, got a tensor of shape \(1,\)"),
    ):
        args = dict(frames=5, tokens_per_frame=40, decay=0.5) | kwargs
        with pytest.raises(ValueError, match=needle):
            radial_block_mask(args.pop("frames"), args.pop("tokens_per_frame"), **args)
    q, k, v = (torch.randn(1, 1, 200, 16) for _ in range(3))
    m = torch.ones(4, 4, dtype=torch.bool)
    ref = block_sparse_attention(q, k, v, m, block_size=64, scale=0.3)
    for scale in (np.float64(0.3), torch.tensor(0.3, dtype=torch.float64)):
        out = block_sparse_attention(q, k, v, m, block_size=np.int64(64), scale=scale)
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"scale must be a finite number or None, got True"):
        block_sparse_attention(q, k, v, m, block_size=64, scale=True)
    with pytest.raises(ValueError, match="block_size must be a number, got the bool"):
        BlockSparseMask(m, True)
    with pytest.raises(ValueError, match="block_size must be a number, got the bool"):
        block_sparse_attention(q, k, v, m, block_size=True)
    flops = want.attention_flops(np.int64(209), head_dim=torch.tensor(16))
    assert flops == want.attention_flops(209, head_dim=16)


# ------------------------------------------------------------------ items 11, 13: the diffusers hooks
def _model_snapshot(model):
    """What hooking may change: each module's attributes, forward and processor."""
    return {name: (set(vars(m)), m.forward, getattr(m, "processor", None)) for name, m in model.named_modules()}


def _tiny_wan():
    pytest.importorskip("diffusers")
    from radial_attention.testing import tiny

    model = tiny.tiny_wan_transformer("t2v", num_layers=2)
    return model, tiny.wan_inputs(model, 8, 16, 16)


def _run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs)[0]


def test_the_same_transformer_twice_is_hooked_once():
    from radial_attention.integrations.diffusers import (
        apply_radial_attention,
        get_radial_state,
        remove_radial_attention,
    )

    model, kwargs = _tiny_wan()
    once, _ = _tiny_wan()
    once.load_state_dict(model.state_dict())
    apply_radial_attention(once, block_size=64)
    want = _run(once, kwargs)

    class Pipe:  # a pipeline whose transformer_2 is its transformer
        def __init__(self, t):
            self.components = {"transformer": t, "transformer_2": t, "scheduler": None}
            self.scheduler = None

    before = _model_snapshot(model)
    for target in ([model, model], Pipe(model)):
        state = apply_radial_attention(target, block_size=64, num_steps=None)
        assert get_radial_state(model) is state
        torch.testing.assert_close(_run(model, kwargs), want, atol=0, rtol=0)
        assert sum(n for (_, _, kind), n in state.calls.items() if kind == "radial") == 2  # 2 blocks, once each
        remove_radial_attention(target)
        assert _model_snapshot(model) == before


def test_a_failed_apply_leaves_the_model_as_it_was(monkeypatch):
    from radial_attention.integrations.diffusers import apply as apply_mod
    from radial_attention.integrations.diffusers import apply_radial_attention, get_radial_state

    model, kwargs = _tiny_wan()
    want = _run(model, kwargs)
    before = _model_snapshot(model)
    real_install = apply_mod._install
    calls = []

    def install_then_fail(module, name, hook, registry):
        calls.append(name)
        if len(calls) == 3:  # the step hook and one attention hook are in: fail on the next module
            raise RuntimeError("injected failure")
        real_install(module, name, hook, registry)

    monkeypatch.setattr(apply_mod, "_install", install_then_fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        apply_radial_attention(model, block_size=64)
    assert len(calls) == 3
    assert _model_snapshot(model) == before
    assert get_radial_state(model) is None
    torch.testing.assert_close(_run(model, kwargs), want, atol=0, rtol=0)
    monkeypatch.setattr(apply_mod, "_install", real_install)
    apply_radial_attention(model, block_size=64)  # and it can be applied afterwards


def test_attention_module_called_outside_the_transformer_forward_is_an_error():
    from radial_attention.integrations.diffusers import apply_radial_attention, attention_modules

    model, kwargs = _tiny_wan()
    apply_radial_attention(model, block_size=64)
    _run(model, kwargs)  # a forward sets a layout, kept afterwards for gradient checkpointing
    attn = model.get_submodule(attention_modules(model)[0])
    hidden = torch.randn(1, 8 * 64, model.config.num_attention_heads * model.config.attention_head_dim)
    with pytest.raises(RuntimeError, match="called outside one.*remove_radial_attention"):
        with torch.no_grad():
            attn(hidden)
    _run(model, kwargs)  # the transformer itself still runs (the failed call left no state behind)

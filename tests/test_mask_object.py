"""BlockSparseMask: index lists, density/FLOPs, FlexAttention BlockMask, PNG, bad input."""

import numpy as np
import pytest
import torch

from radial_attention.mask import BlockSparseMask, radial_block_mask


def _random_mask(shape, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


@pytest.mark.parametrize("shape", [(7, 7), (2, 3, 5, 5), (1, 4, 9, 9)])
def test_index_lists_round_trip(shape):
    dense = _random_mask(shape)
    dense[..., 0, :] = False  # an empty row
    dense[..., 1, :] = True  # a full row
    m = BlockSparseMask(dense, 64)
    d4 = dense if dense.dim() == 4 else dense[None, None]
    for idx, cnt, ref in ((m.kv_indices(), m.kv_counts(), d4), (m.q_indices(), m.q_counts(), d4.transpose(-1, -2))):
        assert idx.dtype == torch.int32 and cnt.dtype == torch.int32
        assert torch.equal(cnt, ref.sum(-1).to(torch.int32))
        rebuilt = torch.zeros_like(ref)
        for b in range(ref.shape[0]):
            for h in range(ref.shape[1]):
                for r in range(ref.shape[2]):
                    cols = idx[b, h, r, : cnt[b, h, r]].tolist()
                    assert cols == sorted(cols)  # ascending
                    rebuilt[b, h, r, cols] = True
        assert torch.equal(rebuilt, ref)


def test_density_and_flops():
    m = radial_block_mask(5, 200)  # 8x8 blocks, 59 kept, S = 1000
    assert m.density == pytest.approx(59 / 64)
    f = m.attention_flops(1000, head_dim=64, num_heads=2)
    assert f["dense"] == pytest.approx(4 * 64 * 2 * 1000**2)
    tok = m.to_token_mask(1000)[0, 0].double()
    assert f["sparse"] == pytest.approx(4 * 64 * 2 * float(tok.sum()))
    assert 0 < f["saved_fraction"] < 1
    with pytest.raises(ValueError, match="does not fit"):
        m.attention_flops(1200, head_dim=64)


@pytest.mark.parametrize("seq_len", [448, 1025])
def test_every_seq_len_check_names_the_range_the_mask_covers(seq_len):
    m = radial_block_mask(5, 200)  # 8 blocks of 128: 897..1024 tokens
    expected = f"seq_len {seq_len} does not fit a mask of 8 blocks of 128: expected 897..1024 tokens"
    for call in (
        lambda: m.attention_flops(seq_len, head_dim=64),
        lambda: m.to_token_mask(seq_len),
        lambda: m.to_flex_block_mask(seq_len),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == expected
    m.attention_flops(897, head_dim=64)  # the boundaries are accepted
    assert m.to_token_mask(1024).shape[-1] == 1024


def test_token_mask_expansion():
    dense = _random_mask((3, 3))
    m = BlockSparseMask(dense, 64)
    tok = m.to_token_mask(150)
    assert tok.shape == (1, 1, 150, 150)
    for i in (0, 63, 64, 149):
        for j in (0, 64, 127, 128, 149):
            assert bool(tok[0, 0, i, j]) == bool(dense[i // 64, j // 64])
    with pytest.raises(ValueError, match="expected 129..192 tokens"):
        m.to_token_mask(100)


def test_flex_block_mask_has_the_same_blocks():
    m = radial_block_mask(5, 200)
    bm = m.to_flex_block_mask(1000)
    # FlexAttention's own dense view: [B, H, nq, nkv] counts of kept blocks
    flex_dense = bm.to_dense()[0, 0].bool()
    assert torch.equal(flex_dense, m.to_dense())


def test_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = radial_block_mask(9, 240, sink=True).save_png(tmp_path / "mask.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


@pytest.mark.parametrize(
    "dense,bs,err,needle",
    [
        (torch.ones(4, 4, dtype=torch.int64), 128, TypeError, "torch.bool"),
        (np.ones((4, 4), dtype=bool), 128, TypeError, "ndarray"),
        (torch.ones(4, 5, dtype=torch.bool), 128, ValueError, r"\(4, 5\)"),
        (torch.ones(2, 4, 4, dtype=torch.bool), 128, ValueError, "shape"),
        (torch.ones(4, 4, dtype=torch.bool), 96, ValueError, "block_size"),
    ],
)
def test_bad_masks(dense, bs, err, needle):
    with pytest.raises(err, match=needle):
        BlockSparseMask(dense, bs)


def test_derived_cache_is_bounded_least_recently_used_and_clearable(monkeypatch):
    from radial_attention.mask import sparse

    monkeypatch.setattr(sparse, "MAX_DERIVED", 3)
    mask = BlockSparseMask(torch.ones(2, 2, dtype=torch.bool), 64)
    built = []

    def get(name):
        return mask.derived(("test", name), lambda: built.append(name) or name)

    assert [get("a"), get("b"), get("c"), get("a")] == ["a", "b", "c", "a"]
    assert built == ["a", "b", "c"]  # the second "a" was a hit
    get("d")  # full: drops "b", the least recently used ("a" was used after it)
    assert sorted(k[1] for k in mask._derived) == ["a", "c", "d"]
    get("b")
    assert built == ["a", "b", "c", "d", "b"]
    mask.clear_derived("test")
    assert mask._derived == {} and mask._last_use == {}


def test_backends_keep_what_they_derive_in_the_mask_not_on_it():
    """Every backend's structures live in the mask's one cache (no attributes added to a shared
    radial mask, no module-level caches keyed by identity)."""
    from radial_attention.mask import radial_block_mask
    from radial_attention.ops import block_sparse_attention, fa4

    mask = radial_block_mask(3, 64, block_size=64)  # shared through radial_block_mask's own cache
    before = set(vars(mask))
    q, k, v = (torch.randn(1, 2, 192, 64) for _ in range(3))
    block_sparse_attention(q, k, v, mask, backend="gather")
    fa4.block_lists(mask, "cpu")  # (plain torch: FA4 itself is not needed for its tables)
    assert set(vars(mask)) == before
    owners = {key[0] for key in mask._derived}
    assert {"index", "gather.plan", "fa4.lists"} <= owners
    mask.clear_derived()


def test_ulysses_head_slices_live_in_the_mask():
    from radial_attention.distributed.ulysses import _local_heads_mask

    dense = torch.rand(1, 4, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.5
    mask = BlockSparseMask(dense, 64)
    local = _local_heads_mask(mask, None, 4, 2, 1)
    assert torch.equal(local.to_dense(), dense[:, 2:4])
    assert _local_heads_mask(mask, None, 4, 2, 1) is local  # cut once per (rank, N)
    assert ("ulysses.heads", 1, 2) in mask._derived
    # a raw tensor goes through the api's one wrapper cache, then the same per-mask slice
    assert _local_heads_mask(dense, 64, 4, 2, 0) is _local_heads_mask(dense, 64, 4, 2, 0)

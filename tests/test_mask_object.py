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

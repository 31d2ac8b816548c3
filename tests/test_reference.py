"""The reference backend against an independent float64 masked softmax (radial_attention/testing/oracle.py)."""

import pytest
import torch

from radial_attention.testing.oracle import masked_attention_f64, random_block_mask
from radial_attention.mask import BlockSparseMask
from radial_attention.ops import block_sparse_attention
from radial_attention.ops import reference

# (B, H, S, D, block_size, mask batch/head dims)
CASES = [
    (1, 2, 200, 64, 128, ()),  # S not a multiple of the block
    (2, 3, 130, 128, 64, ()),  # batch > 1, head dim 128, small blocks, 2-token tail
    (2, 2, 128, 64, 64, (2, 1)),  # per-batch mask, S a multiple of the block
    (1, 3, 190, 32, 64, (1, 3)),  # per-head mask
    (2, 2, 100, 16, 128, (2, 2)),  # a single (partial) block
]


def _qkv(B, H, S, D, dtype=torch.float32, requires_grad=False):
    return [torch.randn(B, H, S, D, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


@pytest.mark.parametrize("B,H,S,D,bs,mshape", CASES)
def test_forward_matches_float64_oracle(B, H, S, D, bs, mshape):
    nb = -(-S // bs)
    m = random_block_mask(nb, 0.5, mshape, empty_row=0 if nb > 1 else None, full_row=nb - 1)
    q, k, v = _qkv(B, H, S, D)
    out = block_sparse_attention(q, k, v, m, block_size=bs, backend="reference")
    expected = masked_attention_f64(q, k, v, m, bs)
    assert out.shape == (B, H, S, D) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    if nb > 1:  # the empty query block gives exact zeros, not NaN
        assert torch.all(out[:, :, :bs] == 0)


@pytest.mark.parametrize("B,H,S,D,bs,mshape", CASES[:3])
def test_gradients_match_float64_oracle(B, H, S, D, bs, mshape):
    nb = -(-S // bs)
    m = random_block_mask(nb, 0.5, mshape, empty_row=0, full_row=nb - 1)
    kl = torch.tensor([S - 5, max(1, S // 3)][:B])
    q, k, v = _qkv(B, H, S, D, requires_grad=True)
    out = block_sparse_attention(q, k, v, m, block_size=bs, backend="reference", key_lengths=kl)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = masked_attention_f64(q64, k64, v64, m, bs, key_lengths=kl)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w, atol=2e-5, rtol=1e-4)


def test_gradcheck_float64():
    # Tiny float64 problem: two 64-blocks, a 2-token tail, an empty row, key_lengths cutting keys.
    m = torch.tensor([[True, False], [True, True]])
    kl = torch.tensor([70, 40])
    q, k, v = (torch.randn(2, 1, 66, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    fn = lambda q, k, v: block_sparse_attention(
        q, k, v, m, block_size=64, backend="reference", key_lengths=kl.clamp(max=66)
    )
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-12)])
def test_dtypes(dtype, atol):
    m = random_block_mask(3, 0.5, (), empty_row=1, full_row=0)
    q, k, v = _qkv(1, 2, 150, 64, dtype)
    out = block_sparse_attention(q, k, v, m, block_size=64, backend="reference")
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, 64), atol=atol, rtol=atol)


def test_key_lengths_including_an_empty_batch_item():
    m = random_block_mask(2, 0.7, (), full_row=0)
    q, k, v = _qkv(3, 2, 200, 64)
    kl = torch.tensor([200, 0, 129])  # full, no key at all, one key into block 1
    out = block_sparse_attention(q, k, v, m, backend="reference", key_lengths=kl)
    torch.testing.assert_close(
        out.double(), masked_attention_f64(q, k, v, m, 128, key_lengths=kl), atol=2e-6, rtol=1e-5
    )
    assert torch.all(out[1] == 0)


def test_non_contiguous_transposed_inputs():
    B, S, H, D = 2, 150, 3, 64
    q, k, v = (torch.randn(B, S, H, D).transpose(1, 2) for _ in range(3))  # [B, S, H, D] -> [B, H, S, D]
    assert not q.is_contiguous()
    m = random_block_mask(3, 0.5, (B, 1), full_row=2)
    out = block_sparse_attention(q, k, v, m, block_size=64, backend="reference")
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, 64), atol=2e-6, rtol=1e-5)


def test_chunked_rows_equal_one_tile():
    m = random_block_mask(4, 0.5, (2, 1), empty_row=2)
    mask = BlockSparseMask(m, 64)
    q, k, v = _qkv(2, 2, 250, 32)
    kl = torch.tensor([250, 77], dtype=torch.int32)
    whole = reference.attention(q, k, v, mask, scale=0.2, key_lengths=kl, rows_per_chunk=250)
    chunked = reference.attention(q, k, v, mask, scale=0.2, key_lengths=kl, rows_per_chunk=7)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        whole.double(), masked_attention_f64(q, k, v, m, 64, scale=0.2, key_lengths=kl), atol=2e-6, rtol=1e-5
    )

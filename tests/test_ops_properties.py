"""Property tests (hypothesis): random shapes, masks and key_lengths against the float64 oracle."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radial_attention.testing.oracle import attention_problems, masked_attention_f64, token_allowed
from radial_attention.ops import block_sparse_attention
from radial_attention.ops import flex

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _inputs(B, H, S, D, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    if transposed:  # [B, S, H, D] viewed as [B, H, S, D]
        return [torch.randn(B, S, H, D, generator=g).transpose(1, 2) for _ in range(3)]
    return [torch.randn(B, H, S, D, generator=g) for _ in range(3)]


@SETTINGS
@given(attention_problems(head_dims=(16, 64, 128)))
def test_reference_matches_oracle(problem):
    B, H, S, D, bs, m, kl, transposed, seed = problem
    q, k, v = _inputs(B, H, S, D, transposed, seed)
    out = block_sparse_attention(q, k, v, m, block_size=bs, backend="reference", key_lengths=kl)
    assert out.shape == (B, H, S, D) and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, bs, key_lengths=kl), atol=3e-6, rtol=1e-5)
    # A query row with no allowed key is exactly 0.
    empty_rows = ~token_allowed(m, B, H, S, bs, kl).any(dim=-1)  # [B, H, S]
    assert torch.all(out[empty_rows] == 0)


@pytest.mark.skipif(
    flex.unsupported_reason(torch.empty(1, 1, 1, 64), requires_grad=False) is not None,
    reason="FlexAttention's CPU kernel needs AVX2",
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bits=st.lists(st.booleans(), min_size=4, max_size=4),
    kl=st.none() | st.lists(st.integers(0, 200), min_size=2, max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_flex_matches_oracle_on_random_masks(bits, kl, seed):
    # One shape (tests/test_flex.py's configuration A), so Flex compiles at most twice.
    m = torch.tensor(bits).reshape(2, 2)
    kl = None if kl is None else torch.tensor(kl)
    q, k, v = _inputs(2, 2, 200, 64, True, seed)
    out = block_sparse_attention(q, k, v, m, backend="flex", key_lengths=kl)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(
        out.double(), masked_attention_f64(q, k, v, m, 128, key_lengths=kl), atol=3e-6, rtol=1e-5
    )

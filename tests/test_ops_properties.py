"""Property tests (hypothesis): random shapes, masks and key_lengths against the float64 oracle."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attention_oracle import masked_attention_f64, token_allowed
from radial_attention.ops import block_sparse_attention
from radial_attention.ops import flex

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    bs = draw(st.sampled_from([64, 128]))
    B = draw(st.integers(1, 2))
    H = draw(st.integers(1, 3))
    S = draw(st.integers(1, 3 * bs))
    D = draw(st.sampled_from([16, 64, 128]))
    nb = -(-S // bs)
    mshape = draw(st.sampled_from([(), (B, 1), (1, H), (B, H)]))
    bits = draw(st.lists(st.booleans(), min_size=nb * nb * max(1, B * H), max_size=nb * nb * max(1, B * H)))
    numel = nb * nb * (mshape[0] * mshape[1] if mshape else 1)
    m = torch.tensor(bits[:numel], dtype=torch.bool).reshape(*mshape, nb, nb)
    kl = draw(st.none() | st.lists(st.integers(0, S), min_size=B, max_size=B))
    kl = None if kl is None else torch.tensor(kl)
    transposed = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return B, H, S, D, bs, m, kl, transposed, seed


def _inputs(B, H, S, D, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    if transposed:  # [B, S, H, D] viewed as [B, H, S, D]
        return [torch.randn(B, S, H, D, generator=g).transpose(1, 2) for _ in range(3)]
    return [torch.randn(B, H, S, D, generator=g) for _ in range(3)]


@SETTINGS
@given(problems())
def test_reference_matches_oracle(problem):
    B, H, S, D, bs, m, kl, transposed, seed = problem
    q, k, v = _inputs(B, H, S, D, transposed, seed)
    out = block_sparse_attention(q, k, v, m, block_size=bs, backend="reference", key_lengths=kl)
    assert out.shape == (B, H, S, D) and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, bs, key_lengths=kl), atol=3e-6, rtol=1e-5)
    # A query row with no allowed key is exactly 0.
    empty_rows = ~token_allowed(m, B, H, S, bs, kl).any(dim=-1)  # [B, H, S]
    assert torch.all(out[empty_rows] == 0)


@pytest.mark.skipif(flex.unsupported_reason(torch.empty(1, 1, 1, 64), requires_grad=False) is not None,
                    reason="FlexAttention's CPU kernel needs AVX2")
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
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, 128, key_lengths=kl), atol=3e-6, rtol=1e-5)

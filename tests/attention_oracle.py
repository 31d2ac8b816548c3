"""An independent float64 masked-softmax attention, written plainly for the op tests.

Shares no code with ``radial_attention.ops``: the token mask is built by index arithmetic
(``mask[b, h, i // bs, j // bs]``), and the softmax is written out with exp / sum.
"""

import torch


def token_allowed(block_mask: torch.Tensor, B: int, H: int, S: int, bs: int, key_lengths=None) -> torch.Tensor:
    """bool [B, H, S, S]: query i may attend to key j."""
    m = block_mask if block_mask.dim() == 4 else block_mask[None, None]
    m = m.expand(B, H, *m.shape[-2:]).cpu()
    blk = torch.arange(S) // bs
    allowed = m[:, :, blk][:, :, :, blk]  # [B, H, S, S]
    if key_lengths is not None:
        kl = key_lengths.cpu().to(torch.int64)
        allowed = allowed & (torch.arange(S)[None, :] < kl[:, None])[:, None, None, :]
    return allowed


def masked_attention_f64(q, k, v, block_mask, bs, scale=None, key_lengths=None) -> torch.Tensor:
    """float64 [B, H, S, D] on the CPU; a row with no allowed key is 0.

    Differentiable (autograd) when the inputs require grad, so it also gives reference gradients.
    """
    B, H, S, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    q64, k64, v64 = (t.cpu().to(torch.float64) for t in (q, k, v))
    allowed = token_allowed(block_mask, B, H, S, bs, key_lengths)
    s = torch.einsum("bhid,bhjd->bhij", q64, k64) * scale
    s = torch.where(allowed, s, torch.full_like(s, -torch.inf))
    row_max = s.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(s - row_max) * allowed
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.einsum("bhij,bhjd->bhid", p, v64)


def random_block_mask(nb: int, density: float, shape=(), generator=None, empty_row=None, full_row=None) -> torch.Tensor:
    """bool [*shape, nb, nb] with about ``density`` kept; optionally one empty and one full query row."""
    m = torch.rand(*shape, nb, nb, generator=generator) < density
    if empty_row is not None:
        m[..., empty_row, :] = False
    if full_row is not None:
        m[..., full_row, :] = True
    return m


def check_compiled_layer_against_oracle(layer, q, k, v, block_mask, bs, key_lengths):
    """Run ``layer(q, k, v, key_lengths)`` with gradients and compare output and q/k/v gradients with
    the float64 oracle (the same random output gradient on both sides)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = layer(q, k, v, key_lengths)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want_out = masked_attention_f64(q64, k64, v64, block_mask, bs, key_lengths=key_lengths)
    want = torch.autograd.grad(want_out, (q64, k64, v64), grad_out.double())
    torch.testing.assert_close(out.double(), want_out, atol=2e-6, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=2e-5, rtol=1e-4)


def attention_problems(head_dims=(16, 64, 128)):
    """A hypothesis strategy of random op inputs: ``(B, H, S, D, bs, mask, key_lengths, transposed, seed)``.

    Block size 64 or 128, S from 1 to 3 blocks, a bool mask ``[nb, nb]`` or with batch/head dims
    (each 1 or the real size), key_lengths ``[B]`` or None, and whether q/k/v are ``[B, S, H, D]``
    views.
    """
    from hypothesis import strategies as st

    @st.composite
    def problems(draw):
        bs = draw(st.sampled_from([64, 128]))
        B = draw(st.integers(1, 2))
        H = draw(st.integers(1, 3))
        S = draw(st.integers(1, 3 * bs))
        D = draw(st.sampled_from(list(head_dims)))
        nb = -(-S // bs)
        mshape = draw(st.sampled_from([(), (B, 1), (1, H), (B, H)]))
        numel = nb * nb * (mshape[0] * mshape[1] if mshape else 1)
        bits = draw(st.lists(st.booleans(), min_size=numel, max_size=numel))
        m = torch.tensor(bits, dtype=torch.bool).reshape(*mshape, nb, nb)
        kl = draw(st.none() | st.lists(st.integers(0, S), min_size=B, max_size=B))
        kl = None if kl is None else torch.tensor(kl)
        transposed = draw(st.booleans())
        seed = draw(st.integers(0, 2**31 - 1))
        return B, H, S, D, bs, m, kl, transposed, seed

    return problems()

"""THE float64 masked-softmax attention every backend is checked against (tests, ``benchmarks/``).

Written plainly and independently: it shares no code with :mod:`radial_attention.ops`; the token
mask is built by index arithmetic (``mask[b, h, i // bs, j // bs]``), and the softmax is written
out with exp / sum. A query row with no allowed key gives 0 (the library's rule). Also here:
random block masks, a hypothesis strategy of op inputs, and the "NaN follows the mask" helpers.
Needs torch only (hypothesis for :func:`attention_problems`).
"""

import torch


def token_allowed(
    block_mask: torch.Tensor, B: int, H: int, S: int, bs: int, key_lengths=None, device="cpu"
) -> torch.Tensor:
    """bool [B, H, S, S] on ``device``: query i may attend to key j.

    ``block_mask``: bool ``[nb, nb]`` or ``[Bm, Hm, nb, nb]`` (``Bm``/``Hm`` 1 or ``B``/``H``),
    ``nb = ceil(S / bs)``; ``key_lengths``: ``[B]`` keys that exist per batch item, or None.
    """
    m = block_mask if block_mask.dim() == 4 else block_mask[None, None]
    m = m.expand(B, H, *m.shape[-2:]).to(device)
    blk = torch.arange(S, device=device) // bs
    allowed = m[:, :, blk][:, :, :, blk]  # [B, H, S, S]
    if key_lengths is not None:
        kl = key_lengths.to(device, torch.int64)
        allowed = allowed & (torch.arange(S, device=device)[None, :] < kl[:, None])[:, None, None, :]
    return allowed


def masked_attention_f64(q, k, v, block_mask, bs, scale=None, key_lengths=None, device="cpu") -> torch.Tensor:
    """float64 ``[B, H, S, D]`` on ``device`` (default the CPU) for q, k, v ``[B, H, S, D]``.

    ``block_mask`` and ``key_lengths`` as in :func:`token_allowed`; ``scale`` default ``D**-0.5``.
    A row with no allowed key is 0. Differentiable (autograd) when the inputs require grad, so it
    also gives reference gradients (back on the inputs' device).
    """
    B, H, S, D = q.shape
    scale = D**-0.5 if scale is None else scale
    q64, k64, v64 = (t.to(device, torch.float64) for t in (q, k, v))
    allowed = token_allowed(block_mask, B, H, S, bs, key_lengths, device=device)
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


# ------------------------------------------------------------------ NaN inputs
def nan_case(B=2, H=2, S=200, D=16, bs=64, seed=0):
    """Inputs with NaNs in chosen places, for the "NaN follows the mask" rule.

    Returns ``(q, k, v, mask [B, H, nb, nb], key_lengths [B])``: a random mask with an empty query
    block row; NaNs in a q row (and one in the empty row), a k row and a v element that some query
    blocks keep and others drop, and in k and v past ``key_lengths`` (seen by no one).
    """
    g = torch.Generator().manual_seed(seed)
    nb = -(-S // bs)
    mask = torch.rand(B, H, nb, nb, generator=g) < 0.5
    mask[..., 0, :] = False  # an empty query block row: output 0 whatever q holds
    mask[..., 1, 0] = True
    mask[..., 2, 0] = False  # key block 0 seen by query block 1, not 2
    mask[..., 1, (S - 60) // bs] = True  # the key block holding key_lengths[1] is kept
    q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))
    q[0, 0, 70] = float("nan")  # query block 1
    q[0, 1, 5] = float("nan")  # the empty row: stays 0
    k[0, 1, 10] = float("nan")  # key block 0
    v[1, 0, 20, 3] = float("nan")  # key block 0, column 3 only
    key_lengths = torch.tensor([S, S - 60])
    # Past key_lengths[1] but inside the key tile that holds it (kernels load that tile): no effect.
    k[1, 1, S - 55] = float("nan")
    v[1, 0, S - 50, 5] = float("nan")
    return q, k, v, mask, key_lengths


def expected_nan(q, k, v, block_mask, bs, key_lengths=None) -> torch.Tensor:
    """bool [B, H, S, D]: where dense attention under the mask is NaN.

    Row i is NaN if q[i] has a NaN and row i may see some key, or if it may see a key j with a NaN
    in k[j]; element (i, d) also if it may see a key j with v[j, d] NaN.
    """
    B, H, S, D = q.shape
    allowed = token_allowed(block_mask, B, H, S, bs, key_lengths).double()  # [B, H, S, S]
    q_row = torch.isnan(q).any(-1) & (allowed.sum(-1) > 0)  # [B, H, S]
    k_row = (allowed @ torch.isnan(k).any(-1, keepdim=True).double())[..., 0] > 0
    v_el = (allowed @ torch.isnan(v).double()) > 0  # [B, H, S, D]
    return v_el | (q_row | k_row)[..., None]


def check_nan_follows_mask(out, q, k, v, block_mask, bs, key_lengths=None, atol=2e-6, rtol=1e-5):
    """``out`` is NaN exactly where ``expected_nan`` says, and equals the oracle elsewhere."""
    want = expected_nan(q, k, v, block_mask, bs, key_lengths)
    got = torch.isnan(out.detach().cpu())
    assert torch.equal(got, want), (
        f"NaN at {int((got & ~want).sum())} unexpected places, missing at {int((want & ~got).sum())}"
    )
    # Elsewhere the NaNs have no influence: compare with NaN-free inputs.
    clean = [torch.nan_to_num(t.detach().cpu(), nan=0.0) for t in (q, k, v)]
    ref = masked_attention_f64(*clean, block_mask, bs, key_lengths=key_lengths)
    torch.testing.assert_close(out.detach().cpu().double()[~want], ref[~want], atol=atol, rtol=rtol)

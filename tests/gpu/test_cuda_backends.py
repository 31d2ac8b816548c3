"""GPU tier (``pytest -m gpu``): every CUDA backend against a float64 masked softmax, on the real kernels.

Skipped cleanly where there is no CUDA device (CI); run on the GPU machine and quoted in the notes.
The rule is flash-attention's: a backend's error against the float64 reference is at most twice
that of dense SDPA in the same dtype on the same token mask (plus a tiny absolute slack), for the
output and for every gradient. Rows with no allowed key must be exactly 0 (SDPA gives NaN there, so
they are left out of its error).
"""

import pytest
import torch
import torch.nn.functional as F

from radial_attention.testing.oracle import masked_attention_f64, random_block_mask, token_allowed
from radial_attention.mask import BlockSparseMask
from radial_attention.ops import available_backends, block_sparse_attention, dense_attention
from radial_attention.ops.api import _reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the GPU tier)"),
]

BACKENDS = ("fa4", "triton", "flex", "flashinfer")
FORWARD_ONLY = {"flashinfer"}

# B, H, S, D, mask shape, key_lengths, empty query block
CASES = [
    pytest.param(1, 2, 1000, 128, (), None, 3, id="S1000-shared"),
    pytest.param(2, 3, 700, 64, (1, 3), None, 1, id="S700-batch2-per-head-D64"),
    pytest.param(2, 2, 640, 128, (2, 1), [640, 333], 2, id="S640-per-batch-keylen"),
    pytest.param(2, 2, 1100, 128, (), [1100, 1000], None, id="S1100-keylen"),
]


def _skip_unless_runs(name, q, grad, block_size=128):
    if name not in available_backends():
        pytest.skip(f"{name} is not installed here")
    why = _reason(name, q, grad, block_size)
    if why is not None:
        pytest.skip(f"{name} cannot run this input here: {why}")


def _sdpa_errors(q, k, v, m, bs, kl, grad_out, want, want_grads, live):
    """Max abs error of dense SDPA (same dtype, token mask) on the rows that have a key."""
    B, H, S, D = q.shape
    allowed = token_allowed(m, B, H, S, bs, kl).to(q.device)
    # SDPA gives NaN on rows with no key, and NaN * 0 poisons its dk/dv: let those rows see every key
    # (their output is not compared and their output gradient is 0, so they add nothing).
    allowed = allowed | ~live[..., None]
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed)
    grads = torch.autograd.grad(out, (qs, ks, vs), grad_out.masked_fill(~live[..., None], 0))
    err = (out.double().cpu() - want).abs()[live.cpu()].max().item()
    gerr = [(g.double().cpu() - w).abs().max().item() for g, w in zip(grads, want_grads)]
    return err, gerr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,H,S,D,mshape,lengths,empty", CASES)
@pytest.mark.parametrize("name", BACKENDS)
def test_backend_matches_float64_within_twice_sdpa(name, B, H, S, D, mshape, lengths, empty, dtype):
    if dtype == torch.float16 and name in ("flex", "flashinfer"):
        pytest.skip("fp16 is checked for fa4 and triton; flex compiles per dtype and shape (GPU minutes)")
    dev = torch.device("cuda")
    bs = 128
    nb = -(-S // bs)
    g = torch.Generator().manual_seed(S + B)
    m = random_block_mask(nb, 0.45, shape=mshape, generator=g, empty_row=empty, full_row=0)
    kl = None if lengths is None else torch.tensor(lengths, device=dev)
    grad = name not in FORWARD_ONLY
    # [B, S, H, D] storage handed over as the [B, H, S, D] transpose, as diffusers does
    q, k, v = (torch.randn(B, S, H, D, generator=g).to(dev, dtype).transpose(1, 2) for _ in range(3))
    _skip_unless_runs(name, q, grad)
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    want = masked_attention_f64(q64, k64, v64, m, bs, key_lengths=kl)
    live = token_allowed(m, B, H, S, bs, kl).any(dim=-1).to(dev)  # [B, H, S]: rows with a key
    grad_out = torch.randn(B, H, S, D, generator=g).to(dev, dtype)
    want_grads = torch.autograd.grad(
        want, (q64, k64, v64), grad_out.double().cpu().masked_fill(~live.cpu()[..., None], 0)
    )
    sdpa_err, sdpa_gerr = _sdpa_errors(q, k, v, m, bs, kl, grad_out, want.detach(), want_grads, live)

    qa, ka, va = (t.detach().clone().requires_grad_(grad) for t in (q, k, v))
    out = block_sparse_attention(qa, ka, va, BlockSparseMask(m, bs), backend=name, key_lengths=kl)
    assert out.shape == (B, H, S, D) and out.dtype == dtype
    assert bool((out[~live] == 0).all()), "rows with no allowed key must be exactly 0"
    err = (out.detach().double().cpu() - want.detach()).abs().max().item()
    assert err <= 2 * sdpa_err + 1e-4, f"{name}: max error {err:.3e} vs SDPA's {sdpa_err:.3e}"
    if grad:
        grads = torch.autograd.grad(out, (qa, ka, va), grad_out.masked_fill(~live[..., None], 0))
        for which, gr, w, se in zip("qkv", grads, want_grads, sdpa_gerr):
            gerr = (gr.double().cpu() - w).abs().max().item()
            assert gerr <= 2 * se + 1e-4, f"{name}: d{which} max error {gerr:.3e} vs SDPA's {se:.3e}"


@pytest.mark.parametrize("name", ["fa4", "triton", "flex"])
def test_compile_fullgraph(name):
    dev = torch.device("cuda")
    S, bs = 700, 128
    m = random_block_mask(-(-S // bs), 0.5, generator=torch.Generator().manual_seed(7), full_row=0)
    mask = BlockSparseMask(m, bs)
    q, k, v = (torch.randn(1, 2, S, 128, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    _skip_unless_runs(name, q, True)
    eager = block_sparse_attention(q, k, v, mask, backend=name)

    @torch.compile(fullgraph=True)
    def f(q, k, v):
        return block_sparse_attention(q, k, v, mask, backend=name) * 2.0

    out = f(q, k, v)
    torch.testing.assert_close(out, 2.0 * eager, atol=2e-2, rtol=2e-2)
    out.sum().backward()
    assert q.grad is not None and bool(torch.isfinite(q.grad).all())


def test_fa4_dense_matches_sdpa():
    dev = torch.device("cuda")
    q, k, v = (torch.randn(2, 4, 1000, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    _skip_unless_runs("fa4", q, False)
    kl = torch.tensor([1000, 517], device=dev)
    got = dense_attention(q, k, v, key_lengths=kl, backend="fa4")
    want = dense_attention(q.double(), k.double(), v.double(), key_lengths=kl, backend="sdpa")
    assert (got.double() - want).abs().max().item() < 2e-2


def test_auto_picks_fa4_on_hopper():
    q = torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16)
    from radial_attention.ops import resolve_backend

    if torch.cuda.get_device_capability() == (9, 0) and "fa4" in available_backends():
        assert resolve_backend("auto", q) == "fa4"
        assert resolve_backend("auto", q.requires_grad_()) == "fa4"
    else:
        assert resolve_backend("auto", q) != "fa4"

"""The FlexAttention backend on the CPU (forward only) against the float64 oracle.

Inductor compiles FlexAttention once per configuration (shape, dtype, mask layout, with or
without key_lengths), 10-20 s each on a small CPU, so the cases below share a few configurations:
A (shared [nb, nb] mask, fp32, transposed inputs) with and without key_lengths, B (per-batch mask,
bf16, head dim 128, 64-blocks, key_lengths) and C (per-head mask, fp16, contiguous inputs, inside an
outer torch.compile(fullgraph=True)).
"""

import pytest
import torch
from torch._dynamo.utils import counters

from radial_attention.testing.oracle import masked_attention_f64, random_block_mask
from radial_attention.mask import BlockSparseMask
from radial_attention.ops import block_sparse_attention, resolve_backend
from radial_attention.ops import flex

pytestmark = pytest.mark.skipif(
    flex.unsupported_reason(torch.empty(1, 1, 1, 64), requires_grad=False) is not None,
    reason="FlexAttention's CPU kernel needs AVX2",
)


def _transposed_qkv(B, H, S, D, dtype=torch.float32):
    """[B, S, H, D] tensors viewed as [B, H, S, D] (non-contiguous, as diffusers passes them)."""
    return [torch.randn(B, S, H, D, dtype=dtype).transpose(1, 2) for _ in range(3)]


def _check(out, q, k, v, m, bs, key_lengths=None, atol=2e-6):
    want = masked_attention_f64(q, k, v, m, bs, key_lengths=key_lengths)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, atol=atol, rtol=atol)


# Configuration A: B=2, H=2, S=200 (a 72-token tail), D=64, 128-blocks, fp32.
def test_config_a_random_masks_empty_and_full_rows():
    graphs = None
    for seed, (empty, full) in enumerate([(0, 1), (1, 0), (None, None)]):
        g = torch.Generator().manual_seed(seed)
        m = random_block_mask(2, 0.5, (), generator=g, empty_row=empty, full_row=full)
        q, k, v = _transposed_qkv(2, 2, 200, 64)
        out = block_sparse_attention(q, k, v, m, backend="flex")
        _check(out, q, k, v, m, 128)
        if empty is not None:
            rows = slice(empty * 128, (empty + 1) * 128)
            assert torch.all(out[:, :, rows] == 0)  # Flex gives exact zeros for rows with no key
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    # New mask values with the same shapes reuse the compiled kernel.
    assert counters["stats"]["unique_graphs"] == graphs


def test_config_a_key_lengths():
    m = torch.tensor([[True, False], [True, True]])
    mask = BlockSparseMask(m, 128)
    graphs = None
    # 0 empties batch item 1 entirely; 129 cuts one key into block 1; 128 ends on a block edge;
    # 200 is S (the tail block is partial through S itself).
    for kl in ([150, 0], [200, 129], [128, 1], [64, 200]):
        kl = torch.tensor(kl)
        q, k, v = _transposed_qkv(2, 2, 200, 64)
        out = block_sparse_attention(q, k, v, mask, backend="flex", key_lengths=kl)
        _check(out, q, k, v, m, 128, key_lengths=kl)
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs  # new key_lengths values: no recompile
    assert (
        len([key for key in mask._derived if key[0] == "flex.pieces"]) == 1
    )  # one set of tables for (S, device, B, H)


def test_config_a_key_lengths_emptying_rows_give_zeros():
    m = torch.tensor([[True, False], [False, True]])
    kl = torch.tensor([0, 128])  # batch 0: no keys; batch 1: block 1 (keys 128..199) cut away
    q, k, v = _transposed_qkv(2, 2, 200, 64)
    out = block_sparse_attention(q, k, v, m, backend="flex", key_lengths=kl)
    _check(out, q, k, v, m, 128, key_lengths=kl)
    assert torch.all(out[0] == 0) and torch.all(out[1, :, 128:] == 0)


# Configuration B: per-batch mask, bf16, head dim 128, 64-blocks (S=130: a 2-token tail), key_lengths.
# Flex runs 128-tiles: a tile whose 64-blocks are partly kept is a partial tile (mask_mod per token).
def test_config_b_per_batch_mask_64_blocks_bf16_head_dim_128():
    for seed, kl in enumerate(([100, 130], [0, 64], [129, 1])):
        g = torch.Generator().manual_seed(seed)
        m = random_block_mask(3, 0.5, (2, 1), generator=g, empty_row=1, full_row=2)
        kl = torch.tensor(kl, dtype=torch.int32)
        q, k, v = [torch.randn(2, 3, 130, 128, dtype=torch.bfloat16) for _ in range(3)]
        out = block_sparse_attention(q, k, v, m, block_size=64, backend="flex", key_lengths=kl)
        _check(out, q, k, v, m, 64, key_lengths=kl, atol=2e-2)
        assert torch.all(out[:, :, 64:128] == 0)  # query block 1 keeps no key block


def test_flex_agrees_with_reference_on_a_radial_mask():
    from radial_attention.ops import radial_attention

    q, k, v = _transposed_qkv(2, 2, 200, 64)  # configuration A's shapes: 8 frames x 25 tokens
    a = radial_attention(q, k, v, frames=8, tokens_per_frame=25, preset="wan", backend="flex")
    b = radial_attention(q, k, v, frames=8, tokens_per_frame=25, preset="wan", backend="reference")
    torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


def test_compiled_fullgraph_per_head_mask_fp16_key_lengths():
    """Configuration C, inside torch.compile(fullgraph=True) (the BlockMask is built in the graph):
    per-head mask, fp16, contiguous inputs, 64-blocks (S=250), key_lengths."""
    m = random_block_mask(4, 0.4, (1, 2), empty_row=3, full_row=0)
    mask = BlockSparseMask(m, 64)

    @torch.compile(fullgraph=True)
    def layer(q, k, v, kl):
        return block_sparse_attention(q, k, v, mask, backend="flex", key_lengths=kl) * 2.0

    q, k, v = [torch.randn(2, 2, 250, 64, dtype=torch.float16) for _ in range(3)]
    for kl in ([250, 0], [200, 77]):
        kl = torch.tensor(kl)
        out = layer(q, k, v, kl)
        assert out.dtype == torch.float16
        want = 2.0 * masked_attention_f64(q, k, v, m, 64, key_lengths=kl)
        torch.testing.assert_close(out.double(), want, atol=4e-3, rtol=4e-3)


def test_no_cpu_backward_and_other_constraints():
    m = torch.ones(2, 2, dtype=torch.bool)
    q, k, v = [torch.randn(1, 2, 200, 64, requires_grad=True) for _ in range(3)]
    with pytest.raises(
        ValueError, match=r"'flex' cannot run .* with gradients: torch's FlexAttention has no backward on the CPU"
    ):
        block_sparse_attention(q, k, v, m, backend="flex")
    with torch.no_grad():  # without grad mode the same tensors are fine for flex
        assert resolve_backend("flex", q, requires_grad=False) == "flex"
    q80 = torch.randn(1, 2, 200, 80)
    with pytest.raises(
        ValueError,
        match=r"'flex' cannot run q of shape \(1, 2, 200, 80\).*head dim must be one of \(16, 32, 64, 128, 256\), got 80",
    ):
        block_sparse_attention(q80, q80, q80, m, backend="flex")
    q64 = torch.randn(1, 2, 200, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'flex' cannot run .*dtype must be one of .*got torch.float64"):
        block_sparse_attention(q64, q64, q64, m, backend="flex")


@pytest.mark.slow
def test_many_shapes_keep_the_compiled_kernel(monkeypatch):
    """Past dynamo's recompile limit flex must not fall back to the eager, dense-score path."""
    import warnings

    import radial_attention.ops.flex as flex

    if flex.unsupported_reason(torch.zeros(1, 1, 8, 16), requires_grad=False) is not None:
        pytest.skip("compiled FlexAttention does not run on this CPU")
    monkeypatch.setattr(flex, "FLEX_RECOMPILE_LIMIT", 12)
    monkeypatch.setattr(flex, "_compiled", None)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flex_attention called without torch.compile")
        for S in range(64, 64 + 10 * 16, 16):  # 10 shapes: more than dynamo's default limit of 8
            q, k, v = (torch.randn(1, 1, S, 16) for _ in range(3))
            m = torch.ones(-(-S // 64), -(-S // 64), dtype=torch.bool)
            with torch.no_grad():
                out = block_sparse_attention(q, k, v, m, block_size=64, backend="flex")
            torch.testing.assert_close(
                out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-4, rtol=1e-4
            )

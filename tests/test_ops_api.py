"""The public op: input validation, backend registry and resolution, the radial convenience."""

import pytest
import torch

from radial_attention.testing.oracle import check_compiled_layer_against_oracle, masked_attention_f64, random_block_mask
from radial_attention.mask import BlockSparseMask, radial_block_mask
from radial_attention.ops import BACKENDS, available_backends, block_sparse_attention, radial_attention, resolve_backend


def _qkv(B=1, H=2, S=200, D=64, dtype=torch.float32):
    return [torch.randn(B, H, S, D, dtype=dtype) for _ in range(3)]


def test_registry_names_and_availability():
    assert set(BACKENDS) == {"reference", "gather", "flex", "triton", "flashinfer", "fa4"}
    avail = available_backends()
    assert {"reference", "gather"} <= set(avail) <= set(BACKENDS)


def test_auto_on_cpu_is_gather():
    # gather skips the dropped blocks in plain torch ops and has autograd: every CPU input, any dtype
    # and head dim, with or without gradients. Explicit choices are honoured.
    for dtype, D in ((torch.float32, 64), (torch.bfloat16, 128), (torch.float64, 24)):
        q = torch.randn(1, 1, 10, D, dtype=dtype)
        assert resolve_backend("auto", q) == "gather"
        assert resolve_backend("auto", q.requires_grad_()) == "gather"
        assert resolve_backend("reference", q) == "reference"
        assert resolve_backend("gather", q) == "gather"


def test_unknown_backend():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"unknown attention backend 'fast'.*expected 'auto' or one of"):
        block_sparse_attention(q, k, v, torch.ones(2, 2, dtype=torch.bool), backend="fast")


def test_raw_tensor_and_mask_object_agree_and_raw_masks_are_wrapped_once():
    q, k, v = _qkv()
    m = random_block_mask(4, 0.5, (), full_row=3)
    a = block_sparse_attention(q, k, v, m, block_size=64, backend="reference")
    b = block_sparse_attention(q, k, v, BlockSparseMask(m, 64), backend="reference")
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    from radial_attention.ops import api

    first = api._as_mask(m, 64)
    assert api._as_mask(m, 64) is first  # cached while unmodified
    m[0, 0] = ~m[0, 0]  # an in-place change invalidates the cached wrapper
    assert api._as_mask(m, 64) is not first


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, r"q must be \[B, H, S, D\] \(4 dims\), got shape \(2, 200, 64\)"),
        (
            lambda q, k, v: (q, k[:, :1], v),
            ValueError,
            r"k must have q's shape .* = \(1, 2, 200, 64\), got \(1, 1, 200, 64\)",
        ),
        (lambda q, k, v: (q, k, v[..., :32]), ValueError, r"v must have q's shape"),
        (lambda q, k, v: (q, k.half(), v), TypeError, r"k must have q's dtype torch.float32, got torch.float16"),
        (
            lambda q, k, v: (q.long(), k.long(), v.long()),
            TypeError,
            r"q must be float16, bfloat16 or float32.*got torch.int64",
        ),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, r"q must be a torch.Tensor"),
        (lambda q, k, v: (q, k.to("meta"), v), ValueError, r"k must be on q's device cpu, got meta"),
    ],
)
def test_bad_qkv(change, exc, pattern):
    q, k, v = change(*_qkv())
    with pytest.raises(exc, match=pattern):
        block_sparse_attention(q, k, v, torch.ones(2, 2, dtype=torch.bool), backend="reference")


def test_mask_block_count_must_fit_s():
    q, k, v = _qkv(S=200)
    with pytest.raises(
        ValueError,
        match=r"block mask has 3 blocks per side but S=200 tokens with block_size=128 need ceil\(200/128\) = 2",
    ):
        block_sparse_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"need ceil\(200/64\) = 4"):
        block_sparse_attention(q, k, v, torch.ones(2, 2, dtype=torch.bool), block_size=64)


def test_mask_batch_head_dims():
    q, k, v = _qkv(B=2, H=3)
    with pytest.raises(ValueError, match=r"does not fit B=2, H=3: expected \[1 or 2, 1 or 3, 2, 2\]"):
        block_sparse_attention(q, k, v, torch.ones(2, 2, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"does not fit B=2, H=3"):
        block_sparse_attention(q, k, v, torch.ones(3, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[nb, nb\] or \[B, H, nb, nb\]"):
        block_sparse_attention(q, k, v, torch.ones(3, 2, 2, dtype=torch.bool))


def test_mask_type_and_block_size():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"block_mask tensor must be torch.bool, got torch.float32"):
        block_sparse_attention(q, k, v, torch.ones(2, 2))
    with pytest.raises(TypeError, match=r"block_mask must be a bool tensor .* or a BlockSparseMask, got list"):
        block_sparse_attention(q, k, v, [[True]])
    with pytest.raises(ValueError, match=r"block_size must be one of \(64, 128\), got 32"):
        block_sparse_attention(q, k, v, torch.ones(7, 7, dtype=torch.bool), block_size=32)
    with pytest.raises(ValueError, match=r"block_size=128 does not match the mask object's block_size=64"):
        block_sparse_attention(q, k, v, BlockSparseMask(torch.ones(4, 4, dtype=torch.bool), 64), block_size=128)


def test_key_lengths_validation():
    q, k, v = _qkv(B=2)
    m = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"key_lengths must have shape \[B\] = \[2\], got \(3,\)"):
        block_sparse_attention(q, k, v, m, key_lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"key_lengths must be an integer tensor, got dtype torch.float32"):
        block_sparse_attention(q, k, v, m, key_lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"key_lengths must be an integer tensor \[B\] = \[2\], got list"):
        block_sparse_attention(q, k, v, m, key_lengths=[1, 2])
    with pytest.raises(ValueError, match=r"key_lengths must lie in 0..S = 0..200, got \[201, 5\]"):
        block_sparse_attention(q, k, v, m, key_lengths=torch.tensor([201, 5]))
    with pytest.raises(ValueError, match=r"got \[-1, 5\]"):
        block_sparse_attention(q, k, v, m, key_lengths=torch.tensor([-1, 5]))


def test_scale_validation_and_effect():
    q, k, v = _qkv()
    m = random_block_mask(2, 0.6, (), full_row=1)
    with pytest.raises(ValueError, match=r"scale must be a finite number or None, got nan"):
        block_sparse_attention(q, k, v, m, scale=float("nan"))
    out = block_sparse_attention(q, k, v, m, scale=0.3)
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, 128, scale=0.3), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", ["wan", "hunyuan"])
def test_radial_convenience_matches_block_sparse_with_radial_mask(preset):
    F, T, X = 5, 40, 9  # 209 tokens, 4 blocks of 64
    q, k, v = _qkv(B=2, H=2, S=F * T + X)
    out = radial_attention(q, k, v, frames=F, tokens_per_frame=T, extra_tokens=X, preset=preset, block_size=64)
    mask = radial_block_mask(F, T, preset=preset, extra_tokens=X, block_size=64)
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, mask), atol=0, rtol=0)  # same backend (auto)
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, mask.to_dense(), 64), atol=2e-6, rtol=1e-5)


def test_radial_convenience_overrides_and_errors():
    F, T = 6, 50
    q, k, v = _qkv(S=F * T)
    out = radial_attention(q, k, v, frames=F, tokens_per_frame=T, preset="wan", decay=0.5, sink=False, block_size=64)
    mask = radial_block_mask(F, T, block_size=64, decay=0.5, sink=False, adjacent="half")
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, mask), atol=0, rtol=0)  # same backend (auto)
    with pytest.raises(
        ValueError, match=r"q has S=300 tokens but frames \* tokens_per_frame \+ extra_tokens = 6 \* 40 \+ 0 = 240"
    ):
        radial_attention(q, k, v, frames=F, tokens_per_frame=40)
    with pytest.raises(ValueError, match=r"unknown radial preset 'nope'"):
        radial_attention(q, k, v, frames=F, tokens_per_frame=T, preset="nope")


@pytest.mark.parametrize("Y,X", [(37, 0), (70, 9), (64, 0)])
def test_radial_convenience_with_extra_tokens_before_the_video(Y, X):
    """``prefix_tokens`` tokens before the video (CogVideoX's layout): S = Y + F*T + X, and the op
    runs exactly the mask ``radial_block_mask(..., prefix_tokens=Y)`` builds."""
    F, T = 5, 40
    q, k, v = _qkv(B=2, H=2, S=Y + F * T + X)
    out = radial_attention(
        q, k, v, frames=F, tokens_per_frame=T, prefix_tokens=Y, extra_tokens=X, preset="wan", block_size=64
    )
    mask = radial_block_mask(F, T, preset="wan", prefix_tokens=Y, extra_tokens=X, block_size=64)
    assert mask.seq_len == q.shape[2]
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, mask), atol=0, rtol=0)  # same backend (auto)
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, mask.to_dense(), 64), atol=2e-6, rtol=1e-5)
    with pytest.raises(
        ValueError,
        match=rf"q has S={q.shape[2]} tokens but prefix_tokens \+ frames \* tokens_per_frame \+ extra_tokens = "
        rf"{Y + 1} \+ 5 \* 40 \+ {X} = {Y + 1 + F * T + X}",
    ):
        radial_attention(q, k, v, frames=F, tokens_per_frame=T, prefix_tokens=Y + 1, extra_tokens=X, block_size=64)
    with pytest.raises(ValueError, match=r"prefix_tokens must be >= 0, got -1"):
        radial_attention(q, k, v, frames=F, tokens_per_frame=T, prefix_tokens=-1, block_size=64)


def _compile_case():
    m = random_block_mask(4, 0.5, (2, 1), empty_row=1, full_row=3)
    kl = torch.tensor([250, 100])
    q, k, v = (torch.randn(2, 250, 2, 64).transpose(1, 2) for _ in range(3))  # non-contiguous views
    return m, kl, q, k, v


def test_reference_inside_torch_compile_fullgraph_forward_and_backward():
    """No graph break anywhere in the api (validation, dispatch) nor in the reference backend."""
    m, kl, q, k, v = _compile_case()
    mask = BlockSparseMask(m, 64)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(q, k, v, kl):
        return block_sparse_attention(q, k, v, mask, backend="reference", key_lengths=kl)

    check_compiled_layer_against_oracle(layer, q, k, v, m, 64, kl)


def test_raw_tensor_mask_and_auto_inside_torch_compile_fullgraph():
    m, kl, q, k, v = _compile_case()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(q, k, v, m, kl):
        return block_sparse_attention(q, k, v, m, block_size=64, key_lengths=kl)

    out = layer(q, k, v, m, kl)
    torch.testing.assert_close(out.double(), masked_attention_f64(q, k, v, m, 64, key_lengths=kl), atol=2e-6, rtol=1e-5)


_TRITON_COMPILE_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from radial_attention.testing.oracle import masked_attention_f64
from radial_attention.mask import BlockSparseMask
from radial_attention.ops import block_sparse_attention
m = torch.tensor([[True, False], [True, True]])
mask = BlockSparseMask(m, 64)
kl = torch.tensor([70, 100])
q, k, v = (torch.randn(2, 100, 2, 64).transpose(1, 2) for _ in range(3))  # 64-blocks, a 36-token tail

@torch.compile(fullgraph=True, backend="aot_eager")
def layer(q, k, v, kl):
    return block_sparse_attention(q, k, v, mask, backend="triton", key_lengths=kl)

out = layer(q, k, v, kl)
err = (out.double() - masked_attention_f64(q, k, v, m, 64, key_lengths=kl)).abs().max().item()
print("max error", err)
assert err < 1e-4, err
"""


def test_triton_inside_torch_compile_fullgraph_under_interpreter():
    """The Triton backend (a registered custom op) keeps the graph whole; run in Triton's CPU
    interpreter, which must be switched on before Triton is imported, hence a subprocess."""
    import os
    import pathlib
    import subprocess
    import sys

    from radial_attention.ops import api

    if "triton" not in available_backends():
        pytest.skip(f"triton backend not importable: {api._import_errors.get('triton')}")
    env = dict(os.environ, TRITON_INTERPRET="1")
    tests_dir = str(pathlib.Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", _TRITON_COMPILE_SCRIPT, tests_dir], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "max error" in proc.stdout

"""The fa4 backend without a GPU: its block lists, key-length slicing, gradients and where it runs.

FA4 itself needs a Hopper GPU; here ``tests/fake_fa4.py`` stands in for its two entry points (same
arguments, float64 math driven only by the tables it is given), so what is tested is everything
the backend does around FA4. The real FA4 is checked in ``tests/gpu/`` (``pytest -m gpu``).
"""

import types

import pytest
import torch

from radial_attention.testing.oracle import masked_attention_f64, random_block_mask
from fake_fa4 import FakeFA4
from radial_attention.mask import BlockSparseMask
from radial_attention.ops import api
from radial_attention.ops import fa4


@pytest.fixture
def fake(monkeypatch):
    f = FakeFA4()
    monkeypatch.setattr(fa4, "_fa4", f)
    return f


def _decode(cnt, idx, n):
    """Padded-CSR lists -> bool [..., rows, n]."""
    out = torch.zeros(*cnt.shape, n, dtype=torch.bool)
    flat_c, flat_i, flat_o = cnt.reshape(-1), idx.reshape(-1, idx.shape[-1]), out.reshape(-1, n)
    for r in range(flat_c.numel()):
        flat_o[r, flat_i[r, : int(flat_c[r])].long()] = True
    return out


@pytest.mark.parametrize("shape", [(), (1, 3), (2, 1), (2, 3)])
def test_block_lists_equal_the_mask_and_its_transpose(shape):
    g = torch.Generator().manual_seed(1)
    m = random_block_mask(7, 0.4, shape=shape, generator=g, empty_row=2, full_row=5)
    mask = BlockSparseMask(m, 128)
    lists = fa4.block_lists(mask, "cpu")
    d4 = m if m.dim() == 4 else m[None, None]
    assert lists.fwd_idx.dtype == torch.int32 and lists.bwd_cnt.dtype == torch.int32
    assert torch.equal(_decode(lists.fwd_cnt, lists.fwd_idx, 7), d4)
    assert torch.equal(_decode(lists.bwd_cnt, lists.bwd_idx, 7), d4.transpose(-1, -2))
    assert lists.fwd_idx.shape[:2] == d4.shape[:2]  # never expanded per batch item or head
    # ascending within each row, as FA4 requires
    for r in range(7):
        c = int(lists.fwd_cnt.reshape(-1, 7)[0, r])
        row = lists.fwd_idx.reshape(-1, 7, lists.fwd_idx.shape[-1])[0, r, :c]
        assert bool((row[1:] > row[:-1]).all())
    assert fa4.block_lists(mask, "cpu") is lists  # cached in the mask, per device
    assert lists.fwd_idx is mask._index("kv_indices")  # the mask's own lists, not a second copy


def test_key_length_cut_keeps_a_prefix_of_each_row():
    m = random_block_mask(6, 0.6, generator=torch.Generator().manual_seed(2), full_row=0)
    lists = fa4.block_lists(BlockSparseMask(m, 128), "cpu")
    fwd = fa4._forward_tensors(lists, slice(0, 1), 3, 128)
    assert torch.equal(_decode(fwd.full_block_cnt, fwd.full_block_idx, 6), (m & (torch.arange(6) < 3))[None, None])
    bwd = fa4._backward_tensors(lists, slice(0, 1), 3, 128)
    assert bwd.full_block_cnt.shape[-1] == 3
    assert torch.equal(_decode(bwd.full_block_cnt, bwd.full_block_idx, 6), m.T[:3][None, None])


CASES = [
    # B, H, S, mask shape, key_lengths
    (1, 2, 300, (), None),
    (2, 3, 300, (1, 3), None),
    (2, 2, 256, (2, 1), None),
    (2, 2, 300, (), [300, 170]),
    (3, 2, 300, (1, 2), [0, 256, 129]),
    (2, 1, 384, (2, 1), [200, 384]),
]


@pytest.mark.parametrize("B,H,S,mshape,lengths", CASES)
def test_forward_and_gradients_match_float64(fake, B, H, S, mshape, lengths):
    nb = -(-S // 128)
    g = torch.Generator().manual_seed(B * 100 + S)
    m = random_block_mask(nb, 0.5, shape=mshape, generator=g, empty_row=1, full_row=0)
    mask = BlockSparseMask(m, 128)
    kl = None if lengths is None else torch.tensor(lengths)
    # q, k, v as diffusers makes them: [B, S, H, D] storage, given as the [B, H, S, D] transpose
    q, k, v = (torch.randn(B, S, H, 64, generator=g).transpose(1, 2).requires_grad_() for _ in range(3))
    out = fa4.attention(q, k, v, mask, scale=0.125, key_lengths=kl)
    assert out.shape == (B, H, S, 64) and out.transpose(1, 2).is_contiguous()
    want = masked_attention_f64(q, k, v, m, 128, scale=0.125, key_lengths=kl)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(B, H, S, 64, generator=g)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want_out = masked_attention_f64(q64, k64, v64, m, 128, scale=0.125, key_lengths=kl)
    want_grads = torch.autograd.grad(want_out, (q64, k64, v64), grad_out.double())
    for name, a, b in zip("qkv", got, want_grads):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5, msg=f"d{name}")
    if kl is not None:
        # One FA4 call per batch item, keys cut to that item's length; dk/dv past it are exactly 0.
        fwd_calls = [c for c in fake.calls if c[0] == "fwd" and c[1] == 1]
        assert sorted(c[3] for c in fwd_calls) == sorted(x for x in lengths if x > 0)
        for b, length in enumerate(lengths):
            assert bool((got[1][b, :, length:] == 0).all()) and bool((got[2][b, :, length:] == 0).all())


def test_one_call_for_the_whole_batch_when_nothing_is_cut(fake):
    m = random_block_mask(3, 0.5, generator=torch.Generator().manual_seed(3), full_row=0)
    q, k, v = (torch.randn(4, 2, 300, 64) for _ in range(3))
    fa4.attention(q, k, v, BlockSparseMask(m, 128), scale=0.125, key_lengths=torch.tensor([300] * 4))
    assert [c[:4] for c in fake.calls] == [("fwd", 4, 300, 300)]
    # the shared mask reaches FA4 as [1, 1, nb, W] tables, broadcast by FA4, not copied per item
    assert fake.calls[0][4].full_block_idx.shape[:2] == (1, 1)


def test_dense_attention_through_fa4_and_sdpa(fake, monkeypatch):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 200, 64, generator=g) for _ in range(3))
    kl = torch.tensor([200, 77])
    full = torch.ones(2, 2, dtype=torch.bool)
    want = masked_attention_f64(q, k, v, full, 128, key_lengths=kl)
    got = fa4.dense_attention(q, k, v, scale=64**-0.5, key_lengths=kl)
    assert fake.calls[0][4] is None  # FA4's dense kernel: no block tables
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    sdpa = api.dense_attention(q, k, v, key_lengths=kl, backend="sdpa")
    torch.testing.assert_close(sdpa.double(), want, atol=1e-5, rtol=1e-5)
    empty = api.dense_attention(q, k, v, key_lengths=torch.tensor([0, 200]), backend="sdpa")
    assert bool((empty[0] == 0).all()) and bool(torch.isfinite(empty).all())


def test_compile_fullgraph_keeps_the_op(fake):
    m = random_block_mask(3, 0.5, generator=torch.Generator().manual_seed(5), full_row=0)
    mask = BlockSparseMask(m, 128)
    q, k, v = (torch.randn(1, 2, 300, 64) for _ in range(3))

    @torch.compile(fullgraph=True, backend="eager")
    def f(q, k, v):
        return fa4.attention(q, k, v, mask, scale=0.125) * 2

    torch.testing.assert_close(
        f(q, k, v).double(), 2 * masked_attention_f64(q, k, v, m, 128, scale=0.125), atol=1e-5, rtol=1e-5
    )


def test_compiled_op_and_eager_path_give_the_same_values_and_gradients(fake):
    """Eager calls skip the custom-op dispatch (a plain autograd function, for host time); a compiled
    graph holds the custom op. Both must compute the same forward and gradients."""
    m = random_block_mask(3, 0.5, generator=torch.Generator().manual_seed(6), full_row=1)
    mask = BlockSparseMask(m, 128)
    gen = torch.Generator().manual_seed(7)
    base = [torch.randn(2, 2, 300, 64, generator=gen) for _ in range(3)]
    lengths = torch.tensor([300, 170])
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm.code)
        return gm

    def f(q, k, v):
        return fa4.attention(q, k, v, mask, scale=0.125, key_lengths=lengths)

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend=keep_graph)):
        q, k, v = (t.clone().requires_grad_(True) for t in base)
        out = fn(q, k, v)
        (out * torch.linspace(-1, 1, 64)).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    assert any("fa4_fwd" in code for code in graphs), "the compiled graph must keep the fa4 custom op"
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    # and both equal the float64 masked softmax with the cut keys (batch item 1 sees 170 keys)
    q, k, v = base
    expected = masked_attention_f64(q, k, v, m, 128, scale=0.125, key_lengths=lengths)
    torch.testing.assert_close(results[0][0].double(), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- where it runs
def _cuda_like(dtype=torch.bfloat16, D=128):
    """An object with what unsupported_reason reads of a CUDA tensor (no GPU here)."""
    return types.SimpleNamespace(
        device=torch.device("cuda", 0), dtype=dtype, shape=(1, 2, 256, D), dim=lambda: 4, requires_grad=False
    )


def test_unsupported_reasons(monkeypatch):
    if fa4.IMPORT_ERROR is not None:
        assert "flash-attn-4" in fa4.unsupported_reason(torch.zeros(1, 1, 8, 64))
    monkeypatch.setattr(fa4, "IMPORT_ERROR", None)
    assert "CUDA" in fa4.unsupported_reason(torch.zeros(1, 1, 8, 64))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fa4.unsupported_reason(_cuda_like()) is None
    assert fa4.unsupported_reason(_cuda_like(), requires_grad=True) is None
    assert "float32" in fa4.unsupported_reason(_cuda_like(dtype=torch.float32))
    assert "head dim 96" in fa4.unsupported_reason(_cuda_like(D=96))
    assert "block size 64" in fa4.unsupported_reason(_cuda_like(), block_size=64)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "8.0" in fa4.unsupported_reason(_cuda_like()) and "SM80" in fa4.unsupported_reason(_cuda_like())


def test_auto_order_on_cuda(monkeypatch):
    monkeypatch.setattr(api, "_reasons", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert api._auto_order(_cuda_like())[:2] == ("fa4", "triton")
    # flash-attn-4 absent: auto goes on to the Triton kernels
    monkeypatch.setitem(api._import_errors, "fa4", "not installed")
    monkeypatch.delitem(api._modules, "fa4", raising=False)
    assert api._reason("fa4", _cuda_like(), False) is not None
    # (triton's own check needs only dtype, head dim and a CUDA device)
    if api._load("triton") is not None:
        assert api.resolve_backend("auto", _cuda_like(), requires_grad=False) == "triton"
    # fa4 installed (the fake) and on Hopper: auto picks it; a 64-token mask goes to triton
    monkeypatch.setattr(api, "_reasons", {})
    monkeypatch.setattr(fa4, "IMPORT_ERROR", None)
    monkeypatch.delitem(api._import_errors, "fa4")
    monkeypatch.setitem(api._modules, "fa4", fa4)
    monkeypatch.setitem(api._checks, "fa4", fa4.unsupported_reason)
    assert api.resolve_backend("auto", _cuda_like(), requires_grad=True) == "fa4"
    assert api.resolve_dense_backend("auto", _cuda_like(), requires_grad=False) == "fa4"
    if api._load("triton") is not None:
        assert api.resolve_backend("auto", _cuda_like(), requires_grad=False, block_size=64) == "triton"
    with pytest.raises(ValueError, match="fa4.*float32"):
        api.resolve_backend("fa4", _cuda_like(dtype=torch.float32))


def test_auto_warns_when_cuda_lands_on_the_reference(monkeypatch):
    monkeypatch.setattr(api, "_reasons", {})
    monkeypatch.setattr(api, "_warned_reference", set())
    for name in ("fa4", "triton", "flex"):
        monkeypatch.setitem(api._reasons, (name, "cuda:0", torch.float32, 128, False, 128), "cannot")
    monkeypatch.setitem(api._reasons, ("reference", "cuda:0", torch.float32, 128, False, 128), None)
    with pytest.warns(RuntimeWarning, match="reference backend.*dense"):
        assert api.resolve_backend("auto", _cuda_like(dtype=torch.float32), requires_grad=False) == "reference"


def test_disk_cache_is_not_forced_over_the_users_choice(monkeypatch, tmp_path):
    cache_utils = types.SimpleNamespace(CUTE_DSL_CACHE_ENABLED=False, CUTE_DSL_CACHE_DIR=None)
    import sys

    monkeypatch.setitem(sys.modules, "flash_attn.cute.cache_utils", cache_utils)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", types.SimpleNamespace(cache_utils=cache_utils))
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace())
    monkeypatch.setattr(fa4, "_fa4", object())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", raising=False)
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", raising=False)
    fa4._enable_disk_cache()
    assert cache_utils.CUTE_DSL_CACHE_ENABLED is True
    assert cache_utils.CUTE_DSL_CACHE_DIR == str(tmp_path / "radial-attention" / "flash-attn-4")
    monkeypatch.setattr(cache_utils, "CUTE_DSL_CACHE_ENABLED", False)
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "0")
    fa4._enable_disk_cache()
    assert cache_utils.CUTE_DSL_CACHE_ENABLED is False


# ----------------------------------------------------------------------------- dense steps in diffusers
def _route_dense_to_fake(monkeypatch):
    """Make resolve_dense_backend pick fa4 (the fake) for these CPU tensors."""
    monkeypatch.setattr(api, "_reasons", {})
    monkeypatch.setattr(fa4, "IMPORT_ERROR", None)
    monkeypatch.delitem(api._import_errors, "fa4", raising=False)
    monkeypatch.setitem(api._modules, "fa4", fa4)
    monkeypatch.setitem(api._checks, "fa4", lambda q, requires_grad, block_size: None)


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_dense_steps_run_on_fa4_dense_where_it_runs(fake, monkeypatch, family):
    pytest.importorskip("diffusers")
    from radial_attention import apply_radial_attention, remove_radial_attention
    from radial_attention.testing import tiny

    if family == "wan":
        model = tiny.tiny_wan_transformer("t2v", num_layers=2)
        kwargs = tiny.wan_inputs(model, 12, 16, 16)
    else:  # prompt padding: the key-padding mask becomes key_lengths for FA4
        model = tiny.tiny_hunyuan_transformer()
        kwargs = tiny.hunyuan_inputs(model, 5, 8, 8, batch=2, prompt_lengths=[5, 16])
    with torch.no_grad():
        want = model(**kwargs)[0]
    _route_dense_to_fake(monkeypatch)
    state = apply_radial_attention(model, dense_steps=1, block_size=64)
    with torch.no_grad():
        got = model(**kwargs)[0]
    remove_radial_attention(model)
    assert state.summary()["radial_calls"] == 0
    n_blocks = sum(1 for c in fake.calls if c[0] == "fwd")
    assert n_blocks >= 2 and all(c[4] is None for c in fake.calls)  # every dense call went to FA4 dense
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # dense_backend="sdpa": the model's own attention, FA4 never called
    fake.calls.clear()
    apply_radial_attention(model, dense_steps=1, block_size=64, dense_backend="sdpa")
    with torch.no_grad():
        assert torch.equal(model(**kwargs)[0], want)
    remove_radial_attention(model)
    assert fake.calls == []


def test_dense_layers_under_autocast_reach_fa4_too(fake, monkeypatch):
    """bf16-mixed training: HunyuanVideo's q/k come out of float32 norms and v does not; the dtypes
    must be compared after autocast's cast, as SDPA itself sees them, or every call falls back."""
    pytest.importorskip("diffusers")
    from radial_attention import apply_radial_attention, remove_radial_attention
    from radial_attention.integrations.diffusers.families import attention_paths
    from radial_attention.testing import tiny

    model = tiny.tiny_hunyuan_transformer()
    kwargs = tiny.hunyuan_inputs(model, 5, 8, 8, batch=2, prompt_lengths=[5, 16])
    _route_dense_to_fake(monkeypatch)
    apply_radial_attention(model, dense_steps=1, block_size=64)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**kwargs)[0]
    finally:
        remove_radial_attention(model)
    # prompt lengths differ, so one FA4 call per batch item in every hooked module
    assert sum(1 for c in fake.calls if c[0] == "fwd") == 2 * len(attention_paths(model))
    assert bool(torch.isfinite(out).all())

"""The Triton backend on CPU tensors under Triton's interpreter, against a float64 oracle.

Triton decides at import whether its own library functions are interpreted, so these cases need
``TRITON_INTERPRET=1`` in the environment from the start: ``tests/test_triton_backend.py`` runs this
file in a subprocess that has it (so it does not leak into other test modules), or run it directly:
``TRITON_INTERPRET=1 python -m pytest tests/triton_interpreter_cases.py``. The interpreter is slow:
shapes stay tiny (a few blocks), but every path is hit: S not a multiple of the block, batch 2,
per-batch/per-head masks with empty and full rows, key_lengths, head dims 64/128, blocks 64/128,
fp32/fp16/bf16, [B, S, H, D] views, sub-tiles smaller than the mask block, the TMA-descriptor path
(emulated by the interpreter), a negative scale, and the backward's own kernels.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from radial_attention.mask import BlockSparseMask  # noqa: E402
from radial_attention.ops import triton as tb  # noqa: E402
from radial_attention.ops.triton import launch  # noqa: E402
from radial_attention.testing.oracle import masked_attention_f64  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


if not launch.interpreting():
    pytest.skip(
        "needs TRITON_INTERPRET=1 set before Python starts (tests/test_triton_backend.py runs this file that way)",
        allow_module_level=True,
    )


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setattr(launch, "_experiment", {})  # no settings left over from another case
    yield


def random_mask(shape, seed):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(shape, generator=g) < 0.45
    dense[..., 0, :] = False  # an empty query row
    dense[..., 1, :] = True  # a full one
    dense[..., -1, -1] = True  # the partial last block
    return dense


def make_qkv(B, H, S, D, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(4):
        if layout == "bshd":  # a diffusers-style [B, S, H, D] tensor seen as [B, H, S, D]
            out.append(torch.randn(B, S, H, D, generator=g).to(dtype).transpose(1, 2))
        else:
            out.append(torch.randn(B, H, S, D, generator=g).to(dtype))
    return out


def rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def run_and_compare(B, H, S, D, bs, dtype, mask_shape, key_lengths, layout, scale, seed=0, check_grads=True):
    nb = -(-S // bs)
    dense = random_mask(tuple(mask_shape) + (nb, nb), seed)
    mask = BlockSparseMask(dense, bs)
    q, k, v, do = make_qkv(B, H, S, D, dtype, layout, seed + 1)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    out = tb.attention(qg, kg, vg, mask, scale=scale, key_lengths=key_lengths)
    assert out.shape == q.shape and out.dtype == dtype
    assert out.stride() == q.stride()  # written in q's layout
    assert not torch.isnan(out).any()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = masked_attention_f64(q64, k64, v64, dense, bs, scale, key_lengths)
    assert rel(out, ref) < TOL[dtype], f"output error {rel(out, ref):.2e}"
    # mask row 0 is empty: exactly zero output (and zero dq below)
    assert torch.count_nonzero(out[:, :, :bs].detach()) == 0
    if not check_grads:
        return
    grads = torch.autograd.grad(out, (qg, kg, vg), do)
    rgrads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    for name, g, r in zip(("dq", "dk", "dv"), grads, rgrads):
        assert not torch.isnan(g).any(), name
        assert g.stride() == q.stride(), name
        assert rel(g, r) < TOL[dtype], f"{name} error {rel(g, r):.2e}"
    assert torch.count_nonzero(grads[0][:, :, :bs]) == 0
    # deterministic backward (no atomics): the same bits on a second run
    grads2 = torch.autograd.grad(tb.attention(qg, kg, vg, mask, scale=scale, key_lengths=key_lengths), (qg, kg, vg), do)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2))


CASES = [
    # B, H, S, D, bs, dtype, mask shape [Bm, Hm], key_lengths, layout, scale
    pytest.param(2, 2, 150, 64, 64, torch.float32, (2, 2), [150, 70], "bshd", None, id="fp32-d64-b64-perhead-kl"),
    pytest.param(1, 2, 200, 128, 128, torch.float16, (1, 2), None, "bhsd", None, id="fp16-d128-b128-perhead"),
    pytest.param(2, 1, 260, 64, 128, torch.bfloat16, (2, 1), [5, 260], "bshd", None, id="bf16-d64-b128-perbatch-kl"),
    pytest.param(2, 2, 100, 128, 64, torch.float32, (), [100, 0], "bhsd", -0.1, id="fp32-d128-b64-shared-negscale"),
]


@pytest.mark.parametrize("B,H,S,D,bs,dtype,mask_shape,kl,layout,scale", CASES)
def test_matches_float64_oracle(interpret, B, H, S, D, bs, dtype, mask_shape, kl, layout, scale):
    key_lengths = None if kl is None else torch.tensor(kl)
    run_and_compare(B, H, S, D, bs, dtype, mask_shape, key_lengths, layout, scale if scale else D**-0.5)


@pytest.mark.parametrize("use_tma", [False, True], ids=["pointers", "tma"])
def test_sub_tiles_and_tma_path(interpret, use_tma):
    # tiles smaller than the mask block (each kept block walked in sub-tiles), both memory paths
    cfg = launch.KernelConfig(32, 16, 4, 2, use_tma)
    with launch.triton_kernel_config(fwd=cfg, dq=cfg, dkdv=launch.KernelConfig(16, 32, 4, 2, use_tma)):
        run_and_compare(1, 2, 100, 64, 64, torch.float32, (1, 2), torch.tensor([77]), "bshd", 0.125, seed=3)


def test_backward_runs_the_triton_kernels(interpret, monkeypatch):
    module = launch.kernels(True)
    launches = {"_bwd_delta_kernel": 0, "_bwd_dkdv_kernel": 0, "_bwd_dq_kernel": 0}

    class Counted:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches[self.name] += 1
            return self.kernel[grid]

    for name in launches:
        monkeypatch.setattr(module, name, Counted(name, getattr(module, name)))
    run_and_compare(1, 1, 130, 64, 64, torch.float32, (), None, "bhsd", 0.125, seed=5)
    # two backward passes in run_and_compare (the determinism check): each kernel launched twice
    assert launches == {"_bwd_delta_kernel": 2, "_bwd_dkdv_kernel": 2, "_bwd_dq_kernel": 2}


def test_through_the_public_api(interpret):
    from radial_attention.ops import block_sparse_attention

    B, H, S, D, bs = 1, 2, 140, 64, 64
    dense = random_mask((3, 3), 7)
    q, k, v, _ = make_qkv(B, H, S, D, torch.float32, "bhsd", 8)
    out = block_sparse_attention(q, k, v, dense, block_size=bs, backend="triton")
    assert rel(out, masked_attention_f64(q, k, v, dense, bs, D**-0.5)) < 1e-5


def test_torch_compile_fullgraph(interpret, monkeypatch):
    B, H, S, D, bs = 1, 1, 130, 64, 64
    dense = random_mask((3, 3), 9)
    mask = BlockSparseMask(dense, bs)
    q, k, v, do = make_qkv(B, H, S, D, torch.float32, "bshd", 10)

    def f(q, k, v):
        return tb.attention(q, k, v, mask, scale=0.125, key_lengths=None) * 2.0

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    eager = f(qg, kg, vg)
    ge = torch.autograd.grad(eager, (qg, kg, vg), do)

    def must_not_rebuild(*args):
        raise AssertionError("the mask's cached index tensors were not used inside the graph")

    monkeypatch.setattr(BlockSparseMask, "_full_width_rows", staticmethod(must_not_rebuild))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(qg, kg, vg)
    gc = torch.autograd.grad(out, (qg, kg, vg), do)
    assert torch.equal(out, eager)
    assert all(torch.equal(a, b) for a, b in zip(ge, gc))


def test_bad_config_is_a_clear_error(interpret):
    q, k, v = (torch.randn(1, 1, 100, 64) for _ in range(3))
    mask = BlockSparseMask(torch.ones(2, 2, dtype=torch.bool), 64)
    with launch.triton_kernel_config(fwd=launch.KernelConfig(48, 64)):
        with pytest.raises(ValueError, match="block_m=48 must be >= 16 and divide the mask block size 64"):
            tb.attention(q, k, v, mask, scale=1.0)


def test_property_random_shapes(interpret):
    """A few random shapes and masks (fixed seeds, so the run time stays bounded)."""
    g = torch.Generator().manual_seed(11)
    for trial in range(3):
        bs = [64, 128][int(torch.randint(2, (1,), generator=g))]
        S = int(torch.randint(bs + 1, 3 * bs, (1,), generator=g))  # 2 or 3 blocks, last one partial
        B = int(torch.randint(1, 3, (1,), generator=g))
        kl = torch.randint(0, S + 1, (B,), generator=g) if trial != 1 else None
        run_and_compare(B, 1, S, 64, bs, torch.float32, (B, 1), kl, "bshd", 1 / math.sqrt(64), seed=20 + trial)


@pytest.mark.parametrize("use_tma", [False, True], ids=["pointers", "tma"])
def test_nan_follows_the_mask(interpret, use_tma):
    # TMA zero-fills only past S: the kernel must itself keep NaN values past key_lengths out.
    from radial_attention.testing.oracle import check_nan_follows_mask, nan_case

    cfg = launch.KernelConfig(32, 32, 4, 2, use_tma)
    q, k, v, dense, kl = nan_case(D=64)
    with torch.no_grad(), launch.triton_kernel_config(fwd=cfg):
        out = tb.attention(q, k, v, BlockSparseMask(dense, 64), scale=0.125, key_lengths=kl)
    check_nan_follows_mask(out, q, k, v, dense, 64, kl, atol=1e-5, rtol=1e-4)


def test_index_list_offsets_are_int64(interpret):
    """Per-head index lists pass 2^31 entries at 64-token blocks and long videos: the kernels'
    offsets into them must not wrap around in int32 (here head 2 of a list with 2^30 entries per head)."""
    out = torch.zeros(6, dtype=torch.int64)
    _offset_probe[(1, 3, 2)](out, 0, 1 << 30, 7)
    want = torch.tensor([h * (1 << 30) + row * 7 for h in range(3) for row in range(2)])
    assert torch.equal(out, want), out


import triton  # noqa: E402
import triton.language as tl  # noqa: E402

_KERNELS = launch.kernels(True)  # a module global: the interpreter runs kernels with their module's globals


@triton.jit
def _offset_probe(OUT, stride_ib, stride_ih, stride_ir):
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = tl.program_id(2)
    tl.store(OUT + h * 2 + row, _KERNELS._list_offset(b, h, row, stride_ib, stride_ih, stride_ir))

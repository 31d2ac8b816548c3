"""The Triton backend: interpreter runs (in a subprocess) and input validation (in this process).

The numerical cases live in ``tests/triton_interpreter_cases.py``; Triton's interpreter must be on
before ``triton`` is imported, so they run in a child ``pytest`` with ``TRITON_INTERPRET=1`` and this
test process (and every other test module) stays uninterpreted.
"""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from radial_attention.mask import BlockSparseMask  # noqa: E402
from radial_attention.ops import triton as tb  # noqa: E402
from radial_attention.ops.triton import launch  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
CASES = HERE / "triton_interpreter_cases.py"


def test_interpreter_cases_in_a_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning", str(CASES)],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"interpreter cases failed:\n{out[-8000:]}"
    assert " passed" in out and "skipped" not in out.split("\n")[-2], out[-2000:]


def _small(D=64, dtype=torch.float32, S=100):
    return [torch.randn(1, 1, S, D, dtype=dtype) for _ in range(3)]


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if launch.interpreting():
        pytest.skip("this process runs Triton's interpreter")


def test_bad_inputs_are_clear_errors(no_interpreter):
    mask = BlockSparseMask(torch.ones(2, 2, dtype=torch.bool), 64)
    q, k, v = _small(D=32)
    with pytest.raises(ValueError, match=r"head dim 32 is not supported \(expected one of \(64, 128\)\)"):
        tb.attention(q, k, v, mask, scale=1.0)
    q, k, v = _small(dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype torch.float64 is not supported"):
        tb.attention(q, k, v, mask, scale=1.0)
    q, k, v = _small(S=300)
    with pytest.raises(ValueError, match=r"mask has 2 blocks of 64 but S=300 needs ceil\(S/64\) = 5"):
        tb.attention(q, k, v, mask, scale=1.0)
    q, k, v = _small()
    with pytest.raises(ValueError, match=r"key_lengths must have shape \[1\], got \(2,\)"):
        tb.attention(q, k, v, mask, scale=1.0, key_lengths=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="must have one shape"):
        tb.attention(q, k[:, :, :50], v, mask, scale=1.0)
    with pytest.raises(ValueError, match="share dtype"):
        tb.attention(q, k.half(), v, mask, scale=1.0)
    with pytest.raises(ValueError, match=r"does not fit B=1, H=1"):
        tb.attention(q, k, v, BlockSparseMask(torch.ones(1, 3, 2, 2, dtype=torch.bool), 64), scale=1.0)
    with pytest.raises(ValueError, match="must be a \\[B, H, S, D\\] tensor"):
        tb.attention(q[0], k, v, mask, scale=1.0)


def test_cpu_without_interpreter_is_a_clear_error(no_interpreter):
    q, k, v = _small()
    mask = BlockSparseMask(torch.ones(2, 2, dtype=torch.bool), 64)
    assert "TRITON_INTERPRET=1" in tb.unsupported_reason(q)
    assert tb.unsupported_reason(q.bfloat16()) is not None
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        tb.attention(q, k, v, mask, scale=1.0)


def test_interpreter_switched_on_after_import_is_a_clear_error(no_interpreter, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late: triton is imported already
    monkeypatch.setattr(launch, "_kernel_modules", {})
    q, k, v = _small()
    mask = BlockSparseMask(torch.ones(2, 2, dtype=torch.bool), 64)
    with pytest.raises(RuntimeError, match="before Python starts"):
        tb.attention(q, k, v, mask, scale=1.0)


def test_config_must_divide_the_mask_block():
    cfg = launch.KernelConfig(48, 64)
    with pytest.raises(ValueError, match="block_m=48 must be >= 16 and divide the mask block size 64"):
        launch._check_config(cfg, 64, "fwd")


# ----------------------------------------------------------------------------- FlashInfer wrapper
def test_flashinfer_backend_needs_its_package():
    import importlib.util

    if importlib.util.find_spec("flashinfer") is not None:
        pytest.skip("flashinfer is installed here")
    with pytest.raises(ImportError, match="flashinfer-python"):
        import radial_attention.ops.flashinfer  # noqa: F401


class _FakeBSR:
    """Stands in for flashinfer.BlockSparseAttentionWrapper on the CPU: the same plan/run contract
    (CSR of R x C blocks over M queries and N keys, NHD tensors, base-2 log-sum-exp), computed densely."""

    plans = 0

    def __init__(self, workspace, backend="auto"):
        self._vector_sparse_indices_buffer = None

    def plan(self, indptr, indices, M, N, R, C, num_qo_heads, num_kv_heads, head_dim, sm_scale=None, **kw):
        type(self).plans += 1
        assert N % C == 0, "FlashInfer needs N to be a multiple of C"
        self.allowed = torch.zeros(M, N, dtype=torch.bool)
        for r in range(len(indptr) - 1):
            for c in indices[indptr[r]:indptr[r + 1]].tolist():
                self.allowed[r * R:(r + 1) * R, c * C:(c + 1) * C] = True
        self.scale = sm_scale

    def run(self, q, k, v, out=None, return_lse=False):
        s = torch.einsum("mhd,nhd->hmn", q.float(), k.float()) * self.scale
        s = s.masked_fill(~self.allowed, float("-inf"))
        lse = torch.logsumexp(s, -1)  # [H, M]; -inf for a row with no block
        p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
        o = torch.einsum("hmn,nhd->mhd", p, v.float()).to(q.dtype)
        if out is not None:
            out.copy_(o)
            o = out
        return (o, (lse / math.log(2.0)).transpose(0, 1)) if return_lse else o


@pytest.fixture
def fake_flashinfer(monkeypatch):
    """``radial_attention.ops.flashinfer`` imported against the stand-in, then forgotten again."""
    import importlib
    import types

    import radial_attention.ops as ops_pkg

    fake = types.ModuleType("flashinfer")
    fake.BlockSparseAttentionWrapper = _FakeBSR
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    name = "radial_attention.ops.flashinfer"
    # Set, then delete: monkeypatch then puts back exactly what was there before (the real module,
    # or nothing), and the module imported below against the stand-in is forgotten.
    monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(ops_pkg, "flashinfer", None, raising=False)
    monkeypatch.delattr(ops_pkg, "flashinfer")
    yield importlib.import_module(name)


def test_flashinfer_wrapper_logic_on_cpu(fake_flashinfer, monkeypatch):
    """Our wrapper's own work (plans cached, partial last key block merged through the
    log-sum-exps, key_lengths, per-head masks, empty rows, negative scale) against a float64
    oracle, with FlashInfer's wrapper replaced by a dense CPU stand-in."""
    fi = fake_flashinfer
    real_reason = fi.unsupported_reason
    monkeypatch.setattr(fi, "unsupported_reason", lambda q, requires_grad=False: None)  # CPU tensors here
    monkeypatch.setattr(fi, "_plans", type(fi._plans)())
    monkeypatch.setattr(fi, "_workspace", lambda device: None)

    g = torch.Generator().manual_seed(0)
    B, H, S, D, bs = 2, 2, 150, 64, 64  # 3 blocks, the last one 22 tokens
    dense = torch.rand(1, H, 3, 3, generator=g) < 0.5
    dense[..., 0, :] = False
    dense[..., 1, :] = True
    dense[..., 2, 2] = True
    mask = BlockSparseMask(dense, bs)
    q, k, v = (torch.randn(B, S, H, D, generator=g).transpose(1, 2) for _ in range(3))
    for scale, kl in ((0.125, None), (-0.1, torch.tensor([100, 128]))):
        out = fi.attention(q, k, v, mask, scale=scale, key_lengths=kl)
        ref = _oracle64(q, k, v, dense, bs, scale, kl)
        assert out.shape == q.shape
        assert float((out.double() - ref).norm() / ref.norm()) < 1e-5
        assert torch.count_nonzero(out[:, :, :bs]) == 0
    plans = _FakeBSR.plans
    fi.attention(q, k, v, mask, scale=0.125, key_lengths=None)
    assert _FakeBSR.plans == plans  # the plan is reused
    monkeypatch.setattr(fi, "unsupported_reason", real_reason)
    with pytest.raises(RuntimeError, match="forward-only"):
        fi.attention(q.detach().requires_grad_(), k, v, mask, scale=0.125)
    assert "needs CUDA tensors" in real_reason(q)


def _oracle64(q, k, v, dense, bs, scale, key_lengths):
    q, k, v = (t.double() for t in (q, k, v))
    B, H, S, D = q.shape
    allowed = dense.repeat_interleave(bs, -1).repeat_interleave(bs, -2)[..., :S, :S].expand(B, H, S, S)
    if key_lengths is not None:
        allowed = allowed & (torch.arange(S)[None, :] < key_lengths[:, None])[:, None, None, :]
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    has = allowed.any(-1, keepdim=True)
    return (torch.softmax(s.masked_fill(~has, 0.0), -1) * has) @ v


def test_launch_order_choice():
    """'auto' keeps heavy-first off CUDA (and where a head's K/V fits L2); explicit orders are obeyed."""
    from radial_attention.mask import radial_block_mask
    from radial_attention.ops.triton import launch

    mask = radial_block_mask(5, 200)
    t = launch.mask_tensors(mask, "cpu")
    q = torch.zeros(1, 2, 1000, 64)
    old = launch.LAUNCH_ORDER["value"]
    try:
        launch.LAUNCH_ORDER["value"] = "auto"
        row, col = launch.launch_orders(t, q)
        assert row is t["row_order"] and col is t["col_order"]
        # heavy-first: rows by kept key blocks, descending
        counts = t["kv_counts"][0, 0][row[0, 0].long()]
        assert bool((counts[:-1] >= counts[1:]).all())
        launch.LAUNCH_ORDER["value"] = "sequential"
        row, col = launch.launch_orders(t, q)
        assert torch.equal(row[0, 0], torch.arange(mask.num_blocks, dtype=torch.int32))
        assert torch.equal(col[0, 0], torch.arange(mask.num_blocks, dtype=torch.int32))
    finally:
        launch.LAUNCH_ORDER["value"] = old

"""The Triton backend: interpreter runs (in a subprocess) and input validation (in this process).

The numerical cases live in ``tests/triton_interpreter_cases.py``; Triton's interpreter must be on
before ``triton`` is imported, so they run in a child ``pytest`` with ``TRITON_INTERPRET=1`` and this
test process (and every other test module) stays uninterpreted.
"""

from __future__ import annotations

import importlib.util
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
from radial_attention.testing.oracle import masked_attention_f64  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
CASES = HERE / "triton_interpreter_cases.py"


def test_interpreter_cases_in_a_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning", str(CASES)],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
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


def test_capability_errors_come_from_the_api_once(no_interpreter):
    """The backend does not re-validate: the api checks the inputs and turns the backend's
    unsupported_reason into the error of an explicit backend="triton"."""
    from radial_attention.ops import block_sparse_attention

    mask = BlockSparseMask(torch.ones(2, 2, dtype=torch.bool), 64)
    q, k, v = _small(D=32)
    with pytest.raises(
        ValueError, match=r"'triton' cannot run .*head dim 32 is not supported \(expected one of \(64, 128\)\)"
    ):
        block_sparse_attention(q, k, v, mask, backend="triton")
    q, k, v = _small(dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype torch.float64 is not supported"):
        block_sparse_attention(q, k, v, mask, backend="triton")
    q, k, v = _small()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        block_sparse_attention(q, k, v, mask, backend="triton")
    # shape checks are the api's own, whatever the backend
    with pytest.raises(ValueError, match=r"block mask has 2 blocks per side but S=300"):
        block_sparse_attention(*_small(S=300), mask, backend="triton")


def test_cpu_without_interpreter_is_a_clear_error(no_interpreter):
    q, k, v = _small()
    assert "TRITON_INTERPRET=1" in tb.unsupported_reason(q)
    assert tb.unsupported_reason(q.bfloat16()) is not None


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
            for c in indices[indptr[r] : indptr[r + 1]].tolist():
                self.allowed[r * R : (r + 1) * R, c * C : (c + 1) * C] = True
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
        ref = masked_attention_f64(q, k, v, dense, bs, scale, kl)
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


def test_launch_order_choice():
    """'auto' keeps heavy-first off CUDA (and where a head's K/V fits L2); explicit orders are obeyed."""
    from radial_attention.mask import radial_block_mask

    mask = radial_block_mask(5, 200)
    t = launch.mask_tensors(mask, "cpu")
    q = torch.zeros(1, 2, 1000, 64)
    row, col = launch.launch_orders(t, q)
    assert row is t["row_order"] and col is t["col_order"]
    # heavy-first: rows by kept key blocks, descending
    counts = t["kv_counts"][0, 0][row[0, 0].long()]
    assert bool((counts[:-1] >= counts[1:]).all())
    with tb.triton_kernel_config(launch_order="sequential"):
        row, col = launch.launch_orders(t, q)
        assert torch.equal(row[0, 0], torch.arange(mask.num_blocks, dtype=torch.int32))
        assert torch.equal(col[0, 0], torch.arange(mask.num_blocks, dtype=torch.int32))
        with tb.triton_kernel_config(launch_order="heavy-first"):  # nested: the inner one wins
            assert launch.launch_orders(t, q)[0] is t["row_order"]
        assert launch.launch_orders(t, q)[0] is t["sequential"]  # and the outer one is back
    assert launch.launch_orders(t, q)[0] is t["row_order"]


def test_index_tensors_live_in_the_mask_and_on_the_device_of_q():
    mask = BlockSparseMask(torch.tensor([[True, False], [True, True]]), 64)
    t = launch.mask_tensors(mask, "cpu")
    assert launch.mask_tensors(mask, "cpu") is t  # cached in the mask, not looked up by a tensor's identity
    assert t["kv_indices"] is mask._index("kv_indices", "cpu")  # the mask's own lists, not a copy
    assert [k for k in mask._derived if k[0] == "triton.index"] == [("triton.index", "cpu")]
    assert torch.equal(t["row_order"][0, 0], torch.tensor([1, 0], dtype=torch.int32))  # row 1 keeps 2 blocks


def test_kernel_config_context_manager_and_the_deprecated_globals():
    q = torch.zeros(1, 1, 128, 64)
    fwd = launch.KernelConfig(32, 32, 4, 2)
    with tb.triton_kernel_config(fwd=fwd):
        assert launch._config("fwd", q, 64) is fwd
        assert launch._config("dq", q, 64) == launch.KernelConfig(64, 64)  # not set: the default (CPU)
    assert launch._config("fwd", q, 64) == launch.KernelConfig(64, 64)
    with pytest.raises(
        ValueError, match=r"launch_order must be one of \('auto', 'heavy-first', 'sequential'\), got 'fast'"
    ):
        with tb.triton_kernel_config(launch_order="fast"):
            pass
    with pytest.raises(TypeError, match="fwd must be a KernelConfig, got tuple"):
        with tb.triton_kernel_config(fwd=(32, 32)):
            pass
    # The old globals still work for one release, with a DeprecationWarning when written.
    try:
        with pytest.warns(DeprecationWarning, match="CONFIG_OVERRIDES is deprecated"):
            launch.CONFIG_OVERRIDES["fwd"] = fwd
        assert launch._config("fwd", q, 64) is fwd
        with pytest.warns(DeprecationWarning, match="LAUNCH_ORDER is deprecated"):
            launch.LAUNCH_ORDER["value"] = "sequential"
        assert launch._launch_order() == "sequential"
        with tb.triton_kernel_config(launch_order="heavy-first"):  # the context manager wins
            assert launch._launch_order() == "heavy-first"
    finally:
        with pytest.warns(DeprecationWarning):
            launch.CONFIG_OVERRIDES.clear()
        with pytest.warns(DeprecationWarning):
            launch.LAUNCH_ORDER["value"] = "auto"


def test_one_config_table_keyed_by_compute_capability():
    hopper = launch._tuned_config("fwd", (9, 0), 128, 128)
    assert hopper == launch.KernelConfig(128, 128, 8, 3, use_tma=True)
    assert launch._tuned_config("fwd", (10, 0), 128, 128) is hopper  # newer GPUs: the highest entry below
    ampere = launch._tuned_config("fwd", (8, 0), 128, 128)
    assert ampere == launch.KernelConfig(128, 64, 8, 3, use_tma=False)  # the pointer path, smaller key tiles
    for kind in ("fwd", "dq", "dkdv"):
        for D in (64, 128):
            for bs in (64, 128):
                for cap in ((7, 5), (8, 0), (8, 9), (9, 0), (12, 0)):
                    cfg = launch._tuned_config(kind, cap, D, bs)
                    assert cfg.use_tma == (cap >= (9, 0))
                    launch._check_config(cfg, bs, kind)


# ----------------------------------------------------------------------------- PTX fingerprints
def test_kernel_ptx_fingerprint_ignores_moved_lines_and_sees_code_changes(tmp_path, monkeypatch, no_interpreter):
    """benchmarks/kernel_ptx.py says whether a kernels.py change changes the GPU code: lines moved
    (debug info only) give the same hash, a changed instruction another (the delta kernel: quick)."""
    spec = importlib.util.spec_from_file_location("kernel_ptx", HERE.parent / "benchmarks" / "kernel_ptx.py")
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernel_ptx", tool)  # its dataclass looks itself up there
    spec.loader.exec_module(tool)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    source = (HERE.parent / tool.KERNELS).read_text()
    delta = next(v for v in tool.variants(quick=True) if v.kind == "delta")

    def fingerprint(text, name):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        return tool.compile_variant(tool.load_kernels(path, name), delta)

    same = fingerprint(source, "kernels_same")
    assert fingerprint("\n\n# moved down\n" + source, "kernels_moved") == same
    changed = source.replace(
        "delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)", "delta = tl.sum(o.to(tl.float32), axis=1)"
    )
    assert changed != source
    assert fingerprint(changed, "kernels_changed") != same

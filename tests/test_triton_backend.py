"""The Triton backend: interpreter runs (in a subprocess) and input validation (in this process).

The numerical cases live in ``tests/triton_interpreter_cases.py``; Triton's interpreter must be on
before ``triton`` is imported, so they run in a child ``pytest`` with ``TRITON_INTERPRET=1`` and this
test process (and every other test module) stays uninterpreted.
"""

from __future__ import annotations

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

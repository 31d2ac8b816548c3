"""The demo's timing loop and the attention benchmark's planning and report (CPU, no real timing checks)."""

import json
import re

import pytest
import torch

from radial_attention.cli import demo_cmd


class _FakeTransformer:
    """Records its calls; returns a velocity that says which call of the step it was (0, 1, ...)."""

    def __init__(self, name, log):
        self.name, self.log, self.calls_this_step, self.last_t = name, log, 0, None

    def __call__(self, hidden_states, timestep, encoder_hidden_states, return_dict):
        t = float(timestep[0])
        self.calls_this_step = 0 if t != self.last_t else self.calls_this_step + 1
        self.last_t = t
        self.log.append(self.name)
        return (torch.full_like(hidden_states, float(self.calls_this_step)),)


def test_demo_interleaves_dense_and_radial_calls_and_uses_the_first_output():
    from diffusers import FlowMatchEulerDiscreteScheduler

    log = []
    dense, radial = _FakeTransformer("dense", log), _FakeTransformer("radial", log)
    latents = torch.zeros(1, 2, 3)
    runs = demo_cmd._denoise_both(
        dense,
        radial,
        latents,
        None,
        FlowMatchEulerDiscreteScheduler(shift=5.0),
        steps=2,
        repeats=3,
        device=torch.device("cpu"),
    )
    # per step: dense first, then radial first, then dense first again
    assert log == ["dense", "radial", "radial", "dense", "dense", "radial"] * 2
    for name in ("dense", "radial"):
        final, times, trail = runs[name]
        assert [len(t) for t in times] == [3, 3] and len(trail) == 2
        # the velocity of each step's first call is 0: the latents never move
        assert torch.equal(final, latents)


def test_demo_summary_spread_format():
    assert demo_cmd._spread([0.5, 0.2, 0.3]) == "0.300 s (0.200-0.500)"


def _bench_args(*argv):
    from radial_attention.cli.main import build_parser

    return build_parser().parse_args(["bench", *argv])


@pytest.fixture
def bench():
    from radial_attention.bench import attention

    return attention


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults")
def test_bench_plans_cpu_sizes_in_float32_with_gather(bench, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _bench_args()
    device, cases = bench.plan(args)
    assert device.type == "cpu" and args.dtype == "float32"
    assert [c.name for c in cases] == list(bench.CPU_CASES)
    assert all(c.seq_len <= bench.CPU_MAX_TOKENS for c in cases)
    assert args.impls[0] == "gather" and "triton" not in args.impls
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    smoke = _bench_args("--smoke")
    _, cases = bench.plan(smoke)
    assert [c.name for c in cases] == list(bench.SMOKE_CASES) and "triton" in smoke.impls
    with pytest.raises(ValueError, match="hunyuan-720p-4x .460,800 tokens."):
        bench.plan(_bench_args("--cases", "hunyuan-720p-4x"))


def test_bench_units_never_round_to_zero(bench):
    assert bench.fmt_rate(412.3) == "412 TFLOP/s"
    assert bench.fmt_rate(0.0352) == "35.2 GFLOP/s"
    assert bench.fmt_rate(8e-4) == "800 MFLOP/s"
    assert bench.fmt_ms(1234.5) == "1234" and bench.fmt_ms(0.0456) == "0.046" and bench.fmt_ms(0.004) == "0.004"
    assert bench.error_tolerance(1e-7, "float32") == 1e-5 and bench.error_tolerance(2e-3, "bfloat16") == 4e-3


@pytest.mark.slow  # a benchmark smoke run (CI runs it; -m "not slow" skips it)
def test_bench_smoke_report_has_no_empty_table(bench, tmp_path, capsys):
    args = _bench_args(
        "--smoke",
        "--device",
        "cpu",
        "--cases",
        "smoke-wan",
        "--impls",
        "gather",
        "--modes",
        "fwd",
        "--check-rows",
        "16",
        "--budget",
        "0.01",
        "--out",
        str(tmp_path),
    )
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "attention.json").read_text())
    (rec,) = doc["cases"]
    assert rec["case"] == "smoke-wan" and rec["errors"] == {}
    assert rec["fwd"]["gather"]["ms"] > 0 and rec["fwd"]["best_dense"] == "dense-default"
    assert rec["check"]["gather"] <= bench.error_tolerance(rec["check"]["dense_sdpa"], "float32")
    md = (tmp_path / "attention.md").read_text()
    # every table header row (followed by its separator) has at least one data row
    tables = re.findall(r"(\| case [^\n]*\n\| ---[^\n]*\n)(\|[^\n]*\n)?", md)
    assert tables and all(rows for _, rows in tables)
    assert not re.search(r"\b0\.0 [TGM]?FLOP/s", md + out)

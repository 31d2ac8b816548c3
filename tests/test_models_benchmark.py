"""``benchmarks/models.py --smoke`` (one forward per registry model, dense vs radial) runs on the CPU."""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_models", ROOT / "benchmarks" / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # a benchmark smoke run (CI runs it; -m "not slow" skips it)
def test_models_benchmark_smoke_measures_dense_and_radial(tmp_path):
    bench = _load()
    rc = bench.main(["--smoke", "--cases", "smoke-hunyuan", "--out", str(tmp_path)])
    assert rc == 0
    (result,) = json.loads((tmp_path / "models.json").read_text())["results"]
    assert result["status"] == "ok"
    # every self-attention call of the two blocks was radial, with the mask of this layout
    assert result["radial_calls"] == 2 and result["dense_calls"] == 0
    assert result["masks"] == {"F=5 T=64 extra=16": result["density"]} and 0 < result["density"] < 1
    assert set(result["built_ms"]) == {"math", "radial"} and all(v > 0 for v in result["built_ms"].values())
    # the full-depth estimate has 20 + 40 blocks' worth of time: more than the 2 built blocks
    assert result["full_depth_ms"]["radial"] > result["built_ms"]["radial"]
    assert "smoke-hunyuan" in (tmp_path / "models.md").read_text()


def test_every_case_names_a_registry_variant_and_a_tiny_input_builder():
    bench = _load()
    from radial_attention.models import registry
    from radial_attention.testing import tiny

    for name, case in {**bench.CASES, **bench.SMOKE}.items():
        variant = registry.get_variant(case["variant"])
        assert case["cls"] in variant.model_family.transformer_classes, name
        assert callable(getattr(tiny, case["inputs"][0])), name
        blocks = {attr for attr, _ in variant.model_family.self_attention}
        assert set(case["depth"]) == blocks, name


@pytest.mark.slow  # a benchmark smoke run (CI runs it; -m "not slow" skips it)
def test_pipeline_benchmark_smoke_shares_the_timing_and_full_depth_estimate(tmp_path):
    """benchmarks/pipeline.py and models.py share BlockTimer / measure / full_forward."""
    bench = _load()
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "benchmarks" / "pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    for name in ("BlockTimer", "measure", "full_forward"):  # models.py defines none of its own
        assert getattr(bench, name).__module__ == "pipeline", name
    # full depth = outside + mean block x depth; the first dense_layers blocks take the dense times
    blocks = {("blocks", 0): 1.0, ("blocks", 1): 3.0}
    assert pipeline.full_forward(10.0, blocks, {"blocks": 30}) == 6.0 + 30 * 2.0
    dense = {("blocks", 0): 5.0, ("blocks", 1): 5.0}
    assert (
        pipeline.full_forward(10.0, blocks, {"blocks": 30}, dense_blocks=dense, dense_layers=2)
        == 6.0 + 2 * 5.0 + 28 * 2.0
    )
    assert pipeline.main(["--smoke", "--cases", "smoke-wan", "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "pipeline.json").read_text())["results"]
    assert result["status"] == "ok" and result["full_depth"] == {"blocks": 40}
    assert result["forward_ms_full_depth"]["radial"] > result["radial_ms_built"]

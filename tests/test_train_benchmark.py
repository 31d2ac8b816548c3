"""``benchmarks/training.py --smoke`` runs end to end on the CPU and writes its JSON and table."""

import importlib.util
import json
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark smoke run (CI runs it; -m "not slow" skips it)
def test_training_benchmark_smoke(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "benchmarks" / "training.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench.main(["--smoke", "--lengths", "1,4", "--out", str(tmp_path)]) == 0
        assert bench.main(["--smoke", "--models", "hunyuan", "--lengths", "2", "--append", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(n)
    doc = json.loads((tmp_path / "training.json").read_text())
    done = {(r["model"], r["length"], r["variant"]) for r in doc["results"] if "median_s" in r}
    assert done == {
        (m, n, v)
        for m, lengths in (("wan1.3b", (1, 4)), ("hunyuan", (1, 2, 4)))
        for n in lengths
        for v in ("overhead", "dense", "radial")
    }
    assert not [r for r in doc["results"] if "error" in r]
    rows = doc["summary"]
    assert len(rows) == 5 and all(r["full_speedup"] > 0 for r in rows)
    radial = [r for r in doc["results"] if r["variant"] == "radial"]
    from radial_attention.ops import resolve_backend

    cpu_auto = resolve_backend("auto", torch.zeros(1, 1, 128, 64), requires_grad=True)  # what "auto" runs here
    assert cpu_auto == "gather"
    assert all(r["radial_calls"] > 0 and r["attention_backend"] == cpu_auto for r in radial)
    assert min(r["density"] for r in rows) < 0.6  # the 4x layouts are really sparse
    table = (tmp_path / "training.md").read_text()
    assert "| tiny HunyuanVideo (smoke) | 2x (13 frames) |" in table and "Smoke run" in table
    assert capsys.readouterr().out.rstrip().endswith(table.rstrip().splitlines()[-1])  # the table is printed last


def _load_bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_training_summary", ROOT / "benchmarks" / "training.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def _records(layers, full, dense_in_radial, overhead, dense, radial):
    common = dict(
        model="m",
        model_name="M",
        length=4,
        video_frames=321,
        video="v",
        video_tokens=10,
        layers=layers,
        blocks_measured=layers,
        blocks_full=full,
        density=0.1,
        radial_dense_layers=dense_in_radial,
    )
    return [
        dict(common, variant=v, median_s=t) for v, t in (("overhead", overhead), ("dense", dense), ("radial", radial))
    ]


def test_full_depth_estimate(monkeypatch):
    bench = _load_bench(monkeypatch)
    # 2 all-radial blocks of a 40-block model: dense block 10 s, radial block 2 s, 1 s outside the blocks.
    (row,) = bench.summarize(_records(2, 40, 0, 1.0, 21.0, 5.0))
    assert row["full_dense_s"] == 1 + 40 * 10 and row["full_radial_s"] == 1 + 2 * 10 + 38 * 2
    assert row["block_speedup"] == 5.0
    # A full-depth run of the recipe (its first 2 blocks dense) is its own full-depth figure.
    (row,) = bench.summarize(_records(30, 30, 2, 1.0, 301.0, 1.0 + 2 * 10 + 28 * 2))
    assert row["full_dense_s"] == 301.0 and row["full_radial_s"] == 1 + 2 * 10 + 28 * 2
    assert row["block_speedup"] == 5.0
    assert "30 of 30 (2 dense in radial)" in bench.markdown(
        [row],
        dict(
            device_name="d",
            dtype="bf16",
            torch="t",
            rank=8,
            dense_sdpa="x",
            block_size=128,
            backend="b",
            repeats=1,
            warmup=1,
        ),
    )

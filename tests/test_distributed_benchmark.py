"""The sequence-parallel benchmark's --smoke mode: CPU, gloo, 4 processes, tiny Wan model.

Checks that the script runs end to end through both paths it measures (the op-level Ulysses
attention and a diffusers transformer under context parallelism), on 1, 2 and 4 ranks of one
launch (the 2-rank runs use sub-groups, as 1..8 GPUs do), that every multi-process output matches
the 1-process one, and that it writes the JSON and markdown it promises.
"""

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a benchmark smoke run (CI runs it; -m "not slow" skips it)

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "sequence_parallel.py"


def test_smoke_run_matches_one_process_and_writes_reports(tmp_path):
    out = tmp_path / "sp"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--smoke-ranks", "4", "--frames", "81", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out.with_suffix(".json")).read_text())
    records = result["records"]
    seen = {(r["what"], r["case"], r["mode"], r["gpus"]) for r in records}
    cases = {r["case"] for r in records}
    assert len(cases) == 1
    for what in ("attention", "transformer"):
        for case in cases:
            for mode in ("dense", "radial"):
                for gpus in (1, 2, 4):
                    assert (what, case, mode, gpus) in seen
    multi = [r for r in records if r["gpus"] > 1]
    assert all(r["match"] and r["rel_err"] <= 1e-4 for r in multi), multi
    assert all(r["ms"] > 0 and "speedup" in r and "efficiency" in r for r in records)
    assert result["environment"]["smoke"] and result["environment"]["world_size"] == 4
    md = out.with_suffix(".md").read_text()
    assert "| what | case |" in md and md.count("\n| ") == len(records) + 2
    # The table is printed last.
    assert proc.stdout.rstrip().endswith(md.rstrip().splitlines()[-1])

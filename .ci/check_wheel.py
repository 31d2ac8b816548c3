"""Checks of an installed wheel (CI job 3): run with the Python of the venv the wheel went into,
from outside the source tree, as ``python .ci/check_wheel.py VENV``.

The package must come from VENV (not a checkout), carry its LICENSE, ``py.typed`` and the benchmark
harness, report one version everywhere, and its command must run ``mask``, ``bench`` and ``demo``."""

from __future__ import annotations

import importlib.metadata as md
import json
import pathlib
import subprocess
import sys
import tempfile

venv = pathlib.Path(sys.argv[1]).resolve()
import radial_attention  # noqa: E402

package = pathlib.Path(radial_attention.__file__).resolve().parent
assert package.is_relative_to(venv), f"radial_attention imported from {package}, not from the wheel in {venv}"
dist = md.distribution("radial-attention")
assert dist.version == radial_attention.__version__, (dist.version, radial_attention.__version__)
files = {str(f) for f in dist.files}
licenses = [f for f in files if f.endswith("LICENSE")]
assert licenses and "MIT License" in (venv / pathlib.Path(dist.locate_file(licenses[0]))).read_text(), files
for needed in (
    "radial_attention/py.typed",
    "radial_attention/bench/attention.py",
    "radial_attention/ops/triton/kernels.py",
):
    assert needed in files, f"{needed} is not in the wheel"
assert dist.metadata["License-Expression"] == "MIT", dist.metadata["License-Expression"]

cli = venv / "bin" / "radial-attention"


def run(*argv: str) -> str:
    proc = subprocess.run([str(cli), *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"radial-attention {' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp)
    assert run("--version").split() == ["radial-attention", radial_attention.__version__]
    run(
        "mask",
        "--model",
        "wan2.1",
        "--height",
        "480",
        "--width",
        "832",
        "--frames",
        "33",
        "--png",
        str(out / "mask.png"),
    )
    assert (out / "mask.png").stat().st_size > 0
    assert "--smoke" in run("bench", "--help")
    run(
        "bench",
        "--smoke",
        "--device",
        "cpu",
        "--cases",
        "smoke-wan",
        "--impls",
        "gather",
        "--modes",
        "fwd",
        "--budget",
        "0.01",
        "--check-rows",
        "8",
        "--out",
        str(out / "bench"),
    )
    (case,) = json.loads((out / "bench" / "attention.json").read_text())["cases"]
    assert case["case"] == "smoke-wan" and case["fwd"]["gather"]["ms"] > 0, case
    run(
        "demo",
        "--frames",
        "17",
        "--height",
        "96",
        "--width",
        "160",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--png",
        str(out / "demo.png"),
    )
    assert (out / "demo.png").stat().st_size > 0
print(f"check_wheel: radial-attention {dist.version} from {package}: metadata, files, mask, bench, demo ok")

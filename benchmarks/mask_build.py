"""Time the first build of radial masks in a fresh process, on one CPU core (import time excluded).

    python benchmarks/mask_build.py            # the cases of the mask issue, 5 fresh processes each

Each measurement starts a new Python process pinned to one core (``taskset`` when available,
and torch/numpy limited to one thread), imports the library, then times one
``radial_block_mask`` call: no cache, no precomputed data.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

CASES = [
    # name, frames, tokens per frame, text tokens, preset
    ("Wan2.1 720p 81f (wan)", 21, 3600, 0, "wan"),
    ("Wan2.1 480p 81f (wan)", 21, 1560, 0, "wan"),
    ("HunyuanVideo 768x1280 117f (hunyuan)", 30, 3840, 256, "hunyuan"),
    ("HunyuanVideo 4x: 128f x 3600 (hunyuan, d=1.0)", 128, 3600, 256, "hunyuan"),
    ("worst offsets: 128f x 3601 (hunyuan)", 128, 3601, 0, "hunyuan"),
]

CHILD = r"""
import os, sys, time, json
from radial_attention.mask import radial_block_mask
F, T, X, preset = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
decay = 1.0 if F >= 128 else None
t = time.perf_counter()
m = radial_block_mask(F, T, preset=preset, extra_tokens=X, decay=decay)
dt = time.perf_counter() - t
print(json.dumps({"ms": dt * 1e3, "blocks": m.num_blocks, "density": m.density}))
"""


def one_run(F, T, X, preset):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, "-c", CHILD, str(F), str(T), str(X), preset]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(repeats: int = 5):
    rows = []
    for name, F, T, X, preset in CASES:
        runs = [one_run(F, T, X, preset) for _ in range(repeats)]
        ms = [r["ms"] for r in runs]
        rows.append((name, runs[0]["blocks"], runs[0]["density"], statistics.median(ms), max(ms)))
    print(f"| case | blocks | density | first build, median of {repeats} fresh processes (ms) | worst (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for name, nb, dens, med, worst in rows:
        print(f"| {name} | {nb} x {nb} | {dens:.4f} | {med:.1f} | {worst:.1f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

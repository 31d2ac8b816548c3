"""A/B timing of the Triton backend's forward: run it once per package version (PYTHONPATH picks the
``radial_attention`` to time), alternating, and compare the printed medians (GPU).

    PYTHONPATH=/path/to/old python benchmarks/triton_ab.py --label old
    python benchmarks/triton_ab.py --label new

Cases: Wan2.1-1.3B 480p 81f and Wan2.1-14B 720p 81f (the ``wan`` preset), bf16, q/k/v ``[B, S, H, D]``
given as ``[B, H, S, D]`` views, median of ``--reps`` calls after warm-up, CUDA events per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings

import torch

import radial_attention
from radial_attention.mask import radial_mask_from_preset
from radial_attention.ops import block_sparse_attention

CASES = {"wan1.3b-480p-81f": (21, 1560, 12), "wan14b-720p-81f": (21, 3600, 40)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--label", required=True)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    out = {}
    for name, (frames, tpf, heads) in CASES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = radial_mask_from_preset("wan", frames, tpf)
        S = frames * tpf
        q, k, v = (torch.randn(1, S, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))

        def run():
            return block_sparse_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, backend="triton"
            )

        with torch.no_grad():
            for _ in range(3):
                run()
            times = []
            for _ in range(args.reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                a.record()
                run()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
        out[name] = round(statistics.median(times), 3)
    print(json.dumps(dict(label=args.label, package=radial_attention.__file__, triton_fwd_ms=out)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

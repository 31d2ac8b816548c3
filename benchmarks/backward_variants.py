"""Forward+backward of the Triton kernels under launch-order and dK/dV tile variants, on one case.

    python benchmarks/backward_variants.py                       # HunyuanVideo 4x length, 24 heads
    python benchmarks/backward_variants.py --frames 30 --tokens 3840

Times (CUDA events, median of --reps after a warm-up) of out.backward(dO) through
``block_sparse_attention(backend="triton")`` for each variant, and of the default twice (to see the
run-to-run spread). Variants are run under ``radial_attention.ops.triton.triton_kernel_config``
(launch order and per-kernel configs). Prints one table; GPU only.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from radial_attention.mask import radial_block_mask  # noqa: E402
from radial_attention.ops import block_sparse_attention  # noqa: E402
from radial_attention.ops.triton import launch  # noqa: E402


def time_fwd_bwd(q, k, v, do, mask, reps):
    def step():
        for t in (q, k, v):
            t.grad = None
        out = block_sparse_attention(q, k, v, mask, backend="triton")
        out.backward(do)

    step()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--tokens", type=int, default=3600)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--decay", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--variants", default=None, help="comma-separated indices into the variant list (default: all)")
    args = p.parse_args()
    mask = radial_block_mask(args.frames, args.tokens, preset="hunyuan", decay=args.decay)
    S, H, D = args.frames * args.tokens, args.heads, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (
        torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2) for _ in range(4)
    )
    for t in (q, k, v):
        t.requires_grad_(True)
    KC = launch.KernelConfig
    variants = [
        ("default (auto order, dkdv 64x128 w8 s2)", "auto", {}),
        ("heavy-first order", "heavy-first", {}),
        ("sequential order", "sequential", {}),
        ("dkdv 64x128 w8 s3", "heavy-first", {"dkdv": KC(64, 128, 8, 3, True)}),
        ("dkdv 128x128 w8 s2", "heavy-first", {"dkdv": KC(128, 128, 8, 2, True)}),
        ("dkdv 64x64 w4 s3", "heavy-first", {"dkdv": KC(64, 64, 4, 3, True)}),
        ("default again", "auto", {}),
    ]
    if args.variants:
        variants = [variants[int(i)] for i in args.variants.split(",")]
    rows = []
    for name, order, overrides in variants:
        try:
            with launch.triton_kernel_config(launch_order=order, **overrides):
                ms = time_fwd_bwd(q, k, v, do, mask, args.reps)
            rows.append((name, f"{ms:.1f}"))
        except Exception as e:  # a config that does not compile or fit is a result too
            rows.append((name, f"failed: {type(e).__name__}: {str(e)[:80]}"))
        print(rows[-1], flush=True)
    print(
        f"\nfwd+bwd, F={args.frames} x T={args.tokens} (S={S:,}), {H} heads, density {mask.density:.4f}, "
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    )
    print("| variant | fwd+bwd (ms) |\n| --- | --- |")
    for name, ms in rows:
        print(f"| {name} | {ms} |")


if __name__ == "__main__":
    main()

"""``radial-attention bench``: time block-sparse attention (Triton, FlexAttention, FlashInfer) against
dense SDPA at real video-model sizes, and check bf16 correctness at those sizes.

The benchmark itself is :mod:`radial_attention.bench.attention` (it needs a GPU for real figures; on
a CPU it runs small cases of its own in float32, and ``--smoke`` runs tiny cases, on the CPU under
``TRITON_INTERPRET=1`` for the Triton kernels). ``benchmarks/attention.py`` in a source checkout is
the same benchmark as a script."""

from __future__ import annotations

import argparse

from radial_attention.bench.cases import CASES, CPU_CASES, SMOKE_CASES
from radial_attention.cli.args import add_command, device_name, nonneg_int, output_dir, positive_float, positive_int

# The case names, from the torch-free case tables (building the parser does not load torch).
CASE_NAMES = list(CASES)
CPU_CASE_NAMES = list(CPU_CASES)
SMOKE_CASE_NAMES = list(SMOKE_CASES)
IMPLS = ["fa4", "gather", "triton", "flex", "flex-direct", "flashinfer-fa2", "flashinfer-fa3"]
DENSE_BACKENDS = ["fa4", "flash", "cudnn", "efficient", "math"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``radial-attention bench`` and ``benchmarks/attention.py``)."""
    p.add_argument(
        "--cases",
        nargs="+",
        default=None,
        choices=CASE_NAMES + CPU_CASE_NAMES + SMOKE_CASE_NAMES,
        metavar="CASE",
        help=f"cases to run (default: a GPU: {', '.join(CASE_NAMES)}; a CPU: {', '.join(CPU_CASE_NAMES)}; "
        f"--smoke: {', '.join(SMOKE_CASE_NAMES)}); the GPU cases are refused on a CPU",
    )
    p.add_argument("--smoke", action="store_true", help="tiny cases (CPU with TRITON_INTERPRET=1, or a quick GPU pass)")
    p.add_argument("--device", type=device_name, default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 on a GPU, float32 on a CPU (where bf16 attention is slow)",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        default=None,
        choices=IMPLS,
        metavar="IMPL",
        help="block-sparse implementations to time (default: a GPU: fa4 triton flex flashinfer-fa2 "
        "flashinfer-fa3; a CPU: gather flex, and triton under TRITON_INTERPRET=1): fa4 (FlashAttention-4 "
        "through the project's backend), gather (the CPU default backend), triton, flex (the project's "
        "backend), flex-direct (torch flex_attention on BlockMask.from_kv_blocks), flashinfer-fa2, flashinfer-fa3",
    )
    p.add_argument(
        "--dense",
        nargs="+",
        default=["fa4", "flash", "cudnn", "efficient"],
        choices=DENSE_BACKENDS,
        metavar="BACKEND",
        help=f"dense kernels to time on a GPU, of {', '.join(DENSE_BACKENDS)} (fa4: FlashAttention-4's dense "
        "kernel, where it runs; the others: torch SDPA's; a CPU times torch's default)",
    )
    p.add_argument(
        "--no-dense-bwd",
        nargs="*",
        default=["flash", "efficient"],
        choices=DENSE_BACKENDS,
        metavar="BACKEND",
        help="dense backends timed forward only (the slow ones; cuDNN is the fastest on Hopper)",
    )
    p.add_argument(
        "--dense-max-tokens",
        type=positive_int,
        default=200_000,
        help="above this many tokens only the cuDNN and FA4 dense kernels are timed",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["fwd", "fwdbwd"],
        choices=["fwd", "fwdbwd"],
        help="forward, and forward + backward",
    )
    p.add_argument("--budget", type=positive_float, default=1.0, help="seconds of timed calls per measurement")
    p.add_argument("--min-reps", type=positive_int, default=3, help="timed calls per measurement at least")
    p.add_argument("--check-rows", type=nonneg_int, default=256, help="query rows in the correctness check (0: skip)")
    p.add_argument("--out", type=output_dir, default=None, help="directory for attention.json and attention.md")
    p.add_argument("--verbose", action="store_true", help="print the traceback of a failed measurement")


def register(sub) -> None:
    p = add_command(
        sub,
        "bench",
        help="benchmark block-sparse attention vs dense SDPA / FlexAttention / FlashInfer (GPU; small cases on a CPU)",
        description=DESCRIPTION,
    )
    add_arguments(p)
    p.set_defaults(func=run)


DESCRIPTION = (
    "Per case (Wan2.1-14B 720p, HunyuanVideo 117 frames and 4x length, Wan2.1-1.3B 480p at 81/161 frames): "
    "mask density, times of dense SDPA per backend, FlexAttention on the same mask, FlashInfer fa2/fa3 (if "
    "installed) and the Triton kernels, forward and forward+backward, useful TFLOP/s, speed-ups, and a bf16 "
    "error check at the real size. On a CPU: two small cases (2 heads of Wan2.1-1.3B 480p 17 frames, HunyuanVideo "
    "320p 33 frames) in float32, the gather backend against torch's dense SDPA. One line per measurement as it runs; "
    "writes attention.json / attention.md to --out."
)


def run(args) -> int:
    from radial_attention.bench import attention

    return attention.main(args)

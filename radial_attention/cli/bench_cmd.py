"""``radial-attention bench``: time block-sparse attention (Triton, FlexAttention, FlashInfer) against
dense SDPA at real video-model sizes, and check bf16 correctness at those sizes.

The benchmark itself is ``benchmarks/attention.py`` in the repository (it needs a GPU for real
figures; ``--smoke`` runs tiny cases, on the CPU under ``TRITON_INTERPRET=1``)."""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys


def _bench_module():
    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "attention.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmarks/attention.py not found next to the package ({path}); the bench command runs from a "
            f"source checkout of radial-attention"
        )
    name = "radial_attention_benchmarks_attention"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


CASE_NAMES = ["wan14b-720p-81f", "hunyuan-768p-117f", "wan1.3b-480p-81f", "wan1.3b-480p-161f", "hunyuan-720p-4x"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``radial-attention bench`` and ``benchmarks/attention.py``)."""
    p.add_argument("--cases", nargs="+", default=None,
                   help=f"cases to run (default: all); known: {', '.join(CASE_NAMES)} (smoke: smoke-wan, smoke-hunyuan)")
    p.add_argument("--smoke", action="store_true", help="tiny cases (CPU with TRITON_INTERPRET=1, or a quick GPU pass)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--impls", nargs="+", default=["triton", "flex", "flashinfer-fa2", "flashinfer-fa3"],
                   help="block-sparse implementations to time: triton, flex (the project's backend), flex-direct "
                        "(torch flex_attention on BlockMask.from_kv_blocks), flashinfer-fa2, flashinfer-fa3")
    p.add_argument("--dense", nargs="+", default=["flash", "cudnn", "efficient"], help="dense SDPA backends to time")
    p.add_argument("--no-dense-bwd", nargs="*", default=["flash", "efficient"],
                   help="dense backends timed forward only (the slow ones; cuDNN is the fastest on Hopper)")
    p.add_argument("--dense-max-tokens", type=int, default=200_000,
                   help="above this many tokens only the cuDNN dense backend is timed")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per measurement")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--check-rows", type=int, default=256, help="query rows in the correctness check (0: skip)")
    p.add_argument("--out", default=None, help="directory for attention.json and attention.md")
    p.add_argument("--verbose", action="store_true")


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark block-sparse attention vs dense SDPA / FlexAttention / FlashInfer (GPU)",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


DESCRIPTION = (
    "Per case (Wan2.1-14B 720p, HunyuanVideo 117 frames and 4x length, Wan2.1-1.3B 480p at 81/161 frames): "
    "mask density, times of dense SDPA per backend, FlexAttention on the same mask, FlashInfer fa2/fa3 (if "
    "installed) and the Triton kernels, forward and forward+backward, useful TFLOP/s, speed-ups, and a bf16 "
    "error check at the real size. Writes attention.json / attention.md to --out."
)


def run(args) -> int:
    return _bench_module().main(args)

"""What our fa4 wrapper costs on top of calling FlashAttention-4 directly, and where (GPU).

Three measurements, one process:

1. Host time per call on a small case (the GPU is not the bottleneck, so wall time / calls is the
   Python and launch cost): FA4's ``flash_attn_func`` with the block tables, FA4's
   ``_flash_attn_fwd`` (what our op calls), our ``fa4._forward`` (no custom op), the custom op,
   ``fa4.attention`` and ``block_sparse_attention(backend="fa4" / "auto")``.
2. A cProfile of ``block_sparse_attention(backend="fa4")`` over those calls: the top functions.
3. Real cases (Wan2.1-1.3B 480p and Wan2.1-14B 720p, forward): FA4 dense, FA4 direct and ours,
   interleaved in rounds (drift cancels), timed two ways: one call from an idle GPU (the host cost
   shows in full, as in ``attention_peers.py``) and ``--stream`` calls back to back between two
   events (the host cost hides behind the previous kernel, as in a transformer forward).

    python benchmarks/fa4_overhead.py --out results/
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pathlib
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from attention_peers import CASES, _fa4_tables, contestant  # noqa: E402

from radial_attention.mask import radial_block_mask  # noqa: E402
from radial_attention.ops import block_sparse_attention  # noqa: E402
from radial_attention.ops import fa4 as fa4_backend  # noqa: E402


def host_us_per_call(fn, calls):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def host_overhead(args, device):
    """Per-call host cost on a small case: B=1, S=2048 (16 blocks), H=2, D=128."""
    from flash_attn.cute import flash_attn_func
    from flash_attn.cute import interface as fa4

    mask = radial_block_mask(4, 512, preset="wan")
    q, k, v = (torch.randn(1, 2048, 2, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
    fwd, _ = _fa4_tables(mask, device)
    lists = fa4_backend.block_lists(mask, device)
    sparse = fa4_backend._forward_tensors(lists, slice(0, 1), None, 128)
    scale = 128**-0.5
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    out = torch.empty_like(q)
    fns = {
        "fa4 flash_attn_func (direct)": lambda: flash_attn_func(q, k, v, block_sparse_tensors=fwd),
        "fa4 _flash_attn_fwd (out given)": lambda: fa4._flash_attn_fwd(
            q, k, v, softmax_scale=scale, causal=False, block_sparse_tensors=sparse, return_lse=False, out=out
        ),
        "ours fa4._forward (no custom op)": lambda: fa4_backend._forward(q, k, v, lists, None, scale, 128, False),
        "ours custom op _fwd_op": lambda: fa4_backend._fwd_op(q, k, v, list(lists), None, scale, 128, False),
        "ours fa4.attention": lambda: fa4_backend.attention(qt, kt, vt, mask, scale=scale),
        "ours block_sparse_attention fa4": lambda: block_sparse_attention(qt, kt, vt, mask, backend="fa4"),
        "ours block_sparse_attention auto": lambda: block_sparse_attention(qt, kt, vt, mask, backend="auto"),
    }
    with torch.no_grad():
        res = {name: round(host_us_per_call(fn, args.calls), 1) for name, fn in fns.items()}
        for name, us in res.items():
            print(f"  host {name:<36} {us:8.1f} us/call", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            fns["ours block_sparse_attention fa4"]()
        prof.disable()
        torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    return res, s.getvalue()


def timed_rounds(fns, rounds, stream):
    """{name: (median single-call ms, median back-to-back ms per call)}, contestants interleaved."""
    single = {n: [] for n in fns}
    b2b = {n: [] for n in fns}
    for fn in fns.values():  # warm-up (compiles)
        fn()
        fn()
    torch.cuda.synchronize()
    for _ in range(rounds):
        for name, fn in fns.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            single[name].append(a.elapsed_time(b))
            a.record()
            for _ in range(stream):
                fn()
            b.record()
            torch.cuda.synchronize()
            b2b[name].append(a.elapsed_time(b) / stream)
    return {n: (statistics.median(single[n]), statistics.median(b2b[n])) for n in fns}


def real_cases(args, device):
    out = {}
    for case in args.cases:
        preset, frames, tpf, text, heads, decay = CASES[case]
        mask = radial_block_mask(frames, tpf, preset=preset, extra_tokens=text, decay=decay)
        S = frames * tpf + text
        q, k, v = (torch.randn(1, S, heads, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
        fns = {c: contestant(c, mask, q, k, v, False) for c in ("fa4-dense", "fa4-direct", "ours-fa4")}
        with torch.no_grad():
            res = timed_rounds(fns, args.rounds, args.stream)
        print(
            f"\n== {case} (S={S:,} x {heads}, density {mask.density:.4f}), median of {args.rounds} rounds", flush=True
        )
        row = {}
        for name, (one, many) in res.items():
            row[name] = dict(single_ms=round(one, 3), back_to_back_ms=round(many, 3))
            print(f"  {name:<11} single call {one:8.3f} ms   back to back ({args.stream}) {many:8.3f} ms/call")
        d, o, dense = row["fa4-direct"], row["ours-fa4"], row["fa4-dense"]
        for key in ("single_ms", "back_to_back_ms"):
            print(
                f"  {key:<16} ours / direct {o[key] / d[key]:.3f}; x/density vs FA4 dense: "
                f"ours {dense[key] / o[key] * mask.density:.3f}, direct {dense[key] / d[key] * mask.density:.3f}"
            )
        out[case] = dict(density=round(mask.density, 4), rows=row)
        del q, k, v
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="wan1.3b-480p-81f,wan14b-720p-81f", type=lambda s: s.split(","))
    p.add_argument("--calls", type=int, default=300, help="calls for the host-time measurement")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--stream", type=int, default=10, help="back-to-back calls per timing")
    p.add_argument("--no-host", action="store_true", help="skip the host-time measurement and profile")
    p.add_argument("--out", default="gpu-results")
    args = p.parse_args(argv)
    device = torch.device("cuda")
    host, profile = (None, "") if args.no_host else host_overhead(args, device)
    print(profile)
    cases = real_cases(args, device)
    outdir = pathlib.Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "fa4_overhead.json").write_text(json.dumps(dict(host_us=host, cases=cases), indent=1))
    if profile:
        (outdir / "fa4_overhead_profile.txt").write_text(profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

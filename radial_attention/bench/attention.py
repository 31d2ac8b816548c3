"""Benchmark block-sparse radial attention against dense SDPA, FlexAttention and FlashInfer.

Per case (a video model's radial mask at its real size): the mask density; the time of dense SDPA
per backend (flash, cuDNN, efficient), of FlexAttention fed the same block mask, of FlashInfer's
fa2 / fa3 block-sparse wrapper (forward only, when installed) and of this project's Triton kernels,
forward and forward+backward; useful TFLOP/s (``4 * H * S^2 * D * density / t``, x2.5 for
forward+backward as the issue specifies: a convention, the FLOPs really done are ~3.5x the forward's) and speed-ups against the fastest dense backend; and a bf16 correctness check at
the real size: the error of each block-sparse output against a float32 computation of the same
masked attention on a slice of query rows, next to dense bf16 SDPA's error against its own float32
computation (the block-sparse error must be at most twice that).

    radial-attention bench --out results/            # every case, on a GPU
    radial-attention bench --cases wan1.3b-480p-81f  # a subset
    radial-attention bench --device cpu              # small CPU cases (float32, gather backend)
    TRITON_INTERPRET=1 radial-attention bench --smoke --device cpu   # tiny, on the CPU

(``python benchmarks/attention.py`` in a source checkout takes the same options.)

Times: median of several calls after a warm-up (CUDA events), the number of calls chosen so each
measurement takes about ``--budget`` seconds. Writes ``attention.json`` and ``attention.md`` to
``--out``.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback
from typing import Callable, Optional

import torch
import torch.nn.functional as F


from radial_attention.bench.cases import CASES, CPU_CASES, CPU_MAX_TOKENS, SMOKE_CASES, Case  # noqa: F401


def build_mask(case: Case):
    from radial_attention.mask import radial_block_mask

    return radial_block_mask(
        case.frames,
        case.tokens_per_frame,
        preset=case.preset,
        extra_tokens=case.text_tokens,
        block_size=case.block_size,
        decay=case.decay,
    )


# ----------------------------------------------------------------------------- timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable, device, budget_s: float, min_reps: int = 3, max_reps: int = 25) -> dict:
    """Median time (ms) of ``fn()`` after one warm-up call; as many calls as fit ``budget_s``
    (at least ``min_reps``, the first timed call included). ``first_s``: the warm-up call, which
    pays compilation, autotuning, plans or FA4's JIT (wall clock)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()  # warm-up: compilation, autotuning, plans
    _sync(device)
    first_s = time.perf_counter() - t0

    def timed():
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    times = [timed()]
    reps = int(max(min_reps, min(max_reps, budget_s * 1e3 / max(times[0], 1e-3))))
    times += [timed() for _ in range(reps - 1)]
    return {
        "ms": statistics.median(times),
        "reps": len(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "first_s": first_s,
    }


# ----------------------------------------------------------------------------- implementations
def dense_sdpa(backend_name: Optional[str]):
    """Dense SDPA restricted to one backend (None: torch's own choice; ``"fa4"``: FlashAttention-4's
    dense kernel through ``radial_attention.ops.dense_attention``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend_name == "fa4":
        from radial_attention.ops import dense_attention

        return lambda q, k, v: dense_attention(q, k, v, backend="fa4")

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }

    def run(q, k, v):
        if backend_name is None:
            return F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel([backends[backend_name]]):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def flex_impl(mask, S, H, B, device):
    """FlexAttention with the same block mask: the ops engineer's backend if present, else direct."""
    try:
        from radial_attention.ops import flex as flex_backend  # noqa: F401

        def run(q, k, v):
            return flex_backend.attention(q, k, v, mask, scale=q.shape[-1] ** -0.5, key_lengths=None)

        return run, "radial_attention.ops.flex"
    except ImportError:
        pass
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = mask.to_flex_block_mask(S, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):
        return compiled(q, k, v, block_mask=block_mask)

    return run, "torch flex_attention (BlockMask.from_kv_blocks)"


def flex_direct_impl(mask, S, device):
    """torch's flex_attention fed ``BlockMask.from_kv_blocks`` (the mask's kept blocks), compiled once."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = mask.to_flex_block_mask(S, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):
        return compiled(q, k, v, block_mask=block_mask)

    return run


def gather_impl(mask):
    from radial_attention.ops import gather as gather_backend

    def run(q, k, v):
        return gather_backend.attention(q, k, v, mask, scale=q.shape[-1] ** -0.5, key_lengths=None)

    return run


def fa4_impl(mask):
    from radial_attention.ops import block_sparse_attention

    def run(q, k, v):
        return block_sparse_attention(q, k, v, mask, backend="fa4")

    return run


def triton_impl(mask):
    from radial_attention.ops import triton as triton_backend

    def run(q, k, v):
        return triton_backend.attention(q, k, v, mask, scale=q.shape[-1] ** -0.5, key_lengths=None)

    return run


def flashinfer_impl(mask, fi_backend: str):
    from radial_attention.ops import flashinfer as fi

    def run(q, k, v):
        return fi.attention(q, k, v, mask, scale=q.shape[-1] ** -0.5, key_lengths=None, fi_backend=fi_backend)

    return run


# ----------------------------------------------------------------------------- correctness at size
def check_rows(case: Case, mask, q, k, v, impls: dict, n_rows: int) -> dict:
    """Relative L2 error, on a slice of query rows, of each output vs float32 masked attention.

    Rows: ``n_rows`` rows from the middle of the sequence plus the last rows (the partial block).
    Dense bf16 SDPA is compared with float32 dense attention on the same rows (its own reference).
    """
    B, H, S, D = q.shape
    bs = mask.block_size
    half = max(1, n_rows // 2)
    mid = S // 2
    rows = torch.cat([torch.arange(mid, min(S, mid + half)), torch.arange(max(0, S - half), S)]).unique().to(q.device)
    scale = D**-0.5
    qr = q[:, :, rows].float()
    block_rows = mask.dense4d().to(q.device)[:, :, rows // bs]  # [Bm, Hm, r, nb]
    allowed = block_rows.repeat_interleave(bs, dim=-1)[..., :S]  # [Bm, Hm, r, S]

    def masked_ref(keep):
        outs = []
        for h in range(H):  # one head at a time bounds the [r, S] score memory
            s = (qr[:, h] @ k[:, h].float().transpose(-1, -2)) * scale  # [B, r, S]
            if keep is not None:
                kh = keep[:, h if keep.shape[1] > 1 else 0]
                s = s.masked_fill(~kh, float("-inf"))
            p = torch.softmax(s, dim=-1)
            p = torch.nan_to_num(p, nan=0.0)
            outs.append(p @ v[:, h].float())
        return torch.stack(outs, dim=1)  # [B, H, r, D]

    def rel(a, b):
        return float((a.float() - b).norm() / b.norm())

    ref_sparse = masked_ref(allowed)
    ref_dense = masked_ref(None)
    res = {"rows": int(rows.numel())}
    dense_out = F.scaled_dot_product_attention(q[:, :, rows], k, v)
    res["dense_sdpa"] = rel(dense_out, ref_dense)
    for name, fn in impls.items():
        try:
            with torch.no_grad():
                out = fn(q, k, v)
            res[name] = rel(out[:, :, rows], ref_sparse)
            res[name + "_nan"] = bool(torch.isnan(out).any())
        except Exception as exc:  # recorded, the run goes on
            res[name] = None
            res[name + "_error"] = f"{type(exc).__name__}: {exc}"[:300]
        torch.cuda.empty_cache() if q.device.type == "cuda" else None
    return res


# ----------------------------------------------------------------------------- formatting
def fmt_ms(ms: float) -> str:
    """A time in ms with about three significant digits: 1234, 45.6, 7.89, 0.123, 0.0045."""
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}" if ms >= 0.01 else f"{ms:.2g}"


def fmt_rate(tflops: float) -> str:
    """A FLOP rate in the unit that fits it (never "0.0 TFLOP/s"): 412 TFLOP/s, 35.2 GFLOP/s, 800 MFLOP/s."""
    for unit, scale in (("TFLOP/s", 1.0), ("GFLOP/s", 1e-3), ("MFLOP/s", 1e-6)):
        if tflops >= scale:
            x = tflops / scale
            return f"{x:.0f} {unit}" if x >= 100 else f"{x:.1f} {unit}"
    return f"{tflops * 1e12:.0f} FLOP/s"


# Errors below this are "as exact as the float32 reference" for float32 runs, where the 2x-dense
# criterion compares two round-off noises (~1e-7).
ABS_ERROR_FLOOR = {"float32": 1e-5}


def error_tolerance(dense_error: float, dtype: str) -> float:
    """The largest acceptable block-sparse error: twice dense SDPA's (floored for float32)."""
    return max(2 * dense_error, ABS_ERROR_FLOOR.get(dtype, 0.0))


# ----------------------------------------------------------------------------- one case
def run_case(case: Case, args, device, position: str = "") -> dict:
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    mask = build_mask(case)
    S, H, D, B = case.seq_len, case.heads, case.head_dim, case.batch
    density = mask.density
    flops_dense = 4.0 * B * H * S * S * D
    flops_sparse = mask.attention_flops(S, D, H, B)["sparse"]
    rec = {
        "case": case.name,
        "description": case.description,
        "S": S,
        "heads": H,
        "head_dim": D,
        "batch": B,
        "block_size": case.block_size,
        "density": density,
        "dtype": args.dtype,
        "fwd": {},
        "fwdbwd": {},
        "errors": {},
    }
    print(
        f"\n== {position}{case.name}: {case.description}\n   S={S:,} H={H} D={D} block={case.block_size} "
        f"density={density:.4f} (1/density={1 / density:.2f}) {args.dtype}",
        flush=True,
    )

    # [B, S, H, D] storage viewed as [B, H, S, D], as a diffusers model hands it over
    def make():
        return torch.randn(B, S, H, D, device=device, dtype=dtype).transpose(1, 2)

    q, k, v = make(), make(), make()
    do = torch.randn_like(q)

    impls_sparse = {}
    if "fa4" in args.impls:
        impls_sparse["fa4"] = fa4_impl(mask)
    if "gather" in args.impls:
        impls_sparse["gather"] = gather_impl(mask)
    if "triton" in args.impls:
        impls_sparse["triton"] = triton_impl(mask)
    if "flex" in args.impls:
        try:
            fn, how = flex_impl(mask, S, H, B, device)
            impls_sparse["flex"] = fn
            rec["flex_impl"] = how
        except Exception as exc:
            rec["errors"]["flex"] = f"{type(exc).__name__}: {exc}"[:300]
    if "flex-direct" in args.impls:
        try:
            impls_sparse["flex-direct"] = flex_direct_impl(mask, S, device)
        except Exception as exc:
            rec["errors"]["flex-direct"] = f"{type(exc).__name__}: {exc}"[:300]
    if device.type == "cuda":
        for fib in ("fa2", "fa3"):
            if f"flashinfer-{fib}" in args.impls:
                try:
                    import flashinfer  # noqa: F401  (installed? the backend module imports it too)

                    impls_sparse[f"flashinfer-{fib}"] = flashinfer_impl(mask, fib)
                except ImportError as exc:
                    rec["errors"][f"flashinfer-{fib}"] = f"not installed: {exc}"
    dense_names = list(args.dense)
    if S > args.dense_max_tokens:  # the slower dense kernels take many seconds a call there
        dense_names = [n for n in dense_names if n in ("cudnn", "fa4")] or dense_names[:1]
    if device.type != "cuda":
        dense_names = ["default"]

    # correctness at size first (also warms the sparse kernels up)
    if args.check_rows > 0:
        t0 = time.perf_counter()
        rec["check"] = check_rows(case, mask, q, k, v, impls_sparse, args.check_rows)
        c = rec["check"]
        parts = [f"dense_sdpa {c['dense_sdpa']:.2e}"] + [
            f"{n} {c[n]:.2e}" if c.get(n) is not None else f"{n} ERROR" for n in impls_sparse
        ]
        print(
            f"   {args.dtype} rel. error on {c['rows']} rows vs float32: "
            + ", ".join(parts)
            + f"  ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )

    def fwdbwd(fn):
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

        def run():
            out = fn(qg, kg, vg)
            torch.autograd.grad(out, (qg, kg, vg), do)

        return run

    def measure(mode: str, label: str, fn, flops: float, rate_note: str = "") -> None:
        """Time ``fn`` in ``mode`` into ``rec[mode][label]``; a failure is recorded and printed, not raised."""
        try:
            with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                r = time_call(
                    (lambda: fn(q, k, v)) if mode == "fwd" else fwdbwd(fn),
                    device,
                    args.budget,
                    min_reps=args.min_reps,
                )
            r["tflops"] = flops * (1 if mode == "fwd" else 2.5) / (r["ms"] * 1e-3) / 1e12
            rec[mode][label] = r
            print(
                f"   {mode:6s} {label:16s} {fmt_ms(r['ms']):>9} ms  {fmt_rate(r['tflops']):>13}{rate_note}  "
                f"(x{r['reps']}; first call {r['first_s']:.2f} s)",
                flush=True,
            )
        except Exception as exc:
            rec["errors"][f"{mode}-{label}"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"   {mode:6s} {label:16s} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            if args.verbose:
                traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for name in dense_names:
        fn = dense_sdpa(None if name == "default" else name)
        for mode in args.modes:
            if mode == "fwdbwd" and name in args.no_dense_bwd:
                continue
            measure(mode, f"dense-{name}", fn, flops_dense)

    for name, fn in impls_sparse.items():
        for mode in args.modes:
            if mode == "fwdbwd" and name.startswith("flashinfer"):
                continue  # forward only
            if mode == "fwdbwd" and name.startswith("flex") and device.type != "cuda":
                continue  # FlexAttention has no CPU backward
            measure(mode, name, fn, flops_sparse, rate_note=" useful")

    # speed-ups against the fastest dense backend of this run
    for mode in args.modes:
        dense = {n: r["ms"] for n, r in rec[mode].items() if n.startswith("dense-")}
        if not dense:
            continue
        best = min(dense, key=dense.get)
        rec[mode]["best_dense"] = best
        for n, r in rec[mode].items():
            if isinstance(r, dict) and not n.startswith("dense-"):
                r["speedup_vs_best_dense"] = dense[best] / r["ms"]
                r["speedup_x_density"] = dense[best] / r["ms"] * density
        flex = [rec[mode][n]["ms"] for n in ("flex", "flex-direct") if n in rec[mode]]
        if flex and "triton" in rec[mode]:
            rec[mode]["triton"]["speedup_vs_flex"] = min(flex) / rec[mode]["triton"]["ms"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


# ----------------------------------------------------------------------------- report
def markdown(records: list, meta: dict) -> str:
    """The report: per mode a table of times and speed-ups, then the error check; a table only
    where it has rows."""
    lines = [
        "# Block-sparse attention benchmark",
        "",
        f"{meta['date']}, {meta['device']}, torch {meta['torch']}, Triton {meta['triton']}, "
        f"FlashInfer {meta.get('flashinfer') or 'not installed'}, dtype {meta['dtype']}, batch 1, "
        f"median of timed calls after a warm-up. Useful FLOP/s = 4*H*S^2*D*density/t (dense: density 1), "
        f"forward+backward counted as 2.5x the forward (a convention; the work done is ~3.5x).",
        "",
    ]
    for mode, title in (("fwd", "Forward"), ("fwdbwd", "Forward + backward")):
        rows = [r for r in records if r[mode]]
        if not rows:
            continue
        impls = []
        for r in rows:
            for n in r[mode]:
                if n != "best_dense" and n not in impls:
                    impls.append(n)
        lines += [
            f"## {title} (ms; useful FLOP/s; speed-up vs the best dense)",
            "",
            "| case | S x H | density | " + " | ".join(impls) + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in impls) + " |",
        ]
        for r in rows:
            cells = []
            for n in impls:
                x = r[mode].get(n)
                if not isinstance(x, dict):
                    cells.append("-")
                    continue
                s = f"{fmt_ms(x['ms'])} ({fmt_rate(x['tflops'])})"
                if "speedup_vs_best_dense" in x:
                    s += f" **{x['speedup_vs_best_dense']:.2f}x**"
                cells.append(s)
            lines.append(
                f"| {r['case']} | {r['S']:,} x {r['heads']} | {r['density']:.3f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
        speedups = []  # (case record, impl name, its result) for every block-sparse result with a dense baseline
        for r in rows:
            for n, x in r[mode].items():
                if isinstance(x, dict) and not n.startswith("dense-") and "speedup_vs_best_dense" in x:
                    speedups.append((r, n, x))
        if speedups:
            lines += [
                "| case | implementation | 1/density | 0.9/density | speed-up | speed-up x density | triton vs best flex |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r, n, x in speedups:
                vf = f"{x['speedup_vs_flex']:.2f}x" if "speedup_vs_flex" in x else "-"
                lines.append(
                    f"| {r['case']} | {n} | {1 / r['density']:.2f} | {0.9 / r['density']:.2f} | "
                    f"{x['speedup_vs_best_dense']:.2f}x | {x['speedup_x_density']:.2f} | {vf} |"
                )
            lines.append("")
    checks = [r for r in records if "check" in r]
    if checks:
        names = []
        for r in checks:
            for n in r["check"]:
                if n not in ("rows", "dense_sdpa") and not n.endswith(("_nan", "_error")) and n not in names:
                    names.append(n)
        floor = ABS_ERROR_FLOOR.get(meta["dtype"])
        criterion = "<= 2x dense" + (f" or {floor:g}" if floor else "")
        lines += [
            f"## {meta['dtype']} error vs a float32 reference on a slice of query rows (relative L2)",
            "",
            "| case | rows | dense SDPA vs its fp32 | " + " | ".join(names) + f" | all {criterion} |",
            "| --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
        ]
        for r in checks:
            c = r["check"]
            vals = [c.get(n) for n in names]
            tol = error_tolerance(c["dense_sdpa"], meta["dtype"])
            ok = all(x is not None and x <= tol for x in vals)
            lines.append(
                f"| {r['case']} | {c['rows']} | {c['dense_sdpa']:.2e} | "
                + " | ".join("-" if x is None else f"{x:.2e}" for x in vals)
                + f" | {'yes' if ok else 'NO'} |"
            )
        lines.append("")
    return "\n".join(lines)


def metadata(device, dtype) -> dict:
    import triton

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "dtype": dtype,
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }
    meta["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    try:
        import flashinfer

        meta["flashinfer"] = flashinfer.__version__
    except Exception:
        meta["flashinfer"] = None
    return meta


def default_impls(device, smoke: bool) -> list:
    """Block-sparse implementations timed when --impls is not given."""
    if device.type == "cuda":
        return ["fa4", "triton", "flex", "flashinfer-fa2", "flashinfer-fa3"]
    impls = ["gather", "flex"]  # gather: what backend="auto" runs on a CPU
    if smoke and os.environ.get("TRITON_INTERPRET", "0") == "1":
        impls.append("triton")
    return impls


def plan(args) -> tuple:
    """Check the arguments against the device before anything is timed: (device, case list).

    Sets ``args.dtype`` (``auto``: bfloat16 on CUDA, float32 on a CPU) and ``args.impls``.
    Raises ``ValueError`` for a GPU-size case on a CPU (a dense call there takes minutes)."""
    device = torch.device(
        "cuda"
        if args.device in (None, "auto") and torch.cuda.is_available()
        else ("cpu" if args.device in (None, "auto") else args.device)
    )
    if args.dtype == "auto":
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    if args.impls is None:
        args.impls = default_impls(device, args.smoke)
    if device.type == "cpu" and "triton" in args.impls and os.environ.get("TRITON_INTERPRET", "0") != "1":
        print("note: on the CPU the Triton kernels need TRITON_INTERPRET=1; timing the others only", file=sys.stderr)
        args.impls = [n for n in args.impls if n != "triton"]
    known = {**CASES, **CPU_CASES, **SMOKE_CASES}
    if args.cases:
        names = args.cases
    elif args.smoke:
        names = list(SMOKE_CASES)
    else:
        names = list(CASES) if device.type == "cuda" else list(CPU_CASES)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; known: {list(known)}")
    cases = [known[n] for n in names]
    if device.type == "cpu":
        large = [c for c in cases if c.seq_len > CPU_MAX_TOKENS]
        if large:
            raise ValueError(
                "on a CPU, "
                + ", ".join(f"{c.name} ({c.seq_len:,} tokens)" for c in large)
                + " would take many minutes "
                f"per dense call (at most {CPU_MAX_TOKENS:,} tokens here): run it on a GPU, or use the CPU cases "
                f"({', '.join(CPU_CASES)}, the default on a CPU) or --smoke"
            )
    if args.smoke and device.type == "cpu":
        args.budget = min(args.budget, 0.2)
        args.min_reps = 1
        args.check_rows = min(args.check_rows, 64)
    return device, cases


def main(args) -> int:
    device, cases = plan(args)
    meta = metadata(device, args.dtype)
    print(
        f"{meta['date']}  {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  "
        f"flashinfer {meta['flashinfer']}  dtype {args.dtype}  implementations {' '.join(args.impls)}",
        flush=True,
    )
    records = []
    for i, case in enumerate(cases):
        records.append(run_case(case, args, device, position=f"[{i + 1}/{len(cases)}] "))
        if args.out:  # keep what is done even if a later case fails
            write(args.out, records, meta)
    md = markdown(records, meta)
    print("\n" + md)
    if args.out:
        write(args.out, records, meta)
    return 0


def write(out, records, meta):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps({"meta": meta, "cases": records}, indent=1))
    (out / "attention.md").write_text(markdown(records, meta))

"""GPU correctness and tuning of the Triton backend (and FlashInfer's), in one device call.

1. Correctness (parallel worker processes, which also fill Triton's on-disk kernel cache): the
   Triton backend against the float64 reference backend on awkward shapes (S not a multiple of the
   block, batch 2, per-head masks with empty and full rows, key_lengths, a [B, S, H, D] layout, a
   negative scale), fp16/bf16/fp32, head dims 64/128, blocks 64/128, TMA on and off: outputs and
   gradients, outputs poisoned with NaN first, backward run twice (must be bitwise equal).
   FlashInfer fa2/fa3 forward on the same inputs when installed.
2. Tuning (main process, after the workers): times of the forward, dK/dV and dQ kernels of each
   candidate tile configuration on real cases, beside cuDNN dense attention.

    python benchmarks/triton_check.py --out $OUT            # both
    python benchmarks/triton_check.py --no-sweep            # correctness only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

# ----------------------------------------------------------------------------- correctness tasks
CHECKS = [
    # dtype, D, bs, tma, key_lengths, layout, B, H, S, per-head mask, negative scale
    dict(dtype="bfloat16", D=128, bs=128, tma=True, kl=True, layout="bshd", B=2, H=3, S=1000, per_head=True),
    dict(dtype="bfloat16", D=128, bs=128, tma=False, kl=True, layout="bshd", B=2, H=3, S=1000, per_head=True),
    dict(dtype="bfloat16", D=128, bs=128, tma=True, kl=False, layout="bhsd", B=1, H=2, S=1024, per_head=False),
    dict(dtype="float16", D=64, bs=64, tma=True, kl=True, layout="bhsd", B=2, H=2, S=700, per_head=True),
    dict(dtype="float16", D=64, bs=128, tma=True, kl=False, layout="bshd", B=1, H=3, S=900, per_head=False, neg=True),
    dict(dtype="bfloat16", D=128, bs=64, tma=True, kl=False, layout="bshd", B=2, H=2, S=650, per_head=True),
    dict(dtype="float32", D=64, bs=128, tma=True, kl=True, layout="bhsd", B=2, H=2, S=333, per_head=True),
    dict(dtype="float16", D=128, bs=128, tma=False, kl=False, layout="bhsd", B=1, H=2, S=777, per_head=True, neg=True),
    dict(dtype="bfloat16", D=128, bs=128, tma=True, kl=True, layout="bshd", B=2, H=2, S=1100, per_head=False, neg=True),
]
TOL = {"bfloat16": 2.5e-2, "float16": 4e-3, "float32": 2e-5}


def _inputs(c, device, seed):
    from radial_attention.mask import BlockSparseMask

    g = torch.Generator().manual_seed(seed)
    B, H, S, D, bs = c["B"], c["H"], c["S"], c["D"], c["bs"]
    nb = -(-S // bs)
    shape = (B, H, nb, nb) if c["per_head"] else (nb, nb)
    dense = torch.rand(shape, generator=g) < 0.4
    dense[..., 0, :] = False  # an empty query row
    dense[..., 1, :] = True  # a full one
    dense[..., -1, -1] = True  # the partial block
    mask = BlockSparseMask(dense, bs)
    dtype = getattr(torch, c["dtype"])

    def make():
        if c["layout"] == "bshd":
            return torch.randn(B, S, H, D, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
        return torch.randn(B, H, S, D, generator=g).to(device=device, dtype=dtype)

    q, k, v, do = make(), make(), make(), make()
    kl = torch.tensor([S - 37, min(S, 200)][:B], device=device) if c.get("kl") else None
    scale = -(D**-0.5) if c.get("neg") else D**-0.5
    return mask, q, k, v, do, kl, scale


def _rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-30))


def _poison(device):
    # Fill freed allocator blocks with NaN, so an output element the kernel never writes shows up.
    x = torch.full((64 * 1024 * 1024,), float("nan"), device=device)
    del x


def check_triton(c, device, seed=0) -> dict:
    from radial_attention.ops import reference
    from radial_attention.ops import triton as tb
    from radial_attention.ops.triton import launch

    mask, q, k, v, do, kl, scale = _inputs(c, device, seed)
    dtype = q.dtype
    # The tuned configs with the memory path this check asks for (TMA or pointers).
    configs = {
        kind: dataclasses.replace(launch._config(kind, q, c["bs"]), use_tma=c["tma"]) for kind in ("fwd", "dq", "dkdv")
    }
    with tb.triton_kernel_config(**configs):
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        _poison(device)
        out = tb.attention(qg, kg, vg, mask, scale=scale, key_lengths=kl)
        _poison(device)
        grads = torch.autograd.grad(out, (qg, kg, vg), do)
        _poison(device)
        grads2 = torch.autograd.grad(tb.attention(qg, kg, vg, mask, scale=scale, key_lengths=kl), (qg, kg, vg), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference.attention(q64, k64, v64, mask, scale=scale, key_lengths=kl)
    rgrads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    errs = {"out": _rel(out, ref)}
    errs.update({n: _rel(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, rgrads)})
    nan = any(bool(torch.isnan(t).any()) for t in (out, *grads))
    det = all(torch.equal(a, b) for a, b in zip(grads, grads2))
    empty_rows_zero = bool((out[:, :, : c["bs"]] == 0).all())  # mask row 0 is empty
    layout_kept = out.stride() == q.stride()
    ok = (not nan) and det and empty_rows_zero and all(e < TOL[c["dtype"]] for e in errs.values())
    return dict(
        errs=errs,
        nan=nan,
        deterministic=det,
        empty_rows_zero=empty_rows_zero,
        layout_kept=layout_kept,
        ok=ok,
        dtype=str(dtype),
    )


def check_flashinfer(c, device, fib, seed=0) -> dict:
    from radial_attention.ops import flashinfer as fi
    from radial_attention.ops import reference

    mask, q, k, v, do, kl, scale = _inputs(c, device, seed)
    _poison(device)
    with torch.no_grad():
        out = fi.attention(q, k, v, mask, scale=scale, key_lengths=kl, fi_backend=fib)
        out2 = fi.attention(q, k, v, mask, scale=scale, key_lengths=kl, fi_backend=fib)  # cached plan
        ref = reference.attention(q.double(), k.double(), v.double(), mask, scale=scale, key_lengths=kl)
    e = _rel(out, ref)
    nan = bool(torch.isnan(out).any())
    return dict(errs={"out": e, "out_again": _rel(out2, ref)}, nan=nan, ok=(not nan) and e < TOL[c["dtype"]])


def check_compile(device) -> dict:
    """torch.compile(fullgraph=True) through the custom op, forward and backward, vs eager."""
    from radial_attention.ops import triton as tb

    c = CHECKS[0]
    mask, q, k, v, do, kl, scale = _inputs(c, device, 1)

    def f(q, k, v):
        return tb.attention(q, k, v, mask, scale=scale, key_lengths=kl) * 2.0

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    eager = f(qg, kg, vg)
    ge = torch.autograd.grad(eager, (qg, kg, vg), do)
    cf = torch.compile(f, fullgraph=True)
    comp = cf(qg, kg, vg)
    gc = torch.autograd.grad(comp, (qg, kg, vg), do)
    same = torch.equal(eager, comp) and all(torch.equal(a, b) for a, b in zip(ge, gc))
    return {"ok": same, "errs": {"out": _rel(comp, eager)}}


# ----------------------------------------------------------------------------- warm-up / sweep
# First entry = the default (launch.py's table); version 1 of the sweep also had (128,128,8,2,T),
# (128,64,8,3,T), (128,64,8,3,F) for fwd; (32,128,8,2|3,T), (64,64,4,3,T) for dK/dV; (128,64,8,2|3,T),
# (64,64,4,2,T) for dQ (benchmarks/NOTES.md).
FWD_CANDIDATES = [(128, 128, 8, 3, True)]
DKDV_CANDIDATES = [(64, 128, 8, 2, True)]
DQ_CANDIDATES = [(128, 128, 8, 2, True)]
ORDERS = ["heavy-first", "sequential"]
SWEEP_CASES = ["wan1.3b-480p-81f", "wan14b-720p-81f"]


def _case_tensors(name, device):
    from radial_attention.bench import attention as bench

    case = bench.CASES[name]
    mask = bench.build_mask(case)
    S, H, D = case.seq_len, case.heads, case.head_dim
    g = torch.Generator(device=device).manual_seed(0)

    def make():
        return torch.randn(1, S, H, D, device=device, dtype=torch.bfloat16, generator=g).transpose(1, 2)

    return case, mask, make(), make(), make(), make()


def _launch_all(mask, q, k, v, do, fwd, dkdv, dq):
    from radial_attention.ops.triton import launch

    t = dict(launch.mask_tensors(mask, q.device))
    t["row_order"], t["col_order"] = launch.launch_orders(t, q)  # as the launch_order setting says
    bs = mask.block_size
    scale = q.shape[-1] ** -0.5
    out, lse = launch.forward(q, k, v, t["kv_indices"], t["kv_counts"], t["row_order"], None, scale, bs, config=fwd)
    launch.backward(
        do,
        q,
        k,
        v,
        out,
        lse,
        t["q_indices"],
        t["q_counts"],
        t["col_order"],
        t["kv_indices"],
        t["kv_counts"],
        t["row_order"],
        None,
        scale,
        bs,
        dq_config=dq,
        dkdv_config=dkdv,
    )
    return out, lse, t


def warm(name, device, fwd=None, dkdv=None, dq=None):
    """Compile (into Triton's disk cache) every candidate for this case's exact shapes."""
    from radial_attention.ops.triton import KernelConfig

    case, mask, q, k, v, do = _case_tensors(name, device)
    fwd = fwd or [FWD_CANDIDATES[0]]
    dkdv = dkdv or [DKDV_CANDIDATES[0]]
    dq = dq or [DQ_CANDIDATES[0]]
    n = max(len(fwd), len(dkdv), len(dq))
    for i in range(n):
        _launch_all(
            mask,
            q,
            k,
            v,
            do,
            KernelConfig(*fwd[min(i, len(fwd) - 1)]),
            KernelConfig(*dkdv[min(i, len(dkdv) - 1)]),
            KernelConfig(*dq[min(i, len(dq) - 1)]),
        )
    torch.cuda.synchronize()


def sweep(name, device, budget=1.0) -> list:
    from radial_attention.bench import attention as bench
    from radial_attention.ops.triton import KernelConfig, launch

    case, mask, q, k, v, do = _case_tensors(name, device)
    flops = mask.attention_flops(case.seq_len, case.head_dim, case.heads)["sparse"]
    rows = []
    fn = bench.dense_sdpa("cudnn")
    r = bench.time_call(lambda: fn(q, k, v), device, budget)
    dense_fwd = r["ms"]
    rows.append(
        dict(
            case=name,
            kernel="dense-cudnn fwd",
            config="",
            ms=r["ms"],
            tflops=4 * case.heads * case.seq_len**2 * case.head_dim / r["ms"] / 1e9,
        )
    )
    bs = mask.block_size
    scale = q.shape[-1] ** -0.5
    for order in ORDERS:
        with launch.triton_kernel_config(launch_order=order):
            out, lse, t = _launch_all(mask, q, k, v, do, None, None, None)
            for cfg in FWD_CANDIDATES:
                c = KernelConfig(*cfg)
                r = bench.time_call(
                    lambda: launch.forward(
                        q, k, v, t["kv_indices"], t["kv_counts"], t["row_order"], None, scale, bs, config=c
                    ),
                    device,
                    budget,
                )
                rows.append(
                    dict(
                        case=name,
                        kernel=f"fwd {order}",
                        config=str(cfg),
                        ms=r["ms"],
                        tflops=flops / r["ms"] / 1e9,
                        x_density=dense_fwd / r["ms"] * mask.density,
                    )
                )

            def bwd(dkdv_c, dq_c):
                return lambda: launch.backward(
                    do,
                    q,
                    k,
                    v,
                    out,
                    lse,
                    t["q_indices"],
                    t["q_counts"],
                    t["col_order"],
                    t["kv_indices"],
                    t["kv_counts"],
                    t["row_order"],
                    None,
                    scale,
                    bs,
                    dq_config=dq_c,
                    dkdv_config=dkdv_c,
                )

            dq0 = KernelConfig(*DQ_CANDIDATES[0])
            dkdv0 = KernelConfig(*DKDV_CANDIDATES[0])
            for cfg in DKDV_CANDIDATES:
                r = bench.time_call(bwd(KernelConfig(*cfg), dq0), device, budget)
                rows.append(
                    dict(
                        case=name,
                        kernel=f"bwd {order}",
                        config=str(cfg) + " dq0",
                        ms=r["ms"],
                        tflops=2.5 * flops / r["ms"] / 1e9,
                    )
                )
            for cfg in DQ_CANDIDATES[1:]:
                r = bench.time_call(bwd(dkdv0, KernelConfig(*cfg)), device, budget)
                rows.append(dict(case=name, kernel=f"bwd {order}", config="dkdv0 " + str(cfg), ms=r["ms"]))
    return rows


# ----------------------------------------------------------------------------- worker / main
def worker(tasks, device) -> list:
    results = []
    for task in tasks:
        t0 = time.perf_counter()
        try:
            if task["kind"] == "check":
                r = check_triton(task["case"], device)
            elif task["kind"] == "flashinfer":
                r = check_flashinfer(task["case"], device, task["fib"])
            elif task["kind"] == "compile":
                r = check_compile(device)
            elif task["kind"] == "warm":
                warm(task["name"], device, task.get("fwd"), task.get("dkdv"), task.get("dq"))
                r = {"ok": True}
            else:
                raise ValueError(task["kind"])
        except Exception as exc:
            r = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600], "trace": traceback.format_exc()[-2500:]}
        r["task"] = task
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        print(json.dumps(r), flush=True)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--no-flashinfer", action="store_true")
    p.add_argument("--worker-timeout", type=float, default=240, help="seconds for the Triton workers")
    p.add_argument("--fi-timeout", type=float, default=330, help="seconds (from the start) for FlashInfer's worker")
    p.add_argument("--checks", default=None, help="comma-separated indices into CHECKS (default: all)")
    p.add_argument("--worker-tasks", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device("cuda")
    if args.worker_tasks:
        worker(json.loads(pathlib.Path(args.worker_tasks).read_text()), device)
        return 0
    out = pathlib.Path(args.out or "triton_check_out")
    out.mkdir(parents=True, exist_ok=True)
    chosen = CHECKS if args.checks is None else [CHECKS[int(i)] for i in args.checks.split(",")]
    tasks = [{"kind": "check", "case": c} for c in chosen] + [{"kind": "compile", "case": CHECKS[0]}]
    fi_ok = False
    if not args.no_flashinfer:
        try:
            import flashinfer  # noqa: F401

            fi_ok = True
        except ImportError:
            pass
    if not args.no_sweep:
        for name in SWEEP_CASES:
            for i in range(len(FWD_CANDIDATES)):
                tasks.append(
                    {
                        "kind": "warm",
                        "name": name,
                        "fwd": [FWD_CANDIDATES[i]],
                        "dkdv": [DKDV_CANDIDATES[i]],
                        "dq": [DQ_CANDIDATES[i]],
                    }
                )
    # round-robin over workers; FlashInfer (long JIT build) gets a worker of its own
    n = max(1, args.workers)
    parts = [[] for _ in range(n)]
    for i, t in enumerate(tasks):
        parts[i % n].append(t)
    if fi_ok:
        fi_tasks = []
        for fib in ("fa2", "fa3") if args.checks is None else ("fa3",):
            for c in (CHECKS[0], CHECKS[3], CHECKS[4]) if args.checks is None else (CHECKS[8],):
                fi_tasks.append({"kind": "flashinfer", "case": c, "fib": fib})
        parts.append(fi_tasks)
    procs = []
    t0 = time.perf_counter()
    tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "triton_check_workers"
    tmp.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        if not part:
            continue
        tf = tmp / f"tasks_{i}.json"
        tf.write_text(json.dumps(part))
        log = open(tmp / f"worker_{i}.log", "w")
        is_fi = fi_ok and i == len(parts) - 1
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, __file__, "--worker-tasks", str(tf)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                ),
                log,
                i,
                is_fi,
            )
        )
    results = []

    def collect(proc, log, i, limit):
        try:
            proc.wait(timeout=max(1.0, limit - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"worker {i} timed out", flush=True)
        log.close()
        text = (tmp / f"worker_{i}.log").read_text()
        for line in text.splitlines():
            if line.startswith("{"):
                results.append(json.loads(line))
        if proc.returncode not in (0, None) and "Traceback" in text:
            print(f"worker {i} log tail:\n{text[-1500:]}", flush=True)

    for proc, log, i, is_fi in procs:  # the Triton workers first; FlashInfer's JIT build runs on
        if not is_fi:
            collect(proc, log, i, args.worker_timeout)
    print(f"triton workers done in {time.perf_counter() - t0:.0f}s", flush=True)
    sweep_rows = []
    if not args.no_sweep:
        for name in SWEEP_CASES:
            try:
                sweep_rows += sweep(name, device)
            except Exception as exc:
                print(f"sweep {name} failed: {exc}", flush=True)
                traceback.print_exc()
    for proc, log, i, is_fi in procs:
        if is_fi:
            collect(proc, log, i, args.fi_timeout)
    (out / "triton_check.json").write_text(json.dumps({"checks": results, "sweep": sweep_rows}, indent=1))
    print("\n== correctness (relative L2 vs float64 reference; outputs NaN-poisoned first)")
    for r in results:
        t = r["task"]
        if t["kind"] == "warm":
            if not r.get("ok"):
                print(f"warm {t['name']} FAILED: {r.get('error')}")
            continue
        c = t["case"]
        desc = (
            f"{t['kind']}{'-' + t['fib'] if 'fib' in t else ''} {c['dtype']} D{c['D']} bs{c['bs']} "
            f"{'tma' if c['tma'] else 'ptr'} {c['layout']} B{c['B']} H{c['H']} S{c['S']}"
            f"{' kl' if c.get('kl') else ''}{' neg' if c.get('neg') else ''}"
        )
        if "errs" in r:
            e = " ".join(f"{k}={v:.1e}" for k, v in r["errs"].items())
            extra = (
                ""
                if t["kind"] != "check"
                else (f" det={r['deterministic']} zero_rows={r['empty_rows_zero']} layout={r['layout_kept']}")
            )
            print(f"{'OK ' if r['ok'] else 'BAD'} {desc}: {e}{extra} ({r['seconds']}s)")
        else:
            print(f"ERR {desc}: {r.get('error')}")
    if sweep_rows:
        print("\n== sweep (bf16, D=128, block 128; config = BLOCK_M, BLOCK_N, warps, stages, TMA)")
        for r in sweep_rows:
            extra = f" {r['tflops']:.0f} TFLOP/s" if "tflops" in r else ""
            extra += f" x_density={r['x_density']:.2f}" if "x_density" in r else ""
            print(f"{r['case']:18s} {r['kernel']:18s} {r['config']:24s} {r['ms']:8.2f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

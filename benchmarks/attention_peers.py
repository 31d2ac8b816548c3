"""Block-sparse attention side by side on one GPU: our backends, FA4, cuDNN, in one process per run.

For each case (real model sizes, the radial mask from ``radial_block_mask``), in the same run:

    cudnn-dense     torch SDPA, cuDNN kernel (what a diffusers user runs)
    fa4-dense       FlashAttention-4's dense kernel (``flash_attn.cute.flash_attn_func``), the fastest dense
    ours-fa4        ``block_sparse_attention(..., backend="fa4")`` (our wrapper around FA4's block sparsity)
    fa4-direct      ``flash_attn_func`` with the same block tables built here (shows what the wrapper costs)
    ours-triton     ``backend="triton"``, the project's own kernels
    ours-flex       ``backend="flex"``
    cudnn-bsa       NVIDIA cuDNN-frontend's ``block_sparse_attention_forward`` / ``_backward`` (a peer)

q/k/v are allocated ``[B, S, H, D]`` as diffusers makes them; our op gets the ``[B, H, S, D]`` transpose.
Time: CUDA events, median of ``--reps`` after ``--warmup`` calls (fewer for calls over 2 s). The first
call of each contestant is timed separately (JIT compile for FA4 / Triton / Flex). Error: relative L2
against a float32 masked softmax on 256 sampled query rows (forward output).

    python benchmarks/attention_peers.py --out results/               # on the GPU
    python benchmarks/attention_peers.py --cases wan1.3b-480p-81f --modes fwd

Writes ``attention_peers.json`` / ``attention_peers.md``; speed in units of 1/density against both
cuDNN dense and FA4 dense (1.0 = the kept blocks run as fast as that dense kernel runs all of them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from radial_attention.mask import radial_block_mask  # noqa: E402
from radial_attention.ops import block_sparse_attention  # noqa: E402

# name: (preset, frames, tokens per frame, text tokens, heads, decay)
CASES = {
    "wan1.3b-480p-81f": ("wan", 21, 1560, 0, 12, None),
    "wan14b-720p-81f": ("wan", 21, 3600, 0, 40, None),
    "hunyuan-720p-117f": ("hunyuan", 30, 3600, 256, 24, None),
    "wan14b-720p-161f": ("wan", 41, 3600, 0, 40, None),
    "hunyuan-720p-509f-4x": ("hunyuan", 128, 3600, 256, 24, 1.0),
}
CONTESTANTS = ("cudnn-dense", "fa4-dense", "ours-fa4", "fa4-direct", "ours-triton", "ours-flex", "cudnn-bsa")


def _timed(fn, warmup, reps):
    """(first call s, median s, all s) with CUDA events."""

    def once():
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1e3

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    if first > 2.0:
        warmup, reps = min(warmup, 1), min(reps, 3)
    for _ in range(warmup):
        once()
    times = [once() for _ in range(reps)]
    return first, statistics.median(times), times


def _fa4_tables(mask, device):
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    kc, ki = mask.kv_counts(device), mask.kv_indices(device)
    qc, qi = mask.q_counts(device), mask.q_indices(device)
    z = torch.zeros_like(kc)
    zi = torch.zeros(*kc.shape, 1, dtype=torch.int32, device=device)
    fwd = BlockSparseTensorsTorch(z, zi, kc, ki, block_size=(mask.block_size, mask.block_size))
    bwd = BlockSparseTensorsTorch(
        torch.zeros_like(qc),
        torch.zeros(*qc.shape, 1, dtype=torch.int32, device=device),
        qc,
        qi,
        block_size=(mask.block_size, mask.block_size),
    )
    return fwd, bwd


def contestant(name, mask, q, k, v, grad):
    """A zero-argument callable running one forward (and backward when ``grad``), or raises if unavailable.

    q, k, v: [B, S, H, D] leaves (requires_grad when ``grad``).
    """
    B, S, H, D = q.shape
    g = torch.randn_like(q) if grad else None

    def finish(out):
        if grad:
            torch.autograd.backward(out, g)
            for t in (q, k, v):
                t.grad = None
        return out

    if name == "cudnn-dense":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return finish(
                    F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(
                        1, 2
                    )
                )

        return run
    if name == "fa4-dense":
        from flash_attn.cute import flash_attn_func

        return lambda: finish(flash_attn_func(q, k, v)[0])
    if name == "fa4-direct":
        from flash_attn.cute import flash_attn_func

        fwd, bwd = _fa4_tables(mask, q.device)
        return lambda: finish(flash_attn_func(q, k, v, block_sparse_tensors=fwd, block_sparse_tensors_bwd=bwd)[0])
    if name.startswith("ours-"):
        backend = name[len("ours-") :]
        return lambda: finish(
            block_sparse_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, backend=backend
            ).transpose(1, 2)
        )
    if name == "cudnn-bsa":
        from cudnn.block_sparse_attention import block_sparse_attention_backward, block_sparse_attention_forward

        idx = mask.kv_indices(q.device).expand(B, H, *mask.kv_indices(q.device).shape[2:]).contiguous()
        cnt = mask.kv_counts(q.device).expand(B, H, mask.num_blocks).contiguous()
        scale = D**-0.5

        def run():
            r = block_sparse_attention_forward(
                q.detach(),
                k.detach(),
                v.detach(),
                idx,
                q2k_block_nums=cnt,
                sparse_block_size=mask.block_size,
                allow_empty_block_nums=True,
                softmax_scale=scale,
                layout="bshd",
            )
            o, lse = r["o_tensor"], r["lse_tensor"]
            if grad:
                block_sparse_attention_backward(
                    g,
                    q.detach(),
                    k.detach(),
                    v.detach(),
                    o,
                    lse,
                    idx,
                    q2k_block_nums=cnt,
                    softmax_scale=scale,
                    sparse_block_size=mask.block_size,
                    layout="bshd",
                )
            return o

        return run
    raise ValueError(name)


def sampled_error(out_bshd, q, k, v, mask, rows):
    """Relative L2 error of ``out [B, S, H, D]`` on query ``rows`` against a float32 masked softmax."""
    bs = mask.block_size
    dense = mask.dense_on(q.device)[0, 0]  # [nb, nb]
    S = q.shape[1]
    allowed = dense[rows // bs][:, torch.arange(S, device=q.device) // bs]  # [r, S]
    qs = q[0, rows].float()  # [r, H, D]
    s = torch.einsum("rhd,shd->hrs", qs, k[0].float()) * q.shape[-1] ** -0.5
    s = s.masked_fill(~allowed[None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    ref = torch.einsum("hrs,shd->rhd", p, v[0].float())
    got = out_bshd[0, rows].float()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-12))


def run_case(name, args, device):
    preset, frames, tpf, text, heads, decay = CASES[name]
    mask = radial_block_mask(frames, tpf, preset=preset, extra_tokens=text, decay=decay)
    S = frames * tpf + text
    D = 128
    print(f"\n== {name}: S={S:,} x H={heads}, density {mask.density:.4f}", flush=True)
    res = dict(case=name, seq_len=S, heads=heads, head_dim=D, density=round(mask.density, 4), rows={})
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, S, heads, D, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(3))
    rows = torch.randint(0, S, (256,), device=device, generator=gen)
    for mode in args.modes:
        grad = mode == "fwd+bwd"
        if grad and name in args.no_bwd:
            continue
        if grad:
            for t in (q, k, v):
                t.requires_grad_(True)
        row = res["rows"][mode] = {}
        for c in args.contestants:
            try:
                fn = contestant(c, mask, q, k, v, grad)
                first, med, times = _timed(fn, args.warmup, args.reps)
                entry = dict(
                    ms=round(med * 1e3, 3), first_call_s=round(first, 2), times_ms=[round(t * 1e3, 3) for t in times]
                )
                if not grad:
                    with torch.no_grad():
                        out = fn()
                    entry["rel_err"] = round(sampled_error(out, q, k, v, mask, rows), 6)  # out: [B, S, H, D]
                row[c] = entry
                print(
                    f"  {mode:<8} {c:<12} {med * 1e3:10.2f} ms  (first call {first:.2f} s"
                    f"{', err %.2e' % entry['rel_err'] if 'rel_err' in entry else ''})",
                    flush=True,
                )
            except Exception as e:  # a peer that cannot run here is recorded, the others go on
                row[c] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                print(f"  {mode:<8} {c:<12} failed: {row[c]['error']}", flush=True)
                if args.traceback:
                    traceback.print_exc()
            torch.cuda.empty_cache()
        for t in (q, k, v):
            t.requires_grad_(False)
            t.grad = None
    return res


def markdown(results, env):
    lines = [
        f"Attention side by side ({env['date']}, {env['device']}, torch {env['torch']}, triton {env['triton']}, "
        f"flash-attn-4 {env['fa4']}, cudnn-frontend {env['cudnn_fe']}; bf16, head dim 128, batch 1)",
        "",
    ]
    head = (
        "| case | mode | density | "
        + " | ".join(CONTESTANTS)
        + " | ours-fa4 x/density vs cuDNN | vs FA4 dense | ours-fa4 / fa4-direct |"
    )
    lines += [head, "|" + " --- |" * (len(CONTESTANTS) + 6)]
    for r in results:
        for mode, row in r.get("rows", {}).items():
            cells = []
            for c in CONTESTANTS:
                e = row.get(c)
                cells.append("" if e is None else ("fail" if "error" in e else f"{e['ms']:.2f}"))

            def ratio(base):
                a, b = row.get("ours-fa4", {}), row.get(base, {})
                if "ms" in a and "ms" in b:
                    return f"{b['ms'] / a['ms'] * r['density']:.3f}"
                return ""

            a, d = row.get("ours-fa4", {}), row.get("fa4-direct", {})
            wrap = f"{a['ms'] / d['ms']:.3f}" if "ms" in a and "ms" in d else ""
            lines.append(
                f"| {r['case']} | {mode} | {r['density']:.3f} | "
                + " | ".join(cells)
                + f" | {ratio('cudnn-dense')} | {ratio('fa4-dense')} | {wrap} |"
            )
    lines += [
        "",
        "Times in ms (median). x/density: (dense time / sparse time) x density; 1.0 = the kept blocks run at "
        "the dense kernel's rate. ours-fa4 / fa4-direct: 1.00 = the wrapper costs nothing.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    p.add_argument("--contestants", default=",".join(CONTESTANTS))
    p.add_argument("--no-bwd", default="", help="cases to time forward only")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--traceback", action="store_true")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    args.modes = args.modes.split(",")
    args.contestants = args.contestants.split(",")
    args.no_bwd = set(filter(None, args.no_bwd.split(",")))
    for c in args.cases.split(","):
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}; expected some of {list(CASES)}")
    if not torch.cuda.is_available():
        raise SystemExit("attention_peers.py needs a CUDA GPU")

    def version(mod):
        try:
            import importlib.metadata as md

            return md.version(mod)
        except Exception:
            return "not installed"

    import triton

    env = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        fa4=version("flash-attn-4"),
        cudnn_fe=version("nvidia-cudnn-frontend"),
    )
    print(env, flush=True)
    results = []
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for c in args.cases.split(","):
        try:
            results.append(run_case(c, args, torch.device("cuda")))
        except Exception as e:
            traceback.print_exc()
            results.append(dict(case=c, error=f"{type(e).__name__}: {e}"))
        (out / "attention_peers.json").write_text(json.dumps(dict(env=env, results=results), indent=2))
    md = markdown(results, env)
    (out / "attention_peers.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sequence-parallel (Ulysses) scaling from 1 to N GPUs: the attention alone and one Wan2.1-14B
transformer forward, dense and radial, with a check that every multi-GPU output matches 1 GPU.

    # one launch measures 1, 2, 4, ... N GPUs (sub-groups of the first n ranks):
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \\
        torchrun --standalone --nproc-per-node 8 benchmarks/sequence_parallel.py --out benchmarks/results/sp_h200x8

    python benchmarks/sequence_parallel.py --smoke      # CPU, gloo, 2 processes (--smoke-ranks), tiny sizes

What is measured, for each video size (default Wan2.1 1280x720 at 81 and 161 frames: 75,600 and
147,600 tokens, 40 heads of 128) and each GPU count ``n``:

- ``attention``: self-attention of one layer on the sequence split over ``n`` ranks
  (``[1, S/n, 40, 128]`` bf16 q/k/v per rank): Ulysses all-to-all, then on ``40/n`` heads of all
  tokens either dense SDPA (cuDNN first) or the radial op (global mask), then the all-to-all back.
  On 1 GPU: the attention alone, no exchange.
- ``transformer``: one forward of a ``WanTransformer3DModel`` with the Wan2.1-14B config and random
  bf16 weights (``--layers`` blocks: the time of the full 40-block model is about 40/layers times
  it), 512 text tokens, split with diffusers' own context parallelism
  (``enable_parallelism(ContextParallelConfig(ulysses_degree=n))``); radial via
  ``apply_radial_attention`` (every block and step radial), dense with diffusers' native SDPA
  (cuDNN first).

Each time is the median over ``--repeats`` calls after ``--warmup`` of the wall time of the
slowest rank (CUDA synchronized, ranks started together by a barrier). The 1-GPU run of each
case is done by rank 0 in the same launch and is also the reference its multi-GPU outputs are
compared against (``max_abs_err``, ``rel_err`` = relative L2 error; ``match`` when
``rel_err <= tol``). Speed-up = time on 1 GPU / time on n GPUs of the same mode; efficiency =
speed-up / n (the issue's target: >= 0.85 for radial at 161 frames).

Writes ``<out>.json`` (every figure and the environment) and ``<out>.md`` (tables), and prints the
tables last. NVLink multicast stays off (``NCCL_NVLS_ENABLE=0``,
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` are set before NCCL starts if the caller did not).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

for _key, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")):
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from radial_attention.testing.configs import WAN21_14B as WAN14B  # noqa: E402  (full depth, 40 blocks)

# --smoke: the same model class, tiny.
WAN_TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=256,
)
TEXT_TOKENS = 512


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--frames", default="81,161", help="video frames (pixels, 4k+1), comma-separated")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument(
        "--gpus",
        default=None,
        help="GPU counts to measure, e.g. 1,2,4,8 (default: 1 and powers of 2 up to the world size, and the world size)",
    )
    p.add_argument("--what", default="attention,transformer", help="attention, transformer or both")
    p.add_argument("--modes", default="dense,radial")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks of the Wan2.1-14B model (40 = all)")
    p.add_argument("--preset", default="wan", help="radial mask preset")
    p.add_argument("--block-size", type=int, default=128, choices=[64, 128])
    p.add_argument("--backend", default="auto", help="radial op backend (auto, triton, flex, flashinfer, reference)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--tol",
        type=float,
        default=None,
        help="largest rel_err counted as a match (default 2e-2 in bf16, 1e-4 in --smoke)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output path prefix (.json and .md); default benchmarks/results/sequence_parallel, "
        "or <tmp>/radial_sp_smoke with --smoke",
    )
    p.add_argument(
        "--smoke", action="store_true", help="CPU + gloo, tiny model and sizes (2 processes unless run by torchrun)"
    )
    p.add_argument("--smoke-ranks", type=int, default=2, help="CPU processes of a --smoke run outside torchrun")
    args = p.parse_args(argv)
    if args.out is None:
        import tempfile

        args.out = (
            os.path.join(tempfile.gettempdir(), "radial_sp_smoke")
            if args.smoke
            else "benchmarks/results/sequence_parallel"
        )
    return args


# ---------------------------------------------------------------------------------- helpers
class Bench:
    """Per-process state: rank, device, the sub-groups and device meshes of the first n ranks."""

    def __init__(self, args, rank: int, world: int, device: torch.device):
        from torch.distributed.device_mesh import DeviceMesh

        self.args, self.rank, self.world, self.device = args, rank, world, device
        self.dtype = torch.float32 if args.smoke else torch.bfloat16
        if args.gpus:
            sizes = sorted({int(x) for x in args.gpus.split(",")})
        else:
            sizes = sorted({1, world} | {2**i for i in range(1, int(math.log2(world)) + 1)})
        bad = [n for n in sizes if n < 1 or n > world]
        if bad:
            raise SystemExit(f"--gpus {args.gpus}: counts must be in 1..{world} (the world size), got {bad}")
        self.sizes = sizes
        # Every rank creates every group / mesh, in the same order (they are world collectives).
        self.groups, self.meshes = {}, {}
        for n in sizes:
            if n > 1:
                self.groups[n] = dist.new_group(list(range(n)))
                self.meshes[n] = DeviceMesh(device.type, torch.arange(n).view(1, n), mesh_dim_names=("ring", "ulysses"))
        self.records = []

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn, n: int):
        """(median wall ms of the slowest of the first n ranks, last output)."""
        group = self.groups.get(n)
        out = None
        for _ in range(self.args.warmup):
            out = fn()
        times = []
        for _ in range(self.args.repeats):
            self.sync()
            if group is not None:
                dist.barrier(group=group)
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        t = torch.tensor(times, dtype=torch.float64, device=self.device)
        if group is not None:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        return statistics.median(t.tolist()), out

    def dense_sdpa(self):
        """A context making SDPA prefer cuDNN, then flash, then mem-efficient (the fastest dense on H200)."""
        import contextlib

        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(
            [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION], set_priority=True
        )

    def compare(self, got: torch.Tensor, ref: torch.Tensor) -> dict:
        diff = got.float() - ref.float()
        rel = float(diff.norm() / ref.float().norm().clamp_min(1e-30))
        tol = self.args.tol if self.args.tol is not None else (1e-4 if self.args.smoke else 2e-2)
        return {"max_abs_err": float(diff.abs().max()), "rel_err": rel, "match": rel <= tol, "tol": tol}

    def record(self, **kw):
        if self.rank == 0:
            self.records.append(kw)
            flag = "" if kw.get("match", True) else "  MISMATCH"
            print(
                f"[sp] {kw['what']:<11} {kw['case']:<22} {kw['mode']:<6} {kw['gpus']} GPU(s): {kw['ms']:10.2f} ms{flag}",
                flush=True,
            )

    def barrier(self):
        dist.barrier()


def cases(args):
    """(name, latent frames F, tokens per frame T, latent H, latent W) of each video size."""
    if args.smoke:  # one tiny case per --frames entry (at most two)
        smoke = [("smoke F=8 T=64", 8, 64, 16, 16), ("smoke F=12 T=64", 12, 64, 16, 16)]
        return smoke[: len(args.frames.split(","))]
    from radial_attention.mask import video_layout

    out = []
    for f in (int(x) for x in args.frames.split(",")):
        lay = video_layout("wan2.1", args.height, args.width, f)
        out.append(
            (
                f"{args.width}x{args.height} {f}f",
                lay.frames,
                lay.tokens_per_frame,
                lay.height_tokens * 2,
                lay.width_tokens * 2,
            )
        )
    return out


# ---------------------------------------------------------------------------------- attention alone
def bench_attention(b: Bench, name, F, T, mask):
    from radial_attention.distributed import (
        gather_sequence,
        heads_to_seq,
        seq_to_heads,
        shard_sequence,
        ulysses_attention,
    )
    from radial_attention.ops import block_sparse_attention, resolve_backend

    args = b.args
    H, D = (4, 16) if args.smoke else (40, 128)
    S = F * T
    g = torch.Generator(device=b.device).manual_seed(1234)
    q, k, v = (torch.randn(1, S, H, D, generator=g, device=b.device, dtype=b.dtype) for _ in range(3))  # [B, S, H, D]
    backend = resolve_backend(args.backend, q.transpose(1, 2), requires_grad=False)
    F_sdpa = torch.nn.functional.scaled_dot_product_attention

    def single(mode):
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D] views
        if mode == "dense":
            with b.dense_sdpa():
                return F_sdpa(qh, kh, vh).transpose(1, 2)
        return block_sparse_attention(qh, kh, vh, mask, backend=backend).transpose(1, 2)

    refs = {}
    for mode in args.modes.split(","):
        if b.rank == 0:
            with torch.no_grad():
                ms, out = b.timed(lambda: single(mode), 1)
            refs[mode] = out
            b.record(
                what="attention",
                case=name,
                mode=mode,
                gpus=1,
                ms=ms,
                tokens=S,
                heads=H,
                backend=backend if mode == "radial" else "sdpa",
                density=mask.density,
            )
        b.barrier()
    for n in b.sizes:
        if n == 1:
            continue
        group = b.groups[n]
        if b.rank < n:
            ql, kl, vl = (shard_sequence(t, dim=1, group=group) for t in (q, k, v))  # [B, S/n, H, D]
            for mode in args.modes.split(","):

                def parallel():
                    if mode == "radial":
                        return ulysses_attention(
                            ql, kl, vl, mask, group=group, layout="BSHD", seq_len=S, backend=backend
                        )
                    qh, kh, vh = seq_to_heads([ql, kl, vl], group=group, layout="BSHD", seq_len=S)  # [B, H/n, S, D]
                    with b.dense_sdpa():
                        oh = F_sdpa(qh, kh, vh)
                    return heads_to_seq([oh], group=group, layout="BSHD", s_local=ql.shape[1])[0]

                with torch.no_grad():
                    ms, out = b.timed(parallel, n)
                    full = gather_sequence(out, dim=1, group=group, seq_len=S)
                check = b.compare(full, refs[mode]) if b.rank == 0 else {}
                b.record(
                    what="attention",
                    case=name,
                    mode=mode,
                    gpus=n,
                    ms=ms,
                    tokens=S,
                    heads=H,
                    backend=backend if mode == "radial" else "sdpa",
                    density=mask.density,
                    **check,
                )
                del full, out
        b.barrier()


# ---------------------------------------------------------------------------------- transformer
def build_model(b: Bench, layers: int):
    from diffusers import WanTransformer3DModel

    cfg = dict(WAN_TINY if b.args.smoke else WAN14B)
    if not b.args.smoke:
        cfg["num_layers"] = layers
    torch.manual_seed(0)  # the same random weights on every rank
    with torch.device(b.device):
        model = WanTransformer3DModel(**cfg)
    # As from_pretrained(torch_dtype=bf16) does: the modules diffusers keeps in float32 stay there.
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if not any(k in name.split(".") for k in keep):
            param.data = param.data.to(b.dtype)
    return model.eval(), cfg


def bench_transformer(b: Bench, name, F, T, lat_h, lat_w):
    from diffusers import ContextParallelConfig

    from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention
    from radial_attention.integrations.diffusers.context_parallel import (
        check_sequence_parallel,
        diffusers_cpu_context_parallel,
    )

    args = b.args
    base, cfg = build_model(b, args.layers)
    g = torch.Generator(device=b.device).manual_seed(99)
    inputs = dict(
        hidden_states=torch.randn(1, cfg["in_channels"], F, lat_h, lat_w, generator=g, device=b.device, dtype=b.dtype),
        timestep=torch.full((1,), 500.0, device=b.device),
        encoder_hidden_states=torch.randn(
            1, 16 if args.smoke else TEXT_TOKENS, cfg["text_dim"], generator=g, device=b.device, dtype=b.dtype
        ),
        return_dict=False,
    )
    radial_kwargs = dict(block_size=args.block_size, backend=args.backend, preset=args.preset)
    modes = args.modes.split(",")
    S = F * T
    extra = dict(tokens=S, layers=cfg["num_layers"])

    def forward(model, mode):
        if mode == "dense":
            with b.dense_sdpa():
                return model(**inputs)[0]
        return model(**inputs)[0]

    refs = {}
    if b.rank == 0:
        for mode in modes:
            state = apply_radial_attention(base, **radial_kwargs) if mode == "radial" else None
            with torch.no_grad():
                ms, out = b.timed(lambda: forward(base, mode), 1)  # noqa: F821 (`del base` frees it later)
            refs[mode] = out
            dens = max(m.density for m in state.masks.values()) if state else None
            b.record(what="transformer", case=name, mode=mode, gpus=1, ms=ms, density=dens, **extra)
            if state is not None:
                remove_radial_attention(base)
    b.barrier()
    for n in b.sizes:
        if n == 1:
            continue
        if b.rank < n:
            check_sequence_parallel(base, n, seq_len=S)
            model = copy.deepcopy(base)
            # Radial first, then diffusers' context parallelism (integrations/diffusers/context_parallel.py);
            # removing radial afterwards gives the dense model under the same split.
            state = apply_radial_attention(model, **radial_kwargs) if "radial" in modes else None
            with diffusers_cpu_context_parallel():
                model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=n, mesh=b.meshes[n]))
            for mode in ["radial", "dense"]:
                if mode not in modes:
                    continue
                if mode == "dense" and state is not None:
                    remove_radial_attention(model)
                    state = None
                with torch.no_grad():
                    ms, out = b.timed(lambda: forward(model, mode), n)
                check = b.compare(out, refs[mode]) if b.rank == 0 else {}
                b.record(what="transformer", case=name, mode=mode, gpus=n, ms=ms, **extra, **check)
                del out
            del model
            if b.device.type == "cuda":
                torch.cuda.empty_cache()
        b.barrier()
    del base


# ---------------------------------------------------------------------------------- report
def summarize(records):
    """Add speed-up / efficiency vs 1 GPU and radial-vs-dense ratios to the records."""
    one = {(r["what"], r["case"], r["mode"]): r["ms"] for r in records if r["gpus"] == 1}
    by_n = {(r["what"], r["case"], r["mode"], r["gpus"]): r["ms"] for r in records}
    for r in records:
        base = one.get((r["what"], r["case"], r["mode"]))
        if base:
            r["speedup"] = base / r["ms"]
            r["efficiency"] = r["speedup"] / r["gpus"]
        if r["mode"] == "radial":
            dense = by_n.get((r["what"], r["case"], "dense", r["gpus"]))
            if dense:
                r["radial_vs_dense"] = dense / r["ms"]
    return records


def markdown(records, env) -> str:
    lines = [
        f"Sequence-parallel (Ulysses) scaling, {env['date']}: {env['device']} x {env['world_size']}, torch {env['torch']}, "
        f"radial backend `{env['radial_backend']}`, preset `{env['preset']}`, block {env['block_size']}"
        + (", **smoke run on CPU (gloo): times mean nothing**" if env["smoke"] else "")
        + ".",
        "",
        "| what | case | tokens | mode | GPUs | ms | speed-up vs 1 GPU | efficiency | radial vs dense | matches 1 GPU (rel err) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        match = "reference" if r["gpus"] == 1 else (f"{'yes' if r['match'] else '**NO**'} ({r['rel_err']:.1e})")
        lines.append(
            f"| {r['what']}{' (' + str(r['layers']) + ' blocks)' if 'layers' in r else ''} | {r['case']} | {r['tokens']:,} | "
            f"{r['mode']} | {r['gpus']} | {r['ms']:.1f} | {r.get('speedup', float('nan')):.2f}x | "
            f"{r.get('efficiency', float('nan')):.2f} | "
            f"{(format(r['radial_vs_dense'], '.2f') + 'x') if 'radial_vs_dense' in r else ''} | {match} |"
        )
    return "\n".join(lines) + "\n"


def environment(b: Bench, backend: str) -> dict:
    dev = b.device
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "world_size": b.world,
        "gpu_counts": b.sizes,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if dev.type == "cuda" else None,
        "dist_backend": dist.get_backend(),
        "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": os.environ.get("TORCH_SYMM_MEM_DISABLE_MULTICAST"),
        "radial_backend": backend,
        "preset": b.args.preset,
        "block_size": b.args.block_size,
        "dtype": str(b.dtype).replace("torch.", ""),
        "warmup": b.args.warmup,
        "repeats": b.args.repeats,
        "smoke": b.args.smoke,
        "argv": sys.argv[1:],
    }


def main_rank(rank: int, world: int, args) -> dict:
    """The benchmark on one rank of an initialized process group; returns the records on rank 0."""
    from radial_attention.mask import radial_block_mask
    from radial_attention.ops import resolve_backend

    if args.smoke:
        device = torch.device("cpu")
        args.block_size, args.backend, args.warmup, args.repeats = 64, "reference", 0, 1
        args.layers = WAN_TINY["num_layers"]
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    b = Bench(args, rank, world, device)
    what = args.what.split(",")
    probe = torch.empty(1, 1, 1, 16 if args.smoke else 128, device=device, dtype=b.dtype)
    backend = resolve_backend(args.backend, probe, requires_grad=False)
    for name, F, T, lat_h, lat_w in cases(args):
        mask = radial_block_mask(F, T, preset=args.preset, block_size=args.block_size)
        if "attention" in what:
            bench_attention(b, name, F, T, mask)
        if "transformer" in what:
            bench_transformer(b, name, F, T, lat_h, lat_w)
    if rank != 0:
        return {}
    records = summarize(b.records)
    return {"environment": environment(b, backend), "records": records}


def _smoke_worker(rank, world, args):
    return main_rank(rank, world, args)


def write_and_print(result, out_prefix: str) -> int:
    env, records = result["environment"], result["records"]
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    with open(out_prefix + ".json", "w") as f:
        json.dump(result, f, indent=2)
    md = markdown(records, env)
    with open(out_prefix + ".md", "w") as f:
        f.write(md)
    multi = [r for r in records if r["gpus"] > 1]
    bad = [r for r in multi if not r["match"]]
    verdict = (
        "; 1 GPU only: no multi-GPU output to check"
        if not multi
        else f"; {len(bad)} MISMATCH(ES) with 1 GPU"
        if bad
        else "; every multi-GPU output matches 1 GPU"
    )
    print(f"\nwrote {out_prefix}.json and {out_prefix}.md" + verdict)
    print()
    print(md)
    return 1 if bad else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke and "WORLD_SIZE" not in os.environ:
        from radial_attention.distributed import run_workers
        from radial_attention.distributed.launch import DEFAULT_PRELOAD

        # diffusers imported once by the forkserver, not by every worker.
        preload = list(DEFAULT_PRELOAD) + ["diffusers", "radial_attention.integrations.diffusers"]
        result = run_workers(_smoke_worker, args.smoke_ranks, args, timeout_s=600, threads=1, preload=preload)[0]
        return write_and_print(result, args.out)
    from radial_attention.distributed import init_distributed, shutdown
    from radial_attention.distributed.launch import free_port

    ctx = init_distributed(backend="gloo" if args.smoke else None)
    if not dist.is_initialized():
        # A plain `python` run (one GPU): a group of one, so every code path is the same.
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        kwargs = {} if args.smoke else {"device_id": ctx.device}
        dist.init_process_group("gloo" if args.smoke else "nccl", rank=0, world_size=1, **kwargs)
    try:
        result = main_rank(dist.get_rank(), dist.get_world_size(), args)
        return write_and_print(result, args.out) if dist.get_rank() == 0 else 0
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())

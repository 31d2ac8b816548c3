"""Benchmark whole diffusers transformer forwards, dense versus radial, and the denoising schedule.

Real model configs at full width (Wan2.1-14B: 40 heads x 128, FFN 13824; HunyuanVideo: 24 heads x
128, 20 dual-stream + 40 single-stream blocks) with random bf16 weights, built with as many
blocks as ``--layers`` says (the time of a whole forward is dominated by the blocks, which are
identical in cost), on a latent video of the real size:

    wan14b-720p-81f      Wan2.1-14B, 1280x720, 81 frames: 21 x 3600 = 75,600 tokens, preset wan (d=0.2)
    hunyuan-768p-117f    HunyuanVideo, 1280x768, 117 frames: 30 x 3840 = 115,200 video + 256 text tokens
    hunyuan-720p-509f    HunyuanVideo at 4x length, 1280x720, 509 frames: 128 x 3600 = 460,800 + 256, d=1.0

For each case: one transformer forward with dense attention under each SDPA backend (cuDNN,
flash, efficient; the fastest is the baseline), and with radial attention
(``apply_radial_attention``, Triton backend if it runs here, else FlexAttention). Each block's
time is measured (CUDA events on block pre/post hooks), so the time of the full-depth model is
``outside-of-blocks + sum over blocks``, and a schedule's time over a denoising loop is computed
from the measured dense and radial block times (dense steps x dense forward + the rest x a radial
forward whose first ``dense_layers`` blocks are dense). HunyuanVideo's prompt mask is all ones
here (a full 256-token prompt); the dense runs drop that all-true mask before SDPA so that the
mask-less cuDNN / flash kernels can run (the same attention), the radial runs get no
``key_lengths`` for it either.

    python benchmarks/pipeline.py --out results/               # on the GPU
    python benchmarks/pipeline.py --smoke --out /tmp/pipe      # tiny configs on the CPU (checks the script)

Writes ``pipeline.json`` and ``pipeline.md`` to ``--out`` and prints the table last. A case that
runs out of memory or fails is recorded as such and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402
from radial_attention.testing.configs import HUNYUAN_VIDEO, WAN21_14B  # noqa: E402

# ------------------------------------------------------------------------------------ models
WAN14B, HUNYUAN = WAN21_14B, HUNYUAN_VIDEO  # the real checkpoints' configs (full depth)
# Block lists of each family: (module list attribute, config key of its full depth).
BLOCK_GROUPS = {
    "wan": (("blocks", "num_layers"),),
    "hunyuan": (("transformer_blocks", "num_layers"), ("single_transformer_blocks", "num_single_layers")),
}

# name: family, video size, text tokens, preset/decay, blocks built per group, schedules
# (label, steps, dense_steps, dense_layers), the target speed-ups of the issue (forward, schedule).
CASES = {
    "wan14b-720p-81f": dict(
        family="wan",
        config=WAN14B,
        height=720,
        width=1280,
        frames=81,
        text=512,
        preset="wan",
        decay=None,
        build=(4,),
        schedules=[("paper: first 12 of 50 steps + first block dense", 50, 12, 1)],
        target=(2.1, 1.7),
    ),
    "hunyuan-768p-117f": dict(
        family="hunyuan",
        config=HUNYUAN,
        height=768,
        width=1280,
        frames=117,
        text=256,
        preset="hunyuan",
        decay=None,
        build=(1, 1),
        schedules=[("first 12 of 50 steps dense", 50, 12, 0)],
        target=(None, None),
    ),
    "hunyuan-720p-509f": dict(
        family="hunyuan",
        config=HUNYUAN,
        height=720,
        width=1280,
        frames=509,
        text=256,
        preset="hunyuan",
        decay=1.0,
        build=(1, 1),
        schedules=[("4x LoRA: first 2 of 50 steps + first 2 blocks dense", 50, 2, 2)],
        target=(6.0, None),
        # cuDNN is the fastest dense kernel at every size measured (docs/performance.md); flash as a
        # fallback; the efficient kernel (3x slower) would cost a minute of GPU time here.
        dense_backends=("cudnn", "flash"),
    ),
}

SMOKE_CASES = {
    "smoke-wan": dict(
        family="wan",
        config=dict(tiny.WAN_TINY, num_attention_heads=2, attention_head_dim=64, num_layers=40),
        height=128,
        width=192,
        frames=33,
        text=16,
        preset="wan",
        decay=None,
        build=(2,),
        schedules=[("first 12 of 50 steps + first block dense", 50, 12, 1)],
        target=(None, None),
        block_size=64,
    ),
    "smoke-hunyuan": dict(
        family="hunyuan",
        config=dict(
            tiny.HUNYUAN_TINY,
            num_attention_heads=2,
            attention_head_dim=64,
            rope_axes_dim=(16, 24, 24),
            num_layers=20,
            num_single_layers=40,
        ),
        height=128,
        width=128,
        frames=33,
        text=16,
        preset="hunyuan",
        decay=1.0,
        build=(1, 1),
        schedules=[("first 2 of 50 steps + first 2 blocks dense", 50, 2, 2)],
        target=(None, None),
        block_size=64,
    ),
}

SDPA_BACKENDS = {
    "fa4": None,  # FlashAttention-4's dense kernel through radial_attention.ops.dense_attention
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def build_model(case, device, dtype):
    """The case's transformer with ``build`` blocks per group (full width), random weights, on ``device``."""
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    cfg = dict(case["config"])
    groups = BLOCK_GROUPS[case["family"]]
    full = {attr: cfg[key] for attr, key in groups}
    for (attr, key), n in zip(groups, case["build"]):
        cfg[key] = n
    cls = WanTransformer3DModel if case["family"] == "wan" else HunyuanVideoTransformer3DModel
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(**cfg)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval(), full


def make_inputs(case, model, device, dtype):
    cfg = model.config
    g = torch.Generator(device="cpu").manual_seed(0)
    f = (case["frames"] - 1) // 4 + 1
    shape = (1, cfg.in_channels, f, case["height"] // 8, case["width"] // 8)
    x = torch.randn(shape, generator=g).to(device, dtype)
    t = torch.tensor([700.0], device=device)
    if case["family"] == "wan":
        text = torch.randn(1, case["text"], cfg.text_dim, generator=g).to(device, dtype)
        return dict(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
    text = torch.randn(1, case["text"], cfg.text_embed_dim, generator=g).to(device, dtype)
    return dict(
        hidden_states=x,
        timestep=t,
        encoder_hidden_states=text,
        encoder_attention_mask=torch.ones(1, case["text"], dtype=torch.long, device=device),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g).to(device, dtype),
        guidance=torch.tensor([6000.0], device=device, dtype=dtype),
        return_dict=False,
    )


class DropAllTrueMask(torch.overrides.TorchFunctionMode):
    """Dense runs: an SDPA mask that keeps every key is dropped (same result), so mask-less kernels can run."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            if len(args) > 3:  # attn_mask given positionally: move it to the keywords
                kwargs["attn_mask"] = args[3]
                args = tuple(args[:3]) + tuple(args[4:])
            m = kwargs.get("attn_mask")
            if m is not None and m.dtype == torch.bool and bool(m.all()):
                kwargs["attn_mask"] = None
        return func(*args, **kwargs)


class BlockTimer:
    """Time of each block of each group and of the whole forward (CUDA events, or wall clock on the CPU)."""

    def __init__(self, model, groups, device):
        """``groups``: the model's block list attributes (``"blocks"``, ``"transformer_blocks"`` ...)."""
        self.device = device
        self.handles = []
        self.records = {}  # (group, index) -> [start, end]
        for attr in groups:
            for i, block in enumerate(getattr(model, attr)):
                self.handles.append(block.register_forward_pre_hook(lambda m, a, k=(attr, i): self._mark(k, 0)))
                self.handles.append(block.register_forward_hook(lambda m, a, o, k=(attr, i): self._mark(k, 1)))

    def _now(self):
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _mark(self, key, which):
        self.records.setdefault(key, [None, None])[which] = self._now()

    def _elapsed(self, a, b):
        return a.elapsed_time(b) / 1e3 if self.device.type == "cuda" else b - a

    def run(self, fn):
        """(total seconds, {(group, index): seconds}) of one call."""
        self.records = {}
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = self._now()
        fn()
        end = self._now()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self._elapsed(start, end), {k: self._elapsed(a, b) for k, (a, b) in self.records.items()}

    def remove(self):
        for h in self.handles:
            h.remove()


def measure(timer, fn, warmup, reps):
    """Median total and per-block times over ``reps`` calls after up to ``warmup`` calls.

    A call slower than 5 s gets one warm-up and one timed run (at those sizes launch noise is nil
    and the GPU budget is precious).
    """
    first = None
    for _ in range(warmup):
        first, _ = timer.run(fn)
        if first > 5.0:
            break
    if first is not None and first > 5.0:
        reps = 1
    runs = [timer.run(fn) for _ in range(reps)]
    total = statistics.median(r[0] for r in runs)
    blocks = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
    return total, blocks


def full_forward(total, blocks, full_depth, dense_blocks=None, dense_layers=0):
    """Time of the full-depth model from one measured forward's per-block times.

    ``full_depth``: ``{block list attribute: blocks of the full model}`` in run order.
    ``outside = total - sum(blocks)``; each group's mean block time times its full depth. With
    ``dense_blocks`` given, the first ``dense_layers`` blocks (in run order) take the dense time.
    """
    outside = total - sum(blocks.values())
    t = outside
    remaining_dense = dense_layers
    for attr, n in full_depth.items():
        mine = [v for (g, _), v in blocks.items() if g == attr]
        mean = sum(mine) / len(mine)
        n_dense = min(n, remaining_dense)
        remaining_dense -= n_dense
        if n_dense:
            dense_mine = [v for (g, _), v in dense_blocks.items() if g == attr]
            t += n_dense * sum(dense_mine) / len(dense_mine)
        t += (n - n_dense) * mean
    return t


def pick_radial_backend(device, dtype, head_dim, forced):
    from radial_attention.ops import resolve_backend

    if forced:
        return forced
    probe = torch.empty(1, 1, 128, head_dim, device=device, dtype=dtype)
    if device.type != "cuda":
        return resolve_backend("auto", probe, requires_grad=False)
    for name in ("fa4", "triton", "flex"):
        try:
            return resolve_backend(name, probe, requires_grad=False)
        except ValueError as e:
            print(f"  [{name} backend not usable here: {e}]")
    return resolve_backend("auto", probe, requires_grad=False)


def run_case(name, case, args, device, dtype):
    from radial_attention.mask import radial_block_mask

    res = dict(case=name, family=case["family"], status="ok")
    model, full_depth = build_model(case, device, dtype)
    kwargs = make_inputs(case, model, device, dtype)
    f = kwargs["hidden_states"].shape[2]
    tpf = (kwargs["hidden_states"].shape[3] // 2) * (kwargs["hidden_states"].shape[4] // 2)
    extra = case["text"] if case["family"] == "hunyuan" else 0
    block_size = case.get("block_size", 128)
    mask = radial_block_mask(
        f, tpf, preset=case["preset"], extra_tokens=extra, block_size=block_size, decay=case["decay"]
    )
    res.update(
        frames=f,
        tokens_per_frame=tpf,
        video_tokens=f * tpf,
        text_tokens=extra,
        preset=case["preset"],
        decay=mask.decay,
        block_size=block_size,
        density=round(mask.density, 4),
        built_blocks=dict(zip([a for a, _ in BLOCK_GROUPS[case["family"]]], case["build"])),
        full_depth=full_depth,
    )
    print(f"\n== {name}: F={f} x T={tpf} = {f * tpf:,} video tokens + {extra} text, density {mask.density:.4f}")
    timer = BlockTimer(model, [attr for attr, _ in BLOCK_GROUPS[case["family"]]], device)
    fn = lambda: model(**kwargs)  # noqa: F821 (`del model, kwargs` at the end frees the GPU memory)

    # Dense, per SDPA backend.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from radial_attention.integrations.diffusers.sdpa import DenseSDPA

    dense = {}
    names = case.get("dense_backends", args.dense_backends) if not args.dense_backends_given else args.dense_backends
    if device.type == "cuda" and "fa4" not in names and not args.dense_backends_given:
        names = ("fa4", *names)
    with torch.no_grad(), DropAllTrueMask():
        for be in names:
            try:
                if be == "fa4":
                    from radial_attention.ops import resolve_dense_backend

                    resolve_dense_backend(
                        "fa4", torch.empty(1, 1, 128, model.config.attention_head_dim, device=device, dtype=dtype)
                    )
                    kernel = DenseSDPA("fa4", "benchmark")
                else:
                    kernel = sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[be])])
                with kernel:
                    total, blocks = measure(timer, fn, args.warmup, args.reps)
                dense[be] = (total, blocks)
                print(f"  dense {be:<9} {total * 1e3:10.1f} ms for {sum(case['build'])} blocks")
            except torch.cuda.OutOfMemoryError:
                dense[be] = None
                print(f"  dense {be:<9} out of memory")
                torch.cuda.empty_cache()
            except (RuntimeError, ValueError) as e:  # backend cannot run this input
                dense[be] = None
                print(f"  dense {be:<9} not available: {str(e).splitlines()[0][:120]}")
    ok = {k: v for k, v in dense.items() if v is not None}
    if not ok:
        raise RuntimeError("no dense SDPA backend ran")
    best = min(ok, key=lambda k: ok[k][0])
    # The baseline of the speed-ups: cuDNN SDPA (what a diffusers user runs), else the fastest that ran;
    # the fastest dense (FA4's, where it runs) is reported beside it.
    base = "cudnn" if "cudnn" in ok else best
    d_total, d_blocks = ok[base]
    res["dense_ms_built"] = {k: (None if v is None else round(v[0] * 1e3, 2)) for k, v in dense.items()}
    res["dense_best_backend"] = best
    res["dense_baseline_backend"] = base

    # Radial.
    backend = pick_radial_backend(device, dtype, model.config.attention_head_dim, args.radial_backend)
    res["radial_backend"] = backend
    state = apply_radial_attention(
        model, preset=case["preset"], decay=case["decay"], block_size=block_size, backend=backend, dense_backend="auto"
    )
    try:
        with torch.no_grad():
            r_total, r_blocks = measure(timer, fn, args.warmup, args.reps)
    finally:
        remove_radial_attention(model)
        timer.remove()
    print(
        f"  radial {backend:<8} {r_total * 1e3:10.1f} ms for {sum(case['build'])} blocks "
        f"({state.summary()['radial_calls']} radial attention calls)"
    )
    res["radial_ms_built"] = round(r_total * 1e3, 2)

    dense_full = full_forward(d_total, d_blocks, full_depth)
    radial_full = full_forward(r_total, r_blocks, full_depth)
    # The library's own dense kernel (FA4's where the fa4 backend runs) for the schedule's dense parts.
    lib = "fa4" if backend == "fa4" and "fa4" in ok else base
    lib_total, lib_blocks = ok[lib]
    lib_full = full_forward(lib_total, lib_blocks, full_depth)
    best_full = full_forward(ok[best][0], ok[best][1], full_depth)
    res["dense_in_schedule_backend"] = lib
    res["forward_ms_full_depth_per_dense_backend"] = {
        k: round(full_forward(v[0], v[1], full_depth) * 1e3, 1) for k, v in ok.items()
    }
    res["forward_speedup_vs_fastest_dense"] = round(best_full / radial_full, 3)
    res["block_ms"] = {
        "dense": {f"{g}[{i}]": round(v * 1e3, 2) for (g, i), v in d_blocks.items()},
        "radial": {f"{g}[{i}]": round(v * 1e3, 2) for (g, i), v in r_blocks.items()},
    }
    res["forward_ms_full_depth"] = {"dense": round(dense_full * 1e3, 1), "radial": round(radial_full * 1e3, 1)}
    res["forward_speedup"] = round(dense_full / radial_full, 3)
    res["schedules"] = []
    for label, steps, dense_steps, dense_layers in case["schedules"]:
        radial_dl = full_forward(r_total, r_blocks, full_depth, dense_blocks=lib_blocks, dense_layers=dense_layers)
        t_dense = steps * dense_full
        t_sched = dense_steps * lib_full + (steps - dense_steps) * radial_dl
        res["schedules"].append(
            dict(
                label=label,
                steps=steps,
                dense_steps=dense_steps,
                dense_layers=dense_layers,
                dense_s=round(t_dense, 2),
                radial_s=round(t_sched, 2),
                speedup=round(t_dense / t_sched, 3),
            )
        )
    res["target_forward_speedup"], res["target_schedule_speedup"] = case["target"]
    del model, kwargs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def markdown(results, env) -> str:
    lines = [
        f"Pipeline benchmark ({env['date']}, {env['device']}, torch {env['torch']}, triton {env['triton']}, "
        f"diffusers {env['diffusers']}; {'SMOKE run, tiny configs: not a measurement' if env['smoke'] else 'bf16, random weights'})",
        "",
        "| case | tokens (video + text) | density | dense full forward (baseline) | fastest dense | radial full forward | speed-up vs baseline (target) | vs fastest dense | schedule (dense parts on) | schedule time dense / radial | speed-up (target) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | | | {r['status']} | | | | | | | |")
            continue
        fwd = r["forward_ms_full_depth"]
        tf, ts = r["target_forward_speedup"], r["target_schedule_speedup"]
        for j, s in enumerate(r["schedules"]):
            head = (
                (
                    f"| {r['case']} | {r['video_tokens']:,} + {r['text_tokens']} | {r['density']:.4f} | "
                    f"{fwd['dense']:.0f} ms ({r.get('dense_baseline_backend', r['dense_best_backend'])}) | "
                    f"{r['forward_ms_full_depth_per_dense_backend'][r['dense_best_backend']]:.0f} ms ({r['dense_best_backend']}) | "
                    f"{fwd['radial']:.0f} ms ({r['radial_backend']}) | "
                    f"{r['forward_speedup']:.3f}x{f' ({tf}x)' if tf else ''} | {r['forward_speedup_vs_fastest_dense']:.3f}x "
                )
                if j == 0
                else "| | | | | | | | "
            )
            lines.append(
                head
                + f"| {s['label']} ({r['dense_in_schedule_backend']}) | {s['dense_s']:.1f} s / {s['radial_s']:.1f} s | "
                f"{s['speedup']:.3f}x{f' ({ts}x)' if ts else ''} |"
            )
    lines += [
        "",
        "Full-depth times are computed from the measured per-block times of a model built with "
        "fewer blocks (see `built_blocks`, `block_ms` in pipeline.json) plus the measured time outside "
        "the blocks; schedules over the denoising loop (transformer calls only, one call per step; CFG "
        "doubles both sides) from those forwards.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny configs on the CPU: checks the script, measures nothing")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument(
        "--dense-backends", default=None, help="SDPA backends for dense (default: cudnn,flash,efficient; smoke: math)"
    )
    p.add_argument(
        "--radial-backend", default=None, help="force a radial backend (default: triton if usable, else flex)"
    )
    p.add_argument("--blocks", type=int, default=None, help="blocks built per block group (default: the case's)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results", help="folder for pipeline.json / pipeline.md")
    args = p.parse_args(argv)

    cases = SMOKE_CASES if args.smoke else CASES
    if args.cases:
        unknown = [c for c in args.cases.split(",") if c not in cases]
        if unknown:
            raise SystemExit(f"unknown cases {unknown}; expected some of {list(cases)}")
        cases = {c: cases[c] for c in args.cases.split(",")}
    if args.blocks is not None:
        if args.blocks < 1:
            raise SystemExit(f"--blocks must be >= 1, got {args.blocks}")
        cases = {k: dict(c, build=tuple(args.blocks for _ in c["build"])) for k, c in cases.items()}
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU, or pass --smoke for the CPU check")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.dense_backends_given = args.dense_backends is not None
    args.dense_backends = (args.dense_backends or ("math" if device.type == "cpu" else "cudnn,flash,efficient")).split(
        ","
    )
    for be in args.dense_backends:
        if be not in SDPA_BACKENDS or (be == "fa4" and device.type != "cuda"):
            raise SystemExit(f"unknown SDPA backend {be!r}; expected some of {list(SDPA_BACKENDS)}")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    args.reps = args.reps if args.reps is not None else (1 if args.smoke else 5)

    import diffusers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    env = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})",
        torch=torch.__version__,
        triton=triton_version,
        diffusers=diffusers.__version__,
        smoke=args.smoke,
    )
    results = []
    for name, case in cases.items():
        t0 = time.perf_counter()
        try:
            res = run_case(name, case, args, device, dtype)
        except torch.cuda.OutOfMemoryError as e:
            res = dict(case=name, status=f"out of memory: {str(e).splitlines()[0][:160]}")
        except Exception as e:  # keep going: one broken case must not hide the others
            traceback.print_exc()
            res = dict(
                case=name, status=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            )
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(dict(env=env, results=results), indent=2))
    md = markdown(results, env)
    (out / "pipeline.md").write_text(md)
    print("\n" + md)
    print(f"wrote {out / 'pipeline.json'} and {out / 'pipeline.md'}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

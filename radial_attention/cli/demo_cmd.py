"""``radial-attention demo``: dense versus radial attention in a real diffusers Wan transformer, no download.

Builds ``diffusers.WanTransformer3DModel`` from a small built-in config with random weights,
denoises one latent video (default: 81 frames of 320x192 pixels = 21 latent frames x 240 tokens
= 5,040 tokens) for a few flow-matching steps twice from the same noise, once with the model's
own dense attention and once with radial attention applied through
``apply_radial_attention``, and prints per step the time and how far the two runs have drifted
apart, then the mask's density and the attention compute it keeps, and writes the mask picture.

Timing: both runs are warmed up first (allocator, kernels, the radial mask and the backend's
plan), then the two runs advance in lockstep and every step is timed ``--repeats`` times per run,
alternating dense/radial and radial/dense, so that a slow moment of a shared machine hits both;
the report gives medians with their min-max spread.
"""

from __future__ import annotations

import copy
import statistics
import time

from radial_attention.cli.args import (
    UsageError,
    add_command,
    device_name,
    nonneg_int,
    positive_float,
    positive_int,
    resolve_device,
    resolve_dtype,
)

# The registry variant whose VAE strides and patch the demo's tiny Wan transformer stands for.
DEMO_MODEL = "wan2.1"
# head_dim 64: the Triton kernels take 64 or 128, so the demo runs them on a GPU.
DEMO_CONFIG = dict(num_layers=2, num_heads=2, head_dim=64, ffn_dim=256, text_dim=64)


def register(sub) -> None:
    p = add_command(
        sub,
        "demo",
        help="dense vs radial attention in a small real diffusers Wan transformer (no download)",
        description=(
            "Run a few denoising steps of a diffusers WanTransformer3DModel built from a small built-in "
            "config (random weights, no download) on a long latent video, dense and radial, and print time "
            "per step (median of --repeats interleaved calls), mask density and the difference between the "
            "outputs; write the mask picture."
        ),
    )
    p.add_argument(
        "--frames", type=positive_int, default=81, help="video frames (4k+1); latent frames = (frames-1)/4+1"
    )
    p.add_argument("--height", type=positive_int, default=192, help="video height in pixels (multiple of 16)")
    p.add_argument("--width", type=positive_int, default=320, help="video width in pixels (multiple of 16)")
    p.add_argument("--steps", type=positive_int, default=4, help="denoising steps")
    p.add_argument("--dense-steps", type=nonneg_int, default=1, help="first steps that stay dense in the radial run")
    p.add_argument("--dense-layers", type=nonneg_int, default=0, help="first blocks that stay dense in the radial run")
    p.add_argument("--layers", type=positive_int, default=DEMO_CONFIG["num_layers"], help="transformer blocks")
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="timed calls per step and run (the median is reported)"
    )
    p.add_argument("--preset", default="wan", help="mask preset")
    p.add_argument("--decay", type=positive_float, default=None, help="mask decay (default: the preset's)")
    p.add_argument(
        "--block-size", type=int, default=128, choices=[64, 128], help="mask block size in tokens (64 for small videos)"
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="attention backend for the radial run: auto (CUDA: triton, else flex; CPU: gather, plain torch "
        "over the kept blocks), gather, reference (computes every block: the oracle), flex, triton, flashinfer",
    )
    p.add_argument("--device", type=device_name, default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and the noise")
    p.add_argument("--png", default="radial-attention-demo-mask.png", metavar="FILE", help="mask picture ('' to skip)")
    p.set_defaults(func=run)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(model, x, t, text, device):
    """(velocity, seconds) of one transformer call on latents ``x`` at timestep ``t``."""
    _sync(device)
    t0 = time.perf_counter()
    v = model(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=text, return_dict=False)[0]
    _sync(device)
    return v, time.perf_counter() - t0


def _denoise_both(dense_model, radial_model, latents, text, scheduler, steps, repeats, device):
    """Denoise the same latents with both models in lockstep (flow matching).

    Each step calls each model ``repeats`` times on the same input (the radial state counts calls
    at an unchanged timestep as the same step), alternating which goes first; the first call's
    output drives the step. Returns per run: (final latents, per-step lists of call seconds,
    per-step latents on the CPU).
    """
    import torch

    scheduler.set_timesteps(steps, device=device)
    schedulers = {"dense": scheduler, "radial": copy.deepcopy(scheduler)}  # each keeps its own step index
    models = {"dense": dense_model, "radial": radial_model}
    x = {name: latents.clone() for name in models}
    times = {name: [] for name in models}
    trail = {name: [] for name in models}
    with torch.no_grad():
        for t in scheduler.timesteps:
            v, calls = {}, {name: [] for name in models}
            for r in range(repeats):
                for name in ("dense", "radial") if r % 2 == 0 else ("radial", "dense"):
                    out, seconds = _timed_call(models[name], x[name], t, text, device)
                    calls[name].append(seconds)
                    v.setdefault(name, out)
            for name in models:
                x[name] = schedulers[name].step(v[name], t, x[name], return_dict=False)[0]
                trail[name].append(x[name].float().cpu())
                times[name].append(calls[name])
    return {name: (x[name], times[name], trail[name]) for name in models}


def _spread(seconds) -> str:
    """``0.412 s (0.398-0.470)``: the median and the min-max of a list of call times."""
    return f"{statistics.median(seconds):.3f} s ({min(seconds):.3f}-{max(seconds):.3f})"


def check_arguments(args) -> None:
    """Combinations that would leave the demo with nothing to compare (no radial step or block)."""
    if args.dense_steps >= args.steps:
        raise UsageError(
            f"--dense-steps {args.dense_steps} covers all {args.steps} steps: no step would run radial attention "
            f"(give --steps > --dense-steps, e.g. --steps {args.dense_steps + 2})"
        )
    if args.dense_layers >= args.layers:
        raise UsageError(
            f"--dense-layers {args.dense_layers} covers all {args.layers} blocks: no block would run radial "
            f"attention (give --layers > --dense-layers)"
        )


def run(args) -> dict:
    """Run the demo; prints the report and returns it as values: ``{"device", "dtype", "backend",
    "tokens", "steps": [{"timestep", "mode" (as printed: "dense (schedule)", "radial", "radial, dense
    blocks"), "relative_difference"}], "density", "num_blocks", "saved_fraction", "speedup" (median
    dense / radial call time over the radial steps), "relative_difference" (final latents), "png"
    (the picture written, or None)}``."""
    check_arguments(args)
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention
    from radial_attention.testing.tiny import tiny_wan_transformer
    from radial_attention.mask import video_layout
    from radial_attention.models import get_variant
    from radial_attention.ops import resolve_backend

    layout = video_layout(DEMO_MODEL, args.height, args.width, args.frames)  # checks the size
    vae_t, vae_s = get_variant(DEMO_MODEL).vae_strides
    latent_h, latent_w = args.height // vae_s, args.width // vae_s
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)

    t_build = time.perf_counter()
    model = tiny_wan_transformer(
        "t2v",
        num_layers=args.layers,
        num_heads=DEMO_CONFIG["num_heads"],
        head_dim=DEMO_CONFIG["head_dim"],
        ffn_dim=DEMO_CONFIG["ffn_dim"],
        text_dim=DEMO_CONFIG["text_dim"],
        seed=args.seed,
        dtype=dtype,
    ).to(device)
    radial_model = copy.deepcopy(model)  # same weights; radial attention goes on this one only
    build_s = time.perf_counter() - t_build
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(1, model.config.in_channels, layout.frames, latent_h, latent_w, generator=g).to(device, dtype)
    text = torch.randn(1, 32, DEMO_CONFIG["text_dim"], generator=g).to(device, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    S = layout.video_tokens
    heads, head_dim = DEMO_CONFIG["num_heads"], DEMO_CONFIG["head_dim"]
    probe = torch.empty(1, heads, S, head_dim, device=device, dtype=dtype)
    backend = resolve_backend(args.backend, probe, requires_grad=False)  # CPU: gather

    print(
        f"model         diffusers WanTransformer3DModel, {args.layers} blocks, {heads} heads x {head_dim}, "
        f"random weights ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, built in {build_s:.1f} s)"
    )
    print(
        f"video         {args.frames} frames of {args.width}x{args.height} px -> latent {layout.frames} x "
        f"{latent_h} x {latent_w} -> F={layout.frames} frames x T={layout.tokens_per_frame} tokens = {S:,} tokens"
    )

    warm_t = torch.tensor([500.0], device=device)
    with torch.no_grad():  # dense warm-up (allocator, kernels), so that step 0 is timed like the others
        _, dense_first_s = _timed_call(model, latents, warm_t, text, device)
    # Radial warm-up with every block radial: builds the mask and the backend's plan (or compiles its
    # kernel) once, outside the timed steps. The timed run uses the same mask settings (one dict).
    mask_settings = dict(
        preset=args.preset, decay=args.decay, block_size=args.block_size, backend=backend, num_steps=args.steps
    )
    apply_radial_attention(radial_model, **mask_settings)
    try:
        with torch.no_grad():
            _, warm_s = _timed_call(radial_model, latents, warm_t, text, device)
    finally:
        remove_radial_attention(radial_model)
    print(
        f"device        {device} ({str(dtype).replace('torch.', '')}), attention backend for radial: {backend} "
        f"(first call: {warm_s:.2f} s incl. mask build and the backend's plan, compilation or JIT; "
        f"dense first call {dense_first_s:.2f} s)"
    )
    state = apply_radial_attention(
        radial_model, dense_steps=args.dense_steps, dense_layers=args.dense_layers, **mask_settings
    )
    try:
        runs = _denoise_both(model, radial_model, latents, text, scheduler, args.steps, args.repeats, device)
    finally:
        remove_radial_attention(radial_model)
    x_dense, t_dense, trail_dense = runs["dense"]
    x_radial, t_radial, trail_radial = runs["radial"]

    print()
    print(f"per step: median (min-max) of {args.repeats} call(s) per run, dense and radial interleaved")
    print(
        f"{'step':>4}  {'timestep':>8}  {'radial run':<22} {'dense':>22}  {'radial':>22}  {'rel. diff of latents':>20}"
    )
    steps = []
    for i, t in enumerate(scheduler.timesteps.tolist()):
        kinds = {kind for (step, _, kind), n in state.calls.items() if step == i and n}
        mode = (
            "dense (schedule)" if kinds == {"dense"} else ("radial" if kinds == {"radial"} else "radial, dense blocks")
        )
        a, b = trail_dense[i], trail_radial[i]
        rel = float((a - b).norm() / a.norm())
        print(f"{i:>4}  {t:>8.1f}  {mode:<22} {_spread(t_dense[i]):>22}  {_spread(t_radial[i]):>22}  {rel:>20.4f}")
        steps.append(dict(timestep=t, mode=mode, relative_difference=rel))
    mask = next(iter(state.masks.values()))
    flops = mask.attention_flops(S, head_dim, heads)
    print()
    print(
        f"mask          preset {args.preset}, block {args.block_size}: {mask.num_blocks}x{mask.num_blocks} blocks, "
        f"density {mask.density:.3f} (ideal attention speed-up {1 / mask.density:.2f}x, "
        f"{100 * flops['saved_fraction']:.0f}% of attention FLOPs saved)"
    )
    sparse_steps = range(args.dense_steps, args.steps)  # check_arguments: not empty
    d = [s for i in sparse_steps for s in t_dense[i]]
    r = [s for i in sparse_steps for s in t_radial[i]]
    per_step = [statistics.median(t_dense[i]) / statistics.median(t_radial[i]) for i in sparse_steps]
    print(
        f"time          radial steps {_spread(r)} vs dense {_spread(d)} per call: "
        f"{statistics.median(d) / statistics.median(r):.2f}x (per radial step {min(per_step):.2f}-{max(per_step):.2f}x)"
    )
    rel = float((x_dense.float() - x_radial.float()).norm() / x_dense.float().norm())
    print(f"difference    final latents differ by {rel:.4f} (relative L2) between dense and radial")
    if backend == "reference":
        print(
            "note          the 'reference' backend computes every block and then masks (it is the correctness "
            "oracle), so on this device radial attention is not faster; with a GPU the triton/flex backends "
            "skip the dropped blocks"
        )
    written = None
    if args.png:
        try:
            written = mask.save_png(
                args.png,
                title=f"Wan radial mask, F={layout.frames} latent frames x T={layout.tokens_per_frame} tokens\n"
                f"preset {args.preset}, block {args.block_size}: density {mask.density:.3f}",
            )
            print(f"picture       {written}")
        except ImportError as e:
            print(f"picture       not written ({e}); install matplotlib")
    return dict(
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        backend=backend,
        tokens=S,
        steps=steps,
        density=mask.density,
        num_blocks=mask.num_blocks,
        saved_fraction=flops["saved_fraction"],
        speedup=statistics.median(d) / statistics.median(r),
        relative_difference=rel,
        png=None if written is None else str(written),
    )

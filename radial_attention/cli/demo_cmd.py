"""``radial-attention demo``: dense versus radial attention in a real diffusers Wan transformer, no download.

Builds ``diffusers.WanTransformer3DModel`` from a small built-in config with random weights,
denoises one latent video (default: 81 frames of 320x192 pixels = 21 latent frames x 240 tokens
= 5,040 tokens) for a few flow-matching steps twice from the same noise, once with the model's
own dense attention and once with radial attention applied through
``apply_radial_attention``, and prints per step the time and how far the two runs have drifted
apart, then the mask's density and the attention compute it keeps, and writes the mask picture.
"""

from __future__ import annotations

import argparse
import time

# head_dim 64: the Triton kernels take 64 or 128, so the demo runs them on a GPU.
DEMO_CONFIG = dict(num_layers=2, num_heads=2, head_dim=64, ffn_dim=256, text_dim=64)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="dense vs radial attention in a small real diffusers Wan transformer (no download)",
        description=(
            "Run a few denoising steps of a diffusers WanTransformer3DModel built from a small built-in "
            "config (random weights, no download) on a long latent video, dense and radial, and print time "
            "per step, mask density and the difference between the outputs; write the mask picture."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--frames", type=int, default=81, help="video frames (4k+1); latent frames = (frames-1)/4+1")
    p.add_argument("--height", type=int, default=192, help="video height in pixels (multiple of 16)")
    p.add_argument("--width", type=int, default=320, help="video width in pixels (multiple of 16)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps")
    p.add_argument("--dense-steps", type=int, default=1, help="first steps that stay dense in the radial run")
    p.add_argument("--dense-layers", type=int, default=0, help="first blocks that stay dense in the radial run")
    p.add_argument("--layers", type=int, default=DEMO_CONFIG["num_layers"], help="transformer blocks")
    p.add_argument("--preset", default="wan", help="mask preset")
    p.add_argument("--decay", type=float, default=None, help="mask decay (default: the preset's)")
    p.add_argument("--block-size", type=int, default=128, choices=[64, 128])
    p.add_argument(
        "--backend", default="auto",
        help="attention backend for the radial run: auto (CUDA: triton, else flex; CPU: gather, plain torch "
             "over the kept blocks), gather, reference (computes every block: the oracle), flex, triton, flashinfer",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default="radial-attention-demo-mask.png", metavar="FILE", help="mask picture ('' to skip)")
    p.set_defaults(func=run)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _denoise(model, latents, text, scheduler, steps, device):
    """Flow-matching denoising loop over the bare transformer: (final latents, per-step seconds, per-step latents)."""
    import torch

    scheduler.set_timesteps(steps, device=device)
    x = latents.clone()
    times, trail = [], []
    with torch.no_grad():
        for t in scheduler.timesteps:
            _sync(device)
            t0 = time.perf_counter()
            v = model(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=text, return_dict=False)[0]
            _sync(device)
            times.append(time.perf_counter() - t0)
            x = scheduler.step(v, t, x, return_dict=False)[0]
            trail.append(x.float().cpu())
    return x, times, trail


def run(args) -> int:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention
    from radial_attention.integrations.diffusers.tiny import tiny_wan_transformer
    from radial_attention.mask import video_layout
    from radial_attention.ops import resolve_backend

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    layout = video_layout("wan2.1", args.height, args.width, args.frames)  # checks the size
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    t_build = time.perf_counter()
    model = tiny_wan_transformer(
        "t2v", num_layers=args.layers, num_heads=DEMO_CONFIG["num_heads"], head_dim=DEMO_CONFIG["head_dim"],
        ffn_dim=DEMO_CONFIG["ffn_dim"], text_dim=DEMO_CONFIG["text_dim"], seed=args.seed, dtype=dtype,
    ).to(device)
    build_s = time.perf_counter() - t_build
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(1, 16, layout.frames, args.height // 8, args.width // 8, generator=g).to(device, dtype)
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
        f"{args.height // 8} x {args.width // 8} -> F={layout.frames} frames x T={layout.tokens_per_frame} tokens = {S:,} tokens"
    )

    with torch.no_grad():  # warm-up (allocator, kernels), so that step 0 is timed like the others
        model(hidden_states=latents, timestep=torch.tensor([500.0], device=device), encoder_hidden_states=text, return_dict=False)
    x_dense, t_dense, trail_dense = _denoise(model, latents, text, scheduler, args.steps, device)

    # Radial warm-up: build the mask (and the backend's plan, or compile its kernel) once, outside the timed steps.
    apply_radial_attention(model, preset=args.preset, decay=args.decay, block_size=args.block_size,
                           backend=backend, num_steps=args.steps)
    try:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(hidden_states=latents, timestep=torch.tensor([500.0], device=device), encoder_hidden_states=text,
                  return_dict=False)
        _sync(device)
        warm_s = time.perf_counter() - t0
    finally:
        remove_radial_attention(model)
    print(f"device        {device} ({str(dtype).replace('torch.', '')}), attention backend for radial: {backend} "
          f"(warm-up incl. mask build and the backend's plan or compilation: {warm_s:.1f} s)")
    state = apply_radial_attention(
        model, preset=args.preset, decay=args.decay, dense_steps=args.dense_steps, dense_layers=args.dense_layers,
        block_size=args.block_size, backend=backend, num_steps=args.steps,
    )
    try:
        x_radial, t_radial, trail_radial = _denoise(model, latents, text, scheduler, args.steps, device)
    finally:
        remove_radial_attention(model)

    print()
    print(f"{'step':>4}  {'timestep':>8}  {'radial run':<22} {'dense s':>8}  {'radial s':>8}  {'rel. diff of latents':>20}")
    for i, t in enumerate(scheduler.timesteps.tolist()):
        kinds = {kind for (step, _, kind), n in state.calls.items() if step == i and n}
        mode = "dense (schedule)" if kinds == {"dense"} else ("radial" if kinds == {"radial"} else "radial, dense blocks")
        a, b = trail_dense[i], trail_radial[i]
        rel = float((a - b).norm() / a.norm())
        print(f"{i:>4}  {t:>8.1f}  {mode:<22} {t_dense[i]:>8.3f}  {t_radial[i]:>8.3f}  {rel:>20.4f}")
    mask = next(iter(state.masks.values()))
    flops = mask.attention_flops(S, head_dim, heads)
    print()
    print(f"mask          preset {args.preset}, block {args.block_size}: {mask.num_blocks}x{mask.num_blocks} blocks, "
          f"density {mask.density:.3f} (ideal attention speed-up {1 / mask.density:.2f}x, "
          f"{100 * flops['saved_fraction']:.0f}% of attention FLOPs saved)")
    sparse_steps = [i for i in range(args.steps) if i >= args.dense_steps]
    if sparse_steps:
        d = sum(t_dense[i] for i in sparse_steps) / len(sparse_steps)
        r = sum(t_radial[i] for i in sparse_steps) / len(sparse_steps)
        print(f"time          radial steps {r:.3f} s vs dense {d:.3f} s per step ({d / r:.2f}x)")
    rel = float((x_dense.float() - x_radial.float()).norm() / x_dense.float().norm())
    print(f"difference    final latents differ by {rel:.4f} (relative L2) between dense and radial")
    if backend == "reference":
        print(
            "note          the 'reference' backend computes every block and then masks (it is the correctness "
            "oracle), so on this device radial attention is not faster; with a GPU the triton/flex backends "
            "skip the dropped blocks"
        )
    if args.png:
        try:
            mask.save_png(args.png, title=f"Wan radial mask, F={layout.frames} T={layout.tokens_per_frame}, density {mask.density:.3f}")
            print(f"picture       {args.png}")
        except ImportError as e:
            print(f"picture       not written ({e}); install matplotlib")
    return 0

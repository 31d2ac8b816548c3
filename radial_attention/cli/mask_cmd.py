"""``radial-attention mask``: build a radial mask for a model and video size and report on it."""

from __future__ import annotations

import argparse
import time

DEFAULT_MODEL = "wan2.1"
DEFAULT_SIZE = (720, 1280, 81)  # height, width, frames: Wan2.1-14B's 720p default


def register(sub) -> None:
    p = sub.add_parser(
        "mask",
        help="build a radial block mask and print its layout, density and the compute it saves",
        description=(
            "Build the radial block mask for a model family and video size (or frames and tokens per "
            "frame directly), print layout, block count, density, attention compute saved and build "
            "time, and optionally draw it. Default: Wan2.1 at 1280x720, 81 frames."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help="model family: wan2.1, wan2.2-a14b, wan2.2-ti2v-5b, hunyuan, mochi")
    p.add_argument("--height", type=int, default=None, help="video height in pixels")
    p.add_argument("--width", type=int, default=None, help="video width in pixels")
    p.add_argument("--frames", type=int, default=None, help="video frames (pixel frames, e.g. 81)")
    p.add_argument("--latent-frames", type=int, default=None, help="latent frames F (instead of a model and video size)")
    p.add_argument("--tokens-per-frame", type=int, default=None, help="tokens per latent frame T (with --latent-frames)")
    p.add_argument("--text-tokens", type=int, default=None, help="tokens appended after the video (HunyuanVideo: 256)")
    p.add_argument("--preset", default=None, help="wan, wan-full, hunyuan, wan2.2 (default: the model's)")
    p.add_argument("--decay", type=float, default=None, help="decay factor d (default: the preset's)")
    p.add_argument("--sink", choices=["on", "off"], default=None, help="attention sink on frame 0 (default: the preset's)")
    p.add_argument("--adjacent", choices=["full", "half"], default=None, help="window to neighbouring frames (default: the preset's)")
    p.add_argument("--block-size", type=int, default=128, choices=[64, 128])
    p.add_argument("--heads", type=int, default=40, help="attention heads, for the FLOP count")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension, for the FLOP count")
    p.add_argument("--png", default=None, metavar="FILE", help="write a picture of the mask")
    p.set_defaults(func=run)


def resolve_layout(args):
    """(frames, tokens_per_frame, text_tokens, preset name, description) from the arguments."""
    from radial_attention.mask import video_layout

    direct = args.latent_frames is not None or args.tokens_per_frame is not None
    sized = any(v is not None for v in (args.height, args.width, args.frames))
    if direct:
        if args.latent_frames is None or args.tokens_per_frame is None:
            raise ValueError("--latent-frames and --tokens-per-frame go together")
        if sized:
            raise ValueError("give either --latent-frames/--tokens-per-frame or --height/--width/--frames, not both")
        preset = args.preset or "wan"
        x = args.text_tokens or 0
        return args.latent_frames, args.tokens_per_frame, x, preset, f"F={args.latent_frames}, T={args.tokens_per_frame}"
    model = args.model or DEFAULT_MODEL
    h, w, f = (args.height, args.width, args.frames)
    dh, dw, df = DEFAULT_SIZE
    layout = video_layout(model, h or dh, w or dw, f or df, text_tokens=args.text_tokens)
    desc = (
        f"{layout.family} {w or dw}x{h or dh}, {f or df} frames -> F={layout.frames} latent frames x "
        f"T={layout.height_tokens}x{layout.width_tokens}={layout.tokens_per_frame} tokens"
    )
    return layout.frames, layout.tokens_per_frame, layout.text_tokens, args.preset or layout.preset, desc


def run(args) -> int:
    from radial_attention.mask import get_preset, radial_block_mask
    from radial_attention.mask.radial import _cached_mask

    frames, tpf, text, preset_name, desc = resolve_layout(args)
    preset = get_preset(preset_name)
    decay = preset.decay if args.decay is None else args.decay
    sink = preset.sink if args.sink is None else args.sink == "on"
    adjacent = preset.adjacent if args.adjacent is None else args.adjacent

    _cached_mask.cache_clear()  # time a real build, not a cache hit
    t0 = time.perf_counter()
    mask = radial_block_mask(frames, tpf, block_size=args.block_size, decay=decay, sink=sink, adjacent=adjacent, text_tokens=text)
    build_ms = (time.perf_counter() - t0) * 1e3

    seq = frames * tpf + text
    flops = mask.attention_flops(seq, args.head_dim, args.heads)
    print(f"layout        {desc}" + (f" + {text} text tokens" if text else ""))
    print(f"settings      preset={preset_name} decay={decay} sink={sink} adjacent={adjacent} block={args.block_size}")
    print(f"tokens        {seq:,} ({frames * tpf:,} video + {text} text)")
    print(f"blocks        {mask.num_blocks} x {mask.num_blocks} = {mask.num_blocks ** 2:,}, kept {int(mask.to_dense().sum()):,}")
    print(f"density       {mask.density:.4f}  (ideal speed-up 1/density = {1 / mask.density:.2f}x)")
    print(
        f"attention     {flops['sparse'] / 1e12:.1f} of {flops['dense'] / 1e12:.1f} TFLOP per layer kept "
        f"({args.heads} heads x dim {args.head_dim}): {100 * flops['saved_fraction']:.1f}% saved"
    )
    print(f"build time    {build_ms:.1f} ms")
    if args.png:
        mask.save_png(args.png)
        print(f"picture       {args.png}")
    return 0

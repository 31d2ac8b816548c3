"""``radial-attention mask``: build a radial mask for a model and video size and report on it."""

from __future__ import annotations

import time

from radial_attention.cli.args import (
    UsageError,
    add_command,
    add_deprecated_alias,
    nonneg_int,
    positive_float,
    positive_int,
)

DEFAULT_MODEL = "wan2.1"
DEFAULT_SIZE = (720, 1280, 81)  # height, width, frames: Wan2.1-14B's 720p default
# The mask and its FLOP count hold a few [blocks x blocks] arrays (up to 8 bytes an entry): 8,192
# blocks a side (1M tokens at block 128) is ~1.6 GB at most; beyond that the command refuses.
MAX_BLOCKS = 8192


def register(sub) -> None:
    p = add_command(
        sub,
        "mask",
        help="build a radial block mask and print its layout, density and the compute it saves",
        description=(
            "Build the radial block mask for a model family and video size (or latent frames and tokens per "
            "frame directly), print layout, block count, density, attention compute saved and build "
            "time, and optionally draw it. Default: Wan2.1 at 1280x720, 81 frames."
        ),
    )
    p.add_argument(
        "--model",
        default=None,
        help=f"model family: wan2.1, wan2.2-a14b, wan2.2-ti2v-5b, hunyuan, mochi, cogvideox-1.0, cogvideox-1.5 (default: {DEFAULT_MODEL}); "
        "with --latent-frames it sets the preset, extra tokens and heads only",
    )
    p.add_argument(
        "--height", type=positive_int, default=None, help=f"video height in pixels (default: {DEFAULT_SIZE[0]})"
    )
    p.add_argument(
        "--width", type=positive_int, default=None, help=f"video width in pixels (default: {DEFAULT_SIZE[1]})"
    )
    p.add_argument(
        "--frames", type=positive_int, default=None, help=f"video frames, pixel frames (default: {DEFAULT_SIZE[2]})"
    )
    p.add_argument("--latent-frames", type=positive_int, default=None, help="latent frames F (instead of a video size)")
    p.add_argument(
        "--tokens-per-frame", type=positive_int, default=None, help="tokens per latent frame T (with --latent-frames)"
    )
    extra_option = p.add_argument(
        "--extra-tokens",
        type=nonneg_int,
        default=None,
        help="tokens appended after the video (default: the family's: HunyuanVideo's 256 text tokens; else 0)",
    )
    add_deprecated_alias(p, "--text-tokens", extra_option)
    p.add_argument(
        "--preset", default=None, help="wan, wan-full, hunyuan, wan2.2 (default: the model's; wan without a model)"
    )
    p.add_argument("--decay", type=positive_float, default=None, help="decay factor d (default: the preset's)")
    p.add_argument(
        "--sink", choices=["on", "off"], default=None, help="attention sink on frame 0 (default: the preset's)"
    )
    p.add_argument(
        "--adjacent",
        choices=["full", "half"],
        default=None,
        help="window to neighbouring frames (default: the preset's)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        choices=[64, 128],
        help="mask block size in tokens (default: the model's, 64 for LTX-Video / LTX-2, else 128; 64 for small videos)",
    )
    p.add_argument(
        "--heads",
        type=positive_int,
        default=None,
        help="attention heads, for the FLOP count (default: the family's: Wan 14B 40, Wan2.2 5B / "
        "HunyuanVideo / Mochi 24)",
    )
    p.add_argument("--head-dim", type=positive_int, default=128, help="head dimension, for the FLOP count")
    p.add_argument(
        "--png", default=None, metavar="FILE", help="write a picture of the mask (.png is added to a name without it)"
    )
    p.set_defaults(func=run)


def resolve_layout(args):
    """(frames, tokens_per_frame, extra_tokens, preset name, family name, description) from the arguments."""
    from radial_attention.mask import get_model_family, video_layout

    direct = args.latent_frames is not None or args.tokens_per_frame is not None
    sized = any(v is not None for v in (args.height, args.width, args.frames))
    if direct:
        if args.latent_frames is None or args.tokens_per_frame is None:
            raise UsageError("--latent-frames and --tokens-per-frame go together")
        if sized:
            raise UsageError("give either --latent-frames/--tokens-per-frame or --height/--width/--frames, not both")
        # A family given here still means something: its preset, extra tokens and heads (said in the layout line).
        fam = get_model_family(args.model) if args.model else None
        preset = args.preset or (fam.preset if fam else "wan")
        x = args.extra_tokens if args.extra_tokens is not None else (fam.default_extra_tokens if fam else 0)
        desc = (
            f"{fam.name + ' with the given F and T: ' if fam else ''}"
            f"F={args.latent_frames} latent frames x T={args.tokens_per_frame} tokens"
        )
        return args.latent_frames, args.tokens_per_frame, x, preset, (fam.name if fam else DEFAULT_MODEL), desc
    model = args.model or DEFAULT_MODEL
    dh, dw, df = DEFAULT_SIZE
    h = dh if args.height is None else args.height
    w = dw if args.width is None else args.width
    f = df if args.frames is None else args.frames
    layout = video_layout(model, h, w, f, extra_tokens=args.extra_tokens)
    desc = (
        f"{layout.family} {w}x{h}, {f} frames -> F={layout.frames} latent frames x "
        f"T={layout.height_tokens}x{layout.width_tokens}={layout.tokens_per_frame} tokens"
    )
    return (
        layout.frames,
        layout.tokens_per_frame,
        layout.extra_tokens,
        args.preset or layout.preset,
        layout.family,
        desc,
    )


def flop_unit(flops: float):
    """(unit name, scale): the largest of PFLOP ... kFLOP that keeps ``flops`` >= 1 in it."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if flops >= scale:
            return unit, scale
    return "FLOP", 1.0


def _short(x: float) -> str:
    """Three significant digits at most, no exponent: 117.1, 28.5, 4.35, 0.467."""
    return f"{x:.1f}" if x >= 10 else (f"{x:.2f}" if x >= 1 else f"{x:.3f}")


def format_flop_pair(part: float, whole: float) -> str:
    """``28.5 of 117.1 TFLOP``: both in the unit that fits ``whole`` (never "0.0 of 0.0 TFLOP")."""
    unit, scale = flop_unit(whole)
    return f"{_short(part / scale)} of {_short(whole / scale)} {unit}"


def build_report(args) -> dict:
    """Build the mask the arguments describe; returns what ``run`` prints, as values::

    {"mask", "desc", "frames", "tokens_per_frame", "extra_tokens", "prefix_tokens", "seq_len", "preset", "decay",
     "sink", "adjacent", "heads", "flops" (RadialBlockMask.attention_flops), "build_ms"}
    """
    from radial_attention.mask import get_model_family, get_preset, radial_block_mask
    from radial_attention.mask.radial import _cached_mask

    frames, tpf, extra, preset_name, family, desc = resolve_layout(args)
    get_preset(preset_name)  # an unknown preset is refused before the size checks
    heads = get_model_family(family).heads if args.heads is None else args.heads
    if args.block_size is None:  # the model's default (64 for LTX's few tokens per frame)
        args.block_size = get_model_family(family).block_size
    prefix = get_model_family(family).default_prefix_tokens  # tokens before the video (CogVideoX's 226 text)
    seq = prefix + frames * tpf + extra
    blocks = -(-seq // args.block_size)
    if blocks > MAX_BLOCKS:
        raise UsageError(
            f"{seq:,} tokens make {blocks:,} x {blocks:,} blocks of {args.block_size}; this command builds masks of "
            f"at most {MAX_BLOCKS:,} blocks a side ({MAX_BLOCKS * args.block_size:,} tokens): ask for fewer frames or tokens"
        )

    _cached_mask.cache_clear()  # time a real build, not a cache hit
    t0 = time.perf_counter()
    mask = radial_block_mask(
        frames,
        tpf,
        preset=preset_name,  # the flags given override its settings, as in the library
        block_size=args.block_size,
        decay=args.decay,
        sink=None if args.sink is None else args.sink == "on",
        adjacent=args.adjacent,
        extra_tokens=extra,
        prefix_tokens=prefix,
    )
    build_ms = (time.perf_counter() - t0) * 1e3
    return dict(
        mask=mask,
        desc=desc,
        frames=frames,
        tokens_per_frame=tpf,
        extra_tokens=extra,
        prefix_tokens=prefix,
        seq_len=seq,
        preset=preset_name,
        decay=mask.decay,
        sink=mask.sink,
        adjacent=mask.adjacent,
        heads=heads,
        flops=mask.attention_flops(seq, args.head_dim, heads),
        build_ms=build_ms,
    )


def run(args) -> dict:
    """Print the report; returns :func:`build_report`'s values plus ``"png"`` (the picture written, or None)."""
    from radial_attention.mask.render import png_path

    png = png_path(args.png) if args.png else None  # a bad picture name fails before the work
    r = build_report(args)
    mask, extra, flops = r["mask"], r["extra_tokens"], r["flops"]
    video = r["frames"] * r["tokens_per_frame"]
    before = f"{r['prefix_tokens']} extra tokens before the video + " if r["prefix_tokens"] else ""
    print(f"layout        {before}{r['desc']}" + (f" + {extra} extra tokens" if extra else ""))
    print(
        f"settings      preset={r['preset']} decay={r['decay']} sink={r['sink']} adjacent={r['adjacent']} block={args.block_size}"
    )
    print(f"tokens        {r['seq_len']:,} ({before}{video:,} video + {extra} extra)")
    print(
        f"blocks        {mask.num_blocks} x {mask.num_blocks} = {mask.num_blocks**2:,}, kept {int(mask.to_dense().sum()):,}"
    )
    print(f"density       {mask.density:.4f}  (ideal speed-up 1/density = {1 / mask.density:.2f}x)")
    print(
        f"attention     {format_flop_pair(flops['sparse'], flops['dense'])} per layer kept "
        f"({r['heads']} heads x dim {args.head_dim}): {100 * flops['saved_fraction']:.1f}% saved"
    )
    print(f"build time    {r['build_ms']:.1f} ms")
    if png:
        title = (
            f"{r['desc']}"
            + (f" + {extra} extra tokens" if extra else "")
            + f"\npreset {r['preset']}, decay {r['decay']}, block {mask.block_size}: density {mask.density:.3f}"
        )
        png = mask.save_png(png, title=title)
        print(f"picture       {png}")
    return dict(r, png=None if png is None else str(png))

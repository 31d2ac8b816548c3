"""``radial-attention tiny-pipeline``: save a tiny diffusers pipeline (random weights, a few MB, no
download) to a folder, to try ``generate``, ``encode`` and ``train-lora`` without real weights.

    radial-attention tiny-pipeline --family wan tiny-wan/
    radial-attention generate --model tiny-wan/ --prompt "a cat" --height 64 --width 64 --frames 9 \\
        --steps 4 --max-sequence-length 16 --out cat.mp4

The videos are noise: the weights are random. The builders are in
``radial_attention.testing.tiny``.
"""

from __future__ import annotations

import os

# --family -> (builder name in radial_attention.testing.tiny, its keyword arguments, what it is).
FAMILIES = {
    "wan": ("tiny_wan_pipeline", {"variant": "t2v"}, "Wan2.1 text-to-video (WanPipeline)"),
    "wan-i2v": ("tiny_wan_i2v_pipeline", {"variant": "wan2.1"}, "Wan2.1 image-to-video (WanImageToVideoPipeline)"),
    "wan2.2-a14b": ("tiny_wan_pipeline", {"variant": "a14b"}, "Wan2.2 A14B text-to-video, two experts"),
    "wan2.2-i2v-a14b": ("tiny_wan_i2v_pipeline", {"variant": "a14b"}, "Wan2.2 A14B image-to-video, two experts"),
    "wan2.2-ti2v": ("tiny_wan_pipeline", {"variant": "ti2v"}, "Wan2.2 TI2V-5B (text-to-video)"),
    "hunyuan": ("tiny_hunyuan_pipeline", {}, "HunyuanVideo text-to-video (HunyuanVideoPipeline)"),
    "mochi": ("tiny_mochi_pipeline", {}, "Mochi 1 text-to-video (MochiPipeline)"),
    "skyreels-v2": ("tiny_skyreels_pipeline", {"variant": "t2v"}, "SkyReels-V2 text-to-video (SkyReelsV2Pipeline)"),
    "skyreels-v2-df": (
        "tiny_skyreels_pipeline",
        {"variant": "df"},
        "SkyReels-V2 diffusion forcing (SkyReelsV2DiffusionForcingPipeline)",
    ),
    "cogvideox": ("tiny_cogvideox_pipeline", {"version": "1.0"}, "CogVideoX 1.0 text-to-video (CogVideoXPipeline)"),
    "cogvideox-1.5": ("tiny_cogvideox_pipeline", {"version": "1.5"}, "CogVideoX 1.5 text-to-video (patch_size_t=2)"),
    "wan-vace": ("tiny_wan_vace_pipeline", {}, "Wan VACE (WanVACEPipeline: control video, mask, reference images)"),
    "wan-animate": ("tiny_wan_animate_pipeline", {}, "Wan Animate (WanAnimatePipeline: image, pose and face videos)"),
    "hunyuan15": (
        "tiny_hunyuan15_pipeline",
        {"variant": "t2v"},
        "HunyuanVideo 1.5 text-to-video (HunyuanVideo15Pipeline)",
    ),
    "hunyuan15-i2v": (
        "tiny_hunyuan15_pipeline",
        {"variant": "i2v"},
        "HunyuanVideo 1.5 image-to-video (HunyuanVideo15ImageToVideoPipeline)",
    ),
    "ltx-video": ("tiny_ltx_pipeline", {}, "LTX-Video text-to-video (LTXPipeline; 32x VAE: sizes multiples of 32)"),
    "ltx-2": ("tiny_ltx2_pipeline", {}, "LTX-2 text-to-video+audio (LTX2Pipeline; generate writes the video only)"),
}


def register(sub) -> None:
    from .args import HelpFormatter, positive_int

    p = sub.add_parser(
        "tiny-pipeline",
        help="save a tiny diffusers pipeline (random weights, no download) to try generate / encode / train-lora",
        description=(
            "Write a tiny diffusers video pipeline with random weights (a few MB) with save_pretrained, so that "
            "generate, encode and train-lora can be tried without downloading a model. Its videos are noise."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("output", metavar="OUT_DIR", help="folder to write (must not exist or be empty)")
    p.add_argument("--family", choices=sorted(FAMILIES), default="wan", help="which pipeline")
    p.add_argument("--layers", type=positive_int, default=2, help="transformer blocks")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.set_defaults(func=run)


def save_tiny_pipeline(family: str, output: str, *, layers: int = 2, seed: int = 0) -> str:
    """Build the tiny pipeline of ``family`` (:data:`FAMILIES`) and ``save_pretrained`` it to ``output``;
    returns the folder. ``ValueError`` for an unknown family, ``layers < 1`` or a non-empty folder."""
    from radial_attention.testing import tiny

    if family not in FAMILIES:
        raise ValueError(f"--family must be one of {sorted(FAMILIES)}, got {family!r}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"--layers must be a positive integer, got {layers!r}")
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ValueError(f"{os.path.abspath(output)} already exists and is not an empty folder; choose a new OUT_DIR")
    builder, kwargs, _ = FAMILIES[family]
    if builder == "tiny_hunyuan_pipeline":
        pipe = tiny.tiny_hunyuan_pipeline(num_layers=layers, seed=seed)
    else:
        pipe = getattr(tiny, builder)(num_layers=layers, seed=seed, **kwargs)
    pipe.save_pretrained(output)
    return output


def run(args) -> int:
    out = save_tiny_pipeline(args.family, args.output, layers=args.layers, seed=args.seed)
    hints = {
        "hunyuan": " --height 64 --width 64 --frames 9 --max-sequence-length 16",
        "wan-i2v": " --image FIRST_FRAME.png --height 64 --width 64 --frames 9 --max-sequence-length 512",
        "wan2.2-i2v-a14b": " --image FIRST_FRAME.png --height 64 --width 64 --frames 9 --max-sequence-length 16",
        "wan2.2-ti2v": " --height 64 --width 64 --frames 9 --max-sequence-length 16",
        "mochi": " --height 64 --width 64 --frames 13 --max-sequence-length 16",
        # The prompt length must be the tiny transformer's max_text_seq_length.
        "cogvideox": " --height 64 --width 64 --frames 9 --max-sequence-length 10",
        "cogvideox-1.5": " --height 64 --width 64 --frames 9 --max-sequence-length 10",
        "wan-vace": " --reference-image REF.png --height 64 --width 64 --frames 9 --max-sequence-length 16",
        # --frames: the segment length; the video is as long as the pose video (face frames: 16x16).
        "wan-animate": " --image CHARACTER.png --pose-video POSE.mp4 --face-video FACE.mp4 --height 64 --width 64"
        " --frames 9 --max-sequence-length 512",
        # Its pipeline pads every prompt to fixed lengths itself: no --max-sequence-length.
        "hunyuan15": " --height 64 --width 64 --frames 9",
        "hunyuan15-i2v": " --image FIRST_FRAME.png --height 64 --width 64 --frames 9",
        # 32x VAE, 8k+1 frames: 12 latent frames of 6 x 7 tokens, enough for a sparse mask at block 64.
        "ltx-video": " --height 192 --width 224 --frames 89 --max-sequence-length 16",
        "ltx-2": " --height 192 --width 224 --frames 89 --max-sequence-length 16",
    }
    print(f"tiny-pipeline: {FAMILIES[args.family][2]}, random weights, written to {os.path.abspath(out)}")
    print(
        f'  try: radial-attention generate --model {out} --prompt "a cat" --steps 4 --dense-steps 1'
        f"{hints.get(args.family, ' --height 64 --width 64 --frames 9 --max-sequence-length 16')} --out tiny.mp4"
    )
    return 0

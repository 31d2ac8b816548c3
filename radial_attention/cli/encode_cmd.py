"""``radial-attention encode``: mp4 videos + captions -> a training data folder
(``docs/training-data.md``) with the pipeline's own VAE and text encoder(s)."""

from __future__ import annotations

import json

from radial_attention.cli.args import add_command, device_name, output_dir, positive_int, resolve_device, resolve_dtype
from radial_attention.models import FAMILIES


def register(sub) -> None:
    p = add_command(
        sub,
        "encode",
        help="encode videos + captions into a train-lora data folder (latents + prompt embeddings)",
        description=(
            "Encode mp4 videos and their captions with the pipeline's own VAE and text encoder into a data folder "
            "for `radial-attention train-lora` (format: docs/training-data.md). Captions come from --captions "
            '(JSONL: {"video": ..., "caption": ...} per line) or from a .txt file next to each video. '
            "Image-to-video pipelines also get the condition and image embeddings they make from each clip's first frame."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help=f"diffusers pipeline folder or Hub id ({', '.join(c for f in FAMILIES.values() for c in f.pipeline_classes)})",
    )
    p.add_argument(
        "--videos", nargs="*", default=[], help="video files and/or folders of videos (default: none, only --captions)"
    )
    p.add_argument("--captions", default=None, help='JSONL file of {"video": path, "caption": text}')
    p.add_argument("--output", required=True, type=output_dir, help="data folder to write")
    p.add_argument("--height", type=positive_int, required=True, help="height in pixels the videos are resized to")
    p.add_argument("--width", type=positive_int, required=True, help="width in pixels the videos are resized to")
    p.add_argument("--frames", type=positive_int, required=True, help="frames per video, 4k+1 (e.g. 81, 161, 321)")
    p.add_argument("--frame-stride", type=positive_int, default=1, help="take every N-th frame of the source video")
    p.add_argument(
        "--max-sequence-length",
        type=positive_int,
        default=None,
        help="prompt tokens (default: what the pipeline generates with: Wan 512, HunyuanVideo 256)",
    )
    p.add_argument(
        "--prompt-template",
        default=None,
        help='HunyuanVideo prompt template as JSON, e.g. \'{"template": "{}", "crop_start": 0}\' (default: the pipeline\'s)',
    )
    p.add_argument("--sample-latents", action="store_true", help="sample the VAE posterior (default: its mode)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample-latents")
    p.add_argument("--device", type=device_name, default=None, help="default: CUDA if available, else CPU")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="model dtype (default bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--store-dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of the stored tensors")
    p.add_argument("--vae-tiling", action="store_true", help="tiled VAE encoding (less memory)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing data folder (default: refuse a finished one, "
        "continue an unfinished one, skipping the clips it already holds)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip videos that cannot be read or are too short (a warning names each; listed in the manifest "
        'under "skipped"); default: stop at the first, keeping the clips encoded so far',
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> dict:
    """Encode; prints and returns ``{"manifest": path, "samples", "model_family", "latent_shape" (of
    the first sample), "skipped": [video paths]}``."""
    from radial_attention.train.encode import encode_videos

    device = str(resolve_device(args.device))
    dtype = resolve_dtype(args.dtype, device)
    template = None
    if args.prompt_template is not None:
        try:
            template = json.loads(args.prompt_template)
        except json.JSONDecodeError as e:
            raise ValueError(f"--prompt-template must be JSON, got {args.prompt_template!r} ({e})") from None
    manifest = encode_videos(
        args.model,
        args.videos,
        args.output,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        captions=args.captions,
        frame_stride=args.frame_stride,
        max_sequence_length=args.max_sequence_length,
        prompt_template=template,
        sample_latents=args.sample_latents,
        seed=args.seed,
        device=device,
        dtype=dtype,
        store_dtype=resolve_dtype(args.store_dtype, device),
        vae_tiling=args.vae_tiling,
        overwrite=args.overwrite,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
    )
    doc = json.loads(manifest.read_text())
    shape = doc["samples"][0]["latent_shape"]
    print(f"encode: {len(doc['samples'])} samples ({doc['model_family']}, latents {shape}) -> {manifest}")
    skipped = doc.get("skipped") or []
    if skipped:
        print(f"encode: skipped {len(skipped)} unreadable video(s): " + ", ".join(s["video"] for s in skipped))
    return dict(
        manifest=str(manifest),
        samples=len(doc["samples"]),
        model_family=doc["model_family"],
        latent_shape=shape,
        skipped=[s["video"] for s in skipped],
    )

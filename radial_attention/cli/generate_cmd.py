"""``radial-attention generate``: a video from a diffusers pipeline with radial attention, written as mp4.

    radial-attention generate --model Wan-AI/Wan2.1-T2V-14B-Diffusers --prompt "a cat surfing" \\
        --height 720 --width 1280 --frames 81 --steps 50 --dense-steps 12 --dense-layers 1 --out cat.mp4

``--model`` is a local folder written by ``save_pretrained`` (it holds ``model_index.json``) or a
Hugging Face Hub id (read from the local Hugging Face cache, downloaded if it is not there and the
Hub may be used: ``radial_attention.hub``). Without weights it stops with a message saying where it
looked. The output file, fps and the like are checked before the model is loaded; the dense schedule
defaults to the model's recommended one (the model registry's, :mod:`radial_attention.models`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

from radial_attention.cli.args import (
    add_command,
    device_name,
    finite_float,
    nonneg_int,
    output_file,
    positive_float,
    positive_int,
    lora_source,
    resolve_device,
    resolve_dtype,
)


def register(sub) -> None:
    p = add_command(
        sub,
        "generate",
        help="generate a video with a diffusers pipeline (Wan, HunyuanVideo) using radial attention",
        description=(
            "Load a diffusers video pipeline (local folder or Hub id), apply radial attention with the "
            "given dense-step schedule, generate a video and write it as mp4; reports time and mask density."
        ),
    )
    p.add_argument("--model", required=True, help="pipeline folder (with model_index.json) or Hugging Face Hub id")
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument("--negative-prompt", default=None, help="what it should not show (default: the pipeline's)")
    p.add_argument("--image", default=None, help="conditioning image for image-to-video pipelines")
    # Condition inputs of the pipelines that take them (CONDITION_INPUTS): given only where the pipeline has that
    # parameter, required where it has no default.
    c = p.add_argument_group("condition inputs (Wan VACE, Wan Animate)")
    c.add_argument(
        "--reference-image",
        action="append",
        default=None,
        type=input_file,
        metavar="PATH",
        help="Wan VACE: a reference image (repeat for more; each becomes a latent frame in front of the video)",
    )
    c.add_argument(
        "--video",
        default=None,
        type=input_file,
        metavar="PATH",
        help="Wan VACE: control video (its first --frames frames)",
    )
    c.add_argument(
        "--mask-video",
        default=None,
        type=input_file,
        metavar="PATH",
        help="Wan VACE: mask video for --video (white: generate, black: keep)",
    )
    c.add_argument(
        "--pose-video",
        default=None,
        type=input_file,
        metavar="PATH",
        help="Wan Animate: pose video (its length: the output's)",
    )
    c.add_argument(
        "--face-video",
        default=None,
        type=input_file,
        metavar="PATH",
        help="Wan Animate: face video, as long as --pose-video",
    )
    p.add_argument("--height", type=positive_int, default=480, help="video height in pixels")
    p.add_argument("--width", type=positive_int, default=832, help="video width in pixels")
    p.add_argument("--frames", type=positive_int, default=81, help="video frames (4k+1)")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", type=finite_float, default=None, help="default: the pipeline's")
    p.add_argument(
        "--max-sequence-length", type=positive_int, default=None, help="prompt tokens (default: the pipeline's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--fps", type=positive_int, default=16, help="frames per second of the video")
    p.add_argument("--out", type=output_file, default="radial-attention.mp4", help="video file to write (.mp4 or .gif)")
    p.add_argument(
        "--lora",
        type=lora_source,
        default=None,
        metavar="DIR",
        help="a LoRA folder (e.g. from train-lora) loaded with pipe.load_lora_weights",
    )
    p.add_argument(
        "--lora-2",
        type=lora_source,
        default=None,
        metavar="DIR",
        help="Wan2.2 A14B: a LoRA for the low-noise expert (transformer_2)",
    )
    p.add_argument("--lora-scale", type=finite_float, default=1.0, help="strength of the LoRA(s)")
    g = p.add_argument_group("radial attention")
    g.add_argument("--dense", action="store_true", help="do not apply radial attention (the dense baseline)")
    g.add_argument("--preset", default=None, help="wan, wan-full, hunyuan, wan2.2 (default: the model's)")
    g.add_argument("--decay", type=positive_float, default=None, help="mask decay (default: the preset's)")
    g.add_argument(
        "--dense-steps",
        type=nonneg_int,
        default=None,
        help="first denoising steps with dense attention (default: the model's recommended schedule)",
    )
    g.add_argument("--dense-last-steps", type=nonneg_int, default=0, help="last denoising steps with dense attention")
    g.add_argument(
        "--dense-layers",
        type=nonneg_int,
        default=None,
        help="first transformer blocks with dense attention (default: the model's recommended schedule)",
    )
    g.add_argument(
        "--block-size",
        type=int,
        default=None,
        choices=[64, 128],
        help="mask block size in tokens (default: the model's, 64 for LTX-Video / LTX-2, else 128; 64 for small videos)",
    )
    g.add_argument("--backend", default="auto", help="auto, gather, reference, flex, triton, flashinfer, fa4")
    d = p.add_argument_group("device")
    d.add_argument("--device", type=device_name, default="auto", help="auto (cuda if present), cuda, cpu")
    d.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 on cuda, float32 on cpu",
    )
    d.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload (less GPU memory)")
    # Multi-GPU: radial_attention.distributed (docs/multi-gpu.md).
    d.add_argument(
        "--sequence-parallel",
        type=positive_int,
        default=None,
        metavar="N",
        help="split the video tokens over N GPUs (Ulysses: diffusers context parallelism, radial mask "
        "on the whole sequence); launch with `torchrun --standalone --nproc-per-node N -m "
        "radial_attention generate ...`; default under torchrun: its number of processes",
    )
    d.add_argument(
        "--collective-timeout",
        type=positive_float,
        default=1800.0,
        metavar="SECONDS",
        help="with --sequence-parallel: a collective (token exchange) that waits longer than this fails "
        "the run instead of hanging",
    )
    p.set_defaults(func=run)


# Output formats write_video can write.
VIDEO_SUFFIXES = (".mp4", ".gif")


def check_outputs(out: str, fps) -> None:
    """Refuse, before anything is loaded, an output that cannot be written: ``ValueError`` for a
    suffix other than :data:`VIDEO_SUFFIXES` or ``fps <= 0``, ``FileNotFoundError`` for a folder
    that cannot be made or written."""
    suffix = os.path.splitext(out)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"--out must end in {' or '.join(VIDEO_SUFFIXES)}, got {out!r}")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"--fps must be a positive integer, got {fps!r}")
    target = os.path.abspath(out)
    if os.path.isdir(target):
        raise ValueError(f"--out {out!r} is a folder; expected a video file name")
    # The nearest folder that exists must be a writable folder (the rest is made at write time).
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FileNotFoundError(f"cannot write {target}: no write permission in {parent}")


def recommended_schedule(pipe, preset: Optional[str]):
    """``(preset, dense_steps, dense_layers)``: the preset radial attention will use on ``pipe``
    (``preset`` or the model's default) and its recommended dense schedule."""
    # The same default apply_radial_attention picks (private helpers: one rule, not two copies).
    from radial_attention.integrations.diffusers.apply import _default_preset
    from radial_attention.integrations.diffusers.families import find_transformers

    if preset is None:
        transformers, _, pipeline = find_transformers(pipe)
        preset = _default_preset(transformers, pipeline)
    # The schedule of the model whose preset this is (README "Recommended schedules"); a preset
    # no model names (wan-full) gets Wan2.1's.
    from radial_attention.models import recommended_schedule as registry_schedule

    schedule = registry_schedule(preset)
    return preset, schedule.dense_steps, schedule.dense_layers


def load_pipeline(model: str, dtype):
    """A diffusers pipeline from a local folder or a Hub id (found through
    :func:`radial_attention.hub.resolve_model`); ``FileNotFoundError`` saying where it looked."""
    from diffusers import DiffusionPipeline

    from radial_attention.hub import load_kwargs, loading_errors, resolve_model

    folder = resolve_model(model)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder.absolute()} is a folder but not a diffusers pipeline: looked for "
            f"{folder.absolute() / 'model_index.json'} (write one with pipe.save_pretrained)"
        )
    with loading_errors(model, folder):
        return DiffusionPipeline.from_pretrained(str(folder), **load_kwargs(dtype))


class StepTimer:
    """Seconds of each denoising step, measured per step: from the step's first transformer call
    (a forward pre-hook on every transformer) to the pipeline's ``callback_on_step_end``. Text
    encoding before the loop and VAE decoding after it are not counted."""

    def __init__(self, pipe, device):
        import torch

        self.times = []
        self._start = None
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self._hooks = [
            m.register_forward_pre_hook(self._step_started)
            for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
            if m is not None
        ]

    def _step_started(self, module, args):
        if self._start is None:  # the first call of this step (CFG calls the transformer twice)
            self._sync()
            self._start = time.perf_counter()

    def callback(self, pipe, step, timestep, callback_kwargs):
        if self._start is not None:
            self._sync()
            self.times.append(time.perf_counter() - self._start)
            self._start = None
        return callback_kwargs

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def load_loras(pipe, lora: Optional[str], lora_2: Optional[str], scale: float = 1.0) -> None:
    """Load ``lora`` into the pipeline's transformer and ``lora_2`` into ``transformer_2`` (Wan2.2
    A14B's low-noise expert) as adapter ``"radial-lora"``, at ``scale``."""
    if lora is None and lora_2 is None:
        return
    if not hasattr(pipe, "load_lora_weights") and lora_2 is None and hasattr(pipe.transformer, "load_lora_adapter"):
        # A pipeline without diffusers' LoRA loader mixin (HunyuanVideo15Pipeline): the train-lora
        # file ("transformer."-prefixed keys) goes into its transformer directly.
        if not os.path.isdir(lora):
            raise FileNotFoundError(f"LoRA folder {os.path.abspath(lora)} does not exist")
        pipe.transformer.load_lora_adapter(lora, prefix="transformer", adapter_name="radial-lora", use_safetensors=True)
        pipe.transformer.set_adapters(["radial-lora"], weights=[scale])
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise ValueError(f"{type(pipe).__name__} cannot load LoRA weights")
    names = []
    for folder, into_2 in ((lora, False), (lora_2, True)):
        if folder is None:
            continue
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"LoRA folder {os.path.abspath(folder)} does not exist")
        if into_2 and getattr(pipe, "transformer_2", None) is None:
            raise ValueError(
                f"--lora-2 needs a pipeline with a transformer_2 (Wan2.2 A14B); {type(pipe).__name__} has none"
            )
        name = "radial-lora-2" if into_2 else "radial-lora"
        # safetensors only: a LoRA folder must not be able to run code when loaded (no pickled .bin).
        pipe.load_lora_weights(
            folder, adapter_name=name, use_safetensors=True, **({"load_into_transformer_2": True} if into_2 else {})
        )
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[scale] * len(names))


def _frames_to_uint8(frames):
    """Pipeline output (``output_type="np"``: ``[F, H, W, 3]`` floats in 0..1) -> uint8 frames."""
    import numpy as np

    arr = np.asarray(frames)
    if arr.ndim == 5:  # [batch, F, H, W, C]
        arr = arr[0]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return arr


def write_mp4(frames, path: str, fps: int) -> None:
    """Write ``[F, H, W, 3]`` uint8 frames as an H.264 mp4 (imageio + imageio-ffmpeg)."""
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1, format="FFMPEG") as w:
        for frame in frames:
            w.append_data(frame)


def write_gif(frames, path: str, fps: int) -> None:
    """Write ``[F, H, W, 3]`` uint8 frames as a looping GIF (imageio's Pillow plugin; duration in ms)."""
    import imageio.v3 as iio

    iio.imwrite(path, list(frames), extension=".gif", duration=1000.0 / fps, loop=0)


def write_video(frames, path: str, fps: int) -> None:
    """Write the frames in the format of ``path``'s suffix (:data:`VIDEO_SUFFIXES`), making its
    folder; ``FileNotFoundError`` if no non-empty file came out (the writer failed quietly)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = write_gif if path.lower().endswith(".gif") else write_mp4
    writer(frames, path, fps)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise FileNotFoundError(f"writing the video produced no file at {os.path.abspath(path)} ({len(frames)} frames)")


def run(args) -> dict:
    # Multi-GPU (radial_attention.distributed): join torchrun's group; rank 0 prints and writes.
    import contextlib
    import io

    from radial_attention.cli.sequence_parallel import SequenceParallelRun

    # Before any model is loaded: a bad --out or --fps must not cost a whole generation.
    check_outputs(args.out, args.fps)
    sp = SequenceParallelRun.start(args.sequence_parallel, timeout_s=args.collective_timeout)
    if sp is None:
        return _run(args, None)
    if args.cpu_offload:
        raise ValueError("--cpu-offload does not combine with --sequence-parallel (each GPU holds the whole pipeline)")
    try:
        with contextlib.redirect_stdout(sys.stdout if sp.is_main else io.StringIO()):
            return _run(args, sp)
    finally:
        sp.close()


def input_file(text: str) -> str:
    """A file to read that exists (checked when the arguments are parsed, before the model loads)."""
    import argparse

    if not os.path.isfile(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(f"no such file {os.path.abspath(os.path.expanduser(text))}")
    return os.path.expanduser(text)


# --option (argparse dest) -> (pipeline __call__ parameter, "image" | "images" | "video"). Videos are local .mp4 /
# .gif files read with diffusers' load_video (a list of PIL frames).
CONDITION_INPUTS = {
    "reference_image": ("reference_images", "images"),
    "video": ("video", "video"),
    "mask_video": ("mask", "video"),
    "pose_video": ("pose_video", "video"),
    "face_video": ("face_video", "video"),
}


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def condition_inputs(args, pipe, params, frames: int) -> dict:
    """Pipeline keywords from the condition options (:data:`CONDITION_INPUTS`) of ``args``.

    ``ValueError`` for an option the pipeline does not take, a parameter the pipeline requires
    (no default) whose option is missing, and a ``--video`` /
    ``--mask-video`` shorter than ``frames`` (VACE's control video is cut to ``frames``).
    """
    from diffusers.utils import load_image, load_video

    kwargs = {}
    name = type(pipe).__name__
    for dest, (param, kind) in CONDITION_INPUTS.items():
        value = getattr(args, dest, None)
        if param not in params:
            if value is not None:
                raise ValueError(f"{name} takes no {param}; drop {_option(dest)}")
            continue
        if value is None:
            if params[param].default is params[param].empty:
                raise ValueError(f"{name} needs its {param}: pass {_option(dest)} PATH")
            continue
        paths = value if isinstance(value, list) else [value]  # existing files: input_file checked them
        if kind == "images":
            kwargs[param] = [load_image(path) for path in paths]
            continue
        video = load_video(paths[0])
        if param in ("video", "mask"):  # VACE: one control frame per generated frame
            if len(video) < frames:
                raise ValueError(f"{_option(dest)} has {len(video)} frames; generating {frames} needs at least as many")
            video = video[:frames]
        kwargs[param] = video
    return kwargs


def _temporal_stride(pipe) -> int:
    """The VAE's temporal compression as the pipeline names it (Wan/HunyuanVideo:
    ``vae_scale_factor_temporal``, Mochi: ``vae_temporal_scale_factor``, LTX: ``vae_temporal_compression_ratio``);
    1 if it names none."""
    for name in ("vae_scale_factor_temporal", "vae_temporal_scale_factor", "vae_temporal_compression_ratio"):
        t = getattr(pipe, name, None)
        if t:
            return int(t)
    return 1


def _frames_the_model_takes(pipe, frames: int) -> int:
    """``frames`` rounded down to what the pipeline generates: ``k * t + 1`` for the VAE's temporal
    compression ``t`` (4 for Wan and HunyuanVideo), as the pipelines themselves do."""
    t = _temporal_stride(pipe)
    if frames < 1 or t <= 1:
        return frames
    return (frames - 1) // t * t + 1


def _run(args, sp) -> dict:
    """Generate and write the video; prints the report and returns it as values::

    {"pipeline", "model", "device", "dtype", "loras": [{"folder", "into", "scale"}], "frames_asked",
     "frames", "radial": None (--dense) or {"preset", "decay", "dense_steps", "dense_last_steps",
     "dense_layers", "block_size", "backend", "schedule"}, "sequence_parallel": None or {"degree", "backend"},
     "seconds", "step_seconds", "dense_steps_timed", "radial_steps_timed", "radial_calls",
     "dense_calls", "masks" ({layout: density}), "video": the file written (None on the other
     processes), "video_shape" ([frames, height, width, 3]), "fps"}
    """
    import inspect

    import torch

    from radial_attention.integrations.diffusers import apply_radial_attention

    device = resolve_device(args.device)
    if sp is not None:  # one GPU per torchrun process
        if args.device not in ("auto", sp.device.type):
            raise ValueError(f"--device {args.device} but this torchrun process runs on {sp.device}")
        device = sp.device
    dtype = resolve_dtype(args.dtype, device)
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, dtype)
    load_loras(pipe, args.lora, args.lora_2, args.lora_scale)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    load_s = time.perf_counter() - t0

    frames = _frames_the_model_takes(pipe, args.frames)
    state = None
    schedule_source = "from the command line"
    if not args.dense:
        preset, rec_steps, rec_layers = recommended_schedule(pipe, args.preset)
        dense_steps = rec_steps if args.dense_steps is None else args.dense_steps
        dense_layers = rec_layers if args.dense_layers is None else args.dense_layers
        if args.dense_steps is None or args.dense_layers is None:
            schedule_source = f"{preset} preset's recommended schedule" + (
                "" if args.dense_steps is None and args.dense_layers is None else ", with the flags given"
            )
        state = apply_radial_attention(
            pipe,
            preset=args.preset,
            decay=args.decay,
            dense_steps=dense_steps,
            dense_last_steps=args.dense_last_steps,
            dense_layers=dense_layers,
            block_size=args.block_size,
            backend=args.backend,
        )
    if sp is not None:  # after radial attention: split the video tokens across the GPUs
        sp.split(pipe, height=args.height, width=args.width, frames=frames)
    params = inspect.signature(pipe.__call__).parameters
    kwargs = dict(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_frames=frames,
        num_inference_steps=args.steps,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
        output_type="np",
    )
    if "num_frames" not in params and "segment_frame_length" in params:
        # Wan Animate: the video is as long as its pose video, generated in segments of --frames frames.
        kwargs["segment_frame_length"] = kwargs.pop("num_frames")
    kwargs.update(condition_inputs(args, pipe, params, frames))
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    if args.max_sequence_length is not None:
        kwargs["max_sequence_length"] = args.max_sequence_length
    if "image" in params:
        if args.image is None:
            raise ValueError(f"{type(pipe).__name__} is an image-to-video pipeline: pass --image")
        from diffusers.utils import load_image

        kwargs["image"] = load_image(args.image)
        if "height" not in params:
            # A pipeline that sizes the video from its image (HunyuanVideo 1.5 I2V: the image's aspect
            # ratio at the transformer's target_size) takes no height / width: they resize the image.
            kwargs["image"] = kwargs["image"].resize((args.width, args.height))
            del kwargs["height"], kwargs["width"]
            print(
                f"size          {type(pipe).__name__} sizes the video from its image: the image is resized to "
                f"{args.width}x{args.height}, the pipeline picks the video size from that aspect ratio"
            )
    elif args.image is not None:
        raise ValueError(f"{type(pipe).__name__} takes no conditioning image; drop --image")

    print(
        f"pipeline      {type(pipe).__name__} from {args.model} on {device} ({str(dtype).replace('torch.', '')}), loaded in {load_s:.1f} s"
    )
    for folder, into in ((args.lora, "transformer"), (args.lora_2, "transformer_2")):
        if folder is not None:
            print(f"lora          {os.path.abspath(folder)} into {into}, scale {args.lora_scale:g}")
    if frames != args.frames:
        print(
            f"frames        {args.frames} rounded down to {frames}: this model takes {_temporal_stride(pipe)}k+1 frames"
        )
    if state is not None:
        c = state.config
        print(
            f"radial        preset {c.preset}, decay {c.decay if c.decay is not None else 'preset'}, dense: first "
            f"{c.dense_steps} + last {c.dense_last_steps} of {args.steps} steps and the first {c.dense_layers} blocks "
            f"({schedule_source}), block {c.block_size}, backend {c.backend}"
        )
        if c.dense_steps + c.dense_last_steps >= args.steps:
            print(
                f"note          dense steps ({c.dense_steps} first + {c.dense_last_steps} last) cover all {args.steps} "
                "steps: nothing runs radial (few-step LoRAs: lower --dense-steps)"
            )
    else:
        print("radial        off (--dense)")
    if sp is not None:
        print(
            f"parallel      video tokens split over {sp.degree} processes ({sp.ctx.backend}, Ulysses sequence parallelism)"
        )

    timer = StepTimer(pipe, device) if "callback_on_step_end" in params else None
    if timer is not None:
        kwargs["callback_on_step_end"] = timer.callback
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        out_frames = pipe(**kwargs).frames  # the pipeline shows a tqdm progress bar over the steps
    finally:
        if timer is not None:
            timer.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - t0
    video = _frames_to_uint8(out_frames)
    if sp is None or sp.is_main:
        write_video(video, args.out, args.fps)

    print(f"time          {gen_s:.1f} s in all (text encoding, {args.steps} steps, decoding)")
    step_seconds = list(timer.times) if timer is not None else []
    dense_timed, radial_timed = _split_steps(step_seconds, state)
    if step_seconds:
        print(f"steps         {_step_times(step_seconds, state)}")
    # Without radial attention nothing counts the calls (None, not 0).
    s = state.summary() if state is not None else {"radial_calls": None, "dense_calls": None, "masks": {}}
    if state is not None:
        masks = ", ".join(f"{k}: density {v}" for k, v in s["masks"].items()) or "none built"
        print(
            f"attention     {s['radial_calls']} radial and {s['dense_calls']} dense self-attention calls; masks {masks}"
        )
    if sp is None or sp.is_main:
        print(
            f"video         {args.out}: {video.shape[0]} frames of {video.shape[2]}x{video.shape[1]} at {args.fps} fps "
            f"({os.path.getsize(args.out) / 1e6:.2f} MB)"
        )
    radial = None
    if state is not None:
        c = state.config
        radial = dict(
            preset=c.preset,
            decay=c.decay,
            dense_steps=c.dense_steps,
            dense_last_steps=c.dense_last_steps,
            dense_layers=c.dense_layers,
            block_size=c.block_size,
            backend=c.backend,
            schedule=schedule_source,
        )
    return dict(
        pipeline=type(pipe).__name__,
        model=args.model,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        loras=[
            dict(folder=os.path.abspath(folder), into=into, scale=args.lora_scale)
            for folder, into in ((args.lora, "transformer"), (args.lora_2, "transformer_2"))
            if folder is not None
        ],
        frames_asked=args.frames,
        frames=frames,
        radial=radial,
        sequence_parallel=None if sp is None else dict(degree=sp.degree, backend=sp.ctx.backend),
        seconds=gen_s,
        step_seconds=step_seconds,
        dense_steps_timed=len(dense_timed),
        radial_steps_timed=len(radial_timed),
        radial_calls=s["radial_calls"],
        dense_calls=s["dense_calls"],
        masks=s["masks"],
        video=args.out if sp is None or sp.is_main else None,
        video_shape=list(video.shape),
        fps=args.fps,
    )


def _split_steps(times, state):
    """``(dense, radial)``: the seconds of the steps the schedule ran dense and those it ran radial
    (all dense without radial attention)."""
    if state is None:
        return list(times), []
    c, n = state.config, len(times)
    is_dense = [i < c.dense_steps or i >= n - c.dense_last_steps for i in range(n)]
    return [t for t, d in zip(times, is_dense) if d], [t for t, d in zip(times, is_dense) if not d]


def _step_times(times, state) -> str:
    """``times`` (seconds of each denoising step) as a mean, split into dense and radial steps."""
    n = len(times)
    text = f"{sum(times) / n:.3f} s per denoising step (mean of {n}, measured per step)"
    if state is None:
        return text
    dense, radial = _split_steps(times, state)
    parts = [
        f"{len(d)} {name} steps {sum(d) / len(d):.3f} s each" for name, d in (("dense", dense), ("radial", radial)) if d
    ]
    return text + ": " + ", ".join(parts)

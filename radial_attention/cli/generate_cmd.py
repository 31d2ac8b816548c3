"""``radial-attention generate``: a video from a diffusers pipeline with radial attention, written as mp4.

    radial-attention generate --model Wan-AI/Wan2.1-T2V-14B-Diffusers --prompt "a cat surfing" \\
        --height 720 --width 1280 --frames 81 --steps 50 --dense-steps 12 --dense-layers 1 --out cat.mp4

``--model`` is a local folder written by ``save_pretrained`` (it holds ``model_index.json``) or a
Hugging Face Hub id (read from the local Hugging Face cache, downloaded if it is not there and the
Hub can be reached). Without weights it stops with a message saying where it looked.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

from radial_attention.cli.args import (
    add_command, device_name, finite_float, nonneg_int, output_file, positive_float, positive_int, lora_source,
)


def register(sub) -> None:
    p = add_command(
        sub, "generate",
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
    p.add_argument("--height", type=positive_int, default=480, help="video height in pixels")
    p.add_argument("--width", type=positive_int, default=832, help="video width in pixels")
    p.add_argument("--frames", type=positive_int, default=81, help="video frames (4k+1)")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", type=finite_float, default=None, help="default: the pipeline's")
    p.add_argument("--max-sequence-length", type=positive_int, default=None, help="prompt tokens (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--fps", type=positive_int, default=16, help="frames per second of the mp4")
    p.add_argument("--out", type=output_file, default="radial-attention.mp4", help="mp4 file to write")
    p.add_argument("--lora", type=lora_source, default=None, metavar="DIR",
                   help="a LoRA folder (e.g. from train-lora) loaded with pipe.load_lora_weights")
    p.add_argument("--lora-2", type=lora_source, default=None, metavar="DIR",
                   help="Wan2.2 A14B: a LoRA for the low-noise expert (transformer_2)")
    p.add_argument("--lora-scale", type=finite_float, default=1.0, help="strength of the LoRA(s)")
    g = p.add_argument_group("radial attention")
    g.add_argument("--dense", action="store_true", help="do not apply radial attention (the dense baseline)")
    g.add_argument("--preset", default=None, help="wan, wan-full, hunyuan, wan2.2 (default: the model's)")
    g.add_argument("--decay", type=positive_float, default=None, help="mask decay (default: the preset's)")
    g.add_argument("--dense-steps", type=nonneg_int, default=12, help="first denoising steps with dense attention")
    g.add_argument("--dense-last-steps", type=nonneg_int, default=0, help="last denoising steps with dense attention")
    g.add_argument("--dense-layers", type=nonneg_int, default=1, help="first transformer blocks with dense attention")
    g.add_argument("--block-size", type=int, default=128, choices=[64, 128], help="mask block size in tokens (64 for small videos)")
    g.add_argument("--backend", default="auto", help="auto, gather, reference, flex, triton, flashinfer")
    d = p.add_argument_group("device")
    d.add_argument("--device", type=device_name, default="auto", help="auto (cuda if present), cuda, cpu")
    d.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto: bfloat16 on cuda, float32 on cpu")
    d.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload (less GPU memory)")
    # Multi-GPU: radial_attention.distributed (docs/multi-gpu.md).
    d.add_argument("--sequence-parallel", type=positive_int, default=None, metavar="N",
                   help="split the video tokens over N GPUs (Ulysses: diffusers context parallelism, radial mask "
                        "on the whole sequence); launch with `torchrun --standalone --nproc-per-node N -m "
                        "radial_attention generate ...`; default under torchrun: its number of processes")
    d.add_argument("--collective-timeout", type=positive_float, default=1800.0, metavar="SECONDS",
                   help="with --sequence-parallel: a collective (token exchange) that waits longer than this fails "
                        "the run instead of hanging")
    p.set_defaults(func=run)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and not os.path.splitext(name)[1]


def _dtype_kwarg(dtype) -> dict:
    # diffusers 0.42 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name warns).
    import diffusers

    major_minor = tuple(int(x) for x in diffusers.__version__.split(".")[:2])
    return {"dtype": dtype} if major_minor >= (0, 42) else {"torch_dtype": dtype}


def load_pipeline(model: str, dtype):
    """A diffusers pipeline from a local folder or a Hub id; ``FileNotFoundError`` saying where it looked."""
    from diffusers import DiffusionPipeline

    path = os.path.expanduser(model)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise FileNotFoundError(
                f"{os.path.abspath(path)} is a folder but not a diffusers pipeline: looked for "
                f"{os.path.join(os.path.abspath(path), 'model_index.json')} (write one with pipe.save_pretrained)"
            )
        return DiffusionPipeline.from_pretrained(path, **_dtype_kwarg(dtype))
    if not _looks_like_hub_id(model):
        raise FileNotFoundError(
            f"no pipeline at {os.path.abspath(path)} (no such folder), and {model!r} is not a Hugging Face Hub id "
            "of the form org/name"
        )
    try:
        return DiffusionPipeline.from_pretrained(model, **_dtype_kwarg(dtype))
    except Exception as e:  # offline, unknown repo, gated, partial download: say where we looked
        from huggingface_hub import constants

        cache = os.path.join(constants.HF_HUB_CACHE, "models--" + model.replace("/", "--"))
        raise FileNotFoundError(
            f"could not load the weights of {model!r}: no folder {os.path.abspath(path)}, and the Hugging Face "
            f"cache has no complete copy at {cache} (download failed or offline: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Download it with `huggingface-cli download {model}` "
            "or pass a local folder written by save_pretrained"
        ) from e


def load_loras(pipe, lora: Optional[str], lora_2: Optional[str], scale: float = 1.0) -> None:
    """Load ``lora`` into the pipeline's transformer and ``lora_2`` into ``transformer_2`` (Wan2.2
    A14B's low-noise expert) as adapter ``"radial-lora"``, at ``scale``."""
    if lora is None and lora_2 is None:
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
            raise ValueError(f"--lora-2 needs a pipeline with a transformer_2 (Wan2.2 A14B); {type(pipe).__name__} has none")
        name = "radial-lora-2" if into_2 else "radial-lora"
        pipe.load_lora_weights(folder, adapter_name=name, **({"load_into_transformer_2": True} if into_2 else {}))
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

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1, format="FFMPEG") as w:
        for frame in frames:
            w.append_data(frame)


def run(args) -> int:
    # Multi-GPU (radial_attention.distributed): join torchrun's group; rank 0 prints and writes.
    import contextlib
    import io

    from radial_attention.distributed.generate import SequenceParallelRun

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


def _run(args, sp) -> int:
    import inspect

    import torch

    from radial_attention.integrations.diffusers import apply_radial_attention

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if sp is not None:  # one GPU per torchrun process
        if args.device not in ("auto", sp.device.type):
            raise ValueError(f"--device {args.device} but this torchrun process runs on {sp.device}")
        device = sp.device
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, dtype)
    load_loras(pipe, args.lora, args.lora_2, args.lora_scale)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    load_s = time.perf_counter() - t0

    state = None
    if not args.dense:
        state = apply_radial_attention(
            pipe, preset=args.preset, decay=args.decay, dense_steps=args.dense_steps,
            dense_last_steps=args.dense_last_steps, dense_layers=args.dense_layers,
            block_size=args.block_size, backend=args.backend,
        )
    if sp is not None:  # after radial attention: split the video tokens across the GPUs
        sp.split(pipe, height=args.height, width=args.width, frames=args.frames)
    params = inspect.signature(pipe.__call__).parameters
    kwargs = dict(
        prompt=args.prompt, height=args.height, width=args.width, num_frames=args.frames,
        num_inference_steps=args.steps, generator=torch.Generator(device="cpu").manual_seed(args.seed), output_type="np",
    )
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
    elif args.image is not None:
        raise ValueError(f"{type(pipe).__name__} takes no conditioning image; drop --image")

    print(f"pipeline      {type(pipe).__name__} from {args.model} on {device} ({str(dtype).replace('torch.', '')}), loaded in {load_s:.1f} s")
    if state is not None:
        c = state.config
        print(
            f"radial        preset {c.preset}, decay {c.decay if c.decay is not None else 'preset'}, dense: first "
            f"{c.dense_steps} + last {c.dense_last_steps} of {args.steps} steps and the first {c.dense_layers} blocks, "
            f"block {c.block_size}, backend {c.backend}"
        )
        if c.dense_steps + c.dense_last_steps >= args.steps:
            print(f"note          dense steps ({c.dense_steps} first + {c.dense_last_steps} last) cover all {args.steps} "
                  "steps: nothing runs radial (few-step LoRAs: lower --dense-steps)")
    else:
        print("radial        off (--dense)")
    if sp is not None:
        print(f"parallel      video tokens split over {sp.degree} processes ({sp.ctx.backend}, Ulysses sequence parallelism)")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    frames = pipe(**kwargs).frames  # the pipeline shows a tqdm progress bar over the steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - t0
    video = _frames_to_uint8(frames)
    if sp is None or sp.is_main:
        write_mp4(video, args.out, args.fps)

    print(f"time          {gen_s:.1f} s for {args.steps} steps and decoding ({gen_s / args.steps:.2f} s per step)")
    if state is not None:
        s = state.summary()
        masks = ", ".join(f"{k}: density {v}" for k, v in s["masks"].items()) or "none built"
        print(f"attention     {s['radial_calls']} radial and {s['dense_calls']} dense self-attention calls; masks {masks}")
    print(f"video         {args.out}: {video.shape[0]} frames of {video.shape[2]}x{video.shape[1]} at {args.fps} fps")
    return 0

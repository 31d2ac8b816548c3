"""Build a training data folder (``docs/training-data.md``) from mp4 videos and captions with the
pipeline's own VAE and text encoder(s) (``radial-attention encode``).

Each video is read with imageio (ffmpeg), resized to cover ``height x width`` and centre-cropped,
its first ``num_frames`` frames (every ``frame_stride``-th) scaled to [-1, 1] and encoded by the
VAE; the latents are normalised the way the pipeline's decode step undoes it (Wan:
``(z - latents_mean) / latents_std``; HunyuanVideo: ``z * scaling_factor``). The caption goes
through the pipeline's own ``encode_prompt``, so the embeddings are exactly what the pipeline
would feed the transformer at generation time.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import pathlib
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from radial_attention.models.registry import FAMILIES, VARIANTS, family_for_pipeline, patch_from_config

from .data import DataError, MANIFEST, write_manifest, write_sample

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
# The pipeline components encode does not load (nor download).
TRANSFORMER_COMPONENTS = ("transformer", "transformer_2")


@dataclass
class VideoItem:
    video: pathlib.Path
    caption: str


# --------------------------------------------------------------------------------- inputs
def collect_videos(videos: Sequence[str], captions: Optional[str] = None) -> List[VideoItem]:
    """The (video, caption) pairs to encode.

    Args:
        videos: video files and/or folders (a folder contributes its video files, sorted).
        captions: optional JSONL file, one ``{"video": path, "caption": text}`` per line (paths
            relative to the JSONL file's folder, or absolute, or a bare file name). Without it,
            or for a video it does not list, the caption is the ``.txt`` file next to the video
            (``clip.mp4`` -> ``clip.txt``).

    Raises:
        DataError: no videos, a missing video, a video without a caption (all listed at once).
    """
    files: List[pathlib.Path] = []
    for v in videos:
        p = pathlib.Path(v)
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"video {str(p)!r} does not exist")
    table = {}
    if captions is not None:
        cpath = pathlib.Path(captions)
        if not cpath.is_file():
            raise DataError(f"captions file {str(cpath)!r} does not exist")
        for n, line in enumerate(cpath.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                vid, cap = rec["video"], rec["caption"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(
                    f'{cpath}:{n}: expected a JSON object with "video" and "caption", got {line[:80]!r}'
                ) from None
            vp = pathlib.Path(vid)
            if not vp.is_absolute():
                vp = cpath.parent / vp
            table[vp.resolve()] = str(cap)
            table.setdefault(pathlib.Path(vid).name, str(cap))
        if not videos:
            files = [p for p in table if isinstance(p, pathlib.Path) and p.is_absolute()]
            missing = [str(p) for p in files if not p.is_file()]
            if missing:
                raise DataError(f"{cpath}: listed videos do not exist: {missing[:5]}")
    if not files:
        raise DataError("no videos to encode: give video files or folders (.mp4 ...) or a captions JSONL")
    items, uncaptioned = [], []
    for f in files:
        cap = table.get(f.resolve(), table.get(f.name))
        if cap is None and f.with_suffix(".txt").is_file():
            cap = f.with_suffix(".txt").read_text().strip()
        if cap is None:
            uncaptioned.append(str(f))
        else:
            items.append(VideoItem(f, cap))
    if uncaptioned:
        raise DataError(
            f"{len(uncaptioned)} video(s) have no caption (no entry in the captions JSONL and no .txt beside them): "
            f"{uncaptioned[:5]}"
        )
    return items


def read_video(path, num_frames: int, height: int, width: int, *, frame_stride: int = 1) -> torch.Tensor:
    """Frames ``0, s, 2s, ..`` (``num_frames`` of them) of a video, resized to cover
    ``height x width`` and centre-cropped, as float32 ``[3, num_frames, height, width]`` in [-1, 1].

    Raises:
        DataError: unreadable file, or fewer than ``(num_frames - 1) * frame_stride + 1`` frames.
    """
    import imageio

    need = (num_frames - 1) * frame_stride + 1
    frames = []
    try:
        reader = imageio.get_reader(str(path), format="ffmpeg")
    except Exception as e:
        raise DataError(f"cannot read video {str(path)!r}: {_one_line(e)}") from None
    try:
        for i, frame in enumerate(reader):
            if i % frame_stride == 0:
                frames.append(torch.from_numpy(frame[..., :3].copy()))
            if i + 1 >= need:
                break
    except Exception as e:  # a file that opens but is damaged further in (ffmpeg/imageio raise several types)
        raise DataError(
            f"cannot read video {str(path)!r} (failed after {len(frames)} frames): {_one_line(e)}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            reader.close()
    if len(frames) < num_frames:
        raise DataError(
            f"video {str(path)!r} has {len(frames) if frame_stride == 1 else 'too few'} frames, "
            f"needs {need} ({num_frames} frames at stride {frame_stride})"
        )
    video = (
        torch.stack(frames[:num_frames]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    )  # [F, H0, W0, 3] -> [F, 3, H0, W0]
    h0, w0 = video.shape[-2:]
    scale = max(height / h0, width / w0)
    rh, rw = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    video = torch.nn.functional.interpolate(video, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    video = video[..., top : top + height, left : left + width].clamp(-1, 1)
    return video.permute(1, 0, 2, 3).contiguous()  # [F, 3, H, W] -> [3, F, H, W]


def _one_line(err: Exception) -> str:
    """imageio's ffmpeg errors carry ffmpeg's whole banner: keep the first line and ffmpeg's last."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    if not lines:
        return type(err).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} (ffmpeg: {lines[-1]})"


# --------------------------------------------------------------------------------- the pipeline side
# How each registry latent_normalisation is written in the manifest.
_NORMALISATION = {"mean_std": "(z - latents_mean) / latents_std", "scaling_factor": "z * scaling_factor"}


def pipeline_family(pipe) -> str:
    """The registry family name of a pipeline ``encode`` takes; ``TypeError`` naming those it takes."""
    name = type(pipe).__name__
    fam = family_for_pipeline(name)
    if fam is None:
        known = [c for f in FAMILIES.values() for c in f.pipeline_classes]
        raise TypeError(f"encode supports {', '.join(known[:-1])} and {known[-1]}, got {name}")
    for pipeline, key, reason in fam.encode_refuses:
        if name == pipeline and getattr(pipe.config, key, None) not in (None, False):
            raise TypeError(reason)
    return fam.name


def is_image_to_video(pipe) -> bool:
    fam = family_for_pipeline(type(pipe).__name__)
    return fam is not None and type(pipe).__name__ in fam.image_to_video_pipelines


def load_pipeline(model: str, *, dtype: torch.dtype = torch.float32):
    """The pipeline without its transformer (only the VAE and text encoders are needed), from a
    local folder or a Hub id (:func:`radial_attention.hub.resolve_model`: for a Hub id only the
    components encode needs are fetched)."""
    import diffusers

    from radial_attention.hub import load_kwargs, loading_errors, resolve_model

    # transformer/config.json: its patch size decides which video sizes fit (_transformer_patch).
    path = resolve_model(model, skip=TRANSFORMER_COMPONENTS, extra_files=["transformer/config.json"])
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a diffusers pipeline folder (no model_index.json)")
    index = json.loads(index_path.read_text())
    cls = getattr(diffusers, index.get("_class_name", ""), None)
    if cls is None:
        raise TypeError(f"{model}: unknown pipeline class {index.get('_class_name')!r}")
    # Skip the transformer(s): passing None explicitly makes diffusers leave them out.
    skip = {name: None for name in TRANSFORMER_COMPONENTS if name in index}
    with loading_errors(model, path):
        return cls.from_pretrained(str(path), **load_kwargs(dtype), **skip)


def _model_folder(model: str) -> Optional[pathlib.Path]:
    """``model``'s folder on disk (a Hub id: its cached snapshot), or ``None``; no network."""
    from radial_attention.hub import find_cached

    return find_cached(model) if model else None


def _transformer_patch(model: str, family: str) -> Tuple[int, int]:
    """(temporal, spatial) patch size from the pipeline folder's transformer config, else that of
    the family's first registry variant."""
    folder = _model_folder(model)
    cfg = None if folder is None else folder / "transformer" / "config.json"
    if cfg is not None and cfg.is_file():
        c = json.loads(cfg.read_text())
        if c.get("patch_size") is not None:
            pt, ph, _ = patch_from_config(c)
            return pt, ph
    pt, ph, _ = next(v.patch for v in VARIANTS.values() if v.family == family)
    return pt, ph


@torch.no_grad()
def encode_latents(pipe, family: str, video: torch.Tensor, *, sample: bool = False, generator=None) -> torch.Tensor:
    """VAE-encode ``video [3, F, H, W]`` in [-1, 1] -> normalised latents ``[C, F', H', W']`` (float32)."""
    vae = pipe.vae
    x = video[None].to(vae.device, vae.dtype)
    dist = vae.encode(x).latent_dist
    z = (dist.sample(generator) if sample else dist.mode()).float()
    if FAMILIES[family].latent_normalisation == "mean_std":
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        z = (z - mean) / std
    else:
        z = z * float(vae.config.scaling_factor)
    return z[0].cpu()


@torch.no_grad()
def encode_image_condition(pipe, video: torch.Tensor, num_frames: int) -> dict:
    """What a Wan image-to-video pipeline derives from the clip's first frame, made by the
    pipeline's own methods: ``condition [20, F', H', W']`` (first-frame mask + normalised latent
    of the image followed by empty frames, ``prepare_latents``) and, for Wan2.1 I2V (which has an
    image encoder), ``image_embeds [N, E]`` (``encode_image``). ``video [3, F, H, W]`` in [-1, 1]."""
    from PIL import Image

    device = pipe._execution_device
    first = ((video[:, 0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    image = Image.fromarray(first)  # the pipeline is given a picture, as at generation time
    height, width = video.shape[-2:]
    pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
    z_dim = pipe.vae.config.z_dim
    f_lat = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    shape = (1, z_dim, f_lat, height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
    # Given latents, prepare_latents draws no noise; only its condition is kept.
    _, condition = pipe.prepare_latents(
        pixels, 1, z_dim, height, width, num_frames, torch.float32, device, None, torch.zeros(shape, device=device)
    )
    out = {"condition": condition[0].float().cpu()}
    if getattr(pipe, "image_encoder", None) is not None:
        out["image_embeds"] = pipe.encode_image(image, device)[0].float().cpu()
    return out


@torch.no_grad()
def encode_caption(
    pipe, family: str, caption: str, *, max_sequence_length: Optional[int] = None, prompt_template=None
) -> dict:
    """The caption's embeddings as the pipeline makes them (batch dim dropped, on the CPU)."""
    fam = FAMILIES[family]
    device = pipe._execution_device
    # A family that does not mask prompt padding encodes at the length its pipelines generate
    # with (Wan: 512), not encode_prompt's default.
    length = fam.unmasked_text_tokens if max_sequence_length is None else max_sequence_length
    kw = dict(fam.prompt_kwargs, **({} if length is None else {"max_sequence_length": length}))
    if prompt_template is not None and fam.takes_prompt_template:
        kw["prompt_template"] = prompt_template
    outputs = pipe.encode_prompt(prompt=caption, device=device, **kw)
    return {
        key: (out[0].float() if out[0].is_floating_point() else out[0]).cpu()
        for key, out in zip(fam.prompt_outputs, outputs)
        if key is not None
    }


def encode_videos(
    model: str,
    videos: Sequence[str],
    out_dir,
    *,
    height: int,
    width: int,
    num_frames: int,
    captions: Optional[str] = None,
    frame_stride: int = 1,
    max_sequence_length: Optional[int] = None,
    prompt_template: Optional[dict] = None,
    sample_latents: bool = False,
    seed: int = 0,
    device: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    store_dtype: torch.dtype = torch.float32,
    vae_tiling: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    pipe=None,
) -> pathlib.Path:
    """Encode videos + captions into a training data folder; returns the manifest path.

    Everything that can be checked without the models (videos exist, have captions, sizes fit
    the VAE and patch size, output folder free) is checked before the pipeline is loaded.

    Args:
        model: diffusers pipeline folder or Hub id (Wan2.1/2.2 T2V, Wan image-to-video, HunyuanVideo
            T2V, HunyuanVideo 1.5 T2V: both its prompt streams are stored). Image-to-video samples
            also store the condition and image embeddings the pipeline makes from the clip's first
            frame (:func:`encode_image_condition`).
        videos, captions: see :func:`collect_videos`.
        height, width, num_frames: the training video size (``num_frames = 4k + 1``).
        frame_stride: take every ``frame_stride``-th frame of the source video.
        max_sequence_length: prompt tokens (default: what the pipeline generates with, Wan 512 /
            HunyuanVideo 256).
        prompt_template: HunyuanVideo's prompt template (default the pipeline's).
        sample_latents: sample the VAE posterior instead of taking its mode.
        device: where the VAE / text encoders run (default CUDA if available).
        dtype: model dtype; store_dtype: dtype of the stored tensors.
        vae_tiling: ``vae.enable_tiling()`` (saves memory for large videos).
        overwrite: replace an existing data folder (finished or not).
        skip_bad: skip videos that cannot be read (or are too short) with a warning naming each;
            the manifest lists them under ``skipped``. Without it such a video stops the encode.
        pipe: an already loaded pipeline to use instead of loading ``model``.

    The manifest is rewritten (atomically) after every clip, marked ``"partial": true`` until the
    end: an encode that stops (a bad video, a crash) keeps its finished clips, and running the same
    command again continues it, skipping the clips already encoded.
    """
    out_dir = pathlib.Path(out_dir)
    previous = None if overwrite else _unfinished_encode(out_dir)
    items = collect_videos(videos, captions)
    for name, v in (("height", height), ("width", width), ("num_frames", num_frames), ("frame_stride", frame_stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"{name} must be a positive integer, got {v!r}")
    settings = {
        "model": str(model),
        "height": height,
        "width": width,
        "num_frames": num_frames,
        "frame_stride": frame_stride,
        "latents": "sampled" if sample_latents else "mode",
        "max_sequence_length": max_sequence_length,
        "prompt_template": prompt_template,
        "store_dtype": str(store_dtype).replace("torch.", ""),
        **({"seed": seed} if sample_latents else {}),
    }
    if previous is not None:  # continuing an unfinished encode: with the settings it was started with
        old_source = previous.get("source") or {}
        diff = [f"{k}: saved {old_source.get(k)!r}, given {v!r}" for k, v in settings.items() if old_source.get(k) != v]
        if diff:
            raise DataError(
                f"{out_dir / MANIFEST} is an unfinished encode with other settings ({'; '.join(diff)}): "
                f"rerun it with the same settings to finish it, or pass --overwrite to start over"
            )

    if pipe is None:
        pipe = load_pipeline(model, dtype=dtype)
    family = pipeline_family(pipe)
    if (
        max_sequence_length is not None
        and "max_sequence_length" not in inspect.signature(pipe.encode_prompt).parameters
    ):
        raise DataError(
            f"{type(pipe).__name__} pads every prompt to fixed lengths itself (its encode_prompt takes no "
            f"max_sequence_length): drop --max-sequence-length"
        )
    i2v = is_image_to_video(pipe)
    t_factor, s_factor = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    pt, ps = _transformer_patch(model, family)
    if (num_frames - 1) % t_factor:
        raise DataError(f"num_frames must be {t_factor}k+1 for this VAE, got {num_frames}")
    if height % (s_factor * ps) or width % (s_factor * ps):
        raise DataError(
            f"height and width must be multiples of {s_factor * ps} (VAE {s_factor}x times patch {ps}), got {height}x{width}"
        )
    latent_frames = (num_frames - 1) // t_factor + 1
    if latent_frames % pt:
        raise DataError(f"{latent_frames} latent frames are not a multiple of the temporal patch {pt}")

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.to(dev)
    if vae_tiling:
        pipe.vae.enable_tiling()
    source = {
        "pipeline": type(pipe).__name__,
        **(
            {"image": "the clip's first frame (condition and image embeddings by the pipeline's own methods)"}
            if i2v
            else {}
        ),
        **settings,
        "normalisation": _NORMALISATION[FAMILIES[family].latent_normalisation],
    }
    done = {}  # video path -> manifest entry of a clip an earlier, unfinished run encoded
    next_index = 0
    if previous is not None:
        if previous.get("model_family") != family:
            raise DataError(
                f"{out_dir / MANIFEST} is an unfinished encode for model family "
                f"{previous.get('model_family')!r}, not {family!r}: pass --overwrite to start over"
            )
        for e in previous.get("samples") or []:
            if isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("video"), str):
                done[e["video"]] = e
                next_index = max(next_index, _file_index(e["file"]) + 1)

    # video path -> entry, written in the order of ``items``; first the clips already encoded
    entries = {
        str(it.video): done[str(it.video)]
        for it in items
        if str(it.video) in done
        and done[str(it.video)].get("caption") == it.caption
        and (out_dir / done[str(it.video)]["file"]).is_file()
    }
    skipped = []

    def save(partial: bool) -> pathlib.Path:
        listed = [entries[str(it.video)] for it in items if str(it.video) in entries]
        extra = {"source": source, **({"skipped": skipped} if skipped else {})}
        return write_manifest(out_dir, family, listed, extra=extra, partial=partial)

    marked = False  # whether the folder's manifest says "unfinished" yet
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="encode", unit="video")
    try:
        for item in items:
            key = str(item.video)
            if key not in entries:  # else encoded by the earlier, unfinished run
                try:
                    video = read_video(item.video, num_frames, height, width, frame_stride=frame_stride)
                except DataError as e:
                    if not skip_bad:
                        raise DataError(
                            f"{e}. The {len(entries)} clip(s) encoded so far are kept in {out_dir} (its manifest is "
                            f"marked unfinished): fix or remove the video and rerun the same command to continue, or "
                            f"add --skip-bad to skip unreadable videos"
                        ) from None
                    warnings.warn(f"encode: skipping {key}: {e}", stacklevel=2)
                    skipped.append({"video": key, "error": str(e)})
                    if bar is not None:
                        bar.update(1)
                    continue
                gen = _clip_generator(dev, seed, key) if sample_latents else None
                lat = encode_latents(pipe, family, video, sample=sample_latents, generator=gen)
                text = encode_caption(
                    pipe, family, item.caption, max_sequence_length=max_sequence_length, prompt_template=prompt_template
                )
                rel = f"samples/{next_index:06d}.safetensors"
                next_index += 1
                kw = {}
                # What else the family's encode_prompt returns (HunyuanVideo: the mask and pooled embeddings).
                kw = {
                    k: v.to(store_dtype) if v.is_floating_point() else v
                    for k, v in text.items()
                    if k != "prompt_embeds"
                }
                if i2v:
                    kw = {k: v.to(store_dtype) for k, v in encode_image_condition(pipe, video, num_frames).items()}
                if not marked:
                    # Before the first sample file is (over)written: a replaced folder's old manifest must not
                    # go on listing files that change under it. Errors on earlier clips leave the folder as it was.
                    save(partial=True)
                    marked = True
                shapes = write_sample(out_dir / rel, lat.to(store_dtype), text["prompt_embeds"].to(store_dtype), **kw)
                entries[key] = {
                    "file": rel,
                    "caption": item.caption,
                    "video": key,
                    "latent_shape": list(shapes["latents"]),
                }
                save(partial=True)  # this clip survives whatever happens next
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not entries:
        raise DataError(
            f"no video could be encoded: all {len(items)} were skipped as unreadable "
            f"({', '.join(s['video'] for s in skipped[:5])})"
        )
    return save(partial=False)


def _unfinished_encode(out_dir: pathlib.Path) -> Optional[dict]:
    """The manifest of an unfinished encode in ``out_dir`` (to continue), ``None`` for none.

    Raises:
        DataError: the folder holds a finished (or unreadable) manifest.
    """
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or not doc.get("partial"):
        raise DataError(f"{path} already exists (use overwrite / --overwrite to replace it)")
    return doc


def _file_index(rel: str) -> int:
    """``samples/000012.safetensors`` -> 12 (-1 for other names)."""
    stem = pathlib.PurePosixPath(rel).stem
    return int(stem) if stem.isdigit() else -1


def _clip_generator(device, seed: int, video: str) -> torch.Generator:
    """The VAE-posterior generator of one clip: seeded by (seed, video), so a continued encode
    draws what an uninterrupted one would."""
    key = hashlib.blake2b(f"{seed}/{video}".encode(), digest_size=8).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(key, "little") & ((1 << 63) - 1))

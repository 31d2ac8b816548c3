"""The training data folder: pre-encoded latents and prompt embeddings, one safetensors file per
sample, listed in ``manifest.json``. Format: ``docs/training-data.md``.

::

    my_dataset/
      manifest.json
      samples/000000.safetensors     latents [C, F, H, W], prompt_embeds [L, D], (HunyuanVideo:
      samples/000001.safetensors       prompt_attention_mask [L], pooled_prompt_embeds [P]; Wan
      ...                              image-to-video: condition [Cc, F, H, W], image_embeds [N, E])
      ...

Everything is checked against the model by :func:`validate_dataset` before training starts
(shapes from the safetensors headers, then one pass over the values for NaN/inf and empty
prompt masks): a bad sample raises :class:`DataError` naming the file, what was expected and
what was found. Manifest entries must stay inside the folder (no absolute paths, no ``..``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from radial_attention.models import registry

FORMAT_NAME = "radial-attention-latents"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The model families a latent folder can be for: those encode writes (the model registry's).
FAMILIES = tuple(f.name for f in registry.FAMILIES.values() if f.pipeline_classes)

# Tensor names inside one sample file.
LATENTS = "latents"  # [C, F, H, W]: normalised as the transformer sees them
PROMPT_EMBEDS = "prompt_embeds"  # [L, D]
PROMPT_MASK = "prompt_attention_mask"  # [L], HunyuanVideo
POOLED = "pooled_prompt_embeds"  # [P], HunyuanVideo
CONDITION = "condition"  # [Cc, F, H, W], Wan image-to-video: concatenated to the noisy latents (mask + image latent)
IMAGE_EMBEDS = "image_embeds"  # [N, E], Wan2.1 image-to-video: the image encoder's features
PROMPT_EMBEDS_2 = "prompt_embeds_2"  # [L2, D2], HunyuanVideo 1.5: the second (byT5) prompt stream
PROMPT_MASK_2 = "prompt_attention_mask_2"  # [L2], HunyuanVideo 1.5 (all zeros: no quoted text in the caption)
_MASKS = (PROMPT_MASK, PROMPT_MASK_2)  # stored as int64 0/1


class DataError(ValueError):
    """A training data folder that does not fit the format or the model."""


@dataclass(frozen=True)
class ModelSpec:
    """What the transformer expects from one sample (derived from its config, see ``train.model``).

    Attributes:
        family: the registry family name the data was encoded for (``"wan"``, ``"hunyuan"``, ...).
        in_channels: latent channels ``C``.
        patch_size: ``(p_t, p_h, p_w)``; ``F, H, W`` must be multiples of it.
        text_dim: last dim ``D`` of ``prompt_embeds``.
        pooled_dim: size ``P`` of ``pooled_prompt_embeds`` (HunyuanVideo), else ``None``.
        condition_channels: channels ``Cc`` of the ``condition`` concatenated to the noisy
            latents (Wan image-to-video: 4 mask + 16 image-latent channels), else 0.
        image_dim: last dim ``E`` of ``image_embeds`` (Wan2.1 image-to-video), else ``None``.
        text_len: the exact prompt length ``L`` the model needs, or ``None`` for any (Wan
            image-to-video with image embeddings: 512, where its attention splits text from image).
    """

    family: str
    in_channels: int
    patch_size: Tuple[int, int, int]
    text_dim: int
    pooled_dim: Optional[int] = None
    condition_channels: int = 0
    image_dim: Optional[int] = None
    text_len: Optional[int] = None
    # HunyuanVideo 1.5: last dim D2 of prompt_embeds_2 (None: no second prompt stream); the
    # text-to-video inputs train-lora makes as zeros, as the pipeline does: that many condition
    # channels after the noisy latents, and image_embeds [N, E] (None: none).
    text_2_dim: Optional[int] = None
    zero_condition_channels: int = 0
    zero_image_embeds: Optional[Tuple[int, int]] = None

    @property
    def needs_pooled(self) -> bool:
        return self.pooled_dim is not None

    @property
    def needs_mask(self) -> bool:
        return PROMPT_MASK in registry.FAMILIES[self.family].prompt_outputs


@dataclass
class SampleInfo:
    """One manifest entry, plus the tensor shapes read from the file's header."""

    file: pathlib.Path
    caption: str = ""
    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)

    @property
    def latent_shape(self) -> Tuple[int, ...]:
        return self.shapes[LATENTS]


# --------------------------------------------------------------------------------- writing
def write_sample(
    path,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    *,
    prompt_attention_mask: Optional[torch.Tensor] = None,
    pooled_prompt_embeds: Optional[torch.Tensor] = None,
    condition: Optional[torch.Tensor] = None,
    image_embeds: Optional[torch.Tensor] = None,
    prompt_embeds_2: Optional[torch.Tensor] = None,
    prompt_attention_mask_2: Optional[torch.Tensor] = None,
) -> Dict[str, Tuple[int, ...]]:
    """Write one sample file.

    Args:
        latents: ``[C, F, H, W]`` (or ``[1, C, F, H, W]``), already normalised the way the
            pipeline feeds the transformer (Wan: ``(z - mean) / std``; HunyuanVideo:
            ``z * scaling_factor``).
        prompt_embeds: ``[L, D]`` (or ``[1, L, D]``).
        prompt_attention_mask: ``[L]`` (HunyuanVideo), stored as int64 0/1.
        pooled_prompt_embeds: ``[P]`` (HunyuanVideo).
        condition: ``[Cc, F, H, W]`` (Wan image-to-video), as the pipeline concatenates it.
        image_embeds: ``[N, E]`` (Wan2.1 image-to-video).
        prompt_embeds_2, prompt_attention_mask_2: ``[L2, D2]`` and ``[L2]`` (HunyuanVideo 1.5's byT5
            stream; the mask stored as int64 0/1).

    Returns:
        The stored tensor shapes by name.
    """
    from safetensors.torch import save_file

    def squeeze_batch(t, dims, name):
        if t.dim() == dims + 1 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != dims:
            raise DataError(f"{name} must have {dims} dims (or a leading batch of 1), got shape {tuple(t.shape)}")
        return t.detach().to("cpu").contiguous()

    tensors = {
        LATENTS: squeeze_batch(latents, 4, LATENTS),
        PROMPT_EMBEDS: squeeze_batch(prompt_embeds, 2, PROMPT_EMBEDS),
    }
    if prompt_attention_mask is not None:
        tensors[PROMPT_MASK] = squeeze_batch(prompt_attention_mask, 1, PROMPT_MASK).to(torch.int64)
    if pooled_prompt_embeds is not None:
        tensors[POOLED] = squeeze_batch(pooled_prompt_embeds, 1, POOLED)
    if condition is not None:
        tensors[CONDITION] = squeeze_batch(condition, 4, CONDITION)
    if image_embeds is not None:
        tensors[IMAGE_EMBEDS] = squeeze_batch(image_embeds, 2, IMAGE_EMBEDS)
    if prompt_embeds_2 is not None:
        tensors[PROMPT_EMBEDS_2] = squeeze_batch(prompt_embeds_2, 2, PROMPT_EMBEDS_2)
    if prompt_attention_mask_2 is not None:
        tensors[PROMPT_MASK_2] = squeeze_batch(prompt_attention_mask_2, 1, PROMPT_MASK_2).to(torch.int64)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a temporary file: an interrupted write never leaves a truncated sample under its name.
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME, "version": str(FORMAT_VERSION)})
    os.replace(tmp, path)
    return {k: tuple(v.shape) for k, v in tensors.items()}


def write_manifest(
    root, family: str, samples: Sequence[dict], *, extra: Optional[dict] = None, partial: bool = False
) -> pathlib.Path:
    """Write ``root/manifest.json`` atomically (a temporary file, then a rename).

    Args:
        family: the registry family name of the data (``"wan"``, ``"hunyuan"``, ...).
        samples: dicts with ``file`` (path relative to ``root``), optional ``caption`` and any
            other informational keys (``video``, ``latent_shape``...).
        extra: more top-level keys (e.g. ``source``: the model and video size used to encode).
        partial: an unfinished folder (``encode`` writes one after each clip); training refuses it.
    """
    if family not in FAMILIES:
        raise DataError(f"model_family must be one of {FAMILIES}, got {family!r}")
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model_family": family}
    doc.update(extra or {})
    if partial:
        doc["partial"] = True
    doc["samples"] = list(samples)
    out = root / MANIFEST
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------- reading
def read_manifest(root) -> Tuple[dict, List[SampleInfo]]:
    """Parse ``root/manifest.json`` and read every sample file's header (not its data).

    Raises:
        DataError: missing folder/manifest/file, wrong format, unreadable file, missing tensors.
    """
    from safetensors import safe_open

    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"training data folder {str(root)!r} does not exist")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise DataError(
            f"no {MANIFEST} in {str(root)!r}: expected a folder made by `radial-attention encode` "
            f"(format: docs/training-data.md)"
        )
    try:
        doc = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise DataError(
            f'{mpath}: expected "format": {FORMAT_NAME!r}, got {doc.get("format") if isinstance(doc, dict) else doc!r}'
        )
    if doc.get("version") != FORMAT_VERSION:
        raise DataError(f"{mpath}: expected version {FORMAT_VERSION}, got {doc.get('version')!r}")
    if doc.get("model_family") not in FAMILIES:
        raise DataError(f"{mpath}: model_family must be one of {FAMILIES}, got {doc.get('model_family')!r}")
    entries = doc.get("samples")
    if doc.get("partial"):
        n_done = len(entries) if isinstance(entries, list) else 0
        raise DataError(
            f"{mpath}: the encode that writes this folder did not finish ({n_done} samples so far): rerun the same "
            f"`radial-attention encode` command to finish it (it skips the clips already encoded; --skip-bad skips "
            f"unreadable videos)"
        )
    if not isinstance(entries, list) or not entries:
        raise DataError(f'{mpath}: "samples" must be a non-empty list')

    samples = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DataError(f'{mpath}: sample #{n} must be an object with a "file" string, got {entry!r}')
        if _leaves_folder(entry["file"]):
            raise DataError(
                f"{mpath}: sample #{n} file {entry['file']!r} leaves the data folder (an absolute path or '..'): "
                f"sample files must be paths inside {str(root)!r}, relative to it"
            )
        fpath = root / entry["file"]
        if not fpath.is_file():
            raise DataError(f"sample #{n}: file {str(fpath)!r} listed in {MANIFEST} does not exist")
        try:
            with safe_open(str(fpath), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        except Exception as e:  # safetensors raises several types for a corrupt file
            raise DataError(f"sample #{n}: {str(fpath)!r} is not a readable safetensors file ({e})") from None
        for key in (LATENTS, PROMPT_EMBEDS):
            if key not in shapes:
                raise DataError(f"sample #{n}: {str(fpath)!r} has no {key!r} tensor (found {sorted(shapes)})")
        for key, dt in dtypes.items():
            if key not in _MASKS and dt not in ("F32", "F16", "BF16", "F64"):
                raise DataError(f"sample #{n}: {str(fpath)!r}: {key!r} must be a float tensor, got dtype {dt}")
        samples.append(SampleInfo(file=fpath, caption=str(entry.get("caption", "")), shapes=shapes))
    return doc, samples


def _leaves_folder(rel: str) -> bool:
    """Whether a manifest ``file`` entry points outside its folder (absolute, a drive, or ``..``)."""
    posix, windows = pathlib.PurePosixPath(rel), pathlib.PureWindowsPath(rel)
    return (
        posix.is_absolute()
        or windows.is_absolute()
        or bool(windows.drive)
        or rel.startswith(("/", "\\"))
        or ".." in posix.parts
        or ".." in windows.parts
    )


def check_values(samples: Sequence[SampleInfo]) -> None:
    """Read every tensor of every sample once and refuse NaN/inf values and (HunyuanVideo) prompt
    masks without a single real token: either makes the loss NaN at the first step that draws it.

    Raises:
        DataError: naming the sample file and tensor.
    """
    from safetensors import safe_open

    for n, s in enumerate(samples):
        where = f"sample #{n} ({s.file})"
        try:
            with safe_open(str(s.file), framework="pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    if key == PROMPT_MASK:
                        if t.numel() and not bool(t.ne(0).any()):
                            raise DataError(
                                f"{where}: prompt_attention_mask is all zeros (not one real prompt token): the text "
                                f"attention of this sample is empty and its loss NaN; re-encode the caption"
                            )
                        continue
                    if key == PROMPT_MASK_2:  # byT5's mask is all zeros for a caption without quoted text
                        continue
                    if t.is_floating_point():
                        bad = int((~torch.isfinite(t)).sum())
                        if bad:
                            raise DataError(
                                f"{where}: {key} has {bad} non-finite value(s) (NaN/inf) of {t.numel()}: the loss would "
                                f"be NaN; re-encode this clip or drop it from {MANIFEST}"
                            )
        except DataError:
            raise
        except Exception as e:  # a file whose header is fine but whose data is cut short
            raise DataError(f"{where}: cannot read its tensors ({type(e).__name__}: {e})") from None


def fingerprint(samples: Sequence[SampleInfo], root) -> str:
    """A short hash of what a data folder holds (each sample's file name inside the folder,
    caption and tensor shapes): a resumed run must see the same samples, wherever the folder is."""
    root = pathlib.Path(root)
    items = []
    for s in samples:
        rel = s.file.relative_to(root) if s.file.is_relative_to(root) else s.file
        items.append([rel.as_posix(), s.caption, sorted([k, list(v)] for k, v in s.shapes.items())])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def validate_dataset(
    root, spec: ModelSpec, *, batch_size: int = 1, world_size: int = 1, values: bool = True
) -> Tuple[dict, List[SampleInfo]]:
    """Check every sample of a data folder against the model before training starts.

    Checks: the manifest and every listed file exist and parse, and stay inside the folder; the
    encode that made it finished; the model family matches (or shares its latents, see
    ``registry.shares_latents``);
    ``latents`` is ``[C, F, H, W]`` with ``C == spec.in_channels`` and ``F, H, W`` multiples of
    the patch size; ``prompt_embeds`` is ``[L, D]`` with ``D == spec.text_dim``; HunyuanVideo's
    ``prompt_attention_mask [L]`` and ``pooled_prompt_embeds [P]`` are present and fit; with
    ``batch_size > 1`` all samples share one latent and prompt shape; there are enough samples
    for one batch per process; with ``values`` (one pass over the data, see :func:`check_values`):
    no NaN/inf anywhere and no all-zero prompt mask.

    Returns:
        ``(manifest, samples)``.

    Raises:
        DataError: naming the file, what was expected and what was found.
    """
    doc, samples = read_manifest(root)
    # Families with the same VAE, normalisation and text encoder read each other's folders (the
    # registry's shares_latents_with: SkyReels-V2 and Wan); the shape checks below still apply.
    if not registry.shares_latents(doc["model_family"], spec.family):
        readable = [f for f in FAMILIES if registry.shares_latents(f, spec.family)]
        raise DataError(
            f"{pathlib.Path(root) / MANIFEST}: data was encoded for model family {doc['model_family']!r} "
            f"but the model being trained is {spec.family!r}, which trains on data encoded for {readable} "
            f"(re-encode the videos with this model's pipeline)"
        )
    pt, ph, pw = spec.patch_size
    for n, s in enumerate(samples):
        where = f"sample #{n} ({s.file})"
        lat = s.shapes[LATENTS]
        if len(lat) != 4:
            raise DataError(f"{where}: latents must be [C, F, H, W], got shape {lat}")
        c, f, h, w = lat
        if c != spec.in_channels:
            raise DataError(
                f"{where}: latents have {c} channels but the model takes {spec.in_channels} "
                f"(latent shape {lat}; was the data encoded with another model's VAE?)"
            )
        if f % pt or h % ph or w % pw or min(f, h, w) == 0:
            raise DataError(
                f"{where}: latent frames/height/width {f}x{h}x{w} must be positive multiples of the model's "
                f"patch size {pt}x{ph}x{pw} (latent shape {lat})"
            )
        emb = s.shapes[PROMPT_EMBEDS]
        if len(emb) != 2 or emb[1] != spec.text_dim:
            raise DataError(f"{where}: prompt_embeds must be [L, {spec.text_dim}] for this model, got shape {emb}")
        if spec.text_len is not None and emb[0] != spec.text_len:
            raise DataError(
                f"{where}: prompt_embeds must have exactly {spec.text_len} tokens for this model (encode with "
                f"--max-sequence-length {spec.text_len}), got shape {emb}"
            )
        cond = s.shapes.get(CONDITION)
        if spec.condition_channels and cond != (spec.condition_channels, f, h, w):
            raise DataError(
                f"{where}: this image-to-video model needs a condition tensor [{spec.condition_channels}, {f}, {h}, {w}] "
                f"(mask + image latent, like the latents' frames and size), got {cond}"
            )
        if not spec.condition_channels and cond is not None:
            raise DataError(
                f"{where}: has a condition tensor {cond} (image-to-video data) but the model is text-to-video"
            )
        img = s.shapes.get(IMAGE_EMBEDS)
        if spec.image_dim is not None and (img is None or len(img) != 2 or img[1] != spec.image_dim):
            raise DataError(f"{where}: image_embeds must be [N, {spec.image_dim}] for this model, got {img}")
        if spec.needs_mask:
            m = s.shapes.get(PROMPT_MASK)
            if m is None or m != (emb[0],):
                raise DataError(
                    f"{where}: prompt_attention_mask must be [{emb[0]}] (one entry per prompt token), got {m}"
                )
        if spec.text_2_dim is not None:
            emb2, m2 = s.shapes.get(PROMPT_EMBEDS_2), s.shapes.get(PROMPT_MASK_2)
            if emb2 is None or len(emb2) != 2 or emb2[1] != spec.text_2_dim:
                raise DataError(
                    f"{where}: prompt_embeds_2 must be [L2, {spec.text_2_dim}] for this model (its second prompt "
                    f"stream), got {emb2}"
                )
            if m2 != (emb2[0],):
                raise DataError(
                    f"{where}: prompt_attention_mask_2 must be [{emb2[0]}] (one entry per prompt_embeds_2 token), got {m2}"
                )
        if spec.needs_pooled:
            p = s.shapes.get(POOLED)
            if p is None or p != (spec.pooled_dim,):
                raise DataError(f"{where}: pooled_prompt_embeds must be [{spec.pooled_dim}] for this model, got {p}")
    if batch_size > 1:
        first = samples[0]
        for n, s in enumerate(samples):
            for key in (LATENTS, PROMPT_EMBEDS, CONDITION, IMAGE_EMBEDS, PROMPT_EMBEDS_2):
                if s.shapes.get(key) != first.shapes.get(key):
                    raise DataError(
                        f"batch_size {batch_size} needs every sample to share one {key} shape: sample #0 has "
                        f"{first.shapes[key]}, sample #{n} ({s.file}) has {s.shapes[key]} (use batch_size 1 "
                        f"and gradient accumulation for mixed sizes)"
                    )
    if len(samples) < batch_size * world_size:
        raise DataError(
            f"{len(samples)} samples are fewer than one batch per process (batch_size {batch_size} x "
            f"{world_size} processes)"
        )
    if values:
        check_values(samples)
    return doc, samples


class LatentDataset(torch.utils.data.Dataset):
    """The samples of a validated data folder; item ``i`` is a dict of CPU tensors
    (``latents [C,F,H,W]``, ``prompt_embeds [L,D]``, optional ``prompt_attention_mask [L]`` and
    ``pooled_prompt_embeds [P]``)."""

    def __init__(self, root, spec: ModelSpec, *, batch_size: int = 1, world_size: int = 1):
        self.root = pathlib.Path(root)
        self.manifest, self.samples = validate_dataset(root, spec, batch_size=batch_size, world_size=world_size)
        self.spec = spec
        self.fingerprint = fingerprint(self.samples, self.root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.samples[i].file))


def collate(items: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack sample dicts into a batch: each tensor gains a leading ``B``."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def write_synthetic_dataset(*args, **kwargs):
    """Deprecated: moved to :func:`radial_attention.testing.data.write_synthetic_dataset` (a test
    fixture, not part of training); this alias goes in the next release."""
    import warnings

    from radial_attention.testing.data import write_synthetic_dataset as moved

    warnings.warn(
        "radial_attention.train.data.write_synthetic_dataset has moved to "
        "radial_attention.testing.data.write_synthetic_dataset; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return moved(*args, **kwargs)

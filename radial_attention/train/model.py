"""Which transformer is being trained: loading it, what data it takes, how to call it, where the
LoRA goes, and which pipeline class writes and reads its LoRA files.

Supported: the registry families with a LoRA pipeline class (:mod:`radial_attention.models`;
today Wan2.1/2.2, SkyReels-V2, HunyuanVideo and HunyuanVideo 1.5 T2V: :func:`trainable_family`
names them when it refuses a model). What differs between them (LoRA targets, shift, inputs) is
registry data.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from radial_attention.models.registry import FAMILIES, WAN, VideoModelFamily, family_for_transformer

from .config import PRECISIONS  # defined there: the CLI reads it without importing torch
from .data import CONDITION, IMAGE_EMBEDS, PROMPT_EMBEDS, ModelSpec
from .objective import NUM_TRAIN_TIMESTEPS

# The built-in tiny models (random weights, no download) that `--model` accepts by name.
TINY_MODELS = ("tiny-wan", "tiny-hunyuan")
# The prompt length Wan pipelines generate with (their __call__ default; encode_prompt's own default
# is 226). Wan's cross-attention does not mask the padding, so it is part of the input; Wan2.1 I2V
# needs exactly this many (its attention takes the tokens after the first 512 as the image's).
WAN_TEXT_TOKENS = WAN.unmasked_text_tokens


def trainable_family(transformer) -> VideoModelFamily:
    """The registry family of a transformer ``train-lora`` can train; ``TypeError`` for anything else
    (a class the registry gives no LoRA pipeline, or a config value the family refuses)."""
    name = type(transformer).__name__
    fam = family_for_transformer(name)
    if fam is None or fam.lora_pipeline_class is None:
        names = [c for f in FAMILIES.values() if f.lora_pipeline_class for c in f.transformer_classes]
        supported = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise TypeError(f"train-lora supports diffusers {supported}, got {name}")
    for key, reason in fam.train_refuses:
        if getattr(transformer.config, key, None) not in (None, False):
            raise TypeError(reason)
    for key, value, reason in fam.train_requires:
        if getattr(transformer.config, key, None) != value:
            raise TypeError(f"{reason}; got {key}={getattr(transformer.config, key, None)!r}")
    return fam


def family_of(transformer) -> str:
    """Deprecated: ``trainable_family(transformer).name``."""
    from radial_attention._deprecation import warn_deprecated

    warn_deprecated("radial_attention.train.model.family_of", "trainable_family(transformer).name")
    return trainable_family(transformer).name


def _config_int(cfg, key: Optional[str]) -> Optional[int]:
    value = None if key is None else getattr(cfg, key, None)
    return None if value is None else int(value)


def model_spec(transformer) -> ModelSpec:
    """What one training sample must look like for this transformer."""
    fam = trainable_family(transformer)
    cfg = transformer.config
    # Image-to-video: the input is the noisy latents plus a condition (in_channels - out_channels
    # channels); a model with image embeddings then takes exactly its unmasked prompt length
    # (Wan2.1 I2V: its attention takes the tokens after the first 512 as the image's).
    latent, total = int(getattr(cfg, "out_channels", None) or cfg.in_channels), int(cfg.in_channels)
    image_dim = _config_int(cfg, fam.image_dim_key)
    # Text-to-video inputs the pipeline fills with zeros (HunyuanVideo 1.5): made by train-lora, not stored.
    zero_cond = total - latent if fam.t2v_zero_inputs else 0
    zero_image = (fam.t2v_image_tokens, _config_int(cfg, fam.t2v_image_dim_key)) if fam.t2v_image_dim_key else None
    return ModelSpec(
        fam.name,
        latent,
        fam.patch(cfg),
        int(getattr(cfg, fam.text_dim_key)),
        _config_int(cfg, fam.pooled_dim_key),
        condition_channels=total - latent - zero_cond,
        image_dim=image_dim,
        text_len=fam.unmasked_text_tokens if image_dim is not None else None,
        text_2_dim=_config_int(cfg, fam.text_2_dim_key),
        zero_condition_channels=zero_cond,
        zero_image_embeds=zero_image,
    )


def lora_target_regex(family: str, train_ff: bool = False) -> str:
    """One regex (for peft's ``target_modules``) matching the modules that get a LoRA."""
    fam = FAMILIES[family]
    pats = list(fam.lora_attention_targets) + (list(fam.lora_ff_targets) if train_ff else [])
    return "(" + "|".join(f"(?:{p})" for p in pats) + ")"


def pipeline_class(family: str):
    """The diffusers pipeline class whose ``save_lora_weights`` / ``load_lora_weights`` fit the family."""
    import diffusers

    return getattr(diffusers, FAMILIES[family].lora_pipeline_class)


def load_transformer(model: str, *, dtype: torch.dtype = torch.float32, seed: int = 0, subfolder: str = "transformer"):
    """Load the transformer to train.

    Args:
        model: a built-in tiny model name (``tiny-wan``, ``tiny-hunyuan``: random weights from
            ``seed``), a local diffusers pipeline folder (has ``model_index.json``; its
            ``subfolder`` is used), a local transformer folder (has ``config.json``), or a Hugging
            Face Hub pipeline id (from the local cache, downloaded if allowed: only
            ``model_index.json``, the scheduler and ``subfolder``; see ``radial_attention.hub``).
        dtype: parameter dtype.
        subfolder: the pipeline's transformer component: ``transformer``, or ``transformer_2``
            for the low-noise expert of Wan2.2 A14B.

    Raises:
        FileNotFoundError: a local path that is neither kind of folder; a name that is no folder,
            Hub id or tiny model; a Hub id whose files are not in the cache and cannot be fetched.
        TypeError: a transformer class diffusers does not have.
    """
    import diffusers

    from radial_attention.hub import load_kwargs, loading_errors, resolve_model

    if model in TINY_MODELS:
        from radial_attention.testing import tiny

        # 3 Wan blocks / 2+1 HunyuanVideo blocks: with the default dense_layers=2 there is still a
        # radial block to train.
        if model == "tiny-wan":
            built = tiny.tiny_wan_transformer("t2v", num_layers=3, seed=seed)
        else:
            built = tiny.tiny_hunyuan_transformer(num_layers=2, num_single_layers=1, seed=seed)
        return cast_like_from_pretrained(built, dtype)
    path = resolve_model(
        model, components=[subfolder, "scheduler"], local_ok=f"a built-in tiny model ({', '.join(TINY_MODELS)})"
    )
    if (path / "model_index.json").is_file():
        if not (path / subfolder / "config.json").is_file():
            raise FileNotFoundError(f"{str(path)!r} has no {subfolder!r} component (no {subfolder}/config.json)")
    elif (path / "config.json").is_file():
        subfolder = None
    else:
        raise FileNotFoundError(
            f"{str(path)!r} is neither a diffusers pipeline folder (model_index.json) nor a transformer "
            f"folder (config.json)"
        )
    cfg_path = path / (subfolder or "") / "config.json"
    try:
        cls_name = json.loads(cfg_path.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise FileNotFoundError(f"{cfg_path} is not a readable model config ({type(e).__name__}: {e})") from None
    cls = getattr(diffusers, cls_name or "", None)
    if cls is None:
        raise TypeError(f"{cfg_path}: unknown transformer class {cls_name!r}")
    with loading_errors(model, path):
        return cls.from_pretrained(str(path), subfolder=subfolder, **load_kwargs(dtype))


def expert_timestep_range(model: str, subfolder: str = "transformer") -> Optional[Tuple[float, float]]:
    """The timesteps (0-1000) a Wan2.2 A14B expert denoises in its pipeline, or ``None`` for a
    pipeline with one transformer. The pipeline runs ``transformer`` while ``t >= boundary``
    (high noise) and ``transformer_2`` below, with ``boundary = boundary_ratio * 1000`` from
    ``model_index.json``."""
    if model in TINY_MODELS:
        return None
    from radial_attention.hub import find_cached

    # load_transformer has put a Hub id's files in the cache already.
    path = find_cached(model)
    index = None if path is None else path / "model_index.json"
    if index is None or not index.is_file():
        return None  # a bare transformer folder: no pipeline, no boundary
    cfg = json.loads(index.read_text())
    ratio = cfg.get("boundary_ratio")
    if not isinstance(ratio, (int, float)) or not cfg.get("transformer_2") or cfg.get("transformer_2") == [None, None]:
        return None
    boundary = float(ratio) * NUM_TRAIN_TIMESTEPS
    return (boundary, float(NUM_TRAIN_TIMESTEPS)) if subfolder == "transformer" else (0.0, boundary)


def cast_like_from_pretrained(model, dtype: torch.dtype):
    """``model.to(dtype)`` but leaving the parameters diffusers keeps in float32 when it loads a
    model in half precision (``_keep_in_fp32_modules``: Wan's norms, time embedder, RoPE...)."""
    if dtype == torch.float32:
        return model
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if any(k in name for k in keep) else dtype)
    for name, b in model.named_buffers():
        if b.is_floating_point() and not any(k in name for k in keep):
            b.data = b.data.to(dtype)
    return model


def default_shift(model: str, family: str, *, image_to_video: bool = False) -> float:
    """The flow shift of the model's own scheduler config when it has one, else the family default
    (with ``image_to_video``: the family's image-to-video default where it has one)."""
    from radial_attention.hub import find_cached

    folder = None if model in TINY_MODELS else find_cached(model)  # a Hub id: its cached snapshot
    path = None if folder is None else folder / "scheduler" / "scheduler_config.json"
    if path is not None and path.is_file():
        cfg = json.loads(path.read_text())
        for key in ("flow_shift", "shift"):
            if isinstance(cfg.get(key), (int, float)):
                return float(cfg[key])
    fam = FAMILIES[family]
    if image_to_video and fam.image_to_video_flow_shift is not None:
        return fam.image_to_video_flow_shift
    return fam.flow_shift


def transformer_inputs(
    family: str,
    batch: Dict[str, torch.Tensor],
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    *,
    dtype: torch.dtype,
    guidance: float = 1.0,
    spec: Optional[ModelSpec] = None,
) -> dict:
    """Keyword arguments of one transformer call, as the family's pipeline makes them.

    Args:
        batch: collated sample tensors (``prompt_embeds [B, L, D]`` ..., on the device).
        x_t: noisy latents ``[B, C, F, H, W]``.
        timestep: ``[B]`` in (0, 1000].
        dtype: the transformer's compute dtype (inputs are cast to it, as the pipelines do).
        guidance: the embedded guidance scale of a guidance-distilled family (HunyuanVideo; the
            model gets ``guidance * 1000``).
        spec: the model's :func:`model_spec`: the zero inputs a text-to-video pipeline makes
            (HunyuanVideo 1.5's condition channels and image embeddings) come from it.
    """
    kw = {
        "hidden_states": x_t.to(dtype),
        "timestep": timestep,
        "encoder_hidden_states": batch[PROMPT_EMBEDS].to(dtype),
        "return_dict": False,
    }
    if CONDITION in batch:  # image-to-video: the condition rides along the noisy latents' channels
        kw["hidden_states"] = torch.cat([kw["hidden_states"], batch[CONDITION].to(dtype)], dim=1)
    if IMAGE_EMBEDS in batch:
        kw["encoder_hidden_states_image"] = batch[IMAGE_EMBEDS].to(dtype)
    if spec is not None and spec.zero_condition_channels:  # HunyuanVideo 1.5 T2V: zero condition latents + mask
        b, _, f, h, w = x_t.shape
        zeros = torch.zeros(b, spec.zero_condition_channels, f, h, w, device=x_t.device, dtype=dtype)
        kw["hidden_states"] = torch.cat([kw["hidden_states"], zeros], dim=1)
    if spec is not None and spec.zero_image_embeds is not None:  # ... and all-zero image embeddings
        kw["image_embeds"] = torch.zeros(x_t.shape[0], *spec.zero_image_embeds, device=x_t.device, dtype=dtype)
    fam = FAMILIES[family]
    for key, keyword in fam.call_inputs:  # HunyuanVideo: the prompt mask and pooled embeddings
        value = batch[key]
        kw[keyword] = value.to(dtype) if value.is_floating_point() else value
    if fam.embedded_guidance:
        kw["guidance"] = torch.full((x_t.shape[0],), guidance * 1000.0, device=x_t.device, dtype=dtype)
    return kw


def latent_layout(spec: ModelSpec, latent_shape) -> dict:
    """Token layout of a latent ``[C, F, H, W]``: frames and tokens per frame after patching."""
    _, f, h, w = latent_shape
    pt, ph, pw = spec.patch_size
    return {"frames": f // pt, "tokens_per_frame": (h // ph) * (w // pw)}


@dataclass
class Precision:
    """How the model runs: parameter dtype of the frozen weights and the autocast dtype (or None)."""

    weights: torch.dtype
    autocast: Optional[torch.dtype]

    @property
    def compute(self) -> torch.dtype:
        return self.autocast or self.weights


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The frozen weights' dtype and the autocast dtype of a precision name.

    - ``fp32``: everything float32.
    - ``bf16-mixed`` (``auto`` on CUDA): frozen weights in bf16 (diffusers' float32 modules kept,
      as ``from_pretrained(dtype=bf16)`` does) under bf16 autocast; LoRA weights and AdamW state in
      float32, the LoRA matmuls in bf16 like the frozen ones (see :func:`forward_context`). The
      usual diffusers LoRA-training setup, and the least memory.
    - ``bf16``: the same weights without autocast: the model runs exactly as the pipeline runs it
      at generation time, and peft computes the LoRA branch in float32 (its input cast to float32:
      a float32 copy of every adapted layer's input, which at long lengths costs tens of GB).
    - ``bf16-autocast``: float32 weights under bf16 autocast.
    - ``auto``: ``bf16-mixed`` on CUDA, ``fp32`` elsewhere.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        name = "bf16-mixed" if device.type == "cuda" else "fp32"
    if name == "fp32":
        return Precision(torch.float32, None)
    if name == "bf16-mixed":
        return Precision(torch.bfloat16, torch.bfloat16)
    if name == "bf16":
        return Precision(torch.bfloat16, None)
    return Precision(torch.float32, torch.bfloat16)


def autocast_context(precision: Precision, device_type: str):
    """The autocast a training forward runs under (none for ``fp32`` and ``bf16``)."""
    if precision.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=precision.autocast)


def lora_input_cast_off(model, precision: Precision):
    """Under autocast, turn off peft's float32 cast of each LoRA layer's input, for a whole
    forward *and backward* (gradient checkpointing recomputes the forward inside the backward).

    The cast changes no result under autocast (autocast casts the float32 copy straight back to
    bf16 for the matmul), but it allocates a float32 copy of every adapted layer's input: at
    HunyuanVideo 4x length the single-stream ``proj_out`` input alone is [460k, 15360], a 28 GB
    float32 copy. Without autocast (``bf16``) the cast is what makes the float32 LoRA weights
    usable, so it stays on."""
    if precision.autocast is None:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)

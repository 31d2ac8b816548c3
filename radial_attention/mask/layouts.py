"""Video sizes -> token layouts (latent frames, tokens per frame) for common video DiTs.

The strides, patch sizes, presets and extra tokens come from the model registry
(:mod:`radial_attention.models`); this module only does the arithmetic and the size checks.

``latent frames = (frames - 1) / temporal_compression + 1`` and
``tokens per frame = (height / (spatial_compression * patch)) * (width / (spatial_compression * patch))``
(``shared/docs/radial-mask.md``, "Tokens of common models").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from radial_attention._deprecation import renamed_attribute, renamed_keyword, warn_deprecated
from radial_attention.models.registry import VARIANTS, ModelVariant, get_variant, video_token_grid

# The model sizes video_layout knows (name -> ModelVariant), from the one model registry.
MODEL_FAMILIES = VARIANTS


def get_model_family(name: str) -> ModelVariant:
    """Look up a model (a registry variant such as ``"wan2.1"``) by name or alias (case-insensitive)."""
    return get_variant(name)


def __getattr__(name):
    if name == "ModelFamily":  # the old name of the registry's per-size entry
        warn_deprecated("radial_attention.mask.ModelFamily", "radial_attention.models.ModelVariant")
        return ModelVariant
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class VideoLayout:
    """The token layout of one video: ``frames x (height_tokens x width_tokens)`` plus extra tokens."""

    family: str
    preset: str
    frames: int  # latent frames F
    height_tokens: int
    width_tokens: int
    extra_tokens: int = 0  # tokens appended after the video (HunyuanVideo's text tokens)
    prefix_tokens: int = 0  # tokens placed before the video (CogVideoX's text tokens)

    text_tokens = renamed_attribute("VideoLayout", "text_tokens", "extra_tokens")

    @property
    def tokens_per_frame(self) -> int:
        """T = height_tokens * width_tokens."""
        return self.height_tokens * self.width_tokens

    @property
    def video_tokens(self) -> int:
        """N = F * T."""
        return self.frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        """P + N + X, all tokens in the self-attention."""
        return self.prefix_tokens + self.video_tokens + self.extra_tokens


def video_layout(
    model: str,
    height: int,
    width: int,
    num_frames: int,
    *,
    extra_tokens: Optional[int] = None,
    text_tokens: Optional[int] = None,
    prefix_tokens: Optional[int] = None,
    reference_frames: Optional[int] = None,
) -> VideoLayout:
    """Frames and tokens per frame of a ``num_frames``-frame ``height x width`` video for ``model``.

    Args:
        model: a model name of :data:`MODEL_FAMILIES` (the registry's variants) or an alias such as ``"wan"``.
        height, width: pixels; must be divisible by the family's pixels-per-token.
        num_frames: video frames; must be ``k * temporal_compression + 1``.
        extra_tokens: tokens appended after the video; default the family's (256 text tokens for
            HunyuanVideo, else 0).
        text_tokens: deprecated name of ``extra_tokens``.
        prefix_tokens: tokens placed before the video; default the family's (226 text tokens
            for CogVideoX, else 0).
        reference_frames: latent frames in front of the video that the self-attention counts as
            video frames (reference images); default the family's (1 for Wan Animate, else 0; Wan
            VACE: one per reference image the pipeline is given).

    Raises:
        ValueError: naming the size the model cannot take and the nearest sizes it can.
    """
    extra_tokens = renamed_keyword(
        "video_layout", "text_tokens", text_tokens, "extra_tokens", extra_tokens, default=None
    )
    fam = get_variant(model)
    for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    s = fam.spatial_stride
    for name, value in (("height", height), ("width", width)):
        if value % s:
            lo, hi = (value // s) * s, (value // s + 1) * s
            raise ValueError(
                f"{fam.description}: {name} must be divisible by {s} (VAE stride x patch size), got {value}; "
                f"nearest valid: {lo if lo else hi} or {hi}"
            )
    # A pipeline that pads latent frames to a multiple of p_t (CogVideoX 1.5) takes any VAE frame count.
    pads = fam.model_family.pads_latent_frames
    t = fam.vae_strides[0] if pads else fam.temporal_compression
    if (num_frames - 1) % t:
        lo = ((num_frames - 1) // t) * t + 1
        raise ValueError(
            f"{fam.description}: num_frames must be {t}k+1 (the VAE compresses time by {t}), got {num_frames}; "
            f"nearest valid: {lo} or {lo + t}"
        )
    x = fam.default_extra_tokens if extra_tokens is None else extra_tokens
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise ValueError(f"extra_tokens must be a non-negative integer, got {extra_tokens!r}")
    y = fam.default_prefix_tokens if prefix_tokens is None else prefix_tokens
    if isinstance(y, bool) or not isinstance(y, int) or y < 0:
        raise ValueError(f"prefix_tokens must be a non-negative integer, got {prefix_tokens!r}")
    r = fam.model_family.reference_frames if reference_frames is None else reference_frames
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"reference_frames must be a non-negative integer, got {reference_frames!r}")
    frames, height_tokens, width_tokens = video_token_grid(
        height, width, num_frames, fam.vae_strides, fam.patch, pad_frames=pads
    )
    return VideoLayout(
        family=fam.name,
        preset=fam.preset,
        frames=frames + r,
        height_tokens=height_tokens,
        width_tokens=width_tokens,
        extra_tokens=x,
        prefix_tokens=y,
    )

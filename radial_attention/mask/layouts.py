"""Video sizes -> token layouts (latent frames, tokens per frame) for common video DiTs.

``latent frames = (frames - 1) / temporal_compression + 1`` and
``tokens per frame = (height / (spatial_compression * patch)) * (width / (spatial_compression * patch))``
(``shared/docs/radial-mask.md``, "Tokens of common models").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from radial_attention._deprecation import renamed_keyword, warn_deprecated


@dataclass(frozen=True)
class ModelFamily:
    """How a model family turns pixels into tokens, and its default radial preset."""

    name: str
    temporal_compression: int  # VAE time stride (times temporal patch, which is 1 for all here)
    spatial_stride: int  # VAE space stride x spatial patch: pixels per token side
    preset: str
    default_extra_tokens: int  # tokens (text) appended after the video in the joint self-attention
    description: str

    @property
    def default_text_tokens(self) -> int:
        """Deprecated name of :attr:`default_extra_tokens`."""
        warn_deprecated("ModelFamily.default_text_tokens", "default_extra_tokens")
        return self.default_extra_tokens


MODEL_FAMILIES = {
    "wan2.1": ModelFamily("wan2.1", 4, 16, "wan", 0, "Wan2.1 T2V/I2V 1.3B and 14B"),
    "wan2.2-a14b": ModelFamily("wan2.2-a14b", 4, 16, "wan2.2", 0, "Wan2.2 T2V/I2V A14B (two experts)"),
    "wan2.2-ti2v-5b": ModelFamily("wan2.2-ti2v-5b", 4, 32, "wan", 0, "Wan2.2 TI2V-5B (16x VAE)"),
    "hunyuan": ModelFamily("hunyuan", 4, 16, "hunyuan", 256, "HunyuanVideo T2V (text tokens after the video)"),
    "mochi": ModelFamily("mochi", 6, 16, "hunyuan", 0, "Mochi 1 (no preset of its own; HunyuanVideo's settings)"),
}

_ALIASES = {
    "wan": "wan2.1",
    "wan2.1-t2v": "wan2.1",
    "wan2.1-i2v": "wan2.1",
    "wan2.2": "wan2.2-a14b",
    "wan2.2-5b": "wan2.2-ti2v-5b",
    "hunyuanvideo": "hunyuan",
    "hunyuan-video": "hunyuan",
    "mochi-1": "mochi",
}


def get_model_family(name: str) -> ModelFamily:
    """Look up a model family by name or alias (case-insensitive)."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in MODEL_FAMILIES:
        known = sorted(set(MODEL_FAMILIES) | set(_ALIASES))
        raise ValueError(f"unknown model family {name!r}; expected one of {known}")
    return MODEL_FAMILIES[key]


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

    @property
    def text_tokens(self) -> int:
        """Deprecated name of :attr:`extra_tokens`."""
        warn_deprecated("VideoLayout.text_tokens", "extra_tokens")
        return self.extra_tokens

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
) -> VideoLayout:
    """Frames and tokens per frame of a ``num_frames``-frame ``height x width`` video for ``model``.

    Args:
        model: a family name of :data:`MODEL_FAMILIES` (or an alias such as ``"wan"``).
        height, width: pixels; must be divisible by the family's pixels-per-token.
        num_frames: video frames; must be ``k * temporal_compression + 1``.
        extra_tokens: tokens appended after the video; default the family's (256 text tokens for
            HunyuanVideo, else 0).
        text_tokens: deprecated name of ``extra_tokens``.

    Raises:
        ValueError: naming the size the model cannot take and the nearest sizes it can.
    """
    extra_tokens = renamed_keyword(
        "video_layout", "text_tokens", text_tokens, "extra_tokens", extra_tokens, default=None
    )
    fam = get_model_family(model)
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
    t = fam.temporal_compression
    if (num_frames - 1) % t:
        lo = ((num_frames - 1) // t) * t + 1
        raise ValueError(
            f"{fam.description}: num_frames must be {t}k+1 (the VAE compresses time by {t}), got {num_frames}; "
            f"nearest valid: {lo} or {lo + t}"
        )
    x = fam.default_extra_tokens if extra_tokens is None else extra_tokens
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise ValueError(f"extra_tokens must be a non-negative integer, got {extra_tokens!r}")
    return VideoLayout(
        family=fam.name,
        preset=fam.preset,
        frames=(num_frames - 1) // t + 1,
        height_tokens=height // s,
        width_tokens=width // s,
        extra_tokens=x,
    )

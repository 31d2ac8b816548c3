"""Masks: the shape of a video -> a block-sparse attention mask (pure torch/numpy, CPU)."""

import radial_attention._torch_floor  # noqa: F401  (first: an old torch fails here in one clear line)

from .layouts import MODEL_FAMILIES, VideoLayout, get_model_family, video_layout
from .radial import (
    PRESETS,
    RadialBlockMask,
    RadialSettings,
    get_preset,
    radial_block_mask,
    radial_mask_from_preset,
    radial_mask_with_settings,
)
from .sparse import SUPPORTED_BLOCK_SIZES, BlockSparseMask

__all__ = [
    "BlockSparseMask",
    "MODEL_FAMILIES",
    "PRESETS",
    "RadialBlockMask",
    "RadialSettings",
    "SUPPORTED_BLOCK_SIZES",
    "VideoLayout",
    "get_model_family",
    "get_preset",
    "radial_block_mask",
    "radial_mask_from_preset",
    "radial_mask_with_settings",
    "video_layout",
]


def __getattr__(name):
    if name == "ModelFamily":  # deprecated: radial_attention.models.ModelVariant
        from . import layouts

        return layouts.ModelFamily
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The model registry: what the package knows about each video model family (plain data; see
:mod:`radial_attention.models.registry`, whose docstring says how to add a model)."""

from .registry import (
    FAMILIES,
    VARIANTS,
    ModelVariant,
    Schedule,
    VideoModelFamily,
    family_for_pipeline,
    family_for_transformer,
    get_variant,
    patch_from_config,
    patchable_transformer_classes,
    recommended_schedule,
    video_token_grid,
)

__all__ = [
    "FAMILIES",
    "VARIANTS",
    "ModelVariant",
    "Schedule",
    "VideoModelFamily",
    "family_for_pipeline",
    "family_for_transformer",
    "get_variant",
    "patch_from_config",
    "patchable_transformer_classes",
    "recommended_schedule",
    "video_token_grid",
]

"""radial-attention: Radial Attention (O(n log n) static block-sparse attention) for video diffusion transformers.

Layers, each importing only the ones below it::

    models                  the model registry (plain data, no torch)
    mask                    video shape -> block mask (CPU, torch + numpy)
    ops                     block_sparse_attention(q, k, v, mask): fa4 | triton | flex | flashinfer | gather | reference
    distributed             sequence-parallel (Ulysses) radial attention, process bootstrap (torch only)
    integrations.diffusers  apply_radial_attention / remove_radial_attention on a pipeline or transformer
    train                   length-extension LoRA fine-tuning
    cli                     the `radial-attention` command

plus ``testing`` (the float64 oracle, tiny models, synthetic data: shared by tests, benchmarks, demo).

Public names are imported lazily so that ``import radial_attention`` needs only torch and numpy.
"""

from radial_attention._lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    # mask
    "BlockSparseMask": "radial_attention.mask",
    "RadialBlockMask": "radial_attention.mask",
    "PRESETS": "radial_attention.mask",
    "radial_block_mask": "radial_attention.mask",
    "video_layout": "radial_attention.mask",
    "VideoLayout": "radial_attention.mask",
    # ops
    "block_sparse_attention": "radial_attention.ops",
    "radial_attention": "radial_attention.ops",
    # distributed
    "ulysses_attention": "radial_attention.distributed",
    "ulysses_radial_attention": "radial_attention.distributed",
    # integrations
    "apply_radial_attention": "radial_attention.integrations.diffusers",
    "remove_radial_attention": "radial_attention.integrations.diffusers",
    "get_radial_state": "radial_attention.integrations.diffusers",
    "RadialAttentionConfig": "radial_attention.integrations.diffusers",
    "RadialState": "radial_attention.integrations.diffusers",
}
# Still importable for one release (they warn when called), but not part of the public surface.
_DEPRECATED = {
    "radial_mask_from_preset": "radial_attention.mask",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), hidden=_DEPRECATED)

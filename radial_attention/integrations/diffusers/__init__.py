"""Radial attention for Hugging Face diffusers video models (Wan2.1/2.2, HunyuanVideo).

::

    from radial_attention import apply_radial_attention, remove_radial_attention

    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-14B-Diffusers", dtype=torch.bfloat16).to("cuda")
    apply_radial_attention(pipe, dense_steps=12, dense_layers=1)   # the paper's Wan2.1 schedule
    video = pipe(prompt, height=720, width=1280, num_frames=81, num_inference_steps=50).frames[0]
    remove_radial_attention(pipe)                                   # the original model again

Modules: ``apply`` (apply / remove, the hooks), ``schedule`` (dense-step schedule, shared state),
``sdpa`` (the SDPA call of a processor answered by the radial op), ``families`` (which modules of
which transformer class; the one lookup of a pipeline's transformers), ``context_parallel``
(radial attention under diffusers' Ulysses context parallelism: checks, split, training guard).
Tiny models with random weights: :mod:`radial_attention.testing.tiny`.
"""

from .apply import apply_radial_attention, attention_modules, get_radial_state, remove_radial_attention
from .schedule import RadialAttentionConfig, RadialState

__all__ = [
    "RadialAttentionConfig",
    "RadialState",
    "apply_radial_attention",
    "attention_modules",
    "get_radial_state",
    "remove_radial_attention",
]

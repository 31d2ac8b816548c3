"""What radial attention needs to know about each supported diffusers transformer class.

For a model family: which attention modules are the self-attention over video tokens (in the
order the forward runs them: that order is the block index ``dense_layers`` counts), how the
latent input of a call becomes a token layout (latent frames ``F``, tokens per frame ``T``),
whether extra tokens follow the video in that attention (HunyuanVideo's text), and the default
mask preset. Nothing here touches the model's code: it reads config values and module names.

    family    transformer class                  self-attention modules                         extra tokens
    wan       WanTransformer3DModel              blocks[i].attn1                                none
    hunyuan   HunyuanVideoTransformer3DModel     transformer_blocks[i].attn, then               the prompt, after the video
                                                 single_transformer_blocks[i].attn

Cross-attention (Wan's ``attn2`` to text and I2V image tokens) and HunyuanVideo's text token
refiner are not listed, so they stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch


@dataclass(frozen=True)
class ModelFamily:
    """How to find the video self-attention of one transformer class and read its layout."""

    name: str
    preset: str  # default radial preset (radial_attention.mask.PRESETS)
    has_extra_tokens: bool  # extra tokens (text) may follow the video tokens in the self-attention
    patch: Callable[[object], Tuple[int, int, int]]  # config -> (p_t, p_h, p_w)
    attention_paths: Callable[[torch.nn.Module], List[str]]  # model -> qualified module names, run order

    def layout(self, model: torch.nn.Module, hidden_states: torch.Tensor) -> Tuple[int, int]:
        """``(F, T)``: latent frames and tokens per frame of a call's ``hidden_states [B, C, F, H, W]``."""
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 5:
            got = (
                tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
            )
            raise ValueError(f"{self.name} transformer: expected hidden_states [B, C, F, H, W], got {got}")
        p_t, p_h, p_w = self.patch(model.config)
        _, _, f, h, w = hidden_states.shape
        return f // p_t, (h // p_h) * (w // p_w)


def _wan_paths(model) -> List[str]:
    return [f"blocks.{i}.attn1" for i in range(len(model.blocks))]


def _hunyuan_paths(model) -> List[str]:
    return [f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))] + [
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    ]


WAN = ModelFamily(
    name="wan",
    preset="wan",
    has_extra_tokens=False,
    patch=lambda cfg: tuple(int(p) for p in cfg.patch_size),
    attention_paths=_wan_paths,
)
HUNYUAN = ModelFamily(
    name="hunyuan",
    preset="hunyuan",
    has_extra_tokens=True,
    patch=lambda cfg: (int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size)),
    attention_paths=_hunyuan_paths,
)


def _registry():
    """(transformer class, family) pairs; imported lazily so this module loads without diffusers."""
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    return ((WanTransformer3DModel, WAN), (HunyuanVideoTransformer3DModel, HUNYUAN))


def family_of(model) -> ModelFamily:
    """The family of a diffusers transformer; ``TypeError`` naming the supported classes otherwise."""
    for cls, fam in _registry():
        if type(model) is cls:  # exact class: subclasses (VACE, ...) have other blocks
            return fam
    supported = ", ".join(cls.__name__ for cls, _ in _registry())
    raise TypeError(f"radial attention supports the diffusers transformers {supported}; got {type(model).__name__}")


def is_supported_transformer(model) -> bool:
    try:
        family_of(model)
    except TypeError:
        return False
    return True


# ------------------------------------------------------------------------------ model lookup
def is_pipeline(obj) -> bool:
    """A diffusers pipeline (anything with a ``components`` dict)."""
    return hasattr(obj, "components") and isinstance(getattr(obj, "components"), dict)


def _unique(modules) -> list:
    """``modules`` without repeats of the same object (a pipeline whose ``transformer_2`` is its
    ``transformer``, or ``[m, m]``): each is handled once. By identity: modules compare by it anyway."""
    seen, out = set(), []
    for m in modules:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def find_transformers(model) -> tuple:
    """``(transformers, scheduler, pipeline or None)`` of a pipeline, a transformer or a list of transformers.

    The one place that finds a pipeline's video transformers (every supported component:
    Wan2.2 A14B's ``transformer`` and ``transformer_2``), for radial attention and context
    parallelism alike. The transformers are distinct objects, in order of first appearance.

    Raises:
        TypeError: a pipeline without a supported transformer, or an unsupported transformer
            (naming the supported classes).
        ValueError: an empty list.
    """
    if is_pipeline(model):
        found = [m for name, m in model.components.items() if m is not None and is_supported_transformer(m)]
        if not found:
            kinds = {name: type(m).__name__ for name, m in model.components.items() if m is not None}
            raise TypeError(f"{type(model).__name__} has no supported video transformer; its components are {kinds}")
        return _unique(found), getattr(model, "scheduler", None), model
    if isinstance(model, (list, tuple)):
        if not model:
            raise ValueError("got an empty list of transformers")
        for m in model:
            family_of(m)
        return _unique(model), None, None
    family_of(model)  # raises TypeError naming the supported classes
    return [model], None, None

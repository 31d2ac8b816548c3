"""The diffusers side of the model registry: which family a transformer is, which of its
attention modules are the self-attention over video tokens, and the token layout of one call.

What a family *is* (class names, the self-attention modules, where extra tokens sit, presets)
is data in :mod:`radial_attention.models.registry`; this module applies it to live modules and
tensors. Cross-attention (Wan's ``attn2`` to text and I2V image tokens) and HunyuanVideo's text
token refiner are not listed there, so they stay as they are.
"""

from __future__ import annotations

import inspect
from typing import List, Tuple

import torch

from radial_attention.models.registry import VideoModelFamily, family_for_transformer, patchable_transformer_classes


def family_of(model) -> VideoModelFamily:
    """The registry family of a diffusers transformer radial attention can patch; ``TypeError``
    naming the supported classes otherwise. By exact class name: subclasses (VACE, ...) have other blocks."""
    fam = family_for_transformer(type(model).__name__)
    if fam is None or not fam.patchable or not isinstance(model, torch.nn.Module):
        supported = ", ".join(patchable_transformer_classes())
        raise TypeError(f"radial attention supports the diffusers transformers {supported}; got {type(model).__name__}")
    return fam


def is_supported_transformer(model) -> bool:
    try:
        family_of(model)
    except TypeError:
        return False
    return True


def attention_paths(model) -> List[str]:
    """Qualified names of ``model``'s video self-attention modules, in the order the forward runs
    them (that order is the layer index ``dense_layers`` counts)."""
    fam = family_of(model)
    return [f"{blocks}.{i}.{attn}" for blocks, attn in fam.self_attention for i in range(len(getattr(model, blocks)))]


def call_layout(model, hidden_states) -> Tuple[int, int]:
    """``(F, T)``: latent token frames and tokens per frame of one call's ``hidden_states``
    (``[B, C, F, H, W]``, or ``[B, F, C, H, W]`` for CogVideoX: the family's ``hidden_states``),
    after the transformer's patching.

    Raises ``ValueError`` for a latent that is not 5-D, and for F, H or W that are not multiples of
    the patch (the models would drop the remainder or fail deep in their unpatchify).
    """
    fam = family_of(model)
    if fam.hidden_states not in ("BCFHW", "BFCHW"):
        raise NotImplementedError(f"{fam.name}: no layout reader for hidden_states {fam.hidden_states}")
    order = "[" + ", ".join(fam.hidden_states) + "]"
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 5:
        got = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
        raise ValueError(f"{fam.name} transformer: expected hidden_states {order}, got {got}")
    p_t, p_h, p_w = fam.patch(model.config)
    dims = dict(zip(fam.hidden_states, hidden_states.shape))
    f, h, w = dims["F"], dims["H"], dims["W"]
    if f % p_t or h % p_h or w % p_w:
        # The model would drop the remainder (Wan) or fail deep in its unpatchify (Mochi, CogVideoX).
        raise ValueError(
            f"{fam.name} transformer: latent frames x height x width must be multiples of its patch "
            f"{p_t} x {p_h} x {p_w}; got hidden_states {order} = {tuple(hidden_states.shape)} "
            f"(F={f}, H={h}, W={w})"
            + (" (its pipeline pads the latent frames to a multiple of p_t)" if p_t > 1 else "")
        )
    return f // p_t, (h // p_h) * (w // p_w)


def call_argument(model, name: str, args: tuple, kwargs: dict):
    """The value of forward argument ``name`` in a call ``model(*args, **kwargs)`` (``None`` if not given).

    By the forward's signature, so positional calls work whatever the argument order (Wan:
    ``(hidden_states, timestep, ...)``; CogVideoX: ``(hidden_states, encoder_hidden_states, timestep, ...)``).
    """
    if name in kwargs:
        return kwargs[name]
    try:
        bound = inspect.signature(type(model).forward).bind_partial(model, *args)
    except TypeError:
        return None
    return bound.arguments.get(name)


def call_prefix_tokens(model, args: tuple, kwargs: dict) -> int:
    """Tokens before the video in this call's self-attention: dim 1 of the family's
    ``prefix_tokens_input`` (CogVideoX: ``encoder_hidden_states [B, L, C]`` -> L); 0 for a family without."""
    fam = family_of(model)
    if not fam.has_prefix_tokens:
        return 0
    value = call_argument(model, fam.prefix_tokens_input, args, kwargs)
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{fam.name} transformer: radial attention reads the tokens before the video from "
            f"{fam.prefix_tokens_input} [B, L, C]; got {got}"
        )
    return int(value.shape[1])


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

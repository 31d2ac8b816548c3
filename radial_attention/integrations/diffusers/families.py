"""The diffusers side of the model registry: which family a transformer is, which of its
attention modules are the self-attention over video tokens, and the token layout of one call.

What a family *is* (class names, the self-attention modules, where extra tokens sit, presets)
is data in :mod:`radial_attention.models.registry`; this module applies it to live modules and
tensors. Cross-attention (Wan's ``attn2`` to text and I2V image tokens) and HunyuanVideo's text
token refiner are not listed there, so they stay as they are.
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Tuple

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


def call_layout(model, hidden_states, args: tuple = (), kwargs: Optional[dict] = None) -> Tuple[int, int]:
    """``(F, T)``: latent token frames and tokens per frame of one call's ``hidden_states``
    (``[B, C, F, H, W]``, or ``[B, F, C, H, W]`` for CogVideoX: the family's ``hidden_states``),
    after the transformer's patching.

    A packed family (``hidden_states`` ``"BSC"``: LTX-Video, LTX-2) has no grid in its tensor: pass
    the call's ``args`` / ``kwargs`` too, the layout comes from them (:func:`packed_layout`).

    Raises ``ValueError`` for a latent that is not 5-D, and for F, H or W that are not multiples of
    the patch (the models would drop the remainder or fail deep in their unpatchify).
    """
    fam = family_of(model)
    if fam.hidden_states == "BSC":
        kwargs = dict(kwargs or {})
        if not args:
            kwargs.setdefault("hidden_states", hidden_states)
        return packed_layout(model, args, kwargs)[:2]
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
    ``prefix_tokens_input`` (CogVideoX: ``encoder_hidden_states [B, L, C]`` -> L), or for a packed
    family the tokens before the main grid of ``video_coords`` (LTX-Video's condition pipeline);
    0 for a family without."""
    fam = family_of(model)
    if not fam.has_prefix_tokens:
        return 0
    if fam.hidden_states == "BSC":
        return packed_layout(model, args, kwargs)[2]
    value = call_argument(model, fam.prefix_tokens_input, args, kwargs)
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{fam.name} transformer: radial attention reads the tokens before the video from "
            f"{fam.prefix_tokens_input} [B, L, C]; got {got}"
        )
    return int(value.shape[1])


def call_token_layout(model, args: tuple, kwargs: dict, cache: Optional[list] = None) -> Tuple[Tuple[int, int], int]:
    """``((F, T), prefix tokens)`` of one transformer call ``model(*args, **kwargs)``: what the step
    hook reads before the forward runs (one read of ``video_coords`` for a packed family; ``cache``,
    a one-entry list the caller keeps, skips even that when a call passes the same coordinates tensor
    again, as LTX-Video's condition pipeline does at every step)."""
    fam = family_of(model)
    if fam.hidden_states == "BSC":
        f, t, prefix = packed_layout(model, args, kwargs, cache)
        return (f, t), prefix
    hidden = call_argument(model, "hidden_states", args, kwargs)
    return call_layout(model, hidden), call_prefix_tokens(model, args, kwargs)


def refuse_inputs(model, args: tuple, kwargs: dict) -> None:
    """``ValueError`` if the call passes a forward argument the family's ``refused_inputs`` names
    (LTX-2's soft ``video_self_attention_mask``), before anything runs."""
    fam = family_of(model)
    for name, reason in fam.refused_inputs:
        if call_argument(model, name, args, kwargs) is not None:
            raise ValueError(f"{fam.name} transformer: radial attention cannot take {name}: {reason}")


def packed_layout(model, args: tuple, kwargs: dict, cache: Optional[list] = None) -> Tuple[int, int, int]:
    """``(F, T, prefix tokens)`` of a call of a packed-token transformer (``hidden_states [B, S, C]``:
    LTX-Video, LTX-2), whose tensor holds no grid.

    From the forward arguments ``num_frames, height, width`` (the latent grid, before the patch:
    ``F = num_frames / p_t``, ``T = (height / p) * (width / p)``, no prefix); or, for a family whose
    ``prefix_tokens_input`` is ``video_coords``, from ``video_coords [B, 3, S]`` when the call passes
    it (the model then reads its positions from it, not from the grid sizes): see
    :func:`layout_from_video_coords`.
    """
    fam = family_of(model)
    hidden = call_argument(model, "hidden_states", args, kwargs)
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"{fam.name} transformer: expected packed hidden_states [B, S, C], got {got}")
    S = int(hidden.shape[1])
    coords = call_argument(model, "video_coords", args, kwargs) if fam.prefix_tokens_input == "video_coords" else None
    if coords is not None:
        if cache and cache[0][0] is coords and cache[0][1] == (coords._version, S):
            return cache[0][2]
        result = layout_from_video_coords(coords, S, where=f"{fam.name} transformer")
        if cache is not None:
            cache[:] = [(coords, (coords._version, S), result)]
        return result
    sizes = {n: call_argument(model, n, args, kwargs) for n in ("num_frames", "height", "width")}
    if any(v is None for v in sizes.values()):
        alt = " (or video_coords [B, 3, S])" if fam.prefix_tokens_input == "video_coords" else ""
        given = ", ".join(f"{n}={v!r}" for n, v in sizes.items())
        raise ValueError(
            f"{fam.name} transformer: radial attention reads the video grid of packed hidden_states [B, S, C] from "
            f"the forward arguments num_frames, height, width (latent sizes){alt}; got {given}"
        )
    f, h, w = (int(v) for v in sizes.values())
    p_t, p_h, p_w = fam.patch(model.config)
    if f % p_t or h % p_h or w % p_w:
        raise ValueError(
            f"{fam.name} transformer: latent frames x height x width must be multiples of its patch "
            f"{p_t} x {p_h} x {p_w}; got num_frames={f}, height={h}, width={w}"
        )
    frames, tpf = f // p_t, (h // p_h) * (w // p_w)
    has_coords = call_argument(model, "video_coords", args, kwargs) is not None
    # Tokens after the grid (LTX-2's keyframes) need their own positions in video_coords; without
    # them the model's RoPE covers the grid only, and would fail on any other length.
    if S < frames * tpf or (S > frames * tpf and not (has_coords and fam.has_extra_tokens)):
        raise ValueError(
            f"{fam.name} transformer: hidden_states has S={S} tokens but num_frames x height x width = "
            f"{f} x {h} x {w} latent (patch {p_t} x {p_h} x {p_w}) make {frames * tpf} video tokens"
            + (" (tokens after the video need video_coords)" if fam.has_extra_tokens and S > frames * tpf else "")
        )
    return frames, tpf, 0


def layout_from_video_coords(coords, seq_len: int, where: str = "transformer") -> Tuple[int, int, int]:
    """``(F, T, prefix tokens)`` from LTX-Video's token coordinates ``coords [B, 3, S]`` (time, h, w).

    LTX-Video's condition pipeline lays the sequence out as the keyframe-condition tokens (time
    coordinate ``>= frame_index > 0``), then the main ``F x H x W`` grid, frame-major, whose first
    frame has time 0: the prefix is the tokens before the first time-0 token, ``T`` the number of
    time-0 tokens (contiguous), and every later frame of ``T`` tokens shares one larger time. A
    sequence without that shape raises ``ValueError`` (radial attention cannot tell its frames).
    """
    if not isinstance(coords, torch.Tensor) or coords.dim() != 3 or coords.shape[1] != 3 or coords.shape[2] != seq_len:
        got = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise ValueError(f"{where}: expected video_coords [B, 3, S] with S={seq_len} tokens, got {got}")
    time = coords[:, 0].detach().float().cpu()  # one sync per forward (cached by the caller)
    if not bool((time == time[:1]).all()):
        raise ValueError(f"{where}: radial attention needs the same token layout in every batch item of video_coords")
    time = time[0]
    first = (time == 0).nonzero()
    problem = None
    if len(first) == 0:
        problem = "no token has time coordinate 0 (the first frame of the video grid)"
    else:
        start, tpf = int(first[0]), int(len(first))
        rows = time[start:].reshape(-1, tpf) if (seq_len - start) % tpf == 0 else None
        if not bool((time[start : start + tpf] == 0).all()):
            problem = "the time-0 tokens are not contiguous"
        elif rows is None:
            problem = f"the {seq_len - start} tokens from the first time-0 token on are not whole frames of {tpf}"
        elif not bool((rows == rows[:, :1]).all()) or not bool((rows[1:, 0] > rows[:-1, 0]).all()):
            problem = f"the tokens from the first time-0 token on are not frames of {tpf} tokens in time order"
    if problem is not None:
        raise ValueError(
            f"{where}: radial attention cannot tell the video frames from video_coords: {problem}. It expects "
            "optional condition tokens (time > 0), then the video grid frame-major with its first frame at "
            "time 0, as LTXConditionPipeline builds it (the frames LTXI2VLongMultiPromptPipeline appends to a "
            "window are not supported); pass num_frames, height, width without video_coords for a plain grid"
        )
    return int(rows.shape[0]), tpf, start


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

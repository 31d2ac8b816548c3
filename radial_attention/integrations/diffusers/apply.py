"""``apply_radial_attention`` / ``remove_radial_attention`` on a diffusers pipeline or transformer.

How it hooks in (diffusers' public hook API, ``diffusers.hooks.ModelHook`` + ``HookRegistry``;
no processor, model forward or class is replaced or copied):

- one hook on each transformer (``pre_forward``): reads the latent shape of the call
  (``hidden_states [B, C, F, H, W]`` and the config's patch size -> ``F`` latent frames, ``T``
  tokens per frame) and the step (see :mod:`.schedule`), and decides dense or radial for it;
- one hook on each video self-attention module (``new_forward``): runs the module's own forward,
  with its own processor; in a radial block and step it does so inside :class:`.sdpa.RadialSDPA`,
  which answers the processor's single SDPA call (Mochi: one per batch item, the family's
  ``sdpa_calls``) with the radial block-sparse op; in a dense one
  it just calls the original forward.

So projections, norms, RoPE, LoRA layers (``pipe.load_lora_weights`` before or after applying),
attention processors set by the user and other diffusers hooks keep working, and removing the
hooks gives back the exact original model.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

from .context_parallel import check_context_parallel, refuse_training_under_context_parallel
from .families import (
    attention_paths,
    call_argument,
    call_token_layout,
    family_of,
    find_transformers,
    refuse_inputs,
)
from .schedule import RadialAttentionConfig, RadialState
from .sdpa import NATIVE_BACKENDS, DenseSDPA, RadialSDPA

STEP_HOOK = "radial_attention_step"
ATTENTION_HOOK = "radial_attention"


def _hook_classes():
    from diffusers.hooks import HookRegistry, ModelHook

    class RadialStepHook(ModelHook):
        """On a transformer: layout and step of each call, before its forward runs."""

        def __init__(self, state: RadialState, family):
            super().__init__()
            self.state = state
            self.family = family
            self.restore = None  # filled by _install
            self.coords_cache = []  # the layout read from the last video_coords tensor (packed families)

        def pre_forward(self, module, *args, **kwargs):
            refuse_inputs(module, args, kwargs)  # LTX-2's soft video_self_attention_mask
            timestep = call_argument(module, "timestep", args, kwargs)
            # (F, T) from the latent's shape, or for packed tokens (LTX) from num_frames/height/width or
            # video_coords; prefix: CogVideoX's text / LTX-Video's condition tokens before the video.
            layout, prefix = call_token_layout(module, args, kwargs, self.coords_cache)
            key = self.family.frame_causal_key  # a frame-block causal mask the model makes (SkyReels-V2 DF)
            frame_block = int(getattr(module.config, key, None) or 1) if key else 1
            self.state.begin_forward(self.family, layout, timestep, prefix_tokens=prefix, frame_block=frame_block)
            return args, kwargs

        def new_forward(self, module, *args, **kwargs):
            # Counts the transformer forwards in progress (try/finally: an exception ends one too),
            # so an attention module called on its own can be told from one inside a forward.
            self.state.forwards_running += 1
            try:
                return self.fn_ref.original_forward(*args, **kwargs)
            finally:
                self.state.forwards_running -= 1

    class RadialSelfAttentionHook(ModelHook):
        """On a video self-attention module: its own forward, with the SDPA call made radial where scheduled."""

        def __init__(self, state: RadialState, layer: int, where: str):
            super().__init__()
            self.state = state
            self.layer = layer
            self.where = where
            self.restore = None

        def new_forward(self, module, *args, **kwargs):
            forward = self.fn_ref.original_forward
            self.state.check_inside_forward(self.where)
            if not self.state.use_radial(self.layer):
                self.state.record(self.layer, "dense")
                if self.state.config.dense_backend == "sdpa":
                    return forward(*args, **kwargs)  # the model's own attention, untouched
                with DenseSDPA(
                    self.state.config.dense_backend, self.where, self.state
                ):  # FA4's dense kernel where it runs
                    return forward(*args, **kwargs)
            refuse_training_under_context_parallel(self.where, module, args, kwargs)
            per_item = self.state.family.sdpa_calls == "per_batch_item"
            mode = RadialSDPA(self.state, self.where, per_batch_item=per_item)
            with mode:
                out = forward(*args, **kwargs)
            # One SDPA call for the whole batch, or (Mochi) one per batch item of this module call.
            expected = _module_batch(args, kwargs) if per_item else 1
            if mode.calls == 0 and self.state.family.sdpa_calls == "zero_or_one":
                # LTX-2's STG: the processor skipped the attention (every batch item perturbed).
                self.state.record(self.layer, "skipped")
                return out
            if mode.calls != expected:
                proc = getattr(module, "processor", None)
                what = f"one per batch item ({expected})" if per_item else "one"
                raise RuntimeError(
                    f"{self.where}: radial attention expected its processor {type(proc).__name__} to make {what} "
                    f"torch scaled_dot_product_attention call, it made {mode.calls}. Radial attention replaces "
                    "that call, so the module must use one of diffusers' native attention backends "
                    f"{[b for b in NATIVE_BACKENDS if b]} (or the default; under context parallelism only 'native'); "
                    f"this processor's backend is {getattr(proc, '_attention_backend', None)!r}"
                )
            self.state.record(self.layer, "radial")
            return out

    return HookRegistry, RadialStepHook, RadialSelfAttentionHook


def _module_batch(args, kwargs) -> int:
    """Batch size of an attention module call: its ``hidden_states`` ``[B, S, C]``."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return int(hidden.shape[0])


# ------------------------------------------------------------------------------ configuration
def _default_preset(transformers, pipeline) -> str:
    families = {family_of(t).name for t in transformers}
    if len(families) != 1:
        raise ValueError(f"the transformers belong to different model families {sorted(families)}")
    fam = family_of(transformers[0])
    # Two experts switched at a boundary timestep (Wan2.2 A14B) have a preset of their own.
    experts = len(transformers)
    if experts == 2 and pipeline is not None and getattr(pipeline.config, "boundary_ratio", None) is None:
        experts = 1  # two transformers but no boundary: not an expert pair
    return fam.preset_for(experts)


def _check_int(name, value, minimum=0) -> int:
    """``value`` as an int >= ``minimum`` (numpy and 0-d tensor integers too; bools refused)."""
    from radial_attention.mask.numbers import as_int

    try:
        return as_int(name, value, minimum)
    except ValueError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None


def _settings(config: Optional[RadialAttentionConfig], overrides: dict) -> RadialAttentionConfig:
    """``config`` (default: all defaults) with the keyword ``overrides`` replacing its fields (unchecked)."""
    if config is None:
        config = RadialAttentionConfig()
    elif not isinstance(config, RadialAttentionConfig):
        raise TypeError(
            f"apply_radial_attention: config must be a RadialAttentionConfig or None, got {type(config).__name__} "
            f"{config!r}; pass settings by keyword (e.g. preset='wan') or as RadialAttentionConfig(...)"
        )
    names = [f.name for f in dataclasses.fields(RadialAttentionConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(
            f"apply_radial_attention() got unexpected keyword argument(s) {unknown}; the settings are {names}"
        )
    return dataclasses.replace(config, **overrides)


def _make_config(transformers, pipeline, settings: RadialAttentionConfig) -> RadialAttentionConfig:
    """``settings`` checked, numbers made plain Python values, and the preset resolved for the model."""
    from radial_attention.mask import PRESETS, SUPPORTED_BLOCK_SIZES
    from radial_attention.ops import BACKENDS, DENSE_BACKENDS

    s = settings
    preset, decay, backend, dense_backend, num_steps = s.preset, s.decay, s.backend, s.dense_backend, s.num_steps
    dense_steps, dense_last_steps, dense_layers, block_size = (
        s.dense_steps,
        s.dense_last_steps,
        s.dense_layers,
        s.block_size,
    )

    dense_steps = _check_int("dense_steps", dense_steps)
    dense_last_steps = _check_int("dense_last_steps", dense_last_steps)
    dense_layers = _check_int("dense_layers", dense_layers)
    if num_steps is not None:
        num_steps = _check_int("num_steps", num_steps, 1)
    if block_size is None:  # the model family's: 64 where frames hold few tokens (LTX)
        block_size = family_of(transformers[0]).default_block_size
    block_size = _check_int("block_size", block_size, 1)
    if block_size not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {block_size!r}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}")
    if dense_backend != "auto" and dense_backend not in DENSE_BACKENDS:
        raise ValueError(f"dense_backend must be 'auto' or one of {list(DENSE_BACKENDS)}, got {dense_backend!r}")
    preset = preset or _default_preset(transformers, pipeline)
    if preset not in PRESETS:
        raise ValueError(f"unknown radial preset {preset!r}; expected one of {sorted(PRESETS)}")
    if decay is not None:
        from radial_attention.mask.numbers import as_float

        try:
            decay = as_float("decay", decay, positive=True)
        except ValueError:
            raise ValueError(f"decay must be a positive number or None (the preset's), got {decay!r}") from None
    if dense_last_steps and num_steps is None and pipeline is None:
        raise ValueError(
            "dense_last_steps needs to know where the last steps are: on a bare transformer pass "
            "num_steps=<number of denoising steps> (on a pipeline it comes from the pipeline call)"
        )
    return RadialAttentionConfig(
        preset=preset,
        decay=None if decay is None else float(decay),
        dense_steps=dense_steps,
        dense_last_steps=dense_last_steps,
        dense_layers=dense_layers,
        block_size=block_size,
        backend=backend,
        num_steps=num_steps,
        dense_backend=dense_backend,
    )


# ------------------------------------------------------------------------------ apply / remove
def apply_radial_attention(model, config: Optional[RadialAttentionConfig] = None, **overrides) -> RadialState:
    """Make the video self-attention of a diffusers video model radial (block-sparse).

    The settings are a :class:`~.schedule.RadialAttentionConfig` (``config``; default: all its
    defaults), with any of its fields given as keywords replacing the config's::

        apply_radial_attention(pipe, dense_steps=12, dense_layers=1)
        apply_radial_attention(pipe, RadialAttentionConfig(dense_steps=12, dense_layers=1), backend="flex")

    Args:
        model: a diffusers pipeline (``WanPipeline``, ``WanImageToVideoPipeline``,
            ``HunyuanVideoPipeline``, ...: every ``WanTransformer3DModel`` /
            ``HunyuanVideoTransformer3DModel`` component, e.g. Wan2.2 A14B's ``transformer`` and
            ``transformer_2``, which then share one step count), a bare transformer, or a list of
            transformers that share one step count. Wan VACE (``WanVACEPipeline``: the control
            branch's self-attention is radial too; reference images are latent frames in front of the
            video, masked as video frames) and Wan Animate (``WanAnimatePipeline``: latent frame 0 is the
            reference image; the face adapter stays as it is). SkyReels-V2 pipelines (``SkyReelsV2Transformer3DModel``)
            too, diffusion forcing included: there the step is the pipeline loop's iteration (its loop
            never steps ``pipe.scheduler``), and ``causal_block_size > 1`` works only where
            ``causal_block_size`` x tokens per frame is a multiple of ``block_size`` (else ``ValueError``).
            LTX-Video (``LTXPipeline``, ``LTXImageToVideoPipeline``, ``LTXConditionPipeline``, whose keyframe
            tokens before the video are dense) and LTX-2's video self-attention (``LTX2Pipeline`` ...; its
            keyframe tokens after the video are dense, its audio attention stays as it is, and a soft
            ``video_self_attention_mask`` (IC-LoRA reference strengths) raises ``ValueError``).
        config: a :class:`~.schedule.RadialAttentionConfig`, or ``None``.

    Settings (fields of the config, or keywords):
        preset: mask preset (``"wan"``, ``"wan-full"``, ``"hunyuan"``, ``"wan2.2"``); default the
            model's: ``wan`` for Wan2.1, Wan2.2 TI2V-5B, SkyReels-V2, Wan VACE and Wan Animate (which
            have none published of their own), ``wan2.2`` for Wan2.2 A14B and VACE-Fun A14B (a pipeline
            with two experts, or a list of two Wan transformers), ``hunyuan`` for HunyuanVideo (and for Mochi, by analogy: it has no
            published settings).
            A bare A14B expert cannot be told from Wan2.1: pass ``preset="wan2.2"`` there.
        decay: decay factor of the mask; default the preset's.
        dense_steps: the first this many denoising steps run dense attention.
        dense_last_steps: the last this many steps run dense (needs ``num_steps`` on a bare
            transformer; a pipeline tells the number of steps through its scheduler).
        dense_layers: the first this many transformer blocks always run dense (HunyuanVideo
            counts its 20 dual-stream blocks, then its 40 single-stream blocks; Wan VACE its control
            blocks ``vace_blocks``, which run first, then its main blocks: ``dense_layers=1`` is
            ``vace_blocks.0``).
        block_size: mask block size, 128 or 64; default the model's: 64 for LTX-Video and LTX-2 (their
            32x VAE leaves few tokens per frame), 128 otherwise.
        backend: attention backend of :func:`radial_attention.ops.block_sparse_attention`.
        num_steps: denoising steps per generation, for a bare transformer.
        dense_backend: kernel of the dense steps and layers: ``"auto"`` (FlashAttention-4's dense
            kernel where the fa4 backend runs, i.e. Hopper with flash-attn-4 installed; elsewhere the
            model's own attention, untouched), ``"fa4"`` (required), or ``"sdpa"`` (always the model's own).

    Returns:
        The :class:`~.schedule.RadialState` shared by the hooks (``.config``: the settings with
        the preset resolved; ``.calls``, ``.masks``, ``.summary()``; ``.reset()`` restarts the step
        count of a bare transformer). :func:`get_radial_state` finds it again from the model.

    The latent layout (frames, tokens per frame) is read from every call, so any resolution and
    frame count works; masks are cached per layout. Raises ``TypeError`` for unsupported models,
    ``ValueError`` for bad settings, an attention backend that radial attention cannot replace
    (set with ``set_attention_backend``: use diffusers' native one), or a model that already has
    radial attention. A transformer given twice (a pipeline whose ``transformer_2`` is its
    ``transformer``, or ``[m, m]``) is hooked once. All or nothing: if anything fails while the
    hooks go in, those already installed are removed and the model is left as it was.

    A hooked attention module runs only inside its transformer's forward (or a backward pass that
    recomputes it, e.g. gradient checkpointing); called on its own it raises ``RuntimeError``.
    """
    settings = _settings(config, overrides)  # a wrong keyword fails before diffusers is even imported
    HookRegistry, RadialStepHook, RadialSelfAttentionHook = _hook_classes()
    transformers, scheduler, pipeline = find_transformers(model)
    config = _make_config(transformers, pipeline, settings)
    # Check everything before changing anything.
    for t in transformers:
        if _step_hook(t) is not None:
            raise ValueError(f"{type(t).__name__} already has radial attention; call remove_radial_attention first")
        for path in attention_paths(t):
            proc = getattr(t.get_submodule(path), "processor", None)
            be = getattr(proc, "_attention_backend", None)
            if be not in NATIVE_BACKENDS:
                raise ValueError(
                    f"{path} uses diffusers attention backend {str(be)!r}; radial attention replaces the attention "
                    f"kernel of diffusers' native (torch SDPA) backends {[b for b in NATIVE_BACKENDS if b]}. "
                    "Call reset_attention_backend() on the transformer first"
                )
            check_context_parallel(path, proc)
    fam = family_of(transformers[0])
    step_matrix = pipeline if type(pipeline).__name__ in fam.step_matrix_pipelines else None
    state = RadialState(config, scheduler=scheduler, step_matrix_pipeline=step_matrix)
    installed = []  # (module, hook name), in install order, to roll back on any failure
    try:
        for t in transformers:
            fam = family_of(t)
            _install(t, STEP_HOOK, RadialStepHook(state, fam), HookRegistry)
            installed.append((t, STEP_HOOK))
            for layer, path in enumerate(attention_paths(t)):
                module = t.get_submodule(path)
                _install(module, ATTENTION_HOOK, RadialSelfAttentionHook(state, layer, path), HookRegistry)
                installed.append((module, ATTENTION_HOOK))
            HookRegistry.check_if_exists_or_initialize(t).invalidate_child_registries_cache()
    except BaseException:
        # A half-patched model would run some blocks radial and others not: put it back as it was.
        for module, name in reversed(installed):
            _uninstall(module, name)
        for t in transformers:
            registry = t.__dict__.get("_diffusers_hook")
            if registry is not None:
                registry.invalidate_child_registries_cache()
        raise
    return state


def _install(module, name, hook, HookRegistry) -> None:
    # Remember what the module looked like, so removal can put it back exactly.
    hook.restore = ("_diffusers_hook" in module.__dict__, "forward" in module.__dict__)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def _uninstall(module, name) -> None:
    registry = module.__dict__.get("_diffusers_hook")
    if registry is None or registry.get_hook(name) is None:
        return
    had_registry, had_forward = registry.get_hook(name).restore
    registry.remove_hook(name, recurse=False)
    if not registry.hooks:
        if not had_registry:
            del module._diffusers_hook
        current = module.__dict__.get("forward")
        # Back to the class's forward, as before; but only if what is left is that very method
        # (a wrapper another library installed after us, e.g. accelerate's offload hook, stays).
        if not had_forward and getattr(current, "__func__", None) is type(module).forward:
            del module.forward


def _step_hook(transformer):
    registry = transformer.__dict__.get("_diffusers_hook")
    return None if registry is None else registry.get_hook(STEP_HOOK)


def remove_radial_attention(model) -> None:
    """Undo :func:`apply_radial_attention` on the same pipeline, transformer or list.

    Removes every hook it added and leaves each module as it was (same forward, same processors,
    no leftover attributes). ``ValueError`` if the model has no radial attention.
    """
    transformers, _, _ = find_transformers(model)
    hooked = [t for t in transformers if _step_hook(t) is not None]
    if not hooked:
        raise ValueError(f"{type(model).__name__} has no radial attention to remove")
    for t in hooked:
        for path in attention_paths(t):
            _uninstall(t.get_submodule(path), ATTENTION_HOOK)
        _uninstall(t, STEP_HOOK)
        registry = t.__dict__.get("_diffusers_hook")
        if registry is not None:
            registry.invalidate_child_registries_cache()


def get_radial_state(model) -> Optional[RadialState]:
    """The :class:`~.schedule.RadialState` of a model with radial attention, else ``None``."""
    transformers, _, _ = find_transformers(model)
    for t in transformers:
        hook = _step_hook(t)
        if hook is not None:
            return hook.state
    return None


def attention_modules(model) -> List[str]:
    """Paths of the self-attention modules radial attention replaces in a transformer, in run order."""
    return attention_paths(model)

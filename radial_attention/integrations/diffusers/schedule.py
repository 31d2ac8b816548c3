"""The dense-step schedule and the per-call state shared by the hooks of one radial setup.

A *step* is every transformer call made for one timestep value (the conditional and
unconditional calls of classifier-free guidance, batched or not, and both experts of Wan2.2 A14B
share it). Radial attention runs at step ``s`` in block ``l`` when

    dense_steps <= s < num_steps - dense_last_steps   and   l >= dense_layers

and dense attention (the model's own, untouched) everywhere else.

Where the step index comes from:

- on a pipeline, from its scheduler: ``scheduler.step_index`` is the index of the step being
  computed (``None`` until the first ``scheduler.step``, then 1, 2, ...; ``set_timesteps`` at
  the start of every pipeline call resets it), and ``len(scheduler.timesteps)`` is the number
  of steps. Both are relative to ``scheduler.begin_index`` when a pipeline starts later in the
  schedule (image-to-video strength). Exact whatever the timestep dtype, with CFG, and across
  the two A14B experts, which share the pipeline's scheduler.
- on a diffusion-forcing pipeline (the family's ``step_matrix_pipelines``: SkyReels-V2 DF, whose
  loop steps per-frame copies of the scheduler and never ``pipe.scheduler`` itself), from the
  pipeline's own loop: every iteration sets ``pipe.current_timestep`` to a new row of its step
  matrix (the CFG calls of one iteration share it), so a new row object is the next step and the
  same object the same step; ``pipe.num_timesteps`` (the step matrix's length, read at step 0)
  is the number of steps. A new pipeline call (``pipe.scheduler.timesteps`` is set anew) or the
  end of a long-video window's rows starts over at step 0.
- on a bare transformer (or a scheduler without ``step_index``), by watching the timestep of
  each call: a smaller timestep than the previous call starts the next step, an equal one is the
  same step (CFG), a larger one starts a new generation at step 0; after ``num_steps`` steps the
  count also starts over. ``reset()`` starts over explicitly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Tuple

import torch


@dataclass(frozen=True)
class RadialAttentionConfig:
    """Settings of ``apply_radial_attention`` (each is described in its docstring).

    ``preset=None``, ``decay=None`` and ``block_size=None`` mean the model's preset, the preset's
    decay and the model's block size (64 for LTX-Video / LTX-2, else 128); the config a
    :class:`RadialState` holds has the preset and block size resolved. Build one once and reuse it::

        config = RadialAttentionConfig(dense_steps=12, dense_layers=1)
        apply_radial_attention(pipe, config)
        apply_radial_attention(other_pipe, config, dense_steps=10)  # keywords override the config
    """

    preset: Optional[str] = None
    decay: Optional[float] = None
    dense_steps: int = 0
    dense_last_steps: int = 0
    dense_layers: int = 0
    block_size: Optional[int] = None  # None: the model family's (128; 64 for LTX-Video / LTX-2)
    backend: str = "auto"
    num_steps: Optional[int] = None
    dense_backend: str = "auto"


class RadialState:
    """What the hooks of one radial setup share: settings, step, the current layout, masks, counts.

    Attributes read by users and tests:
        config: the :class:`RadialAttentionConfig`.
        step: the current step index (``None`` before the first call).
        layout: ``(F, T)`` of the latest transformer call (kept after the call returns, so that
            gradient checkpointing, which reruns blocks during backward, sees the same layout and
            step), ``None`` before the first call.
        calls: ``Counter`` of ``(step, layer, "radial" | "dense")`` -> self-attention calls.
        prefix_tokens: tokens before the video in the latest call (CogVideoX's text; 0 for most models).
        masks: ``{(F, T, prefix_tokens, extra_tokens): RadialBlockMask}`` built so far (one per layout).
    """

    def __init__(self, config: RadialAttentionConfig, scheduler=None, step_matrix_pipeline=None):
        self.config = config
        self.scheduler = scheduler
        # A diffusion-forcing pipeline whose loop position is the step (see the module docstring).
        self.step_matrix_pipeline = step_matrix_pipeline
        self._row = None  # its current_timestep row of the latest call (a strong reference: `is` stays exact)
        self._call_timesteps = None  # its scheduler.timesteps then: a new object = a new pipeline call
        # Frames per causal block of the call in progress (SkyReels-V2 num_frame_per_block); 1: no causal mask.
        self.frame_block = 1
        self.step: Optional[int] = None
        self.total_steps: Optional[int] = config.num_steps
        self.layout: Optional[Tuple[int, int]] = None
        self.prefix_tokens = 0
        self.family = None
        self.calls: Counter = Counter()
        self.masks: dict = {}
        self._last_timestep: Optional[float] = None
        self._sparse_step = False
        # Per forward: (mask tensor, its version, key_lengths) of the last padding mask seen, so a
        # model that hands the same mask to every block converts it once per forward.
        self.key_mask_cache = None
        self.forwards_running = 0  # transformer forwards in progress (the step hook counts them)

    # ------------------------------------------------------------------ steps
    def reset(self) -> None:
        """Start counting steps from 0 again (bare transformers; pipelines reset by themselves)."""
        self.step = None
        self._last_timestep = None
        self.total_steps = self.config.num_steps
        self._row = self._call_timesteps = None

    def _step_from_scheduler(self) -> Optional[Tuple[int, int]]:
        s = self.scheduler
        if s is None or not hasattr(s, "step_index") or getattr(s, "timesteps", None) is None:
            return None
        begin = getattr(s, "begin_index", None) or 0
        index = s.step_index
        step = (begin if index is None else int(index)) - begin
        return step, len(s.timesteps) - begin

    def _step_from_step_matrix(self) -> Optional[Tuple[int, int]]:
        p = self.step_matrix_pipeline
        row = None if p is None else getattr(p, "current_timestep", None)
        if row is None:  # no pipeline, or the transformer is called outside its loop
            return None
        if row is self._row:  # CFG: the second call of the same iteration
            return self.step, self.total_steps
        timesteps = getattr(p.scheduler, "timesteps", None)
        new_call = self.step is None or timesteps is not self._call_timesteps
        if new_call or self.step + 1 >= self.total_steps:  # a new call, or the next long-video window
            step, total = 0, int(p.num_timesteps)
        else:
            step, total = self.step + 1, self.total_steps
        self._row, self._call_timesteps = row, timesteps
        return step, total

    def _step_from_timestep(self, timestep) -> int:
        # The largest value: Wan2.2 TI2V passes per-token timesteps [B, S] whose first-frame
        # tokens are 0 for image conditioning.
        t = float(timestep.max()) if isinstance(timestep, torch.Tensor) else float(timestep)
        last = self._last_timestep
        if self.step is None or last is None or t > last:
            step = 0
        elif t == last:
            step = self.step
        else:
            step = self.step + 1
        if self.config.num_steps is not None and step >= self.config.num_steps:
            step = 0
        self._last_timestep = t
        return step

    def begin_forward(
        self, family, layout: Tuple[int, int], timestep, prefix_tokens: int = 0, frame_block: int = 1
    ) -> None:
        """Called by the transformer's pre-forward hook: set layout (and the tokens before the
        video) and step, decide the step's mode.

        ``frame_block > 1``: the transformer passes a causal mask over blocks of that many latent
        frames (SkyReels-V2 ``num_frame_per_block``); checked here, before any step runs, against
        the one case the radial mask can take it in (see :meth:`mask_for`).
        """
        if frame_block > 1:
            check_frame_causal_layout(layout, frame_block, self.config.block_size)
        self.frame_block = frame_block
        self.family = family
        self.layout = layout
        self.prefix_tokens = prefix_tokens
        self.key_mask_cache = None
        from_scheduler = self._step_from_step_matrix() or self._step_from_scheduler()
        if from_scheduler is not None:
            self.step, self.total_steps = from_scheduler
        else:
            if timestep is None:
                raise ValueError("radial attention: the transformer was called without a timestep to count steps by")
            _refuse_uncountable_frame_timesteps(family, timestep, self.config)
            self.step = self._step_from_timestep(timestep)
        c = self.config
        sparse = self.step >= c.dense_steps
        if c.dense_last_steps:
            if self.total_steps is None:
                raise ValueError(
                    "dense_last_steps needs the number of denoising steps: pass num_steps= to "
                    "apply_radial_attention when applying it to a bare transformer"
                )
            sparse = sparse and self.step < self.total_steps - c.dense_last_steps
        self._sparse_step = sparse

    def check_inside_forward(self, where: str) -> None:
        """Raise unless a transformer forward is running, or autograd's backward is (gradient
        checkpointing reruns blocks there, with the layout of the forward that recorded them).

        An attention module called on its own would otherwise reuse the last call's layout and step.
        """
        if self.forwards_running > 0:
            return
        task = getattr(torch._C, "_current_graph_task_id", None)  # -1 outside a backward pass
        if task is not None and task() != -1:
            return
        raise RuntimeError(
            f"{where}: this attention module has radial attention, which reads the video layout and the "
            "denoising step from the transformer's forward; it was called outside one. Call the transformer, "
            "or call remove_radial_attention first to use the module on its own"
        )

    def use_radial(self, layer: int) -> bool:
        """Whether block ``layer`` runs radial attention in the transformer call in progress."""
        if self.layout is None:
            raise RuntimeError(
                "a radial self-attention ran outside its transformer's forward (no latent layout is set); "
                "radial attention reads the video layout from the transformer call"
            )
        return self._sparse_step and layer >= self.config.dense_layers

    def record(self, layer: int, kind: str) -> None:
        self.calls[(self.step, layer, kind)] += 1

    # ------------------------------------------------------------------ masks
    def mask_for(
        self, frames: int, tokens_per_frame: int, extra_tokens: int, prefix_tokens: int = 0, frame_block: int = 1
    ):
        """The radial block mask of this layout: ``prefix_tokens`` before the video, ``extra_tokens``
        after it (built once per layout, then reused), kept under ``(F, T, Y, X)``.

        ``frame_block = k > 1``: that mask AND the frame-block causal mask (query frame block
        ``i // k`` sees key frame blocks ``<= i // k``), kept under ``(F, T, Y, X, k)``; exact at block
        level because :func:`check_frame_causal_layout` let only layouts through where ``k * T`` is
        a multiple of the block size (every mask block lies inside one frame block). Only without
        prefix tokens (SkyReels-V2 has none).
        """
        if frame_block > 1:
            if prefix_tokens:
                raise ValueError("a frame-block causal mask with tokens before the video is not supported")
            key = (frames, tokens_per_frame, prefix_tokens, extra_tokens, frame_block)
            if key not in self.masks:
                base = self.mask_for(frames, tokens_per_frame, extra_tokens)
                causal = frame_causal_blocks(base.num_blocks, base.block_size, frame_block * tokens_per_frame)
                from radial_attention.mask.radial import RadialBlockMask

                self.masks[key] = RadialBlockMask(
                    base.to_dense() & causal,
                    base.block_size,
                    frames=frames,
                    tokens_per_frame=tokens_per_frame,
                    extra_tokens=extra_tokens,
                    decay=base.decay,
                    sink=base.sink,
                    adjacent=base.adjacent,
                )
            return self.masks[key]
        key = (frames, tokens_per_frame, prefix_tokens, extra_tokens)
        mask = self.masks.get(key)
        if mask is None:
            from radial_attention.mask import radial_block_mask

            c = self.config
            mask = radial_block_mask(
                frames,
                tokens_per_frame,
                preset=c.preset,
                decay=c.decay,
                block_size=c.block_size,
                extra_tokens=extra_tokens,
                prefix_tokens=prefix_tokens,
            )
            self.masks[key] = mask
        return mask

    def summary(self) -> dict:
        """Counts of radial and dense self-attention calls, and the masks' densities."""
        radial = sum(n for (_, _, kind), n in self.calls.items() if kind == "radial")
        dense = sum(n for (_, _, kind), n in self.calls.items() if kind == "dense")
        return {
            "radial_calls": radial,
            "dense_calls": dense,
            "masks": {
                f"F={key[0]} T={key[1]} extra={key[3]}"
                + (f" prefix={key[2]}" if key[2] else "")
                + (f" frame_block={key[4]}" if len(key) > 4 else ""): round(m.density, 4)
                for key, m in self.masks.items()
            },
        }


def frame_causal_blocks(num_blocks: int, block_size: int, causal_tokens: int) -> torch.Tensor:
    """``[nb, nb]`` bool: mask block ``(q, k)`` is kept when key block ``k``'s causal block (``k * B //
    causal_tokens``) is not after query block ``q``'s. Exact only when ``causal_tokens`` is a multiple of ``B``."""
    group = torch.arange(num_blocks) * block_size // causal_tokens
    return group[None, :] <= group[:, None]


def check_frame_causal_layout(layout: Tuple[int, int], frame_block: int, block_size: int) -> None:
    """``ValueError`` unless a causal mask over blocks of ``frame_block`` latent frames falls on mask
    block boundaries (``frame_block * T`` a multiple of ``block_size``), where radial attention can
    AND it into the radial mask exactly; it has no per-token key limit for the other layouts."""
    frames, tpf = layout
    if frames % frame_block:  # diffusers would fail on a reshape; say what it needs
        raise ValueError(
            f"SkyReels-V2 diffusion forcing: num_frame_per_block={frame_block} (causal_block_size) must divide the "
            f"latent frames of the call, got F={frames} latent frames"
        )
    if (frame_block * tpf) % block_size:
        raise ValueError(
            f"radial attention: this transformer passes a causal attention mask over blocks of "
            f"num_frame_per_block={frame_block} latent frames (SkyReels-V2 diffusion forcing with "
            f"causal_block_size={frame_block}); one causal block is {frame_block} x T={tpf} = {frame_block * tpf} "
            f"tokens, not a multiple of block_size={block_size}, so it does not fall on the mask's blocks and "
            "radial attention cannot combine the two masks exactly. Use causal_block_size=1 (no causal mask; "
            "ar_step may stay > 0), or a size where num_frame_per_block x tokens per frame is a multiple of the "
            "block size (the transformer's num_frame_per_block stays set after a pipeline call: "
            "pass causal_block_size=1 explicitly)"
        )


def _refuse_uncountable_frame_timesteps(family, timestep, config: RadialAttentionConfig) -> None:
    """Per-frame timesteps ``[B, F]`` that differ across frames (asynchronous diffusion forcing on a bare
    transformer): their largest value stays at the start for many calls, so the timestep rule would
    call them all step 0. Refused where the schedule depends on the step; the pipeline's loop counts them."""
    if not (config.dense_steps or config.dense_last_steps) or not getattr(family, "step_matrix_pipelines", ()):
        return
    if isinstance(timestep, torch.Tensor) and timestep.dim() == 2 and not bool((timestep == timestep[:, :1]).all()):
        raise ValueError(
            "radial attention: this call has per-frame timesteps that differ across frames (asynchronous diffusion "
            "forcing), which do not tell the denoising step; with dense_steps or dense_last_steps apply radial "
            f"attention to the pipeline ({', '.join(family.step_matrix_pipelines)}), whose loop gives the step, "
            "or use dense_steps=0 and dense_last_steps=0 on a bare transformer"
        )

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

    ``preset=None`` and ``decay=None`` mean the model's preset and the preset's decay; the
    config a :class:`RadialState` holds has the preset resolved. Build one once and reuse it::

        config = RadialAttentionConfig(dense_steps=12, dense_layers=1)
        apply_radial_attention(pipe, config)
        apply_radial_attention(other_pipe, config, dense_steps=10)  # keywords override the config
    """

    preset: Optional[str] = None
    decay: Optional[float] = None
    dense_steps: int = 0
    dense_last_steps: int = 0
    dense_layers: int = 0
    block_size: int = 128
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

    def __init__(self, config: RadialAttentionConfig, scheduler=None):
        self.config = config
        self.scheduler = scheduler
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

    def _step_from_scheduler(self) -> Optional[Tuple[int, int]]:
        s = self.scheduler
        if s is None or not hasattr(s, "step_index") or getattr(s, "timesteps", None) is None:
            return None
        begin = getattr(s, "begin_index", None) or 0
        index = s.step_index
        step = (begin if index is None else int(index)) - begin
        return step, len(s.timesteps) - begin

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

    def begin_forward(self, family, layout: Tuple[int, int], timestep, prefix_tokens: int = 0) -> None:
        """Called by the transformer's pre-forward hook: set layout (and the tokens before the
        video) and step, decide the step's mode."""
        self.family = family
        self.layout = layout
        self.prefix_tokens = prefix_tokens
        self.key_mask_cache = None
        from_scheduler = self._step_from_scheduler()
        if from_scheduler is not None:
            self.step, self.total_steps = from_scheduler
        else:
            if timestep is None:
                raise ValueError("radial attention: the transformer was called without a timestep to count steps by")
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
    def mask_for(self, frames: int, tokens_per_frame: int, extra_tokens: int, prefix_tokens: int = 0):
        """The radial block mask of this layout: ``prefix_tokens`` before the video, ``extra_tokens``
        after it (built once per layout, then reused)."""
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
                f"F={f} T={t} extra={x}" + (f" prefix={y}" if y else ""): round(m.density, 4)
                for (f, t, y, x), m in self.masks.items()
            },
        }

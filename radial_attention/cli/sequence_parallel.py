"""A sequence-parallel pipeline run under ``torchrun``, for ``radial-attention generate --sequence-parallel N``.

::

    torchrun --standalone --nproc-per-node 4 -m radial_attention generate \\
        --model Wan-AI/Wan2.1-T2V-14B-Diffusers --prompt "..." --height 720 --width 1280 --frames 81 \\
        --sequence-parallel 4 --out video.mp4

Every rank loads the whole pipeline onto its own GPU, encodes the prompt and draws the same
initial noise (same seed: the generator lives on the CPU), and the transformer's video tokens are
split across the ranks with diffusers' Ulysses context parallelism; radial attention sees all
tokens of ``H/N`` heads. Every rank ends with the same video; rank 0 writes it and prints.
"""

from __future__ import annotations

import os
from typing import Optional

from radial_attention.distributed import DistributedContext, init_distributed, shutdown


class SequenceParallelRun:
    """The process group and split of one multi-GPU ``generate`` run.

    Use :meth:`start` (``None`` when the run is a single process), then :meth:`split` on the
    pipeline after it is on ``device`` and radial attention is applied, then :meth:`close`.
    """

    def __init__(self, ctx: DistributedContext, degree: int):
        self.ctx = ctx
        self.degree = degree

    @classmethod
    def start(cls, degree: Optional[int], timeout_s: float = 1800.0) -> Optional["SequenceParallelRun"]:
        """Join torchrun's process group when there is one.

        Args:
            degree: ``--sequence-parallel`` (``None``: the number of processes torchrun started).
            timeout_s: collective timeout of the process group (``--collective-timeout``).

        Returns:
            ``None`` for a single process without ``--sequence-parallel`` (or with 1).

        Raises:
            ValueError: ``--sequence-parallel N`` with N > 1 outside torchrun, or N different
                from the number of processes.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if degree is not None and (isinstance(degree, bool) or not isinstance(degree, int) or degree < 1):
            raise ValueError(f"--sequence-parallel must be a positive integer, got {degree!r}")
        if world == 1:
            if degree not in (None, 1):
                raise ValueError(
                    f"--sequence-parallel {degree} needs {degree} processes, one per GPU: launch with "
                    f"`torchrun --standalone --nproc-per-node {degree} -m radial_attention generate ...`"
                )
            return None
        degree = world if degree is None else degree
        if degree != world:
            raise ValueError(
                f"--sequence-parallel {degree} but torchrun started {world} processes; they must be equal "
                "(every process holds one slice of the sequence)"
            )
        return cls(init_distributed(timeout_s=timeout_s), degree)

    @property
    def device(self):
        return self.ctx.device

    @property
    def is_main(self) -> bool:
        return self.ctx.rank == 0

    def split(
        self, pipe, *, height: Optional[int] = None, width: Optional[int] = None, frames: Optional[int] = None
    ) -> None:
        """Split the pipeline's transformer(s) across the ranks (diffusers Ulysses context parallelism).

        Checks first, with clear errors: heads divisible by the degree, diffusers' native attention
        backend, and (when the pipeline tells its VAE strides) a token count the degree divides.
        Other ranks' progress bars are switched off.
        """
        from radial_attention.integrations.diffusers.context_parallel import (
            check_sequence_parallel,
            diffusers_cpu_context_parallel,
            enable_sequence_parallel,
        )
        from radial_attention.integrations.diffusers.families import find_transformers

        seq_len = _video_tokens(pipe, find_transformers(pipe)[0][0], height, width, frames)
        check_sequence_parallel(pipe, self.degree, seq_len=seq_len)
        with diffusers_cpu_context_parallel():
            enable_sequence_parallel(pipe, self.degree)
        if not self.is_main and hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    def close(self) -> None:
        shutdown()


def _video_tokens(pipe, transformer, height, width, frames) -> Optional[int]:
    """Tokens of the video self-attention for a pipeline call, or ``None`` if the pipeline does not
    say its VAE strides (the arithmetic is the registry's, the patch the transformer's config)."""
    from radial_attention.integrations.diffusers.families import family_of
    from radial_attention.models import video_token_grid

    st = getattr(pipe, "vae_scale_factor_temporal", None)
    ss = getattr(pipe, "vae_scale_factor_spatial", None)
    if None in (st, ss, height, width, frames):
        return None
    fam = family_of(transformer)
    f, h, w = video_token_grid(
        height, width, frames, (int(st), int(ss)), fam.patch(transformer.config), pad_frames=fam.pads_latent_frames
    )
    return (f + fam.reference_frames) * h * w  # Wan Animate: its reference image's latent frame in front

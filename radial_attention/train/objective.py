"""The flow-matching (rectified flow) objective of Wan and HunyuanVideo, as their diffusers
pipelines sample with it (``FlowMatchEulerDiscreteScheduler`` / ``UniPCMultistepScheduler`` with
``use_flow_sigmas``):

    sigma in (0, 1), shifted:   sigma = shift * u / (1 + (shift - 1) * u)
    x_t      = (1 - sigma) * x0 + sigma * noise
    timestep = sigma * 1000                     (what the transformer is called with)
    target   = noise - x0                       (the velocity the transformer predicts)
    loss     = mean((model(x_t, timestep) - target)^2)

The Euler sampler steps ``x <- x + (sigma_next - sigma) * prediction``, which is exactly this
velocity, so a model trained here drops into the unchanged pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

NUM_TRAIN_TIMESTEPS = 1000
SAMPLINGS = ("uniform", "logit_normal")


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The schedulers' static time shift: ``shift * u / (1 + (shift - 1) * u)`` (``shift=1``: identity)."""
    return shift * u / (1 + (shift - 1) * u)


@dataclass(frozen=True)
class FlowMatching:
    """Samples training noise levels and builds the flow-matching input, target and loss.

    Args:
        shift: the pipeline's flow shift (Wan2.1 480p: 3.0, 720p: 5.0; HunyuanVideo: 7.0).
        sampling: ``"uniform"`` (u ~ U(0, 1)) or ``"logit_normal"`` (u = sigmoid(N(mean, std))).
        logit_mean, logit_std: parameters of the logit-normal sampling.
    """

    shift: float = 3.0
    sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self):
        if not (self.shift > 0):
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"timestep sampling must be one of {SAMPLINGS}, got {self.sampling!r}")

    def sample_sigmas(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[batch]`` float32 noise levels in (0, 1), drawn on the generator's device (CPU by default)."""
        device = generator.device if generator is not None else "cpu"
        if self.sampling == "uniform":
            u = torch.rand(batch, generator=generator, device=device, dtype=torch.float32)
        else:
            z = torch.randn(batch, generator=generator, device=device, dtype=torch.float32)
            u = torch.sigmoid(self.logit_mean + self.logit_std * z)
        # Keep inside [1/1000, 1], the range of the schedulers' training sigmas.
        u = u.clamp(1.0 / NUM_TRAIN_TIMESTEPS, 1.0)
        return shift_sigmas(u, self.shift)

    def sample(
        self, x0: torch.Tensor, generators: Union[None, torch.Generator, Sequence[torch.Generator]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw noise and noise levels for clean latents ``x0 [B, C, F, H, W]``.

        Args:
            generators: one generator for the whole batch, or one per batch item (item ``i``'s
                noise level and noise then depend only on ``generators[i]``, so a sample gets the
                same draw whatever batch or process it lands in). CPU generators keep runs
                identical across devices; results are moved to ``x0``'s device.

        Returns:
            ``(x_t, timestep, target, sigma)``: ``x_t`` and ``target`` like ``x0`` (float32),
            ``timestep [B]`` float32 in [1, 1000], ``sigma [B]``.
        """
        b = x0.shape[0]
        if generators is None or isinstance(generators, torch.Generator):
            sigma = self.sample_sigmas(b, generators)
            gdev = generators.device if generators is not None else "cpu"
            noise = torch.randn(x0.shape, generator=generators, device=gdev, dtype=torch.float32)
        else:
            if len(generators) != b:
                raise ValueError(f"expected one generator per batch item ({b}), got {len(generators)}")
            sig, noi = [], []
            for g in generators:
                sig.append(self.sample_sigmas(1, g))
                noi.append(torch.randn(x0.shape[1:], generator=g, device=g.device, dtype=torch.float32))
            sigma, noise = torch.cat(sig), torch.stack(noi)
        return self.make(x0, noise.to(x0.device), sigma.to(x0.device))

    @staticmethod
    def make(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
        """``(x_t, timestep, target, sigma)`` for given noise and ``sigma [B]`` (see module doc)."""
        x0 = x0.float()
        s = sigma.float().view(-1, *([1] * (x0.dim() - 1)))  # [B] -> [B, 1, 1, 1, 1]
        x_t = (1 - s) * x0 + s * noise
        target = noise - x0
        return x_t, sigma.float() * NUM_TRAIN_TIMESTEPS, target, sigma.float()

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error in float32 (a scalar)."""
        return torch.nn.functional.mse_loss(pred.float(), target.float())

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

import math
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
        sigma_range: ``(lo, hi)``: only noise levels in ``[lo, hi]`` (timesteps ``1000 * lo`` to
            ``1000 * hi``), drawn from the same distribution restricted to that range: what one
            expert of Wan2.2 A14B sees (the pipeline switches experts at ``boundary_ratio``).
            ``None``: the whole range.
    """

    shift: float = 3.0
    sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigma_range: Optional[Tuple[float, float]] = None

    def __post_init__(self):
        if not (self.shift > 0):
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"timestep sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.sigma_range is not None:
            lo, hi = (float(x) for x in self.sigma_range)
            if not (0.0 <= lo < hi <= 1.0):
                raise ValueError(f"sigma_range must be (lo, hi) with 0 <= lo < hi <= 1, got {self.sigma_range!r}")
            object.__setattr__(self, "sigma_range", (lo, hi))  # frozen dataclass

    def _u_range(self) -> Tuple[float, float]:
        """The range of the unshifted draw ``u`` whose shifted sigma falls in ``sigma_range``
        (the shift is increasing in ``u``; its inverse is ``sigma / (shift - (shift - 1) * sigma)``)."""
        lo, hi = self.sigma_range
        inverse = lambda s: s / (self.shift - (self.shift - 1.0) * s)  # noqa: E731
        return inverse(lo), inverse(hi)

    def sample_sigmas(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[batch]`` float32 noise levels in (0, 1), drawn on the generator's device (CPU by default)."""
        device = generator.device if generator is not None else "cpu"
        if self.sigma_range is not None:
            return shift_sigmas(self._sample_u_in_range(batch, generator, device), self.shift)
        if self.sampling == "uniform":
            u = torch.rand(batch, generator=generator, device=device, dtype=torch.float32)
        else:
            z = torch.randn(batch, generator=generator, device=device, dtype=torch.float32)
            u = torch.sigmoid(self.logit_mean + self.logit_std * z)
        # Keep inside [1/1000, 1], the range of the schedulers' training sigmas.
        u = u.clamp(1.0 / NUM_TRAIN_TIMESTEPS, 1.0)
        return shift_sigmas(u, self.shift)

    def _sample_u_in_range(self, batch: int, generator, device) -> torch.Tensor:
        """``u`` from the sampling distribution restricted to :meth:`_u_range` (inverse-CDF
        sampling: one uniform draw per item, nothing rejected)."""
        u_lo, u_hi = self._u_range()
        r = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        if self.sampling == "uniform":
            u = u_lo + (u_hi - u_lo) * r
        else:  # logit-normal: a normal truncated to the logits of the range

            def cdf(u: float) -> float:  # P(sigmoid(mean + std * z) <= u), z standard normal
                if u <= 0.0 or u >= 1.0:
                    return 0.0 if u <= 0.0 else 1.0
                x = (math.log(u / (1.0 - u)) - self.logit_mean) / self.logit_std
                return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

            a, b = cdf(u_lo), cdf(u_hi)
            z = torch.special.ndtri((a + (b - a) * r).clamp(1e-300, 1.0 - 1e-16))
            u = torch.sigmoid(self.logit_mean + self.logit_std * z)
        # The same floor as the unrestricted draw (a clamp, not a narrower range: same distribution).
        return u.clamp(max(u_lo, 1.0 / NUM_TRAIN_TIMESTEPS), u_hi).to(torch.float32)

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

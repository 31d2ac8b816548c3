"""Synthetic training data: a data folder of random samples in the format of :mod:`radial_attention.train.data`.

For tests, smoke runs and benchmarks (formerly ``radial_attention.train.data.write_synthetic_dataset``,
still there behind a ``DeprecationWarning`` for one release).
"""

from __future__ import annotations

import pathlib
from typing import Tuple

import torch

from radial_attention.train.data import LATENTS, ModelSpec, write_manifest, write_sample


def write_synthetic_dataset(
    root,
    spec: ModelSpec,
    *,
    num_samples: int,
    latent_shape: Tuple[int, int, int, int],
    text_len: int = 16,
    seed: int = 0,
) -> pathlib.Path:
    """A data folder of random samples that fit ``spec`` under ``root``; returns the manifest path.

    Latents are smooth (a random low-resolution video upsampled) so that a model can learn them;
    HunyuanVideo samples get a prompt mask with a random number of real tokens; image-to-video
    samples a condition (a first-frame mask and a random image latent) and random image embeddings.

    Args:
        latent_shape: ``(C, F, H, W)`` per sample.
    """
    g = torch.Generator().manual_seed(seed)
    c, f, h, w = latent_shape
    entries = []
    for n in range(num_samples):
        coarse = torch.randn(1, c, max(1, f // 2), max(1, h // 4), max(1, w // 4), generator=g)
        lat = torch.nn.functional.interpolate(coarse, size=(f, h, w), mode="trilinear", align_corners=False)[0]
        lat = lat / lat.std().clamp_min(1e-6)
        n_text = spec.text_len or text_len
        emb = torch.randn(n_text, spec.text_dim, generator=g)
        kw = {}
        if spec.condition_channels:
            cond = torch.zeros(spec.condition_channels, f, h, w)
            n_mask = min(4, spec.condition_channels)
            cond[:n_mask, :1] = 1.0  # the first latent frame is the given image
            cond[n_mask:, :1] = torch.randn(spec.condition_channels - n_mask, 1, h, w, generator=g)
            kw["condition"] = cond
        if spec.image_dim is not None:
            kw["image_embeds"] = torch.randn(8, spec.image_dim, generator=g)
        if spec.needs_mask:
            real = int(torch.randint(1, n_text + 1, (1,), generator=g))
            kw["prompt_attention_mask"] = (torch.arange(n_text) < real).long()
        if spec.needs_pooled:
            kw["pooled_prompt_embeds"] = torch.randn(spec.pooled_dim, generator=g)
        if spec.text_2_dim is not None:  # HunyuanVideo 1.5's byT5 stream: a few real tokens, or none
            n_2 = max(1, n_text // 2)
            kw["prompt_embeds_2"] = torch.randn(n_2, spec.text_2_dim, generator=g)
            kw["prompt_attention_mask_2"] = (
                torch.arange(n_2) < int(torch.randint(0, n_2 + 1, (1,), generator=g))
            ).long()
        rel = f"samples/{n:06d}.safetensors"
        shapes = write_sample(pathlib.Path(root) / rel, lat, emb, **kw)
        entries.append({"file": rel, "caption": f"synthetic sample {n}", "latent_shape": list(shapes[LATENTS])})
    return write_manifest(root, spec.family, entries, extra={"source": {"synthetic": True, "seed": seed}})

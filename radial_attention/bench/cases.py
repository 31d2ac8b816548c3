"""The attention benchmark's cases: a video model's radial mask at its real size, and small stand-ins
for a CPU. No torch here, so that ``radial-attention bench --help`` builds its choices from these
tables without loading torch."""

from __future__ import annotations

import dataclasses
from typing import Optional


# ----------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    description: str
    frames: int
    tokens_per_frame: int
    heads: int
    preset: str
    decay: Optional[float] = None
    text_tokens: int = 0
    head_dim: int = 128
    block_size: int = 128
    batch: int = 1

    @property
    def seq_len(self) -> int:
        return self.frames * self.tokens_per_frame + self.text_tokens


def _by_name(*cases: Case) -> dict:
    """``{case.name: case}`` in the order given (the order the benchmark runs them)."""
    return {c.name: c for c in cases}


CASES = _by_name(
    # Wan2.1-14B, 1280x720, 81 frames: 21 latent frames x 45x80 tokens, 40 heads, `wan` preset.
    Case("wan14b-720p-81f", "Wan2.1-14B 1280x720, 81 frames (wan preset)", 21, 3600, 40, "wan"),
    # HunyuanVideo 768x1280, 117 frames: 30 x 48x80 video tokens (the text tokens left out), 24 heads.
    Case(
        "hunyuan-768p-117f",
        "HunyuanVideo 768x1280, 117 frames (hunyuan preset, video tokens)",
        30,
        3840,
        24,
        "hunyuan",
    ),
    # Wan2.1-1.3B, 832x480: 30x52 tokens per frame, 12 heads; 81 and 161 frames.
    Case("wan1.3b-480p-81f", "Wan2.1-1.3B 832x480, 81 frames (wan preset)", 21, 1560, 12, "wan"),
    Case("wan1.3b-480p-161f", "Wan2.1-1.3B 832x480, 161 frames (wan preset)", 41, 1560, 12, "wan"),
    # HunyuanVideo at 4x length (last: its dense baseline alone takes a minute or more): 128 latent frames x 3600 tokens (720p), decay 1.0.
    Case(
        "hunyuan-720p-4x",
        "HunyuanVideo 1280x720, 4x length: 128 frames x 3600 tokens (decay 1.0)",
        128,
        3600,
        24,
        "hunyuan",
        decay=1.0,
    ),
)
# What a CPU can time in about a minute (float32): real layouts with 2 of the models' heads (the cost
# is linear in heads; the GPU cases take minutes per dense call on a CPU).
CPU_CASES = _by_name(
    # Wan2.1-1.3B 832x480, 17 frames: 5 latent frames x 30x52 tokens.
    Case("cpu-wan1.3b-480p-17f", "Wan2.1-1.3B 832x480, 17 frames, 2 of 12 heads (wan preset)", 5, 1560, 2, "wan"),
    # HunyuanVideo 512x320, 33 frames: 9 latent frames x 20x32 tokens (video tokens).
    Case(
        "cpu-hunyuan-320p-33f",
        "HunyuanVideo 512x320, 33 frames, 2 of 24 heads (hunyuan preset, video tokens)",
        9,
        640,
        2,
        "hunyuan",
    ),
)
# Above this many tokens a case is refused on a CPU (a dense call would take minutes).
CPU_MAX_TOKENS = 16_384
# Tiny stand-ins for --smoke (CPU interpreter or a quick GPU pass): S not a multiple of the block.
SMOKE_CASES = _by_name(
    Case("smoke-wan", "smoke: 4 frames x 50 tokens, wan preset", 4, 50, 2, "wan", head_dim=64, block_size=64),
    Case(
        "smoke-hunyuan",
        "smoke: 3 frames x 90 tokens, hunyuan preset",
        3,
        90,
        2,
        "hunyuan",
        head_dim=128,
        block_size=64,
    ),
)

"""The radial block mask of Radial Attention, computed at block level.

Definition: ``shared/docs/radial-mask.md`` (the contract; it reproduces the authors' reference
bit for bit). Summary, for query frame ``i`` and key frame ``j`` at distance ``D = |i - j|``:

    every token sees its own frame and (``adjacent="full"``) the neighbouring frames fully;
    farther frames through a diagonal band whose half-width halves each time D doubles;
    far frames only every ``s``-th one; optionally every frame sees frame 0 (attention sink).

    F=5, T=200, B=128, d=1.0, no sink:     #####.##
                                           ######.#
    rows = query blocks,                   ######.#
    columns = key blocks,                  ########
    '#' = computed                         ########
                                           .#######
                                           ##.#####
                                           ########

How it is fast: the reference builds a token-level ``N x N`` matrix and counts columns per block,
which takes minutes. Here each frame pair's ``T x T`` pattern is a band ``|k - l| <= W`` (``W >= T``
for a full pattern), and for a band the per-column counts of a local block are the overlap of two
intervals. So a block's "touched" and "dense" column counts are themselves interval overlaps,
computed in closed form for all blocks at once. Frame pairs that share (row offset, column offset,
band width) share their local result, so each distinct combination is evaluated once and then
scattered to every pair that has it.

Token layout: ``Y`` extra tokens before the video (CogVideoX's text), then the ``F*T`` video tokens,
then ``X`` extra tokens after it (HunyuanVideo's text). Every block that holds an extra token, or the
end of the video, is a dense row and column; frame ``i`` starts at token ``Y + i*T``, so a prefix
that is not a multiple of ``B`` moves every frame inside its blocks (the video part is re-blocked).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from radial_attention._deprecation import renamed_attribute, renamed_keyword, warn_deprecated

from .numbers import as_float, as_int
from .sparse import SUPPORTED_BLOCK_SIZES, BlockSparseMask

ADJACENT_MODES = ("full", "half")
# The frame-dropping rule compares against the literal 128 whatever the block size (spec, step 2).
_DROP_REFERENCE = 128


@dataclass(frozen=True)
class RadialSettings:
    """The settings that define a radial mask for a given video layout (see PRESETS)."""

    decay: float
    sink: bool
    adjacent: str


PRESETS = {
    # name: settings, as in docs/radial-mask.md ("Presets")
    "wan": RadialSettings(decay=0.2, sink=True, adjacent="half"),
    "wan-full": RadialSettings(decay=0.2, sink=True, adjacent="full"),
    "hunyuan": RadialSettings(decay=0.95, sink=False, adjacent="full"),
    "wan2.2": RadialSettings(decay=0.8, sink=True, adjacent="half"),
}


def get_preset(name: str) -> RadialSettings:
    """The settings of a named preset; ``ValueError`` listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown radial preset {name!r}; expected one of {sorted(PRESETS)}") from None


class RadialBlockMask(BlockSparseMask):
    """A :class:`BlockSparseMask` that also remembers the video layout and settings it came from."""

    def __init__(
        self, dense, block_size, *, frames, tokens_per_frame, extra_tokens, decay, sink, adjacent, prefix_tokens=0
    ):
        super().__init__(dense, block_size)
        self.frames = frames
        self.tokens_per_frame = tokens_per_frame
        self.prefix_tokens = prefix_tokens  # Y, before the video
        self.extra_tokens = extra_tokens  # X, after the video
        self.decay = decay
        self.sink = sink
        self.adjacent = adjacent

    text_tokens = renamed_attribute("RadialBlockMask", "text_tokens", "extra_tokens")

    @property
    def seq_len(self) -> int:
        """Tokens the mask covers: extra tokens before the video, the video, extra tokens after (``Y + N + X``)."""
        return self.prefix_tokens + self.frames * self.tokens_per_frame + self.extra_tokens

    def __repr__(self) -> str:
        return (
            f"RadialBlockMask(frames={self.frames}, tokens_per_frame={self.tokens_per_frame}, "
            f"prefix_tokens={self.prefix_tokens}, extra_tokens={self.extra_tokens}, "
            f"block_size={self.block_size}, decay={self.decay}, "
            f"sink={self.sink}, adjacent={self.adjacent!r}, blocks={self.num_blocks}, density={self.density:.4f})"
        )


def _check_args(frames, tokens_per_frame, block_size, decay, adjacent, extra_tokens, prefix_tokens=0) -> tuple:
    """The arguments as plain Python values ``(F, T, block_size, decay, X, Y)``; ValueError naming a bad one.

    Numbers may be Python numbers, numpy scalars or 0-d tensors; bools are refused.
    """
    F = as_int("frames", frames, 1)
    T = as_int("tokens_per_frame", tokens_per_frame, 1)
    X = as_int("extra_tokens", extra_tokens, 0)
    Y = as_int("prefix_tokens", prefix_tokens, 0)
    bs = as_int("block_size", block_size)
    if bs not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {block_size!r}")
    if not isinstance(adjacent, str) or adjacent not in ADJACENT_MODES:
        raise ValueError(f"adjacent must be one of {ADJACENT_MODES}, got {adjacent!r}")
    try:
        d = as_float("decay", decay, positive=True)
    except ValueError:
        raise ValueError(f"decay must be a positive finite number, got {decay!r}") from None
    return F, T, bs, d, X, Y


def _band_halfwidth(distance: int, T: int, B: int, decay: float, adjacent: str, sink_pair: bool) -> Optional[int]:
    """Integer half-width ``W`` of the pair's band ``|k - l| <= W``, or ``None`` if the pair is dropped.

    ``W >= T`` means the pattern is all true. Follows spec step 2 literally, including its float
    arithmetic (``w`` may be fractional; ``|k-l| <= w`` over integers is ``|k-l| <= floor(w)``).
    """
    if sink_pair:
        return T
    pow_t = 2 ** T.bit_length()
    pow_d = 2 ** distance.bit_length()
    if distance == 0:
        w = T
    elif distance == 1:
        w = T if adjacent == "full" else T // 2
    else:
        L = pow_t / pow_d * decay
        w = L if L >= B else B
    Ls = pow_t / pow_d
    if Ls < _DROP_REFERENCE:
        s = int(_DROP_REFERENCE / Ls)
        if distance % s != 0:
            return None
    return min(int(math.floor(w)), T)


def _overlap(lo1, hi1, lo2, hi2):
    """Length of the integer interval intersection [lo1,hi1] ∩ [lo2,hi2] (0 if empty), elementwise."""
    return np.maximum(0, np.minimum(hi1, hi2) - np.maximum(lo1, lo2) + 1)


def _local_blocks(ro: np.ndarray, co: np.ndarray, W: np.ndarray, T: int, B: int) -> np.ndarray:
    """Kept local blocks ``[K, nf, nf]`` (bool) of K frame-pair kinds (spec step 3), in closed form.

    ``ro``/``co`` ``[K]``: offsets of the query/key frame inside their first block; ``W`` ``[K]``:
    band half-width (``>= T`` for an all-true pattern). For local block ``(a, b)``, the valid query
    offsets are ``k in [loA, hiA]`` and key offsets ``l in [loB, hiB]``. Column ``l``'s count is
    ``c(l) = |[loA, hiA] ∩ [l - W, l + W]|``, so
      touched = #{l : c(l) > 0}      = |[loB, hiB] ∩ [loA - W, hiA + W]|
      dense   = #{l : 3*c(l) > B}    = |[loB, hiB] ∩ [loA + m - 1 - W, hiA - m + 1 + W]|
    with ``m = B//3 + 1`` (``3c > B`` iff ``c >= m``), provided the row range and the band are
    each at least ``m`` long (otherwise no column can reach ``m``).
    """
    nf = -(-T // B)
    starts = np.arange(nf, dtype=np.int32) * B  # [nf]
    ro, co, W = (np.asarray(x, dtype=np.int32)[:, None, None] for x in (ro, co, W))  # [K, 1, 1]
    loA = np.maximum(starts[:, None] - ro, 0)  # [K, nf, 1] query side
    hiA = np.minimum(starts[:, None] + B - 1 - ro, T - 1)
    loB = np.maximum(starts[None, :] - co, 0)  # [K, 1, nf] key side
    hiB = np.minimum(starts[None, :] + B - 1 - co, T - 1)
    m = B // 3 + 1
    touched = _overlap(loB, hiB, loA - W, hiA + W) * (hiA >= loA)
    dense = _overlap(loB, hiB, loA + m - 1 - W, hiA - m + 1 + W)
    dense = dense * ((hiA - loA + 1) >= m) * (2 * W + 1 >= m)
    return 5 * dense > 3 * touched


def _build_dense(F: int, T: int, Y: int, X: int, B: int, decay: float, sink: bool, adjacent: str) -> np.ndarray:
    """The ``[nb, nb]`` bool block mask of ``Y`` prefix tokens, ``F x T`` video tokens, ``X`` suffix tokens."""
    N = F * T
    nb = -(-(Y + N + X) // B)
    head = -(-Y // B)  # blocks holding a prefix token (the video's first block too, if Y % B != 0)
    E = (Y + N) // B  # the first block holding the end of the video or a suffix token
    M = np.zeros((nb, nb), dtype=bool)
    # Step 0: the head and the tail are dense (every block holding an extra token, or the end of the video).
    M[:head, :] = True
    M[:, :head] = True
    M[E:, :] = True
    M[:, E:] = True

    frame_start = Y + np.arange(F, dtype=np.int64) * T  # frame i's first token: the prefix shifts every frame
    frame_block = frame_start // B  # first block of each frame
    frame_offset = frame_start % B  # token offset inside that block

    # Group frame pairs by (row offset, column offset, half-width): one local evaluation each.
    i_idx, j_idx = np.meshgrid(np.arange(F), np.arange(F), indexing="ij")
    i_idx, j_idx = i_idx.ravel(), j_idx.ravel()
    dist = np.abs(i_idx - j_idx)
    width_by_distance = [_band_halfwidth(D, T, B, decay, adjacent, False) for D in range(F)]
    sink_width = T
    widths = np.array([-1 if w is None else w for w in width_by_distance], dtype=np.int64)[dist]
    if sink:
        widths[j_idx == 0] = sink_width
    keep = widths >= 0
    i_idx, j_idx, widths = i_idx[keep], j_idx[keep], widths[keep]
    if i_idx.size == 0:
        return M
    # Frame pairs with the same (row offset, column offset, half-width) have the same local result:
    # evaluate each kind once, then copy its kept blocks to every pair of that kind.
    ro, co = frame_offset[i_idx], frame_offset[j_idx]
    key = (ro * B + co) * (T + 1) + widths  # one integer per (ro, co, W), W <= T
    _, first_of_kind, kind_of_pair = np.unique(key, return_index=True, return_inverse=True)
    kind_of_pair = kind_of_pair.reshape(-1)
    kept = _local_blocks(ro[first_of_kind], co[first_of_kind], widths[first_of_kind], T, B)  # [K, nf, nf]
    index_t = np.int32 if nb * nb < 2**31 else np.int64
    kind_idx, a, b = np.nonzero(kept)  # ordered by kind
    local_offset = (a * nb + b).astype(index_t)  # flat offset of each kept local block
    per_kind = np.bincount(kind_idx, minlength=len(first_of_kind))
    kind_start = np.cumsum(per_kind) - per_kind
    # Ragged expansion, pairs in (query frame, key frame) order so that the writes stay local:
    # entry e of pair p is local block kind_start[kind(p)] + (e - first entry of p), moved to p's origin.
    per_pair = per_kind[kind_of_pair]
    total = int(per_pair.sum())
    if total == 0:
        return M
    first_entry = np.cumsum(per_pair) - per_pair
    source_shift = (kind_start[kind_of_pair] - first_entry).astype(index_t)
    origin = (frame_block[i_idx] * nb + frame_block[j_idx]).astype(index_t)  # flat index of local (0, 0)
    source = np.arange(total, dtype=index_t) + np.repeat(source_shift, per_pair)
    flat = local_offset[source] + np.repeat(origin, per_pair)
    # A kept local block always holds a real token, so it lies inside the mask.
    M.ravel()[flat] = True
    return M


@functools.lru_cache(maxsize=64)
def _cached_mask(F, T, X, B, decay, sink, adjacent, Y=0) -> RadialBlockMask:
    dense = torch.from_numpy(_build_dense(F, T, Y, X, B, decay, sink, adjacent))
    return RadialBlockMask(
        dense,
        B,
        frames=F,
        tokens_per_frame=T,
        prefix_tokens=Y,
        extra_tokens=X,
        decay=decay,
        sink=sink,
        adjacent=adjacent,
    )


# Settings without a preset (the authors' defaults).
_DEFAULT_SETTINGS = RadialSettings(decay=1.0, sink=False, adjacent="full")


def radial_block_mask(
    frames: int,
    tokens_per_frame: int,
    *,
    preset: Optional[str] = None,
    decay: Optional[float] = None,
    sink: Optional[bool] = None,
    adjacent: Optional[str] = None,
    block_size: int = 128,
    extra_tokens: int = 0,
    text_tokens: Optional[int] = None,
    prefix_tokens: int = 0,
) -> RadialBlockMask:
    """The radial block mask of a video of ``frames`` latent frames of ``tokens_per_frame`` tokens.

    Token layout: ``prefix_tokens`` extra tokens, then the video (frame-major), then
    ``extra_tokens`` extra tokens; the extra tokens are dense rows and columns
    (``docs/radial-mask.md``, step 0). ``prefix_tokens=0`` is the reference's layout, bit for bit.

    ``preset`` gives decay, sink and adjacent; each of them given explicitly overrides the
    preset's. Without a preset the defaults are ``decay=1.0, sink=False, adjacent="full"``.

    Args:
        frames: ``F``, latent frames (after the VAE and temporal patching), >= 1.
        tokens_per_frame: ``T``, tokens per latent frame (after spatial patching), >= 1.
        preset: ``"wan"``, ``"wan-full"``, ``"hunyuan"`` or ``"wan2.2"`` (:data:`PRESETS`), or ``None``.
        decay: ``d`` > 0, scales the spatial window of frames at distance >= 2.
        sink: every frame attends fully to frame 0.
        adjacent: ``"full"`` or ``"half"``, the band between neighbouring frames.
        block_size: ``B``, 64 or 128.
        extra_tokens: ``X`` tokens appended after the video (HunyuanVideo's text tokens), dense
            rows and columns.
        text_tokens: deprecated name of ``extra_tokens``.
        prefix_tokens: ``Y`` tokens placed before the video (CogVideoX's text tokens, LTX's
            condition tokens), dense rows and columns; frame ``i`` then starts at token ``Y + i*T``.

    Returns:
        A :class:`RadialBlockMask`; ``.to_dense()`` is (a copy of) the ``torch.bool`` ``[nb, nb]``
        block mask with ``nb = ceil((Y + F*T + X) / B)``. Cached in memory by the resolved settings: the
        same object is returned for the same mask (its accessors hand out copies, so it cannot be
        corrupted).

    Raises:
        ValueError: for non-positive sizes, negative extra token counts, an unknown preset or
            ``adjacent``, a block size other than 64/128, or a non-positive decay.
    """
    extra_tokens = renamed_keyword(
        "radial_block_mask", "text_tokens", text_tokens, "extra_tokens", extra_tokens, default=0
    )
    base = _DEFAULT_SETTINGS if preset is None else get_preset(preset)
    decay = base.decay if decay is None else decay
    sink = base.sink if sink is None else sink
    adjacent = base.adjacent if adjacent is None else adjacent
    F, T, bs, d, X, Y = _check_args(frames, tokens_per_frame, block_size, decay, adjacent, extra_tokens, prefix_tokens)
    if isinstance(sink, torch.Tensor) and sink.dim() == 0 and sink.dtype == torch.bool:
        sink = bool(sink)
    if not isinstance(sink, (bool, np.bool_)):
        raise ValueError(f"sink must be a bool, got {sink!r}")
    return _cached_mask(F, T, X, bs, d, bool(sink), adjacent, Y)


def radial_mask_from_preset(
    preset: str,
    frames: int,
    tokens_per_frame: int,
    *,
    text_tokens: int = 0,
    block_size: int = 128,
    decay: Optional[float] = None,
) -> RadialBlockMask:
    """Deprecated: ``radial_block_mask(frames, tokens_per_frame, preset=preset, extra_tokens=...)``."""
    warn_deprecated(
        "radial_mask_from_preset(preset, F, T, text_tokens=X)", "radial_block_mask(F, T, preset=preset, extra_tokens=X)"
    )
    return radial_block_mask(
        frames, tokens_per_frame, preset=preset, decay=decay, block_size=block_size, extra_tokens=text_tokens
    )


def radial_mask_with_settings(
    frames: int,
    tokens_per_frame: int,
    *,
    preset: Optional[str] = None,
    decay: Optional[float] = None,
    sink: Optional[bool] = None,
    adjacent: Optional[str] = None,
    block_size: int = 128,
    text_tokens: int = 0,
) -> RadialBlockMask:
    """Deprecated: ``radial_block_mask`` takes the same arguments (``extra_tokens`` for ``text_tokens``)."""
    warn_deprecated("radial_mask_with_settings(...)", "radial_block_mask(...) (the same arguments; extra_tokens=)")
    return radial_block_mask(
        frames,
        tokens_per_frame,
        preset=preset,
        decay=decay,
        sink=sink,
        adjacent=adjacent,
        block_size=block_size,
        extra_tokens=text_tokens,
    )

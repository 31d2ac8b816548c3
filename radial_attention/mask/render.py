"""PNG pictures of block masks (matplotlib, imported only when a picture is asked for)."""

from __future__ import annotations

import os
from typing import Optional

KEPT_COLOR = "#1b2a49"  # computed blocks: dark
SKIPPED_COLOR = "#ffffff"  # skipped blocks: white
FRAME_COLOR = "#e8710a"  # latent-frame boundaries
EXTRA_COLOR = "#2ca02c"  # where the extra (text) tokens appended after the video start


def png_path(path) -> str:
    """The file name the picture is written to: ``.png`` added to a name without an extension.

    Raises ``ValueError`` for another extension (the picture is always a PNG)."""
    path = os.fspath(path)
    if not os.path.basename(path):
        raise ValueError(f"expected a .png file name, got the folder {path!r}")
    ext = os.path.splitext(path)[1]
    if not ext:
        return path + ".png"
    if ext.lower() != ".png":
        raise ValueError(f"the mask picture is a PNG: expected a file name ending in .png, got {path!r}")
    return path


def default_title(mask) -> str:
    """A two-line title: the layout (for a radial mask) and the block grid with its density."""
    nb = mask.num_blocks
    grid = f"{nb} x {nb} blocks of {mask.block_size} tokens, density {mask.density:.3f}"
    frames = getattr(mask, "frames", None)
    if frames is None:
        return grid
    layout = f"F={frames} latent frames x T={mask.tokens_per_frame} tokens"
    if mask.extra_tokens:
        layout += f" + {mask.extra_tokens} extra tokens"
    return f"{layout}\ndecay {mask.decay}, sink {'on' if mask.sink else 'off'}, adjacent {mask.adjacent}: {grid}"


def render_mask_png(mask, path, title: Optional[str] = None, max_pixels: int = 2048) -> str:
    """Draw ``mask`` (a BlockSparseMask) into a PNG: rows = query blocks, columns = key blocks,
    kept (computed) blocks dark, skipped blocks white; for a radial mask also the latent-frame
    boundaries (every k-th beyond 32 frames) and where the extra (text) tokens start, with a legend below.

    A 4-D mask is drawn for batch 0, head 0. The mask area has about one pixel per block (at
    least 480, at most ``max_pixels`` a side); beyond that blocks are averaged (grey = partly
    kept). Returns the path written (``path``, with ``.png`` added when it has no extension).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("drawing a mask needs matplotlib: pip install 'radial-attention[plot]'") from e

    path = png_path(path)
    dense = mask.dense4d()[0, 0].numpy()
    nb = dense.shape[0]
    # A fixed size in inches (so text keeps its size relative to the picture) and the resolution
    # chosen for about one pixel per block, between 480 and max_pixels pixels a side.
    side_in = 6.0
    dpi = max(100, min(max(nb, 480), max_pixels) / side_in)
    fig, ax = plt.subplots(figsize=(side_in + 1.0, side_in + 1.6), dpi=dpi)
    cmap = ListedColormap([SKIPPED_COLOR, KEPT_COLOR])
    # One pixel or more per block: nearest; fewer: antialiased averaging (no moire patterns).
    interpolation = "nearest" if nb <= side_in * dpi else "antialiased"
    ax.imshow(dense.astype("float32"), cmap=cmap, vmin=0, vmax=1, interpolation=interpolation, extent=(0, nb, nb, 0))
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    ax.set_xlim(0, nb)
    ax.set_ylim(nb, 0)
    for spine in ax.spines.values():
        spine.set_edgecolor("#888888")

    handles = [
        Patch(facecolor=KEPT_COLOR, edgecolor="#888888", label="kept (computed)"),
        Patch(facecolor=SKIPPED_COLOR, edgecolor="#888888", label="skipped"),
    ]
    frames = getattr(mask, "frames", None)
    if frames is not None and frames > 1:
        bs, T = mask.block_size, mask.tokens_per_frame
        every = -(-frames // 32)  # at most ~32 lines a side, so that the mask stays visible
        bounds = [f * T / bs for f in range(every, frames, every)]  # in blocks (a frame may end inside a block)
        for b in bounds:
            ax.axvline(b, color=FRAME_COLOR, linewidth=0.8, alpha=0.7)
            ax.axhline(b, color=FRAME_COLOR, linewidth=0.8, alpha=0.7)
        which = "latent-frame boundary" if every == 1 else f"every {every}th latent-frame boundary"
        handles.append(Line2D([], [], color=FRAME_COLOR, linewidth=1.5, label=f"{which} ({frames} frames)"))
        if mask.extra_tokens:
            start = frames * T / bs
            ax.axvline(start, color=EXTRA_COLOR, linewidth=1.2, linestyle="--")
            ax.axhline(start, color=EXTRA_COLOR, linewidth=1.2, linestyle="--")
            handles.append(
                Line2D(
                    [],
                    [],
                    color=EXTRA_COLOR,
                    linewidth=1.5,
                    linestyle="--",
                    label=f"extra tokens start ({mask.extra_tokens})",
                )
            )
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=9, frameon=False)
    ax.set_title(default_title(mask) if title is None else title, fontsize=10)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.15)  # tight: title and legend are never cut off
    plt.close(fig)
    return path

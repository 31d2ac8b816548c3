"""PNG pictures of block masks (matplotlib, imported only when a picture is asked for)."""

from __future__ import annotations

from typing import Optional


def render_mask_png(mask, path, title: Optional[str] = None, max_pixels: int = 2048) -> str:
    """Draw ``mask`` (a BlockSparseMask) as a black-on-white image: rows = query blocks, columns = key blocks.

    A 4-D mask is drawn for batch 0, head 0. Large masks are drawn one pixel per block up to
    ``max_pixels`` per side (matplotlib downsamples by nearest neighbour beyond that).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("drawing a mask needs matplotlib: pip install 'radial-attention[plot]'") from e

    dense = mask.dense4d()[0, 0].numpy()
    nb = dense.shape[0]
    side_in = min(max(nb, 256), max_pixels) / 100.0
    fig, ax = plt.subplots(figsize=(side_in + 0.6, side_in + 0.9), dpi=100)
    ax.imshow(~dense, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    if title is None:
        title = repr(mask)
    ax.set_title(title, fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)

"""``loss.png``: the training loss curve drawn from ``loss.jsonl`` (needs matplotlib, the ``plot``
extra; without it nothing is drawn)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Optional


def read_log(path) -> list:
    """The records of a ``loss.jsonl`` (one JSON object per line; blank, cut-short or foreign lines skipped)."""
    records = []
    for line in pathlib.Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short (e.g. by a full disk): skipped
            continue
        if isinstance(rec, dict) and "step" in rec and "loss" in rec:
            records.append(rec)
    return records


def moving_average(values: list, window: int) -> list:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss(log_path, png_path) -> Optional[pathlib.Path]:
    """Draw the loss per step (raw and a moving average over ~5% of the steps), the fixed-noise
    eval loss when logged, and the step time, into ``png_path``. Returns the path, or ``None``
    when matplotlib is missing or the log is empty."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_log(log_path)
    if not records:
        return None
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    window = max(1, len(losses) // 20)
    fig, (ax, ax_t) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, lw=1, label="loss")
    ax.plot(steps, moving_average(losses, window), color="tab:blue", lw=2, label=f"moving average ({window} steps)")
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if evals:
        ax.plot(*zip(*evals), "o-", color="tab:orange", lw=1.5, ms=4, label="eval loss (fixed noise)")
    ax.set_ylabel("flow-matching loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("train-lora")
    ax_t.plot(steps, [r["step_time_s"] for r in records], color="tab:gray", lw=1)
    ax_t.set_ylabel("step (s)")
    ax_t.set_xlabel("optimizer step")
    ax_t.grid(alpha=0.3)
    fig.tight_layout()
    png_path = pathlib.Path(png_path)
    tmp = png_path.with_name(png_path.name + ".tmp")
    try:  # through a temporary file: a full disk leaves the previous picture, not half of one
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, png_path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return png_path

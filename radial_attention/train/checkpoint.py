"""Training checkpoints that resume exactly.

One checkpoint is a folder ``<output>/checkpoints/step-000123/``::

    pytorch_lora_weights.safetensors   the LoRA (same file format as the final one)
    optimizer.pt                       AdamW state (identical on every process)
    scheduler.pt                       learning-rate schedule state
    rng-rank<r>.pt                     each process's torch CPU/CUDA RNG states
    state.json                         step, data position (epoch, micro-batch), world size, settings

It is written into a temporary folder and renamed when complete, so a crash never leaves a
half-written checkpoint that looks finished.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import List, Optional

import torch

STATE = "state.json"
PREFIX = "step-"


def checkpoint_dir(output_dir, step: int) -> pathlib.Path:
    return pathlib.Path(output_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def list_checkpoints(output_dir) -> List[pathlib.Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = pathlib.Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(resume: Optional[str], output_dir) -> Optional[pathlib.Path]:
    """``None`` -> no resume; ``"latest"`` -> the newest complete checkpoint in ``output_dir`` (or
    ``None`` when there is none yet, so the same command starts or continues a run); a path -> that
    checkpoint (``FileNotFoundError`` if it is not one)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = pathlib.Path(resume)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a training checkpoint (no {STATE})")
    return path


def rng_state() -> dict:
    """torch's global RNG states (used by LoRA dropout). The noise draws need none: they are
    seeded per sample (see ``trainer._sample_generator``)."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def begin_write(output_dir, step: int) -> pathlib.Path:
    """A fresh temporary folder for the checkpoint of ``step`` (made by the main process)."""
    tmp = checkpoint_dir(output_dir, step).with_name(f"tmp-{PREFIX}{step:06d}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finish_write(tmp: pathlib.Path, state: dict, keep: int) -> pathlib.Path:
    """Write ``state.json``, rename the temporary folder to its final name, drop old checkpoints
    beyond the newest ``keep`` (``keep <= 0`` keeps all)."""
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    final = tmp.with_name(tmp.name[len("tmp-"):])
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for old in list_checkpoints(final.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path) -> dict:
    return json.loads((pathlib.Path(path) / STATE).read_text())

"""Training checkpoints that resume exactly, and that are verified before they are used.

One checkpoint is a folder ``<output>/checkpoints/step-000123/``::

    pytorch_lora_weights.safetensors   the LoRA (same file format as the final one)
    optimizer.pt                       AdamW state (identical on every process)
    scheduler.pt                       learning-rate schedule state
    rng-rank<r>.pt                     each process's torch CPU/CUDA RNG states
    state.json                         step, data position (epoch, micro-batch), run id, settings
    files.json                         size and sha256 of every file above (written last)

The ``.pt`` files hold tensors, numbers and strings only and are read with
``torch.load(weights_only=True)``: a crafted checkpoint cannot run code when resumed.

It is written into a temporary folder, ``files.json`` last (atomically), and the folder renamed
when complete, so a crash never leaves a half-written checkpoint that looks finished; a file
damaged later (a truncated copy, a full disk) is caught by :func:`verify_checkpoint` before
anything is loaded.

Rotation (``keep``) only deletes older checkpoints of the same run (the ``run_id`` in
``state.json``); folders whose name is not exactly ``step-<digits>`` are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import warnings
from typing import List, Optional

import torch

STATE = "state.json"
FILES = "files.json"
PREFIX = "step-"
TMP_PREFIX = "tmp-" + PREFIX
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, damaged or not loadable; the message names the file."""


def checkpoint_dir(output_dir, step: int) -> pathlib.Path:
    return pathlib.Path(output_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def step_of(path) -> Optional[int]:
    """The step number of a checkpoint folder name (``step-000123`` -> 123), else ``None``
    (``step-000004.bak``, ``step-abc``, ``tmp-step-...``: not a checkpoint)."""
    m = _NAME.match(pathlib.Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir) -> List[pathlib.Path]:
    """Finished checkpoint folders under ``output_dir/checkpoints`` (named ``step-<digits>``
    with a ``state.json``), oldest first. Not verified: see :func:`verify_checkpoint`."""
    root = pathlib.Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None and (p / STATE).is_file()]
    return sorted(found, key=step_of)


def run_id_of(path) -> Optional[str]:
    """The run id in a checkpoint's ``state.json`` (``None``: unreadable or written before run ids)."""
    try:
        state = json.loads((pathlib.Path(path) / STATE).read_text())
    except (OSError, ValueError):
        return None
    rid = state.get("run_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else None


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(path) -> pathlib.Path:
    """Check that every file of the checkpoint ``path`` is there with the size and sha256 its
    ``files.json`` records. Checkpoints written before ``files.json`` existed are accepted with a
    warning (they cannot be verified).

    Raises:
        CheckpointError: naming the missing, truncated or changed file.
    """
    path = pathlib.Path(path)
    if not (path / STATE).is_file():
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint (no {STATE})")
    listing = path / FILES
    if not listing.is_file():
        warnings.warn(
            f"checkpoint {path} has no {FILES} (written by an older version): its files cannot be verified",
            stacklevel=2,
        )
        return path
    try:
        files = json.loads(listing.read_text())["files"]
        items = [(str(name), int(rec["size"]), str(rec["sha256"])) for name, rec in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{listing}: not a valid checkpoint file list ({e})") from None
    for name, size, digest in items:
        f = path / name
        if pathlib.PurePath(name).name != name:  # names are plain file names inside the folder
            raise CheckpointError(f"{listing}: file name {name!r} is not a plain file name")
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing")
        actual = f.stat().st_size
        if actual != size:
            raise CheckpointError(f"checkpoint file {f} has {actual} bytes, expected {size} (truncated or damaged)")
        if _sha256(f) != digest:
            raise CheckpointError(f"checkpoint file {f} does not match its sha256 in {FILES} (damaged or changed)")
    return path


def resolve_resume(resume: Optional[str], output_dir) -> Optional[pathlib.Path]:
    """``None`` -> no resume; ``"latest"`` -> the newest intact checkpoint in ``output_dir``
    (broken newer ones are skipped with a warning naming the broken file; ``None`` when there is
    no checkpoint yet, so the same command starts or continues a run); a path -> that checkpoint,
    verified.

    Raises:
        FileNotFoundError: ``resume`` is a path that is not a checkpoint.
        CheckpointError: the given checkpoint is broken, or (``latest``) every one is.
    """
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        problems = []
        for cand in reversed(found):
            try:
                return verify_checkpoint(cand)
            except CheckpointError as e:
                problems.append(str(e))
                warnings.warn(f"skipping broken checkpoint {cand.name}: {e}", stacklevel=2)
        if problems:
            raise CheckpointError(
                f"every checkpoint in {pathlib.Path(output_dir) / 'checkpoints'} is broken: " + "; ".join(problems)
            )
        return None
    path = pathlib.Path(resume)
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a training checkpoint (no {STATE})")
    return verify_checkpoint(path)


def load_tensors(path, *, map_location=None):
    """``torch.load`` of a checkpoint ``.pt`` file without running code (``weights_only``).

    Raises:
        CheckpointError: naming the file (unreadable, or holding objects other than tensors,
            numbers, strings and containers of them: possibly a planted pickle).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (truncated zip), EOFError ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot load checkpoint file {path}: {first} (only tensors and plain values are "
            f"accepted; a file with other objects is refused)"
        ) from None


def rng_state() -> dict:
    """torch's global RNG states (used by LoRA dropout). The noise draws need none: they are
    seeded per sample (see ``trainer._sample_generator``)."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, source="the RNG state") -> None:
    try:
        torch.set_rng_state(state["torch_cpu"])
        if "torch_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{source}: not a valid RNG state ({e})") from None


def begin_write(output_dir, step: int) -> pathlib.Path:
    """A fresh temporary folder for the checkpoint of ``step`` (made by the main process)."""
    tmp = checkpoint_dir(output_dir, step).with_name(f"{TMP_PREFIX}{step:06d}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finish_write(tmp: pathlib.Path, state: dict, keep: int) -> pathlib.Path:
    """Write ``state.json`` and then ``files.json`` (sizes and hashes of everything in the folder),
    rename the temporary folder to its final name, then drop this run's (``state["run_id"]``) older
    checkpoints beyond the newest ``keep`` (``keep <= 0`` keeps all)."""
    _write_atomic(tmp / STATE, json.dumps(state, indent=1))
    files = {
        f.name: {"size": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(tmp.iterdir())
        if f.is_file() and f.name != FILES
    }
    _write_atomic(tmp / FILES, json.dumps({"files": files}, indent=1))
    final = tmp.with_name(tmp.name[len("tmp-") :])
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        rotate(final.parent.parent, state.get("run_id"), keep)
    return final


def rotate(output_dir, run_id: Optional[str], keep: int) -> None:
    """Delete this run's checkpoints beyond the newest ``keep``; checkpoints of other runs (or
    without a run id) are left alone."""
    if run_id is None or keep <= 0:
        return
    mine = [p for p in list_checkpoints(output_dir) if run_id_of(p) == run_id]
    for old in mine[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path) -> dict:
    f = pathlib.Path(path) / STATE
    try:
        state = json.loads(f.read_text())
        for key in ("step", "epoch", "position", "settings"):
            state[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint file {f} is not a valid checkpoint state ({type(e).__name__}: {e})"
        ) from None
    return state

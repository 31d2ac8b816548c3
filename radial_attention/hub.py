"""Find a model's files on disk: a local folder, or a Hugging Face Hub id looked up in the local
Hugging Face cache (downloaded only when it is not there and the Hub may be used).

Every command that takes ``--model`` (``generate``, ``encode``, ``train-lora``) goes through
:func:`resolve_model`, then loads from the folder it returns, so diffusers never goes to the
network itself (its own Hub lookup retries for tens of seconds offline and then fails with a
misleading "no file named model_index.json").

The cache location and offline mode are read from the environment at call time, as
``huggingface_hub`` documents them: ``HF_HUB_CACHE`` (else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``) and ``HF_HUB_OFFLINE=1``. Offline, the network is never tried.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable, List, Optional, Sequence

# A diffusers pipeline folder's table of its components.
_INDEX_FILE = "model_index.json"


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a local folder nor available from the Hugging Face cache / Hub.
    The message is one line: where it looked and how to get the files."""


def is_hub_id(name: str) -> bool:
    """``org/name`` that the Hub accepts as a repository id (``huggingface_hub``'s own rule: dots
    are fine, as in ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``; no ``--`` / ``..``, at most 96 chars)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or name.count("/") != 1:
        return False  # bare names ("gpt2") are legacy Hub ids; for --model they are almost always typos
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) as set now, or as
    ``huggingface_hub`` read it at import (it then refuses every request anyway)."""
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> pathlib.Path:
    """The Hugging Face Hub cache folder, from the environment as it is now."""
    from huggingface_hub import constants

    def expand(p: str) -> str:
        return os.path.expandvars(os.path.expanduser(p))

    if os.environ.get("HF_HUB_CACHE"):
        return pathlib.Path(expand(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return pathlib.Path(expand(os.environ["HF_HOME"])) / "hub"
    return pathlib.Path(constants.HF_HUB_CACHE)


def cache_repo_dir(repo_id: str, cache_dir: Optional[os.PathLike] = None) -> pathlib.Path:
    """Where the cache keeps a model repo: ``<cache>/models--Org--Name``."""
    return pathlib.Path(cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def fetch_command(repo_id: str) -> str:
    # huggingface_hub >= 1.0 ships `hf`; `huggingface-cli` is gone in 2.x.
    return f"hf download {repo_id}"


def pipeline_components(index: dict) -> List[str]:
    """The component folders a ``model_index.json`` lists (``[library, class]`` entries that are
    not ``[null, null]``), e.g. ``["scheduler", "text_encoder", "tokenizer", "transformer", "vae"]``."""
    return sorted(
        k
        for k, v in index.items()
        if not k.startswith("_")
        and isinstance(v, (list, tuple))
        and len(v) == 2
        and v[0] is not None
        and v[1] is not None
    )


def _patterns(components: Iterable[str]) -> List[str]:
    return [_INDEX_FILE] + [f"{c}/*" for c in components]


def _missing(folder: pathlib.Path, components: Sequence[str]) -> List[str]:
    """What of ``model_index.json`` and the component folders is absent (or empty) under ``folder``."""
    out = [] if (folder / _INDEX_FILE).is_file() else [_INDEX_FILE]
    for c in components:
        d = folder / c
        if not d.is_dir() or not any(d.iterdir()):
            out.append(f"{c}/")
    return out


def _wanted(index: dict, components: Optional[Sequence[str]], skip: Sequence[str]) -> List[str]:
    listed = pipeline_components(index)
    wanted = listed if components is None else [c for c in components if c in listed]
    return [c for c in wanted if c not in skip]


def _download(
    repo_id: str, *, cache_dir: pathlib.Path, allow_patterns: Optional[List[str]], local_files_only: bool
) -> str:
    """``huggingface_hub.snapshot_download`` (its tqdm bars show the download). A module-level
    name so tests can check that offline lookups never reach it with ``local_files_only=False``."""
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id, cache_dir=str(cache_dir), allow_patterns=allow_patterns, local_files_only=local_files_only
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def resolve_model(
    model: str,
    *,
    components: Optional[Sequence[str]] = None,
    skip: Sequence[str] = (),
    extra_files: Sequence[str] = (),
    local_ok: Optional[str] = None,
) -> pathlib.Path:
    """The local folder holding ``model``'s files.

    Args:
        model: a local folder (returned as it is; callers check its layout), or a Hub id
            ``org/name`` of a diffusers pipeline repo.
        components: for a Hub id, the pipeline components needed (e.g. ``["transformer",
            "scheduler"]``); ``None``: all that ``model_index.json`` lists. Only those are
            downloaded, so ``encode`` does not fetch a 28 GB transformer.
        skip: components not needed (e.g. ``["transformer", "transformer_2"]``).
        extra_files: single files of skipped components to fetch too, when the repo has them
            (e.g. ``["transformer/config.json"]``); not required in the cache.
        local_ok: what else ``model`` may be besides a folder or Hub id (for the error message,
            e.g. ``"a built-in tiny model (tiny-wan, tiny-hunyuan)"``).

    Returns:
        The folder (for a Hub id: the snapshot in the cache, with ``model_index.json`` and the
        needed components).

    Raises:
        ModelNotFoundError: not a folder and not a Hub id; or a Hub id not (completely) in the
            cache while offline or when the download fails. The message names the folder and
            the cache path it checked and the ``hf download`` command that fetches the model.
    """
    path = pathlib.Path(os.path.expanduser(str(model)))
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"--model {model!r} is a file; expected a model folder or a Hugging Face Hub id (org/name)"
        )
    if not is_hub_id(str(model)):
        others = f", nor {local_ok}" if local_ok else ""
        raise ModelNotFoundError(
            f"no model folder {path.absolute()} (no such folder), and {model!r} is not a Hugging Face Hub id "
            f"of the form org/name{others}"
        )
    return _resolve_hub_id(str(model), components=components, skip=skip, extra_files=extra_files)


def _resolve_hub_id(
    repo_id: str, *, components: Optional[Sequence[str]], skip: Sequence[str], extra_files: Sequence[str] = ()
) -> pathlib.Path:
    cache = hub_cache_dir()
    repo_dir = cache_repo_dir(repo_id, cache)
    offline = hub_offline()
    local_folder = pathlib.Path(os.path.expanduser(repo_id)).absolute()
    get_it = (
        f"fetch it with `{fetch_command(repo_id)}`"
        + (" on a machine with network" if offline else "")
        + " or pass a local folder written by save_pretrained"
    )

    # 1. The cache, never the network.
    cached_problem = None
    try:
        snap = pathlib.Path(_download(repo_id, cache_dir=cache, allow_patterns=[_INDEX_FILE], local_files_only=True))
        if not (snap / _INDEX_FILE).is_file():
            raise FileNotFoundError(f"{snap / _INDEX_FILE} is missing")
        wanted = _wanted(_read_index(snap), components, skip)
        # The library checks the snapshot against its cached file listing when it has one.
        snap = pathlib.Path(
            _download(repo_id, cache_dir=cache, allow_patterns=_patterns(wanted), local_files_only=True)
        )
        missing = _missing(snap, wanted)
        if not missing:
            return snap
        cached_problem = f"the cached copy {snap} lacks {', '.join(missing)}"
    except ModelNotFoundError:
        raise
    except Exception as e:  # LocalEntryNotFoundError, IncompleteSnapshotError, unreadable files
        cached_problem = (
            f"no complete copy in the Hugging Face cache at {repo_dir} ({_first_line(e)})"
            if repo_dir.exists()
            else f"the Hugging Face cache has no copy at {repo_dir}"
        )

    if offline:
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local folder ({local_folder} does not exist) and {cached_problem}; HF_HUB_OFFLINE "
            f"is set, so the Hub was not asked: {get_it}"
        )

    # 2. Download what is missing (the library shows progress bars).
    try:
        snap = pathlib.Path(_download(repo_id, cache_dir=cache, allow_patterns=[_INDEX_FILE], local_files_only=False))
        wanted = _wanted(_read_index(snap), components, skip)
        snap = pathlib.Path(
            _download(
                repo_id, cache_dir=cache, allow_patterns=_patterns(wanted) + list(extra_files), local_files_only=False
            )
        )
    except ModelNotFoundError:
        raise
    except Exception as e:  # no network, unknown or gated repo, disk full ...
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local folder ({local_folder} does not exist), {cached_problem}, and downloading "
            f"it from the Hugging Face Hub failed ({_first_line(e)}): {get_it} (HF_HUB_OFFLINE=1 skips the Hub)"
        ) from None
    missing = _missing(snap, wanted)
    if missing:
        raise ModelNotFoundError(f"the download of {repo_id!r} to {snap} lacks {', '.join(missing)}: {get_it}")
    return snap


def _read_index(folder: pathlib.Path) -> dict:
    index_path = folder / _INDEX_FILE
    if not index_path.is_file():
        raise ModelNotFoundError(f"{folder} has no {_INDEX_FILE}: not a diffusers pipeline repository")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotFoundError(f"{index_path} is not readable JSON ({_first_line(e)})") from None
    if not isinstance(index, dict):
        raise ModelNotFoundError(f"{index_path} is not a JSON object")
    return index


def find_cached(model: str) -> Optional[pathlib.Path]:
    """The local folder of ``model`` if it is one, or its snapshot folder if the Hub id is in the
    cache; ``None`` otherwise. Never uses the network and never raises."""
    path = pathlib.Path(os.path.expanduser(str(model)))
    if path.is_dir():
        return path
    if not is_hub_id(str(model)):
        return None
    try:
        return pathlib.Path(
            _download(str(model), cache_dir=hub_cache_dir(), allow_patterns=[_INDEX_FILE], local_files_only=True)
        )
    except Exception:
        return None


def dtype_kwarg(dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype=`` on diffusers >= 0.42 (which deprecates
    ``torch_dtype``), ``torch_dtype=`` before."""
    import diffusers

    try:
        major, minor = (int(x) for x in diffusers.__version__.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    return {"dtype": dtype} if (major, minor) >= (0, 42) else {"torch_dtype": dtype}


def load_kwargs(dtype) -> dict:
    """Keyword arguments of every ``from_pretrained`` here: the dtype, and safetensors only, so
    that a model folder never makes diffusers fall back to pickled ``.bin`` weights (which can run
    code when loaded)."""
    return {**dtype_kwarg(dtype), "use_safetensors": True}


class loading_errors:
    """``with loading_errors(model, folder): X.from_pretrained(folder, ...)``: an ``OSError`` from
    loading (a missing weights file in a partial download, a ``.bin``-only folder) becomes one
    :class:`ModelNotFoundError` line naming the folder and, for a Hub id, how to complete it."""

    def __init__(self, model: str, folder: os.PathLike):
        self.model, self.folder = str(model), pathlib.Path(folder)

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or not isinstance(err, OSError) or isinstance(err, ModelNotFoundError):
            return False
        fix = (
            f"complete the download with `{fetch_command(self.model)}`"
            if is_hub_id(self.model) and not pathlib.Path(os.path.expanduser(self.model)).is_dir()
            else "write the folder with save_pretrained (safetensors weights)"
        )
        raise ModelNotFoundError(
            f"could not load {self.model!r} from {self.folder} ({_first_line(err)}): {fix}"
        ) from None

"""The package's layers (issue 13): imports go down only, torch.distributed code knows no model
library, library code imports no test fixture and sets no workplace environment, and the moved
modules keep their old names for one release behind a DeprecationWarning."""

import ast
import os
import pathlib

import pytest
import torch

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "radial_attention"

# Lower imports nothing above it. Equal ranks may import each other.
RANK = {
    "_lazy": 0,
    "_deprecation": 0,
    "_torch_floor": 0,  # the torch version check the mask layer runs first
    "models": 0,  # the model registry: plain data every layer reads (mask.video_layout too)
    "mask": 1,
    "ops": 2,
    "distributed": 3,
    "hub": 4,
    "integrations": 4,
    "train": 5,
    "testing": 6,
    "bench": 6,
    "cli": 7,
    "__main__": 8,
    "": 8,
}
# Upward imports on purpose, each with its reason.
ALLOWED_UP = {
    ("train/model.py", "radial_attention.testing"),  # the built-in `--model tiny-wan` / `tiny-hunyuan`
    ("train/data.py", "radial_attention.testing.data"),  # deprecated alias of write_synthetic_dataset
}
MODEL_LIBRARIES = ("diffusers", "transformers", "peft")


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: pathlib.Path):
    """``(line, imported module)`` of every import statement in a file, function-level ones too."""
    rel = path.relative_to(PACKAGE)
    package = ["radial_attention", *rel.parent.parts]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package[: len(package) - (node.level - 1)]
                yield node.lineno, ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.lineno, node.module


def _files():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_imports_go_down_the_layers():
    wrong = []
    for path in _files():
        rel = path.relative_to(PACKAGE).as_posix()
        here = rel.split("/")[0].removesuffix(".py") if "/" in rel else rel.removesuffix(".py")
        here = "" if here == "__init__" else here
        for line, module in _imports(path):
            if not module.startswith("radial_attention."):
                continue
            there = _layer(module)
            if RANK[there] > RANK[here] and (rel, module) not in ALLOWED_UP:
                wrong.append(f"{rel}:{line} ({here}) imports {module} ({there})")
    assert not wrong, "imports that go up the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("layer", ["models", "mask", "ops", "distributed"])
def test_torch_layers_import_no_model_library(layer):
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in _files()
        if path.relative_to(PACKAGE).parts[0] == layer
        for line, module in _imports(path)
        if module.split(".")[0] in MODEL_LIBRARIES or module.startswith("radial_attention.integrations")
    ]
    assert not wrong, wrong


def test_library_imports_no_test_code():
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in _files()
        for line, module in _imports(path)
        if module.split(".")[0] in ("tests", "attention_oracle", "conftest")
    ]
    assert not wrong, wrong


def test_init_distributed_sets_no_environment(monkeypatch):
    """NCCL settings are the launcher's business (examples/*.sh, docs/multi-gpu.md), not the library's."""
    from radial_attention.distributed import init_distributed

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST"):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    ctx = init_distributed(backend="gloo")
    assert (ctx.world_size, ctx.backend, ctx.device.type, ctx.distributed) == (1, None, "cpu", False)
    assert dict(os.environ) == before


def test_init_distributed_is_the_training_bootstrap_too(monkeypatch):
    """train's setup is init_distributed: same context type, explicit device kept, clear launch errors."""
    import torch.distributed as dist

    from radial_attention.distributed import DistributedContext, init_distributed
    from radial_attention.train import data_parallel as dp

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = dp.setup("cpu")
    assert isinstance(info, DistributedContext) and info.device == torch.device("cpu") and info.is_main
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: pytest.fail("must not start a group"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 but MASTER_ADDR is not set: launch with torchrun"):
        dp.setup("cpu")
    with pytest.raises(ValueError, match="backend must be 'nccl', 'gloo' or None"):
        init_distributed(backend="mpi")


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("radial_attention.integrations.diffusers.tiny", "radial_attention.testing.tiny", "tiny_wan_transformer"),
        (
            "radial_attention.distributed.diffusers_cp",
            "radial_attention.integrations.diffusers.context_parallel",
            "enable_sequence_parallel",
        ),
        ("radial_attention.distributed.generate", "radial_attention.cli.sequence_parallel", "SequenceParallelRun"),
    ],
)
def test_moved_modules_keep_their_old_name_with_a_warning(old, new, name):
    import importlib
    import sys

    sys.modules.pop(old, None)  # a fresh import warns
    with pytest.warns(DeprecationWarning, match=f"{old} has moved to {new}"):
        alias = importlib.import_module(old)
    assert getattr(alias, name) is getattr(importlib.import_module(new), name)


def test_write_synthetic_dataset_old_name_warns_and_writes(tmp_path):
    from radial_attention.train.data import ModelSpec, validate_dataset
    from radial_attention.train.data import write_synthetic_dataset as old

    spec = ModelSpec("wan", in_channels=4, patch_size=(1, 2, 2), text_dim=8)
    with pytest.warns(DeprecationWarning, match="radial_attention.testing.data.write_synthetic_dataset"):
        old(tmp_path, spec, num_samples=1, latent_shape=(4, 2, 4, 4))
    _, samples = validate_dataset(tmp_path, spec)
    assert len(samples) == 1

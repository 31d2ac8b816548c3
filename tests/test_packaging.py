"""What pyproject.toml promises (one version, minimum versions that CI pins, the extras each command
needs) and the CI settings of the test suite itself."""

import importlib.util
import os
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _min_versions(monkeypatch):
    spec = importlib.util.spec_from_file_location("ci_min_versions", ROOT / ".ci" / "min_versions.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_version_has_one_source():
    import radial_attention

    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "radial_attention.__version__"}
    assert radial_attention.__version__.count(".") == 2


def test_license_and_typing_marker_ship():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "Copyright (c) 2026 the radial-attention authors" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "radial_attention" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["radial_attention"]


def test_extras_hold_what_their_commands_import():
    project = _pyproject()["project"]
    names = {
        extra: {r.split(">")[0].split("=")[0].split("[")[0] for r in reqs}
        for extra, reqs in project["optional-dependencies"].items()
    }
    core = {r.split(">")[0] for r in project["dependencies"]}
    assert core == {"torch", "numpy"}  # `import radial_attention` and `mask` need only these
    assert {"tqdm", "imageio", "imageio-ffmpeg", "peft", "safetensors"} <= names["train"]  # train-lora, encode
    assert {"imageio", "imageio-ffmpeg", "diffusers", "transformers"} <= names["diffusers"]  # generate, demo
    assert "ruff" in names["dev"]


def test_min_versions_pins_every_floor_but_torch(monkeypatch):
    mv = _min_versions(monkeypatch)
    pins = mv.floors(["diffusers", "train", "triton", "test"])
    project = _pyproject()["project"]
    floored = [r for r in project["optional-dependencies"]["train"] if ">=" in r]
    assert floored and all(pins[r.split(">=")[0].lower()] == r.split(">=")[1] for r in floored)
    assert "torch" not in pins and pins["diffusers"] == "0.41" and pins["triton"] == "3.4"
    with pytest.raises(SystemExit, match=r"no extra\(s\) \['nope'\]"):
        mv.floors(["nope"])


def test_min_versions_refuses_two_floors_of_one_package(monkeypatch, tmp_path):
    mv = _min_versions(monkeypatch)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["numpy"]\n[project.optional-dependencies]\n'
        'a = ["diffusers>=0.41"]\nb = ["diffusers>=0.40"]\n'
    )
    monkeypatch.setattr(mv, "ROOT", tmp_path)
    assert mv.floors(["a"]) == {"diffusers": "0.41"}
    with pytest.raises(SystemExit, match="diffusers has two floors"):
        mv.floors(["a", "b"])


def test_hypothesis_is_derandomized_exactly_in_ci():
    """.ci/run sets CI=true; tests/conftest.py then loads the derandomized profile."""
    from hypothesis import settings

    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    assert settings.get_profile("ci").derandomize
    assert settings.default.derandomize == in_ci


def test_an_older_torch_than_the_floor_is_refused_in_one_line():
    from radial_attention._torch_floor import MIN_TORCH, check_torch, torch_version_tuple

    assert torch_version_tuple("2.11.0+cu130") == (2, 11) and torch_version_tuple("2.6.0a0+git1234") == (2, 6)
    check_torch("2.6.0")  # the floor itself is fine
    check_torch(torch.__version__)  # and this environment's
    with pytest.raises(ImportError, match=r"needs torch >= 2\.6, found torch 2\.5\.1\+cpu"):
        check_torch("2.5.1+cpu")
    # the floor is the one pyproject.toml states
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}"' in text

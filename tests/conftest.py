"""Shared test setup: deterministic seeds, paths to test data, the hypothesis profile."""

import os
import pathlib

import pytest
import torch

DATA = pathlib.Path(__file__).parent / "data"

# In CI (CI=true, set by .ci/run) hypothesis draws the same examples on every run, so that a red CI
# is reproducible and never a lucky draw; locally it explores new examples each run. conftest is
# imported before the test modules, so their settings(...) objects inherit the loaded profile.
try:
    from hypothesis import settings
except ImportError:  # hypothesis is in the `test` extra; tests that need it import it themselves
    settings = None
if settings is not None:
    settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA

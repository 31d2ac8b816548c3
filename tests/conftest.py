"""Shared test setup: deterministic seeds, paths to test data."""

import pathlib

import pytest
import torch

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA

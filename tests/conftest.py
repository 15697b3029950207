"""Shared fixtures; single-threaded torch keeps the tests fast and reproducible."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: holds ``fashion-mnist/`` (600 train and 400 test images, gzip IDX)."""
    return DATA_DIR

"""Shared fixtures (helpers that are not fixtures live in ``helpers.py``); single-threaded
torch keeps the tests fast and reproducible."""

from pathlib import Path

import pytest
import torch

import helpers

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/fixtures``: holds ``fashion-mnist/`` (600 train and 400 test images, gzip IDX)."""
    return helpers.FIXTURES


@pytest.fixture
def run_parties():
    """The two-party runner :func:`helpers.run_parties`."""
    return helpers.run_parties


@pytest.fixture(scope="session")
def tiny_lenet(tmp_path_factory, data_dir) -> Path:
    """A LeNet-5 (width 2) trained for one epoch on the 600 shipped training images."""
    from safenet.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny") / "lenet.pt"
    cfg = TrainConfig(arch="lenet5", epochs=1, batch_size=64, limit=600, width=2)
    train(cfg, out, data_dir, log=lambda _m: None)
    return out

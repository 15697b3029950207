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


def _run_parties(server_fn, client_fn, timeout=60):
    """Run ``server_fn(conn)`` in a thread and ``client_fn(conn)`` here, over a socketpair.

    Returns ``{"server": ..., "client": ...}``; the server's exception, if any, is re-raised
    (its end is closed first, so the client cannot wait forever).
    """
    import threading

    from safenet.channel import connection_pair

    a, b = connection_pair(timeout=timeout)
    out, err = {}, []

    def srv():
        try:
            out["server"] = server_fn(a)
        except BaseException as e:
            err.append(e)
            a.close()

    t = threading.Thread(target=srv)
    t.start()
    try:
        out["client"] = client_fn(b)
    finally:
        t.join(timeout)
    if err:
        raise err[0]
    return out


@pytest.fixture
def run_parties():
    """The two-party runner :func:`_run_parties`."""
    return _run_parties


@pytest.fixture(scope="session")
def tiny_lenet(tmp_path_factory, data_dir) -> Path:
    """A LeNet-5 (width 2) trained for one epoch on the 600 shipped training images."""
    from safenet.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny") / "lenet.pt"
    cfg = TrainConfig(arch="lenet5", epochs=1, batch_size=64, limit=600, width=2)
    train(cfg, out, data_dir, log=lambda _m: None)
    return out


def serve_cli(*args):
    """Start ``safenet serve ARGS --port 0`` as a process; returns (process, port)."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "safenet.cli", "serve", "--port", "0", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    if "safenet serve" not in line:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])

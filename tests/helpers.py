"""Helpers the tests share: paths, a two-party runner over a socket pair, a served CLI
process, and CIFAR files in the official layout. Fixtures stay in ``conftest.py``."""

import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np

#: the repository root (examples/, bench/ and docs/ live there)
REPO = Path(__file__).resolve().parents[1]
#: ``tests/fixtures``: ``fashion-mnist/`` (600 train and 400 test images, gzip IDX)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run_parties(server_fn, client_fn, timeout=60):
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


CIFAR = {
    # name: (folder, archive, {split: files}, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        b"labels",
        10,
    ),
    "cifar100": (
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        {"train": ["train"], "test": ["test"]},
        b"fine_labels",
        100,
    ),
}


def make_cifar(root: Path, name: str, archive: bool, per_file: int = 3) -> dict:
    """Write CIFAR files in the official python-pickle layout; returns the expected arrays."""
    folder, archive_name, files, label_key, classes = CIFAR[name]
    rng = np.random.default_rng(len(name))
    expected = {}
    blobs = {}
    for split, names in files.items():
        xs, ys = [], []
        for fn in names:
            data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, size=per_file).tolist()
            entry = {b"batch_label": fn.encode(), b"data": data, label_key: labels}
            if name == "cifar100":
                entry[b"coarse_labels"] = [v // 5 for v in labels]
            blobs[fn] = pickle.dumps(entry, protocol=2)
            xs.append(data)
            ys += labels
        expected[split] = (np.concatenate(xs), np.array(ys))
    if archive:
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / archive_name, "w:gz") as tar:
            for fn, blob in blobs.items():
                info = tarfile.TarInfo(f"{folder}/{fn}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (root / folder).mkdir(parents=True)
        for fn, blob in blobs.items():
            (root / folder / fn).write_bytes(blob)
    return expected


#: arrays of several dtypes, shapes and layouts for channel round trips
ARRAYS = [
    np.arange(12, dtype=np.uint64).reshape(3, 2, 2),
    np.array(3.5),
    np.zeros((0, 4), dtype=np.int16),
    np.random.default_rng(0).random((5, 7)).astype(">f4"),
    np.arange(30, dtype=np.int32).reshape(5, 6)[:, ::2],  # not contiguous
]


def exchange(a, b):
    """One conversation over any pair of channel ends (arrays echoed, bytes, JSON, all in
    the ``offline`` phase); returns what ``a`` received."""
    got = []

    def peer():
        b.phase = "offline"
        for _ in ARRAYS:
            b.send_array(b.recv_array("x"), "echo")
        b.send(b.recv("raw") + b"!", "raw")
        b.send_json({"got": b.recv_json("j")}, "j")

    t = threading.Thread(target=peer)
    t.start()
    a.phase = "offline"
    for x in ARRAYS:
        a.send_array(x, "x")
        got.append(a.recv_array("echo"))
    a.send(b"hello", "raw")
    got.append(a.recv("raw"))
    a.send_json([1, "two"], "j")
    got.append(a.recv_json("j"))
    t.join(5)
    assert not t.is_alive()
    return got

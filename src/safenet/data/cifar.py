"""Reader for the standard CIFAR-10/100 python-pickle archives (extracted or ``.tar.gz``)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from safenet.data.errors import DatasetError

# name -> (folder inside the archive, train files, test files, label key)
LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        d = pickle.loads(blob, encoding="bytes")  # noqa: S301 - the user's own dataset files
    except Exception as e:  # pickle raises many types on corrupt data
        raise DatasetError(f"{where} is not a CIFAR pickle: {e}") from e
    if not isinstance(d, dict) or b"data" not in d:
        raise DatasetError(f"{where} is not a CIFAR batch (no 'data' entry)")
    return d


def load_cifar(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one split of CIFAR-10/100.

    ``root`` holds either the extracted folder (``cifar-10-batches-py`` /
    ``cifar-100-python``) or the official ``.tar.gz`` archive.
    """
    folder, train_files, test_files, label_key = LAYOUT[name]
    files = train_files if split == "train" else test_files
    blobs: dict[str, bytes] = {}
    if (root / folder).is_dir():
        for fn in files:
            p = root / folder / fn
            if not p.is_file():
                raise DatasetError(f"{name}: {p} is missing")
            blobs[fn] = p.read_bytes()
    elif (root / ARCHIVES[name]).is_file():
        try:
            with tarfile.open(root / ARCHIVES[name]) as tar:
                for fn in files:
                    member = tar.extractfile(f"{folder}/{fn}")
                    if member is None:
                        raise DatasetError(f"{name}: {fn} missing from {ARCHIVES[name]}")
                    blobs[fn] = member.read()
        except (tarfile.TarError, KeyError, OSError, EOFError) as e:
            raise DatasetError(f"{name}: archive {root / ARCHIVES[name]} is corrupt: {e}") from e
    else:
        raise DatasetError(
            f"{name} not found under {root}: expected {root / folder}/ or {root / ARCHIVES[name]}"
        )
    xs, ys = [], []
    for fn, blob in blobs.items():
        d = _unpickle(blob, f"{name}/{fn}")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d.get(label_key, []), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DatasetError(f"{name}/{fn} has unexpected shape {data.shape} / {labels.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)

"""Reader for the standard CIFAR-10/100 python-pickle archives (extracted or ``.tar.gz``).

The batches are pickles, so they are read with :class:`_CifarUnpickler`, which builds only
what a CIFAR batch holds (dicts, lists, bytes, numbers and uint8 numpy arrays) and refuses
every other global with a :class:`DatasetError`: a crafted batch cannot run code.
An archive under an official name (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``)
must also match the official MD5 digest. To load a re-packed archive, extract it: the
folder layout (``cifar-10-batches-py/``, ``cifar-100-python/``) is not digest-checked.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from collections.abc import Callable
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
# MD5 of the official archives (as published on https://www.cs.toronto.edu/~kriz/cifar.html)
OFFICIAL_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin-1")


def _array_reconstructor() -> Callable[..., object]:
    """numpy's array reconstructor, the global an array's pickle names first.

    Its module is ``numpy.core.multiarray`` before numpy 2 (the official archives) and
    ``numpy._core.multiarray`` since, so it is taken from an array's reduction, not by name.
    """
    reduced = np.empty(0, np.uint8).__reduce__()
    if isinstance(reduced, str):  # what singletons reduce to; an array never does
        raise TypeError("a numpy array reduced to a global name, not a reconstructor")
    return reduced[0]


_RECONSTRUCT = _array_reconstructor()
_ALLOWED: dict[tuple[str, str], Callable[..., object]] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,  # bytes in pickles written by Python 3
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of a CIFAR batch (see ``_ALLOWED``)."""

    def find_class(self, module: str, name: str) -> Callable[..., object]:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(f"refused pickle global {module}.{name}") from None


def _unpickle(blob: bytes, where: str) -> dict:
    """One CIFAR batch (a dict with bytes keys), read with the restricted unpickler."""
    try:
        d = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # refused globals, and the many types pickle raises on bad data
        raise DatasetError(f"{where} is not a CIFAR pickle: {e}") from e
    if not isinstance(d, dict) or b"data" not in d:
        raise DatasetError(f"{where} is not a CIFAR batch (no 'data' entry)")
    return d


def _check_digest(path: Path) -> None:
    """Refuse an archive with an official name whose MD5 is not the official one."""
    expected = OFFICIAL_MD5.get(path.name)
    if expected is None:
        return
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    got = md5.hexdigest()
    if got != expected:
        raise DatasetError(
            f"{path} is corrupt or not the official archive (MD5 {got}, expected {expected}): "
            "delete it and fetch it again, or extract a re-packed archive next to it"
        )


def _read_folder(name: str, folder: Path, files: list[str]) -> dict[str, bytes]:
    blobs = {}
    for fn in files:
        p = folder / fn
        if not p.is_file():
            raise DatasetError(f"{name}: {p} is missing")
        blobs[fn] = p.read_bytes()
    return blobs


def _read_archive(name: str, archive: Path, folder: str, files: list[str]) -> dict[str, bytes]:
    blobs = {}
    try:
        _check_digest(archive)
        with tarfile.open(archive) as tar:
            for fn in files:
                member = tar.extractfile(f"{folder}/{fn}")
                if member is None:
                    raise DatasetError(f"{name}: {fn} missing from {archive.name}")
                blobs[fn] = member.read()
    except (tarfile.TarError, KeyError, OSError, EOFError) as e:
        raise DatasetError(f"{name}: archive {archive} is corrupt: {e}") from e
    return blobs


def load_cifar(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one split of CIFAR-10/100.

    ``root`` holds either the extracted folder (``cifar-10-batches-py`` /
    ``cifar-100-python``) or the official ``.tar.gz`` archive (MD5-checked).
    """
    folder, train_files, test_files, label_key = LAYOUT[name]
    files = train_files if split == "train" else test_files
    if (root / folder).is_dir():
        blobs = _read_folder(name, root / folder, files)
    elif (root / ARCHIVES[name]).is_file():
        blobs = _read_archive(name, root / ARCHIVES[name], folder, files)
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

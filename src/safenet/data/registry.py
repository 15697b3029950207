"""Dataset registry and loading: which datasets exist, where they live, how they look."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safenet.data.cifar import load_cifar
from safenet.data.errors import DatasetError
from safenet.data.idx import read_idx
from safenet.data.images import folder_dataset, is_folder

ENV_VAR = "SAFENET_DATA_DIR"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shape, classes and normalisation statistics."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: tuple[int, int]  # train, test
    classes: tuple[str, ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        1,
        28,
        10,
        (0.2860,),
        (0.3530,),
        (60000, 10000),
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "mnist": DatasetInfo(
        "mnist", 1, 28, 10, (0.1307,), (0.3081,), (60000, 10000), tuple(str(i) for i in range(10))
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        3,
        32,
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        (50000, 10000),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (50000, 10000)
    ),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where a system package may already have put a dataset (Debian: dataset-fashion-mnist).
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (a known dataset or an image folder,
    ``folder:PATH[:SIZE]``: :mod:`safenet.data.images`), or a clear error."""
    if is_folder(name):
        facts, _ = folder_dataset(name)
        return DatasetInfo(**facts)
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or an image folder "
            "as folder:PATH (one sub-folder of pictures per class)"
        ) from None


def default_data_dir() -> Path:
    """``$SAFENET_DATA_DIR`` if set, else ``~/.cache/safenet/data``."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "safenet" / "data"


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_dirs(name: str, data_dir: str | Path | None, system: bool = True) -> list[Path]:
    """Folders searched for ``name``, most specific first (system copies last, if asked)."""
    roots = [Path(data_dir)] if data_dir is not None else [default_data_dir()]
    out = []
    for r in roots:
        out += [r / name, r]
    return out + (SYSTEM_DIRS.get(name, []) if system else [])


def load_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None, system: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C, H, W) uint8 and labels (N,) int64 of a split of a known dataset.

    Looks in ``data_dir`` (or ``$SAFENET_DATA_DIR``, or ``~/.cache/safenet/data``), in a
    sub-folder named after the dataset or directly, then (``system``) in system locations.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {SPLITS}")
    if is_folder(name):
        x, y = folder_dataset(name)[1][split]
        return x.copy(), y.copy()
    info = dataset_info(name)
    dirs = candidate_dirs(name, data_dir, system)
    if name.startswith("cifar"):
        for d in dirs:
            try:
                return load_cifar(name, d, split)
            except DatasetError as e:
                if "not found under" not in str(e):
                    raise
        raise DatasetError(
            f"{name} not found in {', '.join(map(str, dirs))}. Put the official python "
            f"archive (or its extracted folder) there, or run `safenet data fetch {name}` "
            "on a machine with internet access."
        )
    img_stem, lbl_stem = IDX_FILES[split]
    for d in dirs:
        img, lbl = _find_idx(d, img_stem), _find_idx(d, lbl_stem)
        if img is None or lbl is None:
            continue
        x, y = read_idx(img), read_idx(lbl)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{name} in {d}: images {x.shape} and labels {y.shape} disagree")
        if int(y.max(initial=0)) >= info.num_classes:
            raise DatasetError(f"{name} in {d}: label {int(y.max())} out of range")
        return x[:, None].copy(), y.astype(np.int64)
    raise DatasetError(
        f"{name} ({split}) not found in {', '.join(map(str, dirs))}. "
        f"Run `safenet data fetch {name}` (or pass --data-dir / set ${ENV_VAR})."
    )

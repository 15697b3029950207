"""Your own pictures: image folders as datasets, and one photo as a model input.

An **image folder** is named ``folder:PATH`` or ``folder:PATH:SIZE`` wherever a dataset name
goes. ``PATH`` holds one sub-folder per class (``PATH/cat/*.jpg``, ``PATH/dog/*.png``), or
``train/`` and ``test/`` folders of that form; without ``test/`` every fifth image of a class
(sorted by name) is the test split. Pictures are read with Pillow, converted to RGB (or to
grey when every picture is grey), resized so that the shorter side is ``SIZE`` (default 32)
and centre-cropped to ``SIZE x SIZE``. The normalisation (per-channel mean and standard
deviation of the training split) is computed once per folder and travels with every model
trained on it: in the checkpoint and in the public plan (:func:`preprocessing`), so that a
client prepares its picture exactly as the model was trained (:func:`load_image`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from safenet.data.errors import DatasetError

__all__ = [
    "PREFIX",
    "canonical",
    "folder_dataset",
    "is_folder",
    "load_image",
    "parse_folder",
    "preprocessing",
    "prepare_image",
]

PREFIX = "folder:"
DEFAULT_SIZE = 32
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: what :func:`prepare_image` does, named in the plan so a client can check it knows how
RESIZE = "shorter-side-then-centre-crop"


def is_folder(name: str) -> bool:
    """True for an image-folder dataset name (``folder:PATH[:SIZE]``)."""
    return str(name).startswith(PREFIX)


def parse_folder(name: str) -> tuple[Path, int]:
    """``(PATH, SIZE)`` of ``folder:PATH[:SIZE]``."""
    rest = str(name)[len(PREFIX) :]
    head, sep, tail = rest.rpartition(":")
    path, size = (head, int(tail)) if sep and tail.isdigit() else (rest, DEFAULT_SIZE)
    if size < 1:
        raise DatasetError(f"{name}: the image size must be positive")
    return Path(path).expanduser().resolve(), size


def canonical(name: str) -> str:
    """An image-folder name with its absolute path and size (``folder:/abs/path:SIZE``), so a
    checkpoint finds its pictures from any working directory; other names unchanged."""
    if not is_folder(name):
        return name
    path, size = parse_folder(name)
    return f"{PREFIX}{path}:{size}"


def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{root}: no class folders (expected {root}/<class>/<picture>)")
    return dirs


def _files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())


def _listing(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """Class names and the (file, label) pairs of each split."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    if (root / "train").is_dir() and not (root / "test").is_dir():
        return _listing_split(root / "train")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = tuple(d.name for d in _class_dirs(root / "train"))
        splits = {}
        for split in ("train", "test"):
            found = {d.name for d in _class_dirs(root / split)}
            if not found <= set(classes):
                extra = ", ".join(sorted(found - set(classes)))
                raise DatasetError(f"{root}/{split}: classes {extra} are not in train/")
            splits[split] = [(f, k) for k, c in enumerate(classes)
                             for f in (_files(root / split / c) if c in found else [])]  # fmt: skip
        return classes, splits
    return _listing_split(root)


def _listing_split(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """Class folders under ``root``; every fifth picture of a class is the test split."""
    classes = tuple(d.name for d in _class_dirs(root))
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for k, c in enumerate(classes):
        for j, f in enumerate(_files(root / c)):
            splits["test" if j % 5 == 4 else "train"].append((f, k))
    return classes, splits


def prepare_image(img: Any, size: int, channels: int) -> np.ndarray:
    """A Pillow image -> uint8 ``(channels, size, size)``: converted, shorter side resized to
    ``size`` (bilinear, antialiased), centre-cropped."""
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: not a readable picture ({e})") from e


def _is_grey(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as img:
        return img.mode in ("1", "L", "I;16", "I")


@functools.cache
def folder_dataset(name: str) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Read an image folder once: its facts (``name, channels, image_size, num_classes,
    mean, std, sizes, classes``) and its splits as (uint8 images, int64 labels)."""
    root, size = parse_folder(name)
    classes, splits = _listing(root)
    for split, items in splits.items():
        if not items:
            raise DatasetError(
                f"{root}: no {split} pictures ({', '.join(sorted(SUFFIXES))}); a class needs "
                "at least 5 pictures when the test split is taken from it"
            )
    channels = 1 if all(_is_grey(f) for f, _ in splits["train"]) else 3
    data = {}
    for split, items in splits.items():
        x = np.zeros((len(items), channels, size, size), dtype=np.uint8)
        for i, (f, _) in enumerate(items):
            x[i] = prepare_image(_open(f), size, channels)
        data[split] = (x, np.array([k for _, k in items], dtype=np.int64))
    xf = data["train"][0].astype(np.float64) / 255.0
    facts = {
        "name": name,
        "channels": channels,
        "image_size": size,
        "num_classes": len(classes),
        "mean": tuple(float(m) for m in xf.mean(axis=(0, 2, 3))),
        "std": tuple(max(float(s), 1e-3) for s in xf.std(axis=(0, 2, 3))),
        "sizes": (len(splits["train"]), len(splits["test"])),
        "classes": classes,
    }
    return facts, data


def preprocessing(info: Any) -> dict[str, Any]:
    """What a client must do to a picture for a model trained on ``info`` (a DatasetInfo):
    stored in checkpoints and carried by the public plan (``plan.info["preprocess"]``)."""
    return {
        "channels": int(info.channels),
        "image_size": int(info.image_size),
        "mean": [float(m) for m in info.mean],
        "std": [float(s) for s in info.std],
        "classes": list(info.classes),
        "resize": RESIZE,
    }


def load_image(path: str | Path, prep: dict[str, Any]) -> np.ndarray:
    """One picture file as the model's normalised float input ``(C, H, W)``, prepared as
    ``prep`` (:func:`preprocessing`) says."""
    if prep.get("resize", RESIZE) != RESIZE:
        raise ValueError(f"unknown preprocessing {prep.get('resize')!r}")
    x = prepare_image(_open(Path(path)), int(prep["image_size"]), int(prep["channels"]))
    mean = np.asarray(prep["mean"], dtype=np.float64).reshape(-1, 1, 1)
    std = np.asarray(prep["std"], dtype=np.float64).reshape(-1, 1, 1)
    return (x.astype(np.float64) / 255.0 - mean) / std

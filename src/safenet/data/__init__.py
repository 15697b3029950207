"""Datasets: MNIST and Fashion-MNIST (IDX), CIFAR-10/100 (python pickles), image folders.

The registry (:func:`dataset_info`, :func:`load_dataset`) names them and finds them on disk,
:func:`fetch` downloads them, and :class:`ImageDataset` / :func:`make_loader` serve them to
PyTorch as normalised tensors.
"""

from safenet.data.errors import DatasetError
from safenet.data.fetch import fetch
from safenet.data.registry import (
    DATASETS,
    ENV_VAR,
    DatasetInfo,
    dataset_info,
    default_data_dir,
    load_dataset,
)
from safenet.data.torchdata import ImageDataset, make_loader

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "DatasetError",
    "DatasetInfo",
    "ImageDataset",
    "dataset_info",
    "default_data_dir",
    "fetch",
    "load_dataset",
    "make_loader",
]

"""PyTorch side of the data: normalised tensors, augmentation on whole batches, loaders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from safenet.data.registry import dataset_info, load_dataset


class ImageDataset:
    """A split held in memory as uint8; batches are normalised (and augmented) on the fly."""

    def __init__(
        self,
        name: str,
        split: str = "train",
        data_dir: str | Path | None = None,
        limit: int | None = None,
    ) -> None:
        self.info = dataset_info(name)
        x, y = load_dataset(name, split, data_dir)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        self.images = torch.from_numpy(x)
        self.labels = torch.from_numpy(y)
        self.mean = torch.tensor(self.info.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(self.info.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32, standardised with the dataset's statistics."""
        return (images.float() / 255.0 - self.mean) / self.std

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs, labels); ``augment`` = random 2-4 px shifts and horizontal flips."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = self.normalize(self.images[idx])
            if augment:
                x = augment_batch(x, generator)
            yield x, self.labels[idx]


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding (pad = size/8) and random horizontal flip, per image."""
    n, _, h, w = x.shape
    pad = max(h // 8, 1)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(-1, x.shape[1], h, w)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(-1, x.shape[1], h, w)
    out = padded[
        torch.arange(n).view(n, 1, 1, 1),
        torch.arange(x.shape[1]).view(1, -1, 1, 1),
        rows,
        cols,
    ]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def make_loader(
    ds: ImageDataset, batch_size: int, train: bool, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of batches: shuffled and augmented when ``train``."""
    g = torch.Generator().manual_seed(seed)
    return ds.batches(batch_size, shuffle=train, augment=train, generator=g)

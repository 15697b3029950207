"""Max-pool windows: which input elements each output of a ``maxpool`` op takes the max of.

A ``maxpool`` op stores its windows per axis (``attrs["rows"]``, ``attrs["cols"]``: for each
output row / column the input rows / columns it covers), which covers PyTorch's MaxPool2d
with any kernel, stride, padding, dilation and ``ceil_mode`` (positions outside the image are
simply left out) and AdaptiveMaxPool2d (windows of varying size) with one representation.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["adaptive_axis", "pool_axis", "window_index"]


def pool_axis(
    size_in: int, size_out: int, kernel: int, stride: int, padding: int, dilation: int = 1
) -> list[list[int]]:
    """Input positions of each of ``size_out`` windows along one axis of a MaxPool2d."""
    out = []
    for i in range(size_out):
        start = i * stride - padding
        idx = [start + d * dilation for d in range(kernel)]
        out.append([j for j in idx if 0 <= j < size_in])
    return out


def adaptive_axis(size_in: int, size_out: int) -> list[list[int]]:
    """Input positions of each window along one axis of an AdaptiveMaxPool2d (PyTorch's
    ``floor(i n / m) .. ceil((i + 1) n / m)``)."""
    return [
        list(range((i * size_in) // size_out, math.ceil((i + 1) * size_in / size_out)))
        for i in range(size_out)
    ]


def _padded(axis: list[list[int]]) -> np.ndarray:
    """Per-axis windows as an int array ``(outputs, longest)``, ``-1`` past a window's end."""
    out = np.full((len(axis), max(map(len, axis))), -1, dtype=np.int64)
    for i, positions in enumerate(axis):
        out[i, : len(positions)] = positions
    return out


def window_index(
    rows: list[list[int]], cols: list[list[int]], in_shape: tuple[int, ...]
) -> np.ndarray:
    """Flat input indices of every output's window, shape ``(C * OH * OW, K)`` in the output's
    C-order, ``-1`` padding windows shorter than the longest ``K``."""
    c, h, w = in_shape
    r, q = _padded(rows), _padded(cols)  # (OH, Kr), (OW, Kc)
    valid = (r[:, None, :, None] >= 0) & (q[None, :, None, :] >= 0)  # (OH, OW, Kr, Kc)
    flat = r[:, None, :, None] * w + q[None, :, None, :]
    # the valid positions of each window first, in row-major order, then the padding
    order = np.argsort(~valid.reshape(len(r), len(q), -1), axis=-1, kind="stable")
    flat = np.take_along_axis(np.where(valid, flat, -1).reshape(len(r), len(q), -1), order, -1)
    per = flat.reshape(1, -1, flat.shape[-1])
    base = (np.arange(c, dtype=np.int64) * h * w).reshape(-1, 1, 1)
    return np.where(per >= 0, per + base, -1).reshape(-1, per.shape[-1])

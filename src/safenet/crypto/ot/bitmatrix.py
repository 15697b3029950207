"""Bit-matrix transpose for OT extension: 128 rows of m bits -> m blocks of 128 bits.

IKNP works on a 128 x m bit matrix whose *rows* come from the PRG (one per base OT) and
whose *columns* are the per-OT 128-bit blocks. A row is stored as uint64 words (bit j of the
row is bit j % 64 of word j // 64, i.e. little-endian), a block as two uint64 words (bit i
of the block is bit i % 64 of word i // 64). The kernel transposes 64 x 64 tiles in
registers with the classic recursive swap (6 stages), about 10 ms for m = 2^20 on one core.
"""

from __future__ import annotations

import numba
import numpy as np

KAPPA = 128

_MASKS = np.array(
    [
        0x00000000FFFFFFFF,
        0x0000FFFF0000FFFF,
        0x00FF00FF00FF00FF,
        0x0F0F0F0F0F0F0F0F,
        0x3333333333333333,
        0x5555555555555555,
    ],
    dtype=np.uint64,
)


@numba.njit(cache=True, nogil=True)
def _transpose_kernel(rows: np.ndarray, out: np.ndarray, masks: np.ndarray) -> None:
    n_blocks, n_words = rows.shape[0] // 64, rows.shape[1]
    a = np.empty(64, dtype=np.uint64)
    for rb in range(n_blocks):
        for w in range(n_words):
            for k in range(64):
                a[k] = rows[rb * 64 + k, w]
            j = 32
            for stage in range(6):
                m = masks[stage]
                sj = np.uint64(j)
                for base in range(0, 64, 2 * j):
                    for k in range(base, base + j):
                        # swap the high j bits of a[k] with the low j bits of a[k + j]
                        t = ((a[k] >> sj) ^ a[k + j]) & m
                        a[k] ^= t << sj
                        a[k + j] ^= t
                j >>= 1
            for k in range(64):
                out[w * 64 + k, rb] = a[k]


def transpose(rows: np.ndarray) -> np.ndarray:
    """Transpose a (64·b, W) uint64 bit matrix into (64·W, b) uint64: column j -> row j.

    With b = 2 this maps the 128 IKNP rows of 64·W bits to 64·W blocks of 128 bits.
    """
    rows = np.ascontiguousarray(rows, dtype=np.uint64)
    if rows.ndim != 2 or rows.shape[0] % 64:
        raise ValueError(f"expected a (64*b, W) uint64 matrix, got shape {rows.shape}")
    out = np.empty((rows.shape[1] * 64, rows.shape[0] // 64), dtype=np.uint64)
    _transpose_kernel(rows, out, _MASKS)
    return out


def transpose_reference(rows: np.ndarray) -> np.ndarray:
    """Slow numpy version of :func:`transpose` (tests)."""
    bits = np.unpackbits(np.ascontiguousarray(rows, dtype="<u8").view(np.uint8), axis=1,
                         bitorder="little")  # fmt: skip
    return np.ascontiguousarray(np.packbits(bits.T, axis=1, bitorder="little")).view("<u8")


def pack_bits(bits: np.ndarray, n_words: int) -> np.ndarray:
    """m bits (bool/uint8 0/1) -> ``n_words`` little-endian uint64 words, zero-padded."""
    packed = np.zeros(n_words * 8, dtype=np.uint8)
    p = np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little")
    packed[: p.size] = p
    return packed.view("<u8")

"""Garbled output rows: each output bit of a circuit turned into one of two garbler-chosen
64-bit values, without the evaluator learning the bit.

For an output wire with zero label ``Z`` (the label of logical 0) and Delta, the labels are
``W_b = Z ^ b Delta``. The garbler publishes, per output bit ``j`` and instance ``i``, two
rows indexed by the permute bit ``lsb(W_b)``: ``row[lsb(W_b)] = H(W_b, t_ji) ^ V_b`` (the low
64 bits of the garbling's tweakable hash :meth:`safenet.crypto.aes.FixedKeyAES.hash`, with a
tweak ``t_ji`` no AND gate of the garbling uses). The evaluator, holding ``W_b``, reads
``V_b = H(W_b, t_ji) ^ row[lsb(W_b)]``; the other row is masked by the hash of a label it
never sees, so it learns ``V_b`` and nothing about ``V_{1-b}`` or ``b`` beyond what ``V_b``
says (the standard garbled row with point-and-permute, as for a gate with one input; a
truncated hash is still pseudorandom).

The protocol uses it to turn a circuit's output bits into additive shares mod ``p``
(:mod:`safenet.protocol.garbled`): with ``V_b = c_j b + s_j mod p`` for public weights
``c_j`` and uniform secret ``s_j``, each value the evaluator reads is uniform by itself, and
their sum is ``sum_j c_j b_j + sum_j s_j``; the garbler keeps ``-sum_j s_j``.

Where the CPU has AES-NI the rows are made and opened by compiled kernels
(:mod:`._fused`), else by numpy around ``cryptography``; both give the same rows.
"""

from __future__ import annotations

import numpy as np

from safenet.crypto import aesni
from safenet.crypto.aes import FixedKeyAES
from safenet.crypto.gc import _fused as F

__all__ = ["decrypt_rows", "encrypt_rows", "row_tweaks"]


def row_tweaks(tweak_base: int, k: int, n_total: int, i0: int, i1: int) -> np.ndarray:
    """The tweaks ``(k, i1 - i0)`` of the rows of output bits ``0..k-1`` for instances
    ``i0..i1`` (of ``n_total``): ``2 (tweak_base + j n_total + i)``, even like the garbler's
    half-gate tweaks, from a range the garbling's AND gates do not use."""
    j = np.arange(k, dtype=np.uint64)[:, None] * np.uint64(n_total)
    i = np.arange(i0, i1, dtype=np.uint64)[None, :]
    return (j + i + np.uint64(tweak_base)) << np.uint64(1)


def _pad(aes: FixedKeyAES, labels: np.ndarray, tweaks: np.ndarray) -> np.ndarray:
    """The low 64 bits of ``H(label, tweak)`` for every label ``(..., 2)``."""
    flat = np.ascontiguousarray(labels, dtype=np.uint64).reshape(-1, 2)
    return aes.hash(flat, tweaks.reshape(-1))[:, 0].reshape(labels.shape[:-1])


def _flat2(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` (uint64, broadcast to ``shape``) as a contiguous 2-D array for the kernels."""
    b = np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=np.uint64), shape))
    return b.reshape(-1, shape[-1])


def encrypt_rows(
    zero: np.ndarray,
    delta: np.ndarray,
    v0: np.ndarray,
    v1: np.ndarray,
    tweaks: np.ndarray,
    aes: FixedKeyAES | None = None,
) -> np.ndarray:
    """Rows ``(..., 2)`` (uint64, indexed by permute bit) hiding ``v0`` under the labels
    ``zero`` ``(..., 2)`` and ``v1`` under ``zero ^ delta``; ``v0``, ``v1`` and ``tweaks``
    have the labels' shape without the last axis."""
    zero = np.asarray(zero, dtype=np.uint64)
    if aesni.available():  # compiled, AES-NI inline
        z, t = zero.reshape(-1, zero.shape[-2], 2), _flat2(tweaks, zero.shape[:-1])
        d = np.asarray(delta, dtype=np.uint64).reshape(2)
        a, b = _flat2(v0, zero.shape[:-1]), _flat2(v1, zero.shape[:-1])
        rows = np.empty(z.shape, dtype=np.uint64)
        F.encrypt_rows(np.ascontiguousarray(z), d[0], d[1], a, b, t, rows, aesni.FIXED_ROUND_KEYS)
        return rows.reshape(zero.shape)
    aes = aes or FixedKeyAES()
    c0 = _pad(aes, zero, tweaks) ^ np.asarray(v0, dtype=np.uint64)
    c1 = _pad(aes, zero ^ np.asarray(delta, dtype=np.uint64), tweaks) ^ np.asarray(v1, np.uint64)
    p0 = (zero[..., 0] & np.uint64(1)).astype(bool)
    return np.stack([np.where(p0, c1, c0), np.where(p0, c0, c1)], axis=-1)


def decrypt_rows(
    labels: np.ndarray, rows: np.ndarray, tweaks: np.ndarray, aes: FixedKeyAES | None = None
) -> np.ndarray:
    """The values that the active ``labels`` ``(..., 2)`` open in ``rows`` ``(..., 2)``."""
    labels = np.asarray(labels, dtype=np.uint64)
    if aesni.available():
        lab = np.ascontiguousarray(labels.reshape(-1, labels.shape[-2], 2))
        out = np.empty(lab.shape[:2], dtype=np.uint64)
        r = np.ascontiguousarray(np.asarray(rows, dtype=np.uint64).reshape(lab.shape))
        F.decrypt_rows(lab, r, _flat2(tweaks, labels.shape[:-1]), out, aesni.FIXED_ROUND_KEYS)
        return out.reshape(labels.shape[:-1])
    aes = aes or FixedKeyAES()
    idx = (labels[..., 0] & np.uint64(1)).astype(np.intp)
    return _pad(aes, labels, tweaks) ^ np.take_along_axis(rows, idx[..., None], -1)[..., 0]

"""Garbled output tables: a one-bit circuit output turned into one of two garbler-chosen
128-bit values, without the evaluator learning the bit.

For an output wire with zero label ``Z`` (the label of logical 0) and Delta, the labels are
``W_b = Z ^ b Delta``. The garbler publishes, per instance ``i``, two rows indexed by the
permute bit ``lsb(W_b)``: ``row[lsb(W_b)] = H(W_b, t_i) ^ V_b``, with ``H`` the garbling's
tweakable hash (:meth:`safenet.crypto.aes.FixedKeyAES.hash`) and ``t_i`` a tweak no AND gate
of the garbling uses. The evaluator, holding ``W_b``, reads ``V_b = H(W_b, t_i) ^
row[lsb(W_b)]``; the other row is masked by the hash of a label it never sees, so it learns
``V_b`` and nothing about ``V_{1-b}`` or ``b`` beyond what ``V_b`` says (the standard garbled
row with point-and-permute, as for a garbled gate with one input).

The protocol uses it for the high part of an integer output mask: a circuit outputs
``y + r_low`` over the low ``W`` bits and its carry ``c``; the row gives ``r_high + c``, so the
evaluator learns ``y + r_low + 2^W (r_high + c)`` exactly as before, while the ``s`` carries
into the mask's high bits (``s`` AND gates, 32 bytes each) become one 32-byte table.
"""

from __future__ import annotations

import numpy as np

from safenet.crypto.aes import FixedKeyAES

__all__ = ["decrypt_rows", "encrypt_rows", "row_tweaks"]


def row_tweaks(tweak_base: int, n: int) -> np.ndarray:
    """The tweaks of ``n`` instances' rows: ``2 (tweak_base + i)``, even like the garbler's
    half-gate tweaks, from a range the garbling's AND gates do not use."""
    return (np.arange(n, dtype=np.uint64) + np.uint64(tweak_base)) << np.uint64(1)


def encrypt_rows(
    zero: np.ndarray,
    delta: np.ndarray,
    v0: np.ndarray,
    v1: np.ndarray,
    tweak_base: int,
    aes: FixedKeyAES | None = None,
) -> np.ndarray:
    """Rows ``(n, 2, 2)`` (uint64 pairs) hiding ``v0`` under label ``zero`` and ``v1`` under
    ``zero ^ delta``; ``zero`` is ``(n, 2)``, ``v0`` and ``v1`` are 128-bit values ``(n, 2)``."""
    aes = aes or FixedKeyAES()
    zero = np.asarray(zero, dtype=np.uint64)
    n = len(zero)
    tw = row_tweaks(tweak_base, n)
    one = zero ^ np.asarray(delta, dtype=np.uint64)
    c0 = aes.hash(zero, tw) ^ np.asarray(v0, dtype=np.uint64)
    c1 = aes.hash(one, tw) ^ np.asarray(v1, dtype=np.uint64)
    p0 = (zero[:, 0] & np.uint64(1)).astype(bool)
    rows = np.empty((n, 2, 2), dtype=np.uint64)
    rows[:, 0] = np.where(p0[:, None], c1, c0)
    rows[:, 1] = np.where(p0[:, None], c0, c1)
    return rows


def decrypt_rows(
    labels: np.ndarray, rows: np.ndarray, tweak_base: int, aes: FixedKeyAES | None = None
) -> np.ndarray:
    """The 128-bit values ``(n, 2)`` that the active ``labels`` ``(n, 2)`` open in ``rows``."""
    aes = aes or FixedKeyAES()
    labels = np.asarray(labels, dtype=np.uint64)
    n = len(labels)
    idx = (labels[:, 0] & np.uint64(1)).astype(np.intp)
    return aes.hash(labels, row_tweaks(tweak_base, n)) ^ rows[np.arange(n), idx]

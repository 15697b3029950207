"""Fused half-gates kernels: a whole chunk's circuit in one compiled call, AES-NI inline.

The buffer path (:mod:`._kernels` around ``cryptography``) gathers each AND layer's hash
inputs into scratch arrays, encrypts them twice and combines them again, with Python between
layers. Here one call walks every XOR block and AND layer of a chunk, and each gate-instance
hashes its labels with :func:`safenet.crypto.aesni.tccr2` in registers: the label
slots, the tables and nothing else touch memory. Same hash, same tweaks, same tables as the
buffer path (``tests/crypto/test_aesni.py`` compares them bit for bit).

Hash ``H(x, t) = pi(pi(x) ^ t) ^ pi(x)`` with ``t`` XORed into the low word; the tweak of AND
gate ``g`` of instance ``i`` (of ``n_total``, chunk starting at tweak offset ``tw0``) is
``2 * (g * n_total + tw0 + i) + half`` (see :mod:`._kernels`).
"""

from __future__ import annotations

import numba
import numpy as np

from safenet.crypto.aesni import tccr2, tccr4

Arr = np.ndarray
U64 = np.uint64
_ONE = np.uint64(1)
_ZERO = np.uint64(0)


@numba.njit(inline="always")
def _xor_block(L: Arr, out: Arr, a: Arr, b: Arr, lo: int, hi: int) -> None:
    m = L.shape[1]
    for g in range(lo, hi):
        o, x, y = out[g], a[g], b[g]
        for i in range(m):
            L[o, i, 0] = L[x, i, 0] ^ L[y, i, 0]
            L[o, i, 1] = L[x, i, 1] ^ L[y, i, 1]


@numba.njit(cache=True, nogil=True)
def garble_chunk(
    L: Arr, xo: Arr, xa: Arr, xb: Arr, xptr: Arr, ao: Arr, aa: Arr, an: Arr, ab: Arr, bn: Arr,
    aptr: Arr, d0: U64, d1: U64, tab: Arr, i0: int, n_total: int, tw0: int, k: tuple,
) -> None:  # fmt: skip
    """Garble instances ``i0 .. i0 + m`` of a circuit (``L``: zero labels of the chunk, inputs
    loaded): tables into ``tab[g, i0 + i]``, output zero labels into ``L``.

    Per AND gate with zero labels ``A0, B0`` (after input negation): ``T_G = H(A0) ^ H(A1) ^
    p_b Delta``, ``T_E = H(B0) ^ H(B1) ^ A0``, output ``H(A0) ^ p_a T_G ^ H(B0) ^ p_b
    (T_E ^ A0)`` (ZRE15 half-gates; ``p`` the permute bits).
    """
    m, depth = L.shape[1], len(aptr) - 1
    for d in range(depth + 1):
        _xor_block(L, xo, xa, xb, xptr[d], xptr[d + 1])
        if d == depth:
            return
        for g in range(aptr[d], aptr[d + 1]):
            o, sa, sb, ma, mb = ao[g], aa[g], ab[g], an[g], bn[g]
            base = U64(g) * U64(n_total) + U64(tw0)
            for i in range(m):
                x0, x1 = L[sa, i, 0] ^ (ma & d0), L[sa, i, 1] ^ (ma & d1)
                y0, y1 = L[sb, i, 0] ^ (mb & d0), L[sb, i, 1] ^ (mb & d1)
                t = (base + U64(i)) << _ONE
                tb = t | _ONE
                ha0, ha1, hA0, hA1, hb0, hb1, hB0, hB1 = tccr4(
                    (x0, x1, x0 ^ d0, x1 ^ d1, y0, y1, y0 ^ d0, y1 ^ d1), (t, t, tb, tb), k
                )
                pa, pb = _ZERO - (x0 & _ONE), _ZERO - (y0 & _ONE)
                tg0, tg1 = ha0 ^ hA0 ^ (pb & d0), ha1 ^ hA1 ^ (pb & d1)
                fb0, fb1 = hb0 ^ hB0, hb1 ^ hB1
                j = i0 + i
                tab[g, j, 0, 0], tab[g, j, 0, 1] = tg0, tg1
                tab[g, j, 1, 0], tab[g, j, 1, 1] = fb0 ^ x0, fb1 ^ x1
                L[o, i, 0] = ha0 ^ (pa & tg0) ^ hb0 ^ (pb & fb0)
                L[o, i, 1] = ha1 ^ (pa & tg1) ^ hb1 ^ (pb & fb1)


@numba.njit(cache=True, nogil=True)
def eval_chunk(
    L: Arr, xo: Arr, xa: Arr, xb: Arr, xptr: Arr, ao: Arr, aa: Arr, ab: Arr, aptr: Arr,
    tab: Arr, i0: int, n_total: int, tw0: int, k: tuple,
) -> None:  # fmt: skip
    """Evaluate instances ``i0 .. i0 + m`` (``L``: active labels of the chunk, inputs loaded)
    on tables ``tab[g, i0 + i]``: ``W = H(A) ^ s_a T_G ^ H(B) ^ s_b (T_E ^ A)``, s = lsb."""
    m, depth = L.shape[1], len(aptr) - 1
    for d in range(depth + 1):
        _xor_block(L, xo, xa, xb, xptr[d], xptr[d + 1])
        if d == depth:
            return
        for g in range(aptr[d], aptr[d + 1]):
            o, sa, sb = ao[g], aa[g], ab[g]
            base = U64(g) * U64(n_total) + U64(tw0)
            for i in range(m):
                a0, a1 = L[sa, i, 0], L[sa, i, 1]
                b0, b1 = L[sb, i, 0], L[sb, i, 1]
                t = (base + U64(i)) << _ONE
                ha0, ha1, hb0, hb1 = tccr2((a0, a1, b0, b1), (t, t | _ONE), k)
                s_a, s_b = _ZERO - (a0 & _ONE), _ZERO - (b0 & _ONE)
                j = i0 + i
                L[o, i, 0] = ha0 ^ hb0 ^ (s_a & tab[g, j, 0, 0]) ^ (s_b & (tab[g, j, 1, 0] ^ a0))
                L[o, i, 1] = ha1 ^ hb1 ^ (s_a & tab[g, j, 0, 1]) ^ (s_b & (tab[g, j, 1, 1] ^ a1))

"""numba kernels for the label arithmetic of the buffer path (:func:`.walk.walk_layers`),
around each AES call (one call per AND-layer piece), plus two both paths use.

* :func:`xor_block`: a block of free XOR gates (the compiled kernels of :mod:`._fused`
  call it too);
* :func:`garble_gather`, :func:`garble_combine`: the garbler's hash inputs and half-gate
  tables; :func:`eval_gather`, :func:`eval_combine`: the evaluator's mirror images;
* :func:`tweak_xor`: the tweaks XORed into the hash inputs;
* :func:`encode_bits`: free-XOR encoding of the garbler's input bits.

Labels are uint64 pairs in a slot array ``L`` of shape ``(n_slots, m, 2)`` for ``m``
instances. Each kernel loops gate-major, instance-minor in compiled code, so no Python runs
per gate or per instance. The hash itself stays in ``FixedKeyAES`` (AES-NI via cryptography).

Tweak of AND gate ``g`` (layer-order number) in instance ``i`` of ``n``: ``2 * (g * n + i)``
for the garbler half gate and ``2 * (g * n + i) + 1`` for the evaluator half gate, unique per
gate per instance within one garbling (plus the garbling's ``tweak_base``), computed inside
:func:`tweak_xor`.
"""

from __future__ import annotations

import numba
import numpy as np

Arr = np.ndarray
U64 = np.uint64
_ONE = np.uint64(1)
_ZERO = np.uint64(0)


@numba.njit(cache=True, nogil=True)
def xor_block(
    L: np.ndarray, out: np.ndarray, a: np.ndarray, b: np.ndarray, lo: int, hi: int
) -> None:
    """XOR gates ``lo..hi`` in order: ``L[out] = L[a] ^ L[b]`` for every instance."""
    m = L.shape[1]
    for g in range(lo, hi):
        o, x, y = out[g], a[g], b[g]
        for i in range(m):
            L[o, i, 0] = L[x, i, 0] ^ L[y, i, 0]
            L[o, i, 1] = L[x, i, 1] ^ L[y, i, 1]


@numba.njit(cache=True, nogil=True)
def garble_gather(
    L: Arr, a: Arr, an: Arr, b: Arr, bn: Arr, lo: int, hi: int, d0: U64, d1: U64, X: Arr,
) -> None:  # fmt: skip
    """Fill ``X[0..3] = A0, A1, B0, B1`` (zero/one labels of both inputs)."""
    m = L.shape[1]
    for j in range(hi - lo):
        g = lo + j
        sa, sb, ma, mb = a[g], b[g], an[g], bn[g]
        for i in range(m):
            x0 = L[sa, i, 0] ^ (ma & d0)
            x1 = L[sa, i, 1] ^ (ma & d1)
            y0 = L[sb, i, 0] ^ (mb & d0)
            y1 = L[sb, i, 1] ^ (mb & d1)
            X[0, j, i, 0] = x0
            X[0, j, i, 1] = x1
            X[1, j, i, 0] = x0 ^ d0
            X[1, j, i, 1] = x1 ^ d1
            X[2, j, i, 0] = y0
            X[2, j, i, 1] = y1
            X[3, j, i, 0] = y0 ^ d0
            X[3, j, i, 1] = y1 ^ d1


@numba.njit(cache=True, nogil=True)
def tweak_xor(P: Arr, Q: Arr, lo: int, n_total: int, i0: int, halves: Arr) -> None:
    """``Q = P`` with the tweak of each hash XORed into its low word (the 2nd AES's input).

    Block ``(h, j, i)`` hashes for AND gate ``lo + j`` of instance ``i0 + i``: its tweak is
    ``2 * (gate * n_total + instance) + halves[h]``.
    """
    H, G, m = P.shape[0], P.shape[1], P.shape[2]
    for h in range(H):
        hb = np.uint64(halves[h])
        for j in range(G):
            base = np.uint64(lo + j) * np.uint64(n_total) + np.uint64(i0)
            for i in range(m):
                Q[h, j, i, 0] = P[h, j, i, 0] ^ (((base + np.uint64(i)) << _ONE) | hb)
                Q[h, j, i, 1] = P[h, j, i, 1]


@numba.njit(cache=True, nogil=True)
def garble_combine(
    X: Arr, P: Arr, R: Arr, d0: U64, d1: U64, tab: Arr, L: Arr, out: Arr, lo: int
) -> None:
    """Half-gates (ZRE15): tables ``(T_G, T_E)`` into ``tab`` and output zero labels into ``L``.

    ``T_G = H(A0) ^ H(A1) ^ p_b*Delta``, ``W_G = H(A_{p_a}) ^ p_a*p_b*Delta``;
    ``T_E = H(B0) ^ H(B1) ^ A0``, ``W_E = H(B_{p_b})``; output zero label ``W_G ^ W_E``.
    The hashes are ``H = R ^ P`` (``P = pi(x)``, ``R = pi(P ^ tweak)``), combined here.
    """
    G, m = X.shape[1], X.shape[2]
    for j in range(G):
        o = out[lo + j]
        for i in range(m):
            a0, a1 = X[0, j, i, 0], X[0, j, i, 1]
            pa = _ZERO - (a0 & _ONE)
            pb = _ZERO - (X[2, j, i, 0] & _ONE)
            ha0, ha1 = R[0, j, i, 0] ^ P[0, j, i, 0], R[0, j, i, 1] ^ P[0, j, i, 1]
            hb0, hb1 = R[2, j, i, 0] ^ P[2, j, i, 0], R[2, j, i, 1] ^ P[2, j, i, 1]
            tg0 = ha0 ^ R[1, j, i, 0] ^ P[1, j, i, 0] ^ (pb & d0)
            tg1 = ha1 ^ R[1, j, i, 1] ^ P[1, j, i, 1] ^ (pb & d1)
            fb0 = hb0 ^ R[3, j, i, 0] ^ P[3, j, i, 0]
            fb1 = hb1 ^ R[3, j, i, 1] ^ P[3, j, i, 1]
            tab[j, i, 0, 0] = tg0
            tab[j, i, 0, 1] = tg1
            tab[j, i, 1, 0] = fb0 ^ a0
            tab[j, i, 1, 1] = fb1 ^ a1
            L[o, i, 0] = ha0 ^ (pa & tg0) ^ hb0 ^ (pb & fb0)
            L[o, i, 1] = ha1 ^ (pa & tg1) ^ hb1 ^ (pb & fb1)


@numba.njit(cache=True, nogil=True)
def eval_gather(L: Arr, a: Arr, b: Arr, lo: int, hi: int, X: Arr) -> None:
    """Fill ``X[0..1] = A, B`` (the evaluator's input labels)."""
    m = L.shape[1]
    for j in range(hi - lo):
        g = lo + j
        sa, sb = a[g], b[g]
        for i in range(m):
            X[0, j, i, 0] = L[sa, i, 0]
            X[0, j, i, 1] = L[sa, i, 1]
            X[1, j, i, 0] = L[sb, i, 0]
            X[1, j, i, 1] = L[sb, i, 1]


@numba.njit(cache=True, nogil=True)
def eval_combine(X: Arr, P: Arr, R: Arr, tab: Arr, L: Arr, out: Arr, lo: int) -> None:
    """Half-gates evaluation: ``W = H(A) ^ s_a*T_G ^ H(B) ^ s_b*(T_E ^ A)``, s = lsb,
    with ``H = R ^ P`` as in :func:`garble_combine`."""
    G, m = X.shape[1], X.shape[2]
    for j in range(G):
        o = out[lo + j]
        for i in range(m):
            a0, a1 = X[0, j, i, 0], X[0, j, i, 1]
            sa = _ZERO - (a0 & _ONE)
            sb = _ZERO - (X[1, j, i, 0] & _ONE)
            h0 = R[0, j, i, 0] ^ P[0, j, i, 0] ^ R[1, j, i, 0] ^ P[1, j, i, 0]
            h1 = R[0, j, i, 1] ^ P[0, j, i, 1] ^ R[1, j, i, 1] ^ P[1, j, i, 1]
            L[o, i, 0] = h0 ^ (sa & tab[j, i, 0, 0]) ^ (sb & (tab[j, i, 1, 0] ^ a0))
            L[o, i, 1] = h1 ^ (sa & tab[j, i, 0, 1]) ^ (sb & (tab[j, i, 1, 1] ^ a1))


@numba.njit(cache=True, nogil=True)
def encode_bits(zero: Arr, bits: Arr, d0: U64, d1: U64, out: Arr) -> None:
    """``out = zero ^ (bit * Delta)`` over flat blocks (free-XOR encoding in one pass)."""
    for i in range(bits.shape[0]):
        m = _ZERO - np.uint64(bits[i])
        out[i, 0] = zero[i, 0] ^ (m & d0)
        out[i, 1] = zero[i, 1] ^ (m & d1)

"""Vectorised arithmetic on additive shares mod p: the parties' local computations.

Shares are int64 arrays of residues in ``[0, p)``; a value ``v`` is held as
``(server_share + client_share) mod p`` and read signed (residues above p/2 are negative).

* :func:`to_residues`, :func:`add`, :func:`sub`, :func:`neg` keep values in ``[0, p)``;
  :func:`bits` / :func:`from_bits` turn residues into garbled-circuit input bits and back;
* :func:`uniform` draws masks from the OS CSPRNG (large draws expanded by AES-CTR under a
  fresh OS key) by rejection sampling (no modulo bias);
* :func:`mulmod` multiplies residues exactly with a float-quotient reduction compiled by
  numba (no Python integers, no 128-bit types) for primes below 2^52;
* :func:`trunc_server` / :func:`trunc_client` are the local (probabilistic) truncation of
  SecureML adapted to F_p: if ``v = s + c mod p`` has ``|v| < B``, then
  ``trunc_server(s) + trunc_client(c) = floor(v / 2^k) + delta (mod p)`` with
  ``delta in {0, 1}``, except with probability at most ``B / p`` over the uniform share,
  when the two shares straddle p and the result is off by about ``p / 2^k`` (a *wrap*).
  The protocol uses it only for ``truncate`` ops (a linear layer fed by another one);
* :func:`bounded_mask`, :func:`open_trunc` / :func:`mask_trunc` are the exact truncation of
  polynomial channels: one party opens ``u = v + R`` to the other, with ``R`` uniform in
  ``[B, p - B)`` (``B`` = :func:`safenet.field.trunc_bound`), so ``u`` is the integer
  ``v + R`` itself whenever ``|v| < B``: the opener truncates ``u``, the mask holder ``-R``,
  and the pair is ``round(v / 2^k) + delta``, ``delta in {0, 1}``, with no wrap at all. The
  price is statistical: ``u`` hides ``v`` up to a distance ``|v| / (p - 2B)`` per element
  (docs/security.md). ReLU channels truncate exactly inside the garbled circuit.
"""

from __future__ import annotations

import numba
import numpy as np

from safenet.crypto.aes import random_bytes
from safenet.field import trunc_bound

#: statistical security parameter of the protocol (bits): HE flooding
STAT_BITS = 40

__all__ = [
    "STAT_BITS",
    "add",
    "bits",
    "bounded_mask",
    "mask_trunc",
    "open_trunc",
    "from_bits",
    "mulmod",
    "neg",
    "sub",
    "to_residues",
    "trunc_client",
    "trunc_share",
    "trunc_server",
    "uniform",
]


def to_residues(v: np.ndarray, p: int) -> np.ndarray:
    """Signed (or any) int64 values -> residues in [0, p)."""
    return np.mod(np.asarray(v, dtype=np.int64), p)


def uniform(shape: tuple[int, ...] | int, p: int) -> np.ndarray:
    """Uniform residues in [0, p) from the OS CSPRNG, large draws expanded by AES-CTR
    (:func:`safenet.crypto.aes.random_bytes`); rejection sampling: exactly uniform."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = int(np.prod(shape))
    nbits = p.bit_length()
    mask = np.uint64((1 << nbits) - 1)
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        want = n - filled
        draw = want + want // 2 + 16  # acceptance probability p / 2^nbits > 1/2
        raw = random_bytes(8 * draw).view("<u8") & mask
        ok = raw[raw < np.uint64(p)][:want]
        out[filled : filled + len(ok)] = ok.astype(np.int64)
        filled += len(ok)
    return out.reshape(shape)


def add(a: np.ndarray, b: np.ndarray | int, p: int) -> np.ndarray:
    """(a + b) mod p for residues in [0, p)."""
    s = np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64)
    return np.where(s >= p, s - p, s)


def sub(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """(a - b) mod p for residues."""
    d = np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)
    return np.where(d < 0, d + p, d)


def neg(a: np.ndarray, p: int) -> np.ndarray:
    """(-a) mod p for residues."""
    a = np.asarray(a, dtype=np.int64)
    return np.where(a == 0, 0, p - a)


#: primes below this use the compiled float-quotient mulmod
FAST_LIMIT = 2**52


@numba.njit(cache=True, nogil=True)
def _mulmod_kernel(a: np.ndarray, b: np.ndarray, p: np.int64, pinv: float, out: np.ndarray) -> None:
    pu = np.uint64(p)
    for i in range(a.size):
        x, y = a[i], b[i]
        q = np.int64(np.float64(x) * np.float64(y) * pinv)
        # exact x*y - q*p modulo 2^64; the true value lies in (-3p, 3p), well inside int64
        r = np.int64(np.uint64(x) * np.uint64(y) - np.uint64(q) * pu)
        while r < 0:
            r += p
        while r >= p:
            r -= p
        out[i] = r


def mulmod(a: np.ndarray, b: np.ndarray | int, p: int) -> np.ndarray:
    """Exact ``a * b mod p`` for residues in [0, p); broadcasts; result in [0, p).

    For p < 2^52 the quotient is estimated in float64 (off by at most 2) and the remainder
    computed exactly in wrapping 64-bit arithmetic, then corrected (compiled, fast). Larger
    primes fall back to Python integers (correct, slow).
    """
    a_arr, b_arr = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    shape = a_arr.shape
    a_flat = np.ascontiguousarray(a_arr).reshape(-1)
    b_flat = np.ascontiguousarray(b_arr).reshape(-1)
    if a_flat.size and (
        min(a_flat.min(), b_flat.min()) < 0 or max(a_flat.max(), b_flat.max()) >= p
    ):
        raise ValueError("mulmod operands must be residues in [0, p)")
    if p >= FAST_LIMIT:
        prod = a_flat.astype(object) * b_flat.astype(object) % p
        return prod.astype(np.int64).reshape(shape)
    out = np.empty(a_flat.size, dtype=np.int64)
    _mulmod_kernel(a_flat, b_flat, np.int64(p), 1.0 / p, out)
    return out.reshape(shape)


def trunc_server(s: np.ndarray, k: int) -> np.ndarray:
    """The server's half of local truncation by 2^k: ``floor(s / 2^k)``."""
    return np.asarray(s, dtype=np.int64) >> k


def trunc_client(c: np.ndarray, k: int, p: int) -> np.ndarray:
    """The client's half of local truncation by 2^k: ``-floor(((-c) mod p) / 2^k) mod p``."""
    return neg(neg(c, p) >> k, p)


def trunc_share(x: np.ndarray, k: int, p: int, server: bool) -> np.ndarray:
    """One party's half of the round-half-up local truncation by 2^k: the server adds the
    rounding offset ``2^(k-1)`` to its share, so the pair computes ``round(v / 2^k)`` (up to
    the carry and wrap of :func:`trunc_server`)."""
    if k == 0:
        return np.asarray(x, dtype=np.int64)
    if server:
        return trunc_server(add(x, 1 << (k - 1), p), k)
    return trunc_client(x, k, p)


def bounded_mask(shape: tuple[int, ...] | int, p: int) -> np.ndarray:
    """Masks for exact truncation: uniform in ``[B, p - B)``, ``B = trunc_bound(p)``.

    ``v + R`` then lies in ``[0, p)`` as an integer for every ``|v| < B``: opening it mod p
    gives the integer itself, so truncating it cannot wrap.
    """
    b = trunc_bound(p)
    return uniform(shape, p - 2 * b) + b


def open_trunc(u: np.ndarray, k: int) -> np.ndarray:
    """The opener's half of exact truncation: ``floor((u + 2^(k-1)) / 2^k)`` of the opened
    ``u = v + R`` (a residue in ``[0, p)`` that equals the integer ``v + R``)."""
    u = np.asarray(u, dtype=np.int64)
    return (u + (1 << (k - 1))) >> k if k else u


def mask_trunc(r: np.ndarray, k: int, p: int) -> np.ndarray:
    """The mask holder's half of exact truncation: ``-floor(R / 2^k) mod p``. With
    :func:`open_trunc` the pair sums to ``round(v / 2^k) + delta``, ``delta in {0, 1}``."""
    return neg(np.asarray(r, dtype=np.int64) >> k, p)


def bits(v: np.ndarray, nbits: int) -> np.ndarray:
    """Residues -> little-endian bits, uint8 of shape ``(nbits, v.size)`` (circuit inputs)."""
    flat = np.asarray(v, dtype=np.int64).reshape(-1).astype(np.uint64)
    shifts = np.arange(nbits, dtype=np.uint64)[:, None]
    return ((flat[None, :] >> shifts) & np.uint64(1)).astype(np.uint8)


def from_bits(b: np.ndarray) -> np.ndarray:
    """Inverse of :func:`bits`: ``(nbits, n)`` bits -> int64 values."""
    b = np.asarray(b, dtype=np.uint64)
    shifts = np.arange(b.shape[0], dtype=np.uint64)[:, None]
    return (b << shifts).sum(axis=0, dtype=np.uint64).astype(np.int64)

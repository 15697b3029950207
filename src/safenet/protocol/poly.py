"""Polynomial channels: one online message per activation layer, whatever the degree.

An activation's polynomial channels compute ``P(X) = sum_j C_j X^j`` on
``X = round(v / 2^k)``, where ``v`` is shared (the client's share ``c`` known offline, the
server's ``s`` online) and the integer coefficients ``C_j`` are the server's secret.

Offline (HE, elementwise in BFV slots). Each party truncates its own share of ``v`` locally
(:mod:`safenet.protocol.arith`), so ``X = X_s + X_c`` (up to the local-truncation error).
The server draws a uniform ``a_s`` and the pair fixes ``a = a_s + X_c``. With
``c_{i,m} = C_{i+m} binom(i+m, i)`` and ``G_m = sum_i c_{i,m} a^i``, expanding
``a^i = sum_l binom(i, l) a_s^(i-l) X_c^l`` gives ``G_m = sum_l h_{l,m} X_c^l`` where
``h_{l,m}`` is known to the server alone. The client sends ``Enc(X_c^l)`` for
``l = 1..d``; the server returns ``Enc(sum_{l>=1} h_{l,m} X_c^l - t_m)`` (fresh uniform
``t_m``, re-randomised and noise-flooded) for ``m = 0..d-1``, keeps
``[G_m]_s = h_{0,m} + t_m``, and ``G_d = C_d`` stays with the server.

Online the server sends ``e = X_s - a_s`` (uniform to the client, as ``a_s`` is), and
``P(X) = sum_m e^m G_m`` (since ``X = e + a``), so each party's share is
``sum_m e^m [G_m]`` computed locally. The client never sees a coefficient, only ``e`` and
uniformly masked shares; the server sees only ciphertexts. Both halves of the result are
then truncated locally by ``q = poly_shift``.
"""

from __future__ import annotations

from math import comb

import numpy as np

from safenet.crypto.he import ClientKeys, HEContext, flood, rerandomize
from safenet.protocol import arith as A
from safenet.protocol.arith import STAT_BITS
from safenet.protocol.linear import reply_primes

__all__ = [
    "PolyServer",
    "client_decrypt",
    "client_encrypt",
    "evaluate_share",
    "flood_bits",
]


def flood_bits(he: HEContext) -> int:
    """Flood width for polynomial replies, from public parameters only.

    A reply's noise before flooding is at most ``d * N * p/2 * B`` (``d <= 3`` products with
    batch-encoded plaintexts, whose coefficients are full-size, of fresh ciphertexts with
    noise ``B < 2^6``): below ``2^(log2 N + bits(p) + 7)``. Flooding with ``2^STAT_BITS``
    times that hides it statistically.
    """
    n_bits = he.params.poly_degree.bit_length() - 1
    return STAT_BITS + n_bits + he.params.plain_modulus.bit_length() + 7


def _chunks(n: int, he: HEContext) -> list[slice]:
    return [slice(a, min(n, a + he.slots)) for a in range(0, n, he.slots)]


def client_encrypt(keys: ClientKeys, xc: np.ndarray, degree: int) -> list[bytes]:
    """Encryptions of ``X_c^l`` for ``l = 1..degree`` (ciphertext-major per power)."""
    he, p = keys.he, keys.he.params.plain_modulus
    out = []
    power = np.ones_like(xc)
    for _ in range(degree):
        power = A.mulmod(power, xc, p)
        out += [keys.encrypt(power[s]).to_string() for s in _chunks(len(xc), he)]
    return out


class PolyServer:
    """The server's half of one activation layer's polynomial channels.

    Args:
        he: the session's HE context.
        coef: integer coefficients per element, int64 ``(n, degree + 1)`` (signed).
        flood_bits: noise-flooding width for circuit privacy.
    """

    def __init__(self, he: HEContext, coef: np.ndarray, flood_bits: int) -> None:
        self.he = he
        self.p = he.params.plain_modulus
        self.n, d1 = coef.shape
        self.degree = d1 - 1
        self.coef = A.to_residues(coef, self.p)
        self.flood_bits = flood_bits
        self._switches = len(he.coeff_primes) - reply_primes(he)
        self.a_s: np.ndarray | None = None
        self.g_s: list[np.ndarray] | None = None

    def _h(self, a_s: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        """h_{j,m} = sum_{i=j}^{d-m} C_{i+m} binom(i+m, i) binom(i, j) a_s^(i-j)."""
        p, d = self.p, self.degree
        pw = [np.ones(self.n, dtype=np.int64)]
        for _ in range(d):
            pw.append(A.mulmod(pw[-1], a_s, p))
        h = {}
        for m in range(d + 1):
            for j in range(d - m + 1):
                acc = np.zeros(self.n, dtype=np.int64)
                for i in range(j, d - m + 1):
                    k = comb(i + m, i) * comb(i, j) % p
                    term = A.mulmod(A.mulmod(self.coef[:, i + m], k, p), pw[i - j], p)
                    acc = A.add(acc, term, p)
                h[j, m] = acc
        return h

    def respond(self, ciphertexts: list[bytes], public_key: object) -> list[bytes]:
        """Answer the client's ``Enc(X_c^l)``; keeps ``a_s`` and the shares ``[G_m]_s``."""
        he, p, d, n = self.he, self.p, self.degree, self.n
        chunks = _chunks(n, he)
        if len(ciphertexts) != d * len(chunks):
            raise ValueError(
                f"polynomial layer expects {d * len(chunks)} ciphertexts, got {len(ciphertexts)}"
            )
        cts = [he.ciphertext_from_bytes(b) for b in ciphertexts]
        a_s = A.uniform(n, p)
        h = self._h(a_s)
        g_s = []
        replies = []
        for m in range(d):
            t = A.uniform(n, p)
            g_s.append(A.add(h[0, m], t, p))
            for ci, s in enumerate(chunks):
                acc = None
                for j in range(1, d - m + 1):
                    hj = h[j, m][s]
                    if not hj.any():  # SEAL refuses a product with the zero plaintext
                        continue
                    term = he.evaluator.multiply_plain(
                        cts[(j - 1) * len(chunks) + ci], he.encode(hj)
                    )
                    acc = term if acc is None else he.evaluator.add(acc, term)
                if acc is None:
                    acc = he.encrypt_zero(public_key)
                he.evaluator.sub_plain_inplace(acc, he.encode(t[s]))
                acc = flood(he, rerandomize(he, acc, public_key), self.flood_bits)
                for _ in range(self._switches):  # public post-processing: smaller replies
                    he.evaluator.mod_switch_to_next_inplace(acc)
                replies.append(acc.to_string())
        g_s.append(self.coef[:, d].copy())  # G_d = C_d, held by the server alone
        self.a_s, self.g_s = a_s, g_s
        return replies

    def take(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(a_s, [G_0..G_d]_s)``, once: the material is single-use."""
        if self.a_s is None or self.g_s is None:
            raise RuntimeError("polynomial material already used (or never made)")
        out = (self.a_s, self.g_s)
        self.a_s = self.g_s = None
        return out


def client_decrypt(keys: ClientKeys, replies: list[bytes], n: int, degree: int) -> list[np.ndarray]:
    """The client's shares ``[G_0..G_d]_c`` (``[G_d]_c = 0``)."""
    he = keys.he
    chunks = _chunks(n, he)
    if len(replies) != degree * len(chunks):
        raise ValueError(f"expected {degree * len(chunks)} polynomial replies, got {len(replies)}")
    out = []
    for m in range(degree):
        g = np.empty(n, dtype=np.int64)
        for ci, s in enumerate(chunks):
            ct = he.ciphertext_from_bytes(replies[m * len(chunks) + ci])
            g[s] = keys.decrypt(ct)[: s.stop - s.start].astype(np.int64)
        out.append(g)
    out.append(np.zeros(n, dtype=np.int64))
    return out


def evaluate_share(e: np.ndarray, g: list[np.ndarray], p: int) -> np.ndarray:
    """A party's share of ``P(X) = sum_m e^m G_m`` (Horner in e), residues in [0, p)."""
    acc = g[-1].copy()
    for m in range(len(g) - 2, -1, -1):
        acc = A.add(A.mulmod(acc, e, p), g[m], p)
    return acc

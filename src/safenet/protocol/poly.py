"""Polynomial channels: one online round trip per activation layer, whatever the degree,
and both truncations exact (no wraps).

An activation's polynomial channels compute ``round(P(X) / 2^q)`` with
``P(X) = sum_j C_j X^j`` on ``X = round(v / 2^k)``, where ``v`` is shared (the client's share
``c`` known offline, the server's ``s`` online) and the integer coefficients ``C_j`` are the
server's secret.

Offline (HE, elementwise in BFV slots). The server draws ``R1`` uniform in ``[B, p - B)``
(:func:`safenet.protocol.arith.bounded_mask`) and fixes its share of ``X`` as
``X_s = -floor(R1 / 2^k)``. The client draws a uniform ``a_c``; the pair fixes
``a = X_s + a_c``. With ``c_{i,m} = C_{i+m} binom(i+m, i)`` and
``G_m = sum_i c_{i,m} a^i``, expanding ``a^i = sum_l binom(i, l) X_s^(i-l) a_c^l`` gives
``G_m = sum_l h_{l,m} a_c^l`` where ``h_{l,m}`` is known to the server alone. The client
sends ``Enc(a_c^l)`` for ``l = 1..d``; the server returns
``Enc(sum_{l>=1} h_{l,m} a_c^l - t_m)`` (fresh uniform ``t_m``, re-randomised and
noise-flooded) for ``m = 0..d-1``, keeps ``[G_m]_s = h_{0,m} + t_m``, and ``G_d = C_d``
stays with the server. The client also draws ``R2`` in ``[B, p - B)``: its share of the
layer's output will be ``-floor(R2 / 2^q)``, known offline as the engine requires.

Online (:func:`server_open`, :func:`client_step`, :func:`server_finish`):

1. server -> client ``w = s + R1``. The client reads ``u = w + c = v + R1``, the integer
   itself when ``|v| < B``, so ``X_c = round(u / 2^k)`` and ``X_c + X_s = X`` (+0 or 1):
   exact, no wrap.
2. The client knows ``e = X - a = X_c - a_c`` and its share ``Y_c = sum_m e^m [G_m]_c``
   of ``Y = P(X)`` (since ``X = e + a``); client -> server ``e`` and ``z = Y_c + R2``.
3. The server adds ``Y_s = sum_m e^m [G_m]_s`` and gets ``Y + R2`` (an integer again when
   ``|Y| < B``) and keeps ``round((Y + R2) / 2^q)`` as its share of the output.

The client sees ``w`` (hiding ``v`` up to a statistical distance ``|v| / (p - 2B)``) and
uniformly masked shares, never a coefficient; the server sees ``e`` (uniform: ``a_c`` is),
``z`` (``Y`` hidden like ``v``) and ciphertexts.
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
    "client_step",
    "evaluate_share",
    "flood_bits",
    "server_finish",
    "server_open",
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


def client_encrypt(keys: ClientKeys, a_c: np.ndarray, degree: int) -> list[bytes]:
    """Encryptions of ``a_c^l`` for ``l = 1..degree`` (ciphertext-major per power)."""
    he, p = keys.he, keys.he.params.plain_modulus
    out = []
    power = np.ones_like(a_c)
    for _ in range(degree):
        power = A.mulmod(power, a_c, p)
        out += [keys.encrypt(power[s]).to_string() for s in _chunks(len(a_c), he)]
    return out


class PolyServer:
    """The server's half of one activation layer's polynomial channels.

    Args:
        he: the session's HE context.
        coef: integer coefficients per element, int64 ``(n, degree + 1)`` (signed).
        flood_bits: noise-flooding width for circuit privacy.
        shift: ``k``, the truncation of the activation input ``v`` into ``X``.
    """

    def __init__(self, he: HEContext, coef: np.ndarray, flood_bits: int, shift: int) -> None:
        self.he = he
        self.p = he.params.plain_modulus
        self.n, d1 = coef.shape
        self.degree = d1 - 1
        self.coef = A.to_residues(coef, self.p)
        self.flood_bits = flood_bits
        self.shift = shift
        self._switches = len(he.coeff_primes) - reply_primes(he)
        self.r1: np.ndarray | None = None
        self.g_s: list[np.ndarray] | None = None

    def _h(self, x_s: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        """h_{j,m} = sum_{i=j}^{d-m} C_{i+m} binom(i+m, i) binom(i, j) X_s^(i-j)."""
        p, d = self.p, self.degree
        pw = [np.ones(self.n, dtype=np.int64)]
        for _ in range(d):
            pw.append(A.mulmod(pw[-1], x_s, p))
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
        """Answer the client's ``Enc(a_c^l)``; keeps ``R1`` and the shares ``[G_m]_s``."""
        he, p, d, n = self.he, self.p, self.degree, self.n
        chunks = _chunks(n, he)
        if len(ciphertexts) != d * len(chunks):
            raise ValueError(
                f"polynomial layer expects {d * len(chunks)} ciphertexts, got {len(ciphertexts)}"
            )
        cts = [he.ciphertext_from_bytes(b) for b in ciphertexts]
        r1 = A.bounded_mask(n, p)
        h = self._h(A.mask_trunc(r1, self.shift, p))
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
        self.r1, self.g_s = r1, g_s
        return replies

    def take(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(R1, [G_0..G_d]_s)``, once: the material is single-use."""
        if self.r1 is None or self.g_s is None:
            raise RuntimeError("polynomial material already used (or never made)")
        out = (self.r1, self.g_s)
        self.r1 = self.g_s = None
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


def server_open(s: np.ndarray, r1: np.ndarray, p: int) -> np.ndarray:
    """Step 1, server: ``w = s + R1``, the opening of ``v + R1`` to the client."""
    return A.add(s, r1, p)


def client_step(
    w: np.ndarray,
    c: np.ndarray,
    a_c: np.ndarray,
    g_c: list[np.ndarray],
    r2: np.ndarray,
    k: int,
    p: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2, client: from the opening ``w`` and its share ``c`` of ``v``, the pair
    ``(e, z)`` it sends back; its own output share is ``mask_trunc(R2, q)``, fixed offline."""
    x_c = A.open_trunc(A.add(w, c, p), k)
    e = A.sub(x_c, a_c, p)
    return e, A.add(evaluate_share(e, g_c, p), r2, p)


def server_finish(
    e: np.ndarray, z: np.ndarray, g_s: list[np.ndarray], q: int, p: int
) -> np.ndarray:
    """Step 3, server: its share of the output, ``round((Y + R2) / 2^q)``."""
    return A.open_trunc(A.add(evaluate_share(e, g_s, p), z, p), q)

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

import math
from dataclasses import dataclass
from math import comb

import numpy as np

from safenet.crypto.he import ClientKeys, HEContext, HEError, flood, rerandomize
from safenet.field import mod_centered
from safenet.protocol import arith as A
from safenet.protocol.linear import BUDGET_MARGIN, ENC_NOISE_MAX, reply_primes
from safenet.protocol.statistical import element_bits

__all__ = [
    "PolyServer",
    "client_decrypt",
    "client_encrypt",
    "client_step",
    "evaluate_share",
    "ReplyParams",
    "reply_params",
    "server_finish",
    "server_open",
]


@dataclass(frozen=True)
class ReplyParams:
    """Public parameters of a session's polynomial replies (both parties derive them).

    Attributes:
        digits: ``D``, signed digits each plaintext coefficient is split into.
        base_bits: ``b``, each digit's base (``2^b``); ``D * b >= bits(p)``.
        flood_bits: flood width of every reply.
    """

    digits: int
    base_bits: int
    flood_bits: int


def reply_params(he: HEContext, session_replies: int, degree: int) -> ReplyParams:
    """The fewest digits whose flood still leaves ``BUDGET_MARGIN`` bits of noise budget.

    A reply sums ``degree * D`` products of a fresh ciphertext (noise at most
    ``ENC_NOISE_MAX``, symmetric encryption with SEAL's exact scaling) with a digit
    plaintext (coefficients below ``2^b`` once SEAL centres them): its noise is below
    ``degree * D * N * ENC_NOISE_MAX * 2^b``. The flood exceeds that by
    :func:`~safenet.protocol.statistical.element_bits` of the session's ``N *
    session_replies`` reply coefficients, so all of them together stay within ``2^-42``.
    Full-size plaintexts (``D = 1``) would need about 123 + log2(replies) bits under the
    48-bit prime, past the 174-bit modulus of N = 8192; two or three digits fit.
    """
    n, p_bits = he.params.poly_degree, he.params.plain_modulus.bit_length()
    hide = element_bits(n * max(1, int(session_replies)))
    for digits in range(1, p_bits + 1):
        base = -(-p_bits // digits)
        noise = max(1, degree) * digits * n * ENC_NOISE_MAX * 2.0**base
        bits = math.ceil(math.log2(noise)) + hide
        if _budget_left(he, bits) >= BUDGET_MARGIN:
            return ReplyParams(digits, base, bits)
    raise HEError("no digit split gives polynomial replies enough noise budget")


def _budget_left(he: HEContext, flood_bits: int) -> float:
    q_bits = sum(math.log2(q) for q in he.coeff_primes)
    return q_bits - math.log2(he.params.plain_modulus) - flood_bits - 2


def _chunks(n: int, he: HEContext) -> list[slice]:
    return [slice(a, min(n, a + he.slots)) for a in range(0, n, he.slots)]


def _signed_digits(coeffs: np.ndarray, base_bits: int, digits: int) -> list[np.ndarray]:
    """Centred ``coeffs`` as ``sum_k d_k 2^(b k)`` with ``|d_k| <= 2^b`` (the last digit
    takes what is left)."""
    c, half, out = coeffs.astype(np.int64), 1 << (base_bits - 1), []
    for _ in range(digits - 1):
        d = ((c + half) & ((1 << base_bits) - 1)) - half
        out.append(d)
        c = (c - d) >> base_bits
    out.append(c)
    return out


def client_encrypt(keys: ClientKeys, a_c: np.ndarray, degree: int, rp: ReplyParams) -> list[bytes]:
    """Encryptions of ``2^(b k) a_c^l`` for ``l = 1..degree``, ``k < D`` (power, then digit,
    then chunk)."""
    he, p = keys.he, keys.he.params.plain_modulus
    out = []
    power = np.ones_like(a_c)
    for _ in range(degree):
        power = A.mulmod(power, a_c, p)
        for k in range(rp.digits):
            scaled = A.mulmod(power, pow(2, rp.base_bits * k, p), p)
            out += [keys.encrypt(scaled[s]).to_string() for s in _chunks(len(a_c), he)]
    return out


class PolyServer:
    """The server's half of one activation layer's polynomial channels.

    Args:
        he: the session's HE context.
        coef: integer coefficients per element, int64 ``(n, degree + 1)`` (signed).
        rp: the session's reply parameters (:func:`reply_params`): digits and flood.
        shift: ``k``, the truncation of the activation input ``v`` into ``X``.
    """

    def __init__(self, he: HEContext, coef: np.ndarray, rp: ReplyParams, shift: int) -> None:
        self.he = he
        self.p = he.params.plain_modulus
        self.n, d1 = coef.shape
        self.degree = d1 - 1
        self.coef = A.to_residues(coef, self.p)
        if _budget_left(he, rp.flood_bits) < BUDGET_MARGIN:
            raise HEError(f"a {rp.flood_bits}-bit flood leaves too little noise budget")
        self.rp = rp
        self.shift = shift
        self._switches = len(he.coeff_primes) - reply_primes(he)
        self.r1: np.ndarray | None = None
        self.g_s: list[np.ndarray] | None = None

    @property
    def expected_ciphertexts(self) -> int:
        """Ciphertexts the client sends for this layer (powers x digits x chunks)."""
        return self.degree * self.rp.digits * len(_chunks(self.n, self.he))

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
        """Answer the client's ``Enc(2^(b k) a_c^l)``; keeps ``R1`` and the shares
        ``[G_m]_s``. Raises ValueError for a wrong count, HEError for a malformed one."""
        he, p, d, n = self.he, self.p, self.degree, self.n
        if len(ciphertexts) != self.expected_ciphertexts:
            raise ValueError(
                f"polynomial layer expects {self.expected_ciphertexts} ciphertexts, "
                f"got {len(ciphertexts)}"
            )
        full = len(he.coeff_primes)
        cts = [he.load_ciphertext(b, full, f"poly input {i}") for i, b in enumerate(ciphertexts)]
        r1 = A.bounded_mask(n, p)
        h = self._h(A.mask_trunc(r1, self.shift, p))
        g_s, replies = [], []
        for m in range(d):
            t = A.uniform(n, p)
            g_s.append(A.add(h[0, m], t, p))
            for ci, s in enumerate(_chunks(n, he)):
                acc = self._inner(cts, h, m, ci, s)
                if acc is None:
                    acc = he.encrypt_zero(public_key)
                he.evaluator.sub_plain_inplace(acc, he.encode(t[s]))
                acc = flood(he, rerandomize(he, acc, public_key), self.rp.flood_bits)
                for _ in range(self._switches):  # public post-processing: smaller replies
                    he.evaluator.mod_switch_to_next_inplace(acc)
                replies.append(acc.to_string())
        g_s.append(self.coef[:, d].copy())  # G_d = C_d, held by the server alone
        self.r1, self.g_s = r1, g_s
        return replies

    def _inner(self, cts: list, h: dict, m: int, ci: int, s: slice) -> object:
        """``Enc(sum_{j>=1} h_{j,m} a_c^j)`` on chunk ``ci``: each ``h`` plaintext split into
        signed digits, digit ``k`` times the client's ``Enc(2^(b k) a_c^j)`` (None if all
        digits are zero)."""
        he, rp, nc = self.he, self.rp, len(_chunks(self.n, self.he))
        acc = None
        for j in range(1, self.degree - m + 1):
            coeffs = mod_centered(he.plain_to_coeffs(he.encode(h[j, m][s])), self.p)
            for k, dig in enumerate(_signed_digits(coeffs, rp.base_bits, rp.digits)):
                if not dig.any():  # SEAL refuses a product with the zero plaintext
                    continue
                ct = cts[((j - 1) * rp.digits + k) * nc + ci]
                term = he.evaluator.multiply_plain(ct, he.plain_from_coeffs(dig))
                acc = term if acc is None else he.evaluator.add(acc, term)
        return acc

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
            k = m * len(chunks) + ci
            ct = he.load_ciphertext(replies[k], reply_primes(he), f"polynomial reply {k}")
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

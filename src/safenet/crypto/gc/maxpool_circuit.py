"""The garbled max of the protocol: shares of a pooling window in, its maximum as output bits.

Inputs, for a window of ``k`` elements of ``n = p.bit_length()`` bits each, element ``j`` in
bits ``j n .. (j + 1) n - 1`` of each group: the server's shares ``a_j`` (``"server_share"``,
already offset: the server inputs ``(s_j + h) mod p`` with ``h = p // 2``) and the client's
shares ``b_j`` (``"client_share"``). The circuit computes

    u_j = (a_j + b_j) mod p  =  v_j + h        (v_j the centred value, so u_j in [0, p)),
    z   = max_j u_j                            (output ``"z"``: n bits, weights 2^j);

the protocol turns the bits into additive shares mod p through garbled output rows, as for
the ReLU (:mod:`.relu_circuit`), and the server's share takes back the offset ``h``.

The offset turns the signed order of the centred values into the unsigned order of the
``u_j``, so the maximum needs only unsigned comparisons. A padding element (a window that
hangs over the image edge) is input as ``a_j = b_j = 0``: ``u_j = 0`` is the smallest value,
so it never wins while the window holds one real element (PyTorch guarantees that).

Cost per window: ``3 n`` ANDs per element for the share addition and its reduction mod p
(add, subtract p, select) and ``2 n`` per comparison-and-select of the ``k - 1`` tournament
rounds: 734 ANDs for a 2 x 2 window under the 41-bit prime (488 + 246,
``max_circuit(p, 4).and_count_by_stage()``), 1,754 for a 3 x 3 window.
"""

from __future__ import annotations

import functools

import numpy as np

from safenet.crypto.gc.circuit import Circuit, CircuitBuilder

__all__ = ["max_circuit", "max_reference", "max_weights"]


def max_circuit(p: int, k: int) -> Circuit:
    """The max circuit over ``k`` shared elements mod odd ``p`` (cached). See the module doc
    for inputs and semantics."""
    return _build(int(p), int(k))


def max_weights(p: int) -> list[int]:
    """Weights of the output bits (``2^j``): the offset maximum is their weighted sum."""
    return [1 << j for j in range(p.bit_length())]


@functools.cache
def _build(p: int, k: int) -> Circuit:
    if p < 5 or p % 2 == 0:
        raise ValueError(f"p must be an odd prime >= 5, got {p}")
    if k < 1:
        raise ValueError(f"a window needs at least one element, got {k}")
    n = p.bit_length()
    bld = CircuitBuilder()
    a = bld.input("server_share", k * n)
    b = bld.input("client_share", k * n)
    with bld.stage("1 add shares mod p"):
        us = [_add_mod(bld, a[j * n : (j + 1) * n], b[j * n : (j + 1) * n], p) for j in range(k)]
    with bld.stage("2 max"):
        while len(us) > 1:
            nxt = [_max2(bld, us[j], us[j + 1]) for j in range(0, len(us) - 1, 2)]
            us = nxt + us[len(us) - len(us) % 2 :]
    bld.output("z", us[0])
    return bld.build()


def _add_mod(bld: CircuitBuilder, a: list[int], b: list[int], p: int) -> list[int]:
    """``(a + b) mod p`` for ``a, b < p`` (3 n ANDs: add, subtract p, select)."""
    n = len(a)
    sl, carry = bld.add(a, b)
    t = [*sl, carry]
    d, no_borrow = bld.sub(t, bld.const_vec(p, n + 1), width=n + 1)  # no_borrow = [t >= p]
    return bld.mux_vec(no_borrow, d[:n], t[:n])


def _max2(bld: CircuitBuilder, x: list[int], y: list[int]) -> list[int]:
    """``max(x, y)`` for unsigned vectors (2 n ANDs)."""
    return bld.mux_vec(bld.ge(x, y), x, y)


def max_reference(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """Plaintext semantics of :func:`max_circuit`: ``a, b`` of shape ``(k, n)`` (offset server
    shares and client shares); returns ``max_j (a_j + b_j) mod p`` as int64 ``(n,)``."""
    u = (np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64)) % p
    return u.max(axis=0)

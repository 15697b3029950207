"""The garbled max of the protocol: shares of a pooling window in, its maximum plus a mask out.

Inputs, for a window of ``k`` elements of ``n = p.bit_length()`` bits each, element ``j`` in
bits ``j n .. (j + 1) n - 1`` of each group: the server's shares ``a_j`` (``"server_share"``,
already offset: the server inputs ``(s_j + h) mod p`` with ``h = p // 2``), the client's
shares ``b_j`` (``"client_share"``) and the low ``n`` bits ``r_low`` of the server's output
mask ``r = r_low + 2^n r_high`` (``"server_mask"``). The circuit computes

    u_j = (a_j + b_j) mod p  =  v_j + h        (v_j the centred value, so u_j in [0, p)),
    z   = max_j u_j + r_low                    (outputs ``"z"``: n bits, ``"carry"``: bit n);

the protocol adds ``2^n r_high`` through a garbled output row on the carry, as for the ReLU
(:mod:`.relu`), so the evaluator learns the integer ``max_j u_j + r``.

The offset turns the signed order of the centred values into the unsigned order of the
``u_j``, so the maximum needs only unsigned comparisons; ``max u_j + r`` hides ``max u_j`` up
to statistical distance ``2^-stat_bits`` (integer masking, as in :mod:`.relu`), and it mod p
with the server's ``-(r + h) mod p`` are shares of ``max_j v_j``. A padding element (a window
that hangs over the image edge) is input as ``a_j = b_j = 0``: ``u_j = 0`` is the smallest
value, so it never wins while the window holds one real element (PyTorch guarantees that).

Cost per window: ``3 n`` ANDs per element for the share addition and its reduction mod p
(add, subtract p, select), ``2 n`` per comparison-and-select of the ``k - 1`` tournament
rounds and ``n`` for the mask: 775 ANDs for a 2 x 2 window under the 41-bit prime
(488 + 246 + 41, ``max_circuit(p, 4, 60).and_count_by_stage()``), 1,795 for a 3 x 3 window.
"""

from __future__ import annotations

import functools

import numpy as np

from safenet.crypto.gc.circuit import Circuit, CircuitBuilder

__all__ = ["max_circuit", "max_reference"]


def max_circuit(p: int, k: int, stat_bits: int) -> Circuit:
    """The max circuit over ``k`` shared elements mod odd ``p`` for an integer output mask
    ``stat_bits`` wider than ``p`` (cached; the circuit takes the mask's low bits only and
    does not depend on ``stat_bits``). See the module doc for inputs and semantics."""
    return _build(int(p), int(k), int(stat_bits))


@functools.cache
def _build(p: int, k: int, stat_bits: int) -> Circuit:
    if p < 5 or p % 2 == 0:
        raise ValueError(f"p must be an odd prime >= 5, got {p}")
    if k < 1:
        raise ValueError(f"a window needs at least one element, got {k}")
    if stat_bits < 1:
        raise ValueError("stat_bits must be positive")
    n = p.bit_length()
    bld = CircuitBuilder()
    a = bld.input("server_share", k * n)
    b = bld.input("client_share", k * n)
    r = bld.input("server_mask", n)
    with bld.stage("1 add shares mod p"):
        us = [_add_mod(bld, a[j * n : (j + 1) * n], b[j * n : (j + 1) * n], p) for j in range(k)]
    with bld.stage("2 max"):
        while len(us) > 1:
            nxt = [_max2(bld, us[j], us[j + 1]) for j in range(0, len(us) - 1, 2)]
            us = nxt + us[len(us) - len(us) % 2 :]
    with bld.stage("3 add mask"):
        z, top = bld.add(us[0], r, width=n)
    bld.output("z", z)
    bld.output("carry", [top])
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


def max_reference(a: np.ndarray, b: np.ndarray, r: np.ndarray, p: int) -> np.ndarray:
    """Plaintext semantics of :func:`max_circuit`: ``a, b`` of shape ``(k, n)`` (offset server
    shares and client shares), ``r`` of shape ``(n,)``; returns ``max_j u_j + r`` as Python ints
    (object array: it may exceed 64 bits): with ``r = r_low`` the circuit's ``z`` and
    ``carry`` read as one integer."""
    u = (np.asarray(a, dtype=object) + np.asarray(b, dtype=object)) % p
    return u.max(axis=0) + np.asarray(r, dtype=object)

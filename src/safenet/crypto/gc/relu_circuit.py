"""The garbled ReLU of the protocol: shares in, the truncated ReLU as weighted output bits.

Inputs (n = bit length of p, values in [0, p)): the server's share ``a`` (``"server_share"``)
and the client's share ``b`` (``"client_share"``). With ``h = p // 2``:

    v = (a + b) mod p,   x = floor(v_signed / 2^k)   (v_signed = v - p if v > h else v),
    y = max(x, 0)  (or min(max(x, 0), c) for a clipped ReLU).

The outputs are ``W`` bits ``"y"`` (W = :func:`relu_width`) and one bit ``"delta"`` with
``y = sum_j 2^j y_j - delta`` (:func:`relu_weights`): the circuit never subtracts ``delta``
itself. The protocol turns every output bit into an additive share mod p through garbled
output rows (:mod:`safenet.crypto.gc.tables`), so the weighted sum costs no gates, and the
client's share is uniform: no mask enters the circuit.

How the circuit stays small. For p = 2^41 - 2^37 + 1, k = 9 (n = 41) it has 129 AND gates
(4,128 bytes of tables; Delphi's circuit has about 533): by step below 41, 54, 3 and 31
(``Circuit.and_count_by_stage`` reports the same split).

1. ``s = a + b`` without reducing it (n ANDs, n + 1 bits).
2. Sign and reduction from three threshold tests on ``s`` instead of a subtract-and-select:
   with ``A = [s > h]``, ``B = [s >= p]``, ``C = [s > p + h]`` (nested, so A >= B >= C),
   ``v <= h`` iff ``s`` lies in ``[0, h]`` or ``[p, p + h]``, i.e. ``pos = ~(A ^ B ^ C)``, and
   ``s`` lies in ``[p, p + h]`` iff ``B ^ C``: both free given A, B, C. The tests share one
   carry chain: for an NTT-friendly ``p = 1 mod 2^j`` the thresholds are ``1, 1, 2`` mod
   ``2^(j-1)``, so the low ``j - 1`` bits only decide ``L != 0`` and ``L >> 1 != 0``, one
   OR-chain (``j - 2`` ANDs), and each test pays only for the few high bits.
3. Exact truncation without a borrow chain: when ``pos``, ``y = (s >> k) - A*(p >> k) - delta``
   with ``delta = A & [s mod 2^k < p mod 2^k]``. Subtracting the masked constant
   ``A*(p >> k)`` only touches bits at and above its lowest set bit (2 ANDs here), and the
   low-bit test is a prefix of the chain above. The ``- delta`` is not computed: ``delta`` is
   an output of weight -1 (it implies ``pos``).
4. ReLU: AND the W result bits with ``pos`` (W = bit length of ``(h >> k) + 1``, 31 here).

Every step is exact for any odd prime p and any shift ``0 <= k < n``; only the costs above
assume the NTT-friendly shape of p (other primes get plain carry chains).
"""

from __future__ import annotations

import functools

import numpy as np

from safenet.crypto.gc.circuit import FALSE, Circuit, CircuitBuilder, bits_to_int, int_to_bits

__all__ = [
    "INPUTS",
    "bits_to_int",
    "int_to_bits",
    "relu_circuit",
    "relu_reference",
    "relu_weights",
    "relu_width",
]

#: input group names (garbler: server_share; evaluator: client_share)
INPUTS = ("server_share", "client_share")


def _v2(x: int) -> int:
    return (x & -x).bit_length() - 1


def relu_circuit(p: int, shift: int, clip: int | None = None) -> Circuit:
    """The ReLU circuit for odd prime ``p`` and truncation ``shift`` (cached): inputs
    ``server_share`` and ``client_share`` (``p.bit_length()`` bits little-endian), outputs
    ``y`` (:func:`relu_width` bits) and ``delta`` (one bit) weighted by :func:`relu_weights`.
    ``clip = c``: a clipped ReLU, ``y = min(max(x, 0), c)`` (ReLU6 and friends), for about
    ``3 W`` more ANDs. See the module doc for semantics and costs.
    """
    return _build(int(p), int(shift), None if clip is None else int(clip))


def relu_weights(p: int, shift: int) -> list[int]:
    """Weights of the circuit's output bits, in output order: ``2^j`` for the bits of ``y``,
    ``-1`` for ``delta``; the ReLU is the weighted sum."""
    return [1 << j for j in range(relu_width(p, shift))] + [-1]


def relu_width(p: int, shift: int) -> int:
    """Bits of the truncated ReLU output ``y`` (at most ``floor(p / 2) >> shift``), plus one."""
    return (((p // 2) >> shift) + 1).bit_length()


@functools.cache
def _build(p: int, k: int, clip: int | None = None) -> Circuit:
    """The circuit of :func:`relu_circuit`, stage by stage as in the module doc."""
    n = _check_params(p, k, clip)
    bld = CircuitBuilder()
    a = bld.input("server_share", n)
    b = bld.input("client_share", n)

    with bld.stage("1 add shares"):
        sl, carry = bld.add(a, b)
        s = [*sl, carry]  # n + 1 bits, s <= 2p - 2

    with bld.stage("2 sign and range tests"):
        A, pos, upper, low_lt = _sign_and_range(bld, s, p, k)

    with bld.stage("3 truncate"):
        y_plus = _truncate(bld, s, A, p, k)
        delta = bld.and_(upper, low_lt)

    with bld.stage("4 relu"):
        y_masked = bld.and_vec(pos, y_plus)

    if clip is not None and clip < ((p // 2) >> k):  # a larger bound never binds
        with bld.stage("4b clip"):
            y_masked = _clip(bld, y_masked, delta, clip)

    bld.output("y", y_masked)
    bld.output("delta", [delta])
    return bld.build()


def _check_params(p: int, k: int, clip: int | None) -> int:
    """The bit length of ``p`` once ``p``, the shift ``k`` and ``clip`` are valid."""
    if p < 5 or p % 2 == 0:
        raise ValueError(f"p must be an odd prime >= 5, got {p}")
    n = p.bit_length()
    if not 0 <= k < n:
        raise ValueError(f"shift must be in [0, {n}), got {k}")
    if clip is not None and clip < 0:
        raise ValueError("clip needs a bound >= 0")
    return n


def _sign_and_range(bld: CircuitBuilder, s: list[int], p: int, k: int) -> tuple[int, int, int, int]:
    """Step 2 (module doc) on the sum ``s``: ``A = [s > h]``, ``pos = [v <= h]``, ``upper =
    [p <= s <= p + h]`` and ``low_lt = [s mod 2^k < p mod 2^k]``, from one OR prefix chain
    over the low bits of ``s``."""
    t = _v2(p - 1) - 1  # thresholds are 1, 1, 2 mod 2^t
    low_one = p % (1 << k) == 1 if k else False
    q = _or_prefix(bld, s, max(t, k) if (t >= 2 or low_one) else 0)
    A, B, C = _threshold_tests(bld, s, q, p, t)
    pos = bld.xor(bld.xor(A, B), C) ^ 1  # v <= h
    upper = bld.xor(B, C)  # p <= s <= p + h (implies pos)
    if k == 0:
        low_lt = FALSE
    elif low_one:
        low_lt = bld.or_(s[0], q[k]) ^ 1  # s mod 2^k == 0 < 1
    else:
        low_lt = bld.lt_const(s[:k], p % (1 << k))
    return A, pos, upper, low_lt


def _or_prefix(bld: CircuitBuilder, s: list[int], reach: int) -> list[int]:
    """``q[i] = [s_1..s_{i-1} != 0]`` for ``i <= reach`` (``q[0] = q[1] = FALSE``), an OR
    prefix chain shared by everything in step 2."""
    q = [FALSE, FALSE]
    for i in range(2, reach + 1):
        q.append(bld.or_(q[-1], s[i - 1]))
    return q


def _threshold_tests(
    bld: CircuitBuilder, s: list[int], q: list[int], p: int, t: int
) -> tuple[int, int, int]:
    """``A, B, C = [s > h], [s >= p], [s > p + h]``. For ``t >= 2`` the low ``t`` bits of
    ``s`` enter through ``q`` and each test pays only for the bits above them."""
    h = p // 2
    thresholds = (h + 1, p, p + h + 1)
    if t >= 2:
        low = {1: bld.or_(s[0], q[t]), 2: q[t]}
        A, B, C = (bld.ge_const(s[t:], c >> t, low[c % (1 << t)]) for c in thresholds)
    else:
        A, B, C = (bld.ge_const(s, c) for c in thresholds)
    return A, B, C


def _truncate(bld: CircuitBuilder, s: list[int], A: int, p: int, k: int) -> list[int]:
    """Step 3 without ``delta``: ``(s >> k) - A * (p >> k)`` on :func:`relu_width` bits,
    which holds ``y + delta``."""
    width = relu_width(p, k)
    big_p = p >> k
    masked = [A if (big_p >> i) & 1 else FALSE for i in range(width)]
    return bld.sub(s[k : k + width], masked, width=width)[0]


def _clip(bld: CircuitBuilder, y: list[int], delta: int, c: int) -> list[int]:
    """``min(y - delta, c) + delta`` from ``y`` (which holds ``y - delta`` plus the bit
    ``delta`` that its weight -1 takes back): above ``c`` it becomes ``c + delta``.

    ``y - delta > c`` iff ``y >= c + 2``, or ``y >= c + 1`` and not ``delta``. The bits of
    ``c + delta`` are free: bit i is ``c_i ^ delta`` where the lower bits of ``c`` are all
    ones (the carry reaches it), else ``c_i``."""
    over = bld.or_(bld.ge_const(y, c + 2), bld.and_(bld.ge_const(y, c + 1), delta ^ 1))
    out = []
    for i, yi in enumerate(y):
        ci = (c >> i) & 1
        carry = c % (1 << i) == (1 << i) - 1
        top = bld.xor(delta, bld.const(ci)) if carry else bld.const(ci)
        out.append(bld.mux(over, top, yi))
    return out


def relu_reference(
    a: np.ndarray, b: np.ndarray, p: int, shift: int, clip: int | None = None
) -> np.ndarray:
    """Plaintext semantics of :func:`relu_circuit`, vectorised (p < 2^62): the truncated
    (clipped) ReLU of the shared values as int64, which the weighted outputs sum to."""
    a, b = (np.asarray(x, dtype=np.int64) for x in (a, b))
    v = (a + b) % p
    vs = np.where(v > p // 2, v - p, v)
    y = np.maximum(vs >> shift, 0)
    return y if clip is None else np.minimum(y, clip)

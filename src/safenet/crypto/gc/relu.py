"""The garbled ReLU of the protocol: shares in, truncated ReLU plus a fresh mask out.

Inputs (n = bit length of p, values in [0, p)): the server's share ``a``
(``"server_share"``), the client's share ``b`` (``"client_share"``) and the server's output
mask ``r`` (``"server_mask"``). With ``h = p // 2``:

    v = (a + b) mod p,   x = floor(v_signed / 2^k)   (v_signed = v - p if v > h else v),
    y = max(x, 0),       z = (y + r) mod p            (output ``"z"``, n bits).

The client learns ``z`` (its next share); the server keeps ``-r``.

**Integer masking** (``stat_bits = s``, what the protocol uses): the mask is a uniform
integer ``r = r_low + 2^W r_high`` of ``W + s`` bits (``W`` = :func:`relu_width`, the bits of
``y``) and the evaluator learns the integer ``z = y + r + 1``, never reduced: it hides ``y``
up to statistical distance ``2^-s``, and ``z mod p`` with the server's ``-(r + 1) mod p`` are
shares of ``y``. The circuit takes only ``r_low`` (``server_mask``, ``W`` bits) and outputs
``y + r_low + 1`` as its low ``W`` bits (``z``) and their carry (``carry``); the protocol
turns the carry ``c`` into ``r_high + c`` with one garbled output row
(:mod:`safenet.crypto.gc.tables`), so ``z = z_low + 2^W (r_high + c)``. Steps 5-6 below
shrink to one ``W``-bit adder, whatever ``s``: 160 ANDs instead of 248 for the default prime
(the ``s`` carries into the mask's high bits, one AND each, are gone).

How the circuit stays small. For p = 2^41 - 2^37 + 1, k = 9 (n = 41) it has 248 AND gates
(7,936 bytes of tables; Delphi's circuit has about 533): by step below 41, 54, 3, 31 and
40 + 79 (``Circuit.and_count_by_stage`` reports the same split).

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
   low-bit test is a prefix of the chain above. The ``- delta`` is not computed: it rides on the
   free carry-in of the mask adder as ``+ (1 - delta)`` and the extra ``+ 1`` is taken back by
   the final reduction, which subtracts 1 or ``p + 1`` instead of 0 or ``p``.
4. ReLU: AND the W result bits with ``pos`` (W = bit length of ``(h >> k) + 1``, 31 here).
5. ``u = y + r + 1 - delta`` (n - 1 ANDs), ``z = u - 1 - p*[u >= p + 1]``: a comparison with
   a constant and a subtraction of a masked constant (1 AND per bit each); no select.

Every step is exact for any odd prime p and any shift ``0 <= k < n``; only the costs above
assume the NTT-friendly shape of p (other primes get plain carry chains).
"""

from __future__ import annotations

import functools

import numpy as np

from safenet.crypto.gc.circuit import FALSE, TRUE, Circuit, CircuitBuilder, bits_to_int, int_to_bits

__all__ = [
    "INPUTS",
    "OUTPUT",
    "bits_to_int",
    "int_to_bits",
    "relu_circuit",
    "relu_reference",
    "relu_width",
]

#: input group names (garbler: server_share, server_mask; evaluator: client_share)
INPUTS = ("server_share", "client_share", "server_mask")
#: output group name
OUTPUT = "z"


def _v2(x: int) -> int:
    return (x & -x).bit_length() - 1


def relu_circuit(
    p: int, shift: int, stat_bits: int | None = None, clip: int | None = None
) -> Circuit:
    """The ReLU circuit for odd prime ``p`` and truncation ``shift`` (cached).

    With ``stat_bits=None``: inputs ``server_share``, ``client_share``, ``server_mask`` and
    output ``z = (y + r) mod p``, all ``p.bit_length()`` bits little-endian. With
    ``stat_bits = s``: integer masking, ``server_mask`` has :func:`relu_width` ``= W`` bits,
    output ``z`` the low ``W`` bits of ``y + r + 1`` and output ``carry`` its bit ``W`` (the
    mask's ``s`` high bits are added outside the circuit: module doc; the circuit does not
    depend on ``s``). ``clip = c`` (integer masking only): a
    clipped ReLU, ``y = min(max(x, 0), c)`` (ReLU6 and friends), for about ``3 W`` more
    ANDs. See the module doc for semantics and costs.
    """
    s = None if stat_bits is None else int(stat_bits)
    return _build(int(p), int(shift), s, None if clip is None else int(clip))


def relu_width(p: int, shift: int) -> int:
    """Bits of the truncated ReLU output ``y`` (at most ``floor(p / 2) >> shift``), plus one."""
    return (((p // 2) >> shift) + 1).bit_length()


@functools.cache
def _build(p: int, k: int, stat_bits: int | None = None, clip: int | None = None) -> Circuit:
    if p < 5 or p % 2 == 0:
        raise ValueError(f"p must be an odd prime >= 5, got {p}")
    n = p.bit_length()
    if not 0 <= k < n:
        raise ValueError(f"shift must be in [0, {n}), got {k}")
    h = p // 2
    bld = CircuitBuilder()
    a = bld.input("server_share", n)
    b = bld.input("client_share", n)
    if stat_bits is not None and stat_bits < 1:
        raise ValueError("stat_bits must be positive")
    if clip is not None and (stat_bits is None or clip < 0):
        raise ValueError("clip needs integer masking (stat_bits) and a bound >= 0")
    wz = n if stat_bits is None else relu_width(p, k)
    r = bld.input("server_mask", wz)

    with bld.stage("1 add shares"):
        sl, carry = bld.add(a, b)
        s = [*sl, carry]  # n + 1 bits, s <= 2p - 2

    with bld.stage("2 sign and range tests"):
        thresholds = (h + 1, p, p + h + 1)
        t = _v2(p - 1) - 1  # thresholds are 1, 1, 2 mod 2^t
        low_one = p % (1 << k) == 1 if k else False
        # q[i] = [s_1..s_{i-1} != 0], an OR prefix chain shared by everything below
        reach = max(t, k) if (t >= 2 or low_one) else 0
        q = [FALSE, FALSE]
        for i in range(2, reach + 1):
            q.append(bld.or_(q[-1], s[i - 1]))
        if t >= 2:
            low = {1: bld.or_(s[0], q[t]), 2: q[t]}
            A, B, C = (bld.ge_const(s[t:], c >> t, low[c % (1 << t)]) for c in thresholds)
        else:
            A, B, C = (bld.ge_const(s, c) for c in thresholds)
        pos = bld.xor(bld.xor(A, B), C) ^ 1  # v <= h
        upper = bld.xor(B, C)  # p <= s <= p + h (implies pos)
        if k == 0:
            low_lt = FALSE
        elif low_one:
            low_lt = bld.or_(s[0], q[k]) ^ 1  # s mod 2^k == 0 < 1
        else:
            low_lt = bld.lt_const(s[:k], p % (1 << k))

    with bld.stage("3 truncate"):
        width = relu_width(p, k)  # holds y + delta
        big_p = p >> k
        masked = [A if (big_p >> i) & 1 else FALSE for i in range(width)]
        y_plus, _ = bld.sub(s[k : k + width], masked, width=width)
        delta = bld.and_(upper, low_lt)

    with bld.stage("4 relu"):
        y_masked = bld.and_vec(pos, y_plus)

    if clip is not None and clip < (h >> k):  # a larger bound never binds
        with bld.stage("4b clip"):
            y_masked = _clip(bld, y_masked, delta, clip)

    if stat_bits is not None:
        with bld.stage("5 add mask"):
            # y + r_low + (1 - delta) = relu + r_low + 1 < 2^(W + 1): no reduction mod p
            u, top = bld.add(y_masked, r, carry_in=delta ^ 1, width=wz)
        bld.output("z", u)
        bld.output("carry", [top])
        return bld.build()

    with bld.stage("5 add mask"):
        uw = (p + (h >> k)).bit_length()
        u, _ = bld.add(y_masked, r, carry_in=delta ^ 1, width=uw)  # y + r + 1

    with bld.stage("6 reduce mod p"):
        wrap = bld.ge_const(u, p + 1)
        hi_c, lo_c = p + 1, 1
        sub = []
        for i in range(n):
            bh, bl = (hi_c >> i) & 1, (lo_c >> i) & 1
            sub.append(TRUE if bh and bl else FALSE if bh == bl else wrap ^ bl)
        z, _ = bld.sub(u, sub, width=n)
    bld.output("z", z)
    return bld.build()


def _clip(bld: CircuitBuilder, y: list[int], delta: int, c: int) -> list[int]:
    """``min(y - delta, c) + delta`` from ``y`` (which holds ``y - delta`` plus the bit
    ``delta`` that the mask adder's carry-in takes back): above ``c`` it becomes ``c + delta``.

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
    a: np.ndarray,
    b: np.ndarray,
    r: np.ndarray,
    p: int,
    shift: int,
    stat_bits: int | None = None,
    clip: int | None = None,
) -> np.ndarray:
    """Plaintext semantics of :func:`relu_circuit`, vectorised (p < 2^62).

    ``stat_bits=None``: ``(y + r) mod p`` as uint64; otherwise ``y + r + 1`` as Python ints
    (object array: it may exceed 64 bits); for the circuit, ``r`` is ``r_low`` and the result
    its outputs ``z`` and ``carry`` read as one integer.
    """
    a, b = (np.asarray(x, dtype=np.int64) for x in (a, b))
    v = (a + b) % p
    vs = np.where(v > p // 2, v - p, v)
    y = np.maximum(vs >> shift, 0)
    if clip is not None:
        y = np.minimum(y, clip)
    if stat_bits is not None:
        return y.astype(object) + np.asarray(r, dtype=object) + 1
    r = np.asarray(r, dtype=np.int64)
    return ((y + r) % p).astype(np.uint64)

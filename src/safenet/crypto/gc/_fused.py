"""Fused half-gates kernels: a whole chunk's circuit in one compiled call, AES-NI inline.

The buffer path (:mod:`._kernels` around ``cryptography``) gathers each AND layer's hash
inputs into scratch arrays, encrypts them twice and combines them again, with Python between
layers. Here one call walks every XOR block and AND layer of a chunk, and each gate-instance
hashes its labels in registers: the label slots, the tables and nothing else touch memory.
Three widths, chosen per call from :func:`safenet.crypto.aesni.step_lanes` (:func:`kernels`):

* one instance per step (:func:`safenet.crypto.aesni.tccr2`, 128-bit AES-NI);
* four instances per step where the CPU has VAES and AVX-512: a label row ``L[s, i:i + 4]``
  is one 512-bit register, so a step loads, hashes and stores whole registers
  (:class:`safenet.crypto.aesni.Wide`), or two per 256-bit register with VAES and AVX2; the
  last ``m mod lanes`` instances take the one-instance path.

The garbled output rows (:mod:`.tables`) are encrypted and opened here too
(:func:`encrypt_rows`, :func:`decrypt_rows`, :func:`open_rows_sum`).

Same hash, same tweaks, same tables as the buffer path (``tests/crypto/test_aesni.py`` compares
them bit for bit). Hash ``H(x, t) = pi(pi(x) ^ t) ^ pi(x)`` with ``t`` XORed into the low
word; the tweak of AND gate ``g`` of instance ``i`` (of ``n_total``, chunk starting at tweak
offset ``tw0``) is ``2 * (g * n_total + tw0 + i) + half`` (see :mod:`._kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from safenet.crypto import aesni
from safenet.crypto.aesni import Wide, tccr1, tccr2, tccr4
from safenet.crypto.gc._kernels import xor_block

__all__ = ["decrypt_rows", "encrypt_rows", "kernels", "open_rows_sum"]

Arr = np.ndarray
U64 = np.uint64
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_KEYS = types.UniTuple(types.uint64, 22)


def _eval_step(n: int):  # noqa: ANN202 - returns a numba intrinsic
    """An intrinsic evaluating one AND gate on ``n`` instances (one register of ``n`` lanes):
    labels at word offsets ``wa``, ``wb`` of ``L``, output at ``wo``, tables at word offset
    ``wt`` of ``tab``, tweak ``t`` for the first instance (the others follow by 2)."""

    @intrinsic
    def eval_step(typingctx, L, tab, wa, wb, wo, wt, t, k):  # noqa: ANN001, ANN202, ARG001
        i = types.intp
        sig = types.void(L, tab, i, i, i, i, types.uint64, _KEYS)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            la = context.make_array(signature.args[0])(context, builder, args[0]).data
            ta = context.make_array(signature.args[1])(context, builder, args[1]).data
            _, _, wa, wb, wo, wt, t, ks = args
            w = Wide(builder, ks, n)
            a, b = w.load(la, wa), w.load(la, wb)
            tg, te = w.split_tables(w.load(ta, wt), w.load(ta, builder.add(wt, wt.type(2 * n))))
            ha, hb = w.hash([a, b], [w.tweaks(t, 2, 0), w.tweaks(t, 2, 1)])
            sel_a = builder.and_(w.low_bit_masks(a), tg)
            sel_b = builder.and_(w.low_bit_masks(b), builder.xor(te, a))
            w.store(builder.xor(builder.xor(ha, hb), builder.xor(sel_a, sel_b)), la, wo)
            return context.get_dummy_value()

        return sig, codegen

    return eval_step


def _garble_step(n: int):  # noqa: ANN202 - returns a numba intrinsic
    """An intrinsic garbling one AND gate on ``n`` instances (offsets as :func:`_eval_step`;
    ``na``, ``nb`` the input negation masks, ``(d0, d1)`` Delta); tables as ``(T_G, T_E)``
    per instance."""

    @intrinsic
    def garble_step(typingctx, L, tab, wa, wb, wo, wt, na, nb, t, d0, d1, k):  # noqa: ANN001, ANN202, ARG001
        i, u = types.intp, types.uint64
        sig = types.void(L, tab, i, i, i, i, u, u, u, u, u, _KEYS)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            la = context.make_array(signature.args[0])(context, builder, args[0]).data
            ta = context.make_array(signature.args[1])(context, builder, args[1]).data
            _, _, wa, wb, wo, wt, na, nb, t, d0, d1, ks = args
            w = Wide(builder, ks, n)
            x, b = builder.xor, builder.and_
            delta = w.pairs(d0, d1)
            a0 = x(w.load(la, wa), b(w.pairs(na, na), delta))
            b0 = x(w.load(la, wb), b(w.pairs(nb, nb), delta))
            tw_g, tw_e = w.tweaks(t, 2, 0), w.tweaks(t, 2, 1)
            ha0, ha1, hb0, hb1 = w.hash([a0, x(a0, delta), b0, x(b0, delta)],
                                        [tw_g, tw_g, tw_e, tw_e])  # fmt: skip
            pa, pb = w.low_bit_masks(a0), w.low_bit_masks(b0)
            tg = x(x(ha0, ha1), b(pb, delta))
            fb = x(hb0, hb1)
            lo, hi = w.join_tables(tg, x(fb, a0))
            w.store(lo, ta, wt)
            w.store(hi, ta, builder.add(wt, wt.type(2 * n)))
            w.store(x(x(ha0, b(pa, tg)), x(hb0, b(pb, fb))), la, wo)
            return context.get_dummy_value()

        return sig, codegen

    return garble_step


@numba.njit(inline="always")
def _offsets(g: int, i: int, i0: int, m: int, n_total: int, sa: int, sb: int, o: int) -> tuple:
    """Word offsets of instance ``i``'s labels in ``L`` (inputs ``sa``, ``sb``, output ``o``)
    and of its AND gate ``g``'s tables in ``tab`` (the wide steps read whole registers)."""
    return (sa * m + i) * 2, (sb * m + i) * 2, (o * m + i) * 2, (g * n_total + i0 + i) * 4


@numba.njit(inline="always")
def _garble_one(
    L: Arr, tab: Arr, g: int, i: int, j: int, o: int, sa: int, sb: int, ma: U64, mb: U64,
    t: U64, d0: U64, d1: U64, k: tuple,
) -> None:  # fmt: skip
    """Garble AND gate ``g`` of chunk instance ``i`` (tables at ``tab[g, j]``), tweak ``t``."""
    x0, x1 = L[sa, i, 0] ^ (ma & d0), L[sa, i, 1] ^ (ma & d1)
    y0, y1 = L[sb, i, 0] ^ (mb & d0), L[sb, i, 1] ^ (mb & d1)
    tb = t | _ONE
    ha0, ha1, hA0, hA1, hb0, hb1, hB0, hB1 = tccr4(
        (x0, x1, x0 ^ d0, x1 ^ d1, y0, y1, y0 ^ d0, y1 ^ d1), (t, t, tb, tb), k
    )
    pa, pb = _ZERO - (x0 & _ONE), _ZERO - (y0 & _ONE)
    tg0, tg1 = ha0 ^ hA0 ^ (pb & d0), ha1 ^ hA1 ^ (pb & d1)
    fb0, fb1 = hb0 ^ hB0, hb1 ^ hB1
    tab[g, j, 0, 0], tab[g, j, 0, 1] = tg0, tg1
    tab[g, j, 1, 0], tab[g, j, 1, 1] = fb0 ^ x0, fb1 ^ x1
    L[o, i, 0] = ha0 ^ (pa & tg0) ^ hb0 ^ (pb & fb0)
    L[o, i, 1] = ha1 ^ (pa & tg1) ^ hb1 ^ (pb & fb1)


@numba.njit(inline="always")
def _eval_one(
    L: Arr, tab: Arr, g: int, i: int, j: int, o: int, sa: int, sb: int, t: U64, k: tuple
) -> None:
    """Evaluate AND gate ``g`` of chunk instance ``i`` (tables at ``tab[g, j]``), tweak ``t``."""
    a0, a1 = L[sa, i, 0], L[sa, i, 1]
    b0, b1 = L[sb, i, 0], L[sb, i, 1]
    ha0, ha1, hb0, hb1 = tccr2((a0, a1, b0, b1), (t, t | _ONE), k)
    s_a, s_b = _ZERO - (a0 & _ONE), _ZERO - (b0 & _ONE)
    L[o, i, 0] = ha0 ^ hb0 ^ (s_a & tab[g, j, 0, 0]) ^ (s_b & (tab[g, j, 1, 0] ^ a0))
    L[o, i, 1] = ha1 ^ hb1 ^ (s_a & tab[g, j, 0, 1]) ^ (s_b & (tab[g, j, 1, 1] ^ a1))


# module-level, so that the kernels' closures hold only plain constants (numba caches them)
_eval2, _eval4 = _eval_step(2), _eval_step(4)
_garble2, _garble4 = _garble_step(2), _garble_step(4)


def _make_kernels(n: int) -> tuple[Callable[..., None], Callable[..., None]]:
    """The garbling and evaluation kernels, ``n`` instances per wide step (0: one instance
    per step only). ``n`` is a compile-time constant: the other paths are not compiled."""
    wide = n > 0
    step = max(n, 1)

    @numba.njit(cache=True, nogil=True)
    def garble_chunk(
        L: Arr, xo: Arr, xa: Arr, xb: Arr, xptr: Arr, ao: Arr, aa: Arr, an: Arr, ab: Arr,
        bn: Arr, aptr: Arr, d0: U64, d1: U64, tab: Arr, i0: int, n_total: int, tw0: int,
        k: tuple,
    ) -> None:  # fmt: skip
        """Garble instances ``i0 .. i0 + m`` (``L``: zero labels of the chunk, inputs
        loaded): tables into ``tab[g, i0 + i]``, output zero labels into ``L``.

        Per AND gate with zero labels ``A0, B0`` (after input negation): ``T_G = H(A0) ^
        H(A1) ^ p_b Delta``, ``T_E = H(B0) ^ H(B1) ^ A0``, output ``H(A0) ^ p_a T_G ^ H(B0) ^
        p_b (T_E ^ A0)`` (ZRE15 half-gates; ``p`` the permute bits).
        """
        m, depth = L.shape[1], len(aptr) - 1
        for d in range(depth + 1):
            xor_block(L, xo, xa, xb, xptr[d], xptr[d + 1])
            if d == depth:
                return
            for g in range(aptr[d], aptr[d + 1]):
                o, sa, sb, ma, mb = ao[g], aa[g], ab[g], an[g], bn[g]
                base = U64(g) * U64(n_total) + U64(tw0)
                done = 0
                if wide:
                    for i in range(0, m - step + 1, step):
                        t = (base + U64(i)) << _ONE
                        wa, wb, wo, wt = _offsets(g, i, i0, m, n_total, sa, sb, o)
                        if n == 4:
                            _garble4(L, tab, wa, wb, wo, wt, ma, mb, t, d0, d1, k)
                        else:
                            _garble2(L, tab, wa, wb, wo, wt, ma, mb, t, d0, d1, k)
                    done = m - m % step
                for i in range(done, m):
                    t = (base + U64(i)) << _ONE
                    _garble_one(L, tab, g, i, i0 + i, o, sa, sb, ma, mb, t, d0, d1, k)

    @numba.njit(cache=True, nogil=True)
    def eval_chunk(
        L: Arr, xo: Arr, xa: Arr, xb: Arr, xptr: Arr, ao: Arr, aa: Arr, ab: Arr, aptr: Arr,
        tab: Arr, i0: int, n_total: int, tw0: int, k: tuple,
    ) -> None:  # fmt: skip
        """Evaluate instances ``i0 .. i0 + m`` (``L``: active labels of the chunk, inputs
        loaded) on tables ``tab[g, i0 + i]``: ``W = H(A) ^ s_a T_G ^ H(B) ^ s_b (T_E ^ A)``,
        s = lsb."""
        m, depth = L.shape[1], len(aptr) - 1
        for d in range(depth + 1):
            xor_block(L, xo, xa, xb, xptr[d], xptr[d + 1])
            if d == depth:
                return
            for g in range(aptr[d], aptr[d + 1]):
                o, sa, sb = ao[g], aa[g], ab[g]
                base = U64(g) * U64(n_total) + U64(tw0)
                done = 0
                if wide:
                    for i in range(0, m - step + 1, step):
                        t = (base + U64(i)) << _ONE
                        wa, wb, wo, wt = _offsets(g, i, i0, m, n_total, sa, sb, o)
                        if n == 4:
                            _eval4(L, tab, wa, wb, wo, wt, t, k)
                        else:
                            _eval2(L, tab, wa, wb, wo, wt, t, k)
                    done = m - m % step
                for i in range(done, m):
                    _eval_one(L, tab, g, i, i0 + i, o, sa, sb, (base + U64(i)) << _ONE, k)

    return garble_chunk, eval_chunk


_KERNELS = {n: _make_kernels(n) for n in (0, 2, 4)}


def _drop_stale_cache() -> None:
    """numba keys a cached kernel on the contents of its own file only, and the kernels here
    compile :mod:`safenet.crypto.aesni`'s intrinsics: when that file changes (a marker next to
    the cache holds its digest), drop this module's cached kernels so they compile again."""
    try:
        cache = Path(encrypt_rows._cache._cache_path)  # type: ignore[attr-defined]
        marker = cache / "_fused.aesni-digest"
        if marker.exists() and marker.read_text() == aesni.SOURCE_HASH:
            return
        for f in cache.glob("_fused.*.nb[ic]"):
            f.unlink(missing_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        marker.write_text(aesni.SOURCE_HASH)
    except (OSError, AttributeError):  # no writable cache (or another numba layout)
        pass


def kernels() -> tuple[Callable[..., None], Callable[..., None]] | None:
    """``(garble_chunk, eval_chunk)`` for this process, or ``None`` without AES-NI (the
    buffer path runs then): :func:`aesni.step_lanes` instances per wide step."""
    if not aesni.available():
        return None
    return _KERNELS[aesni.step_lanes()]


@numba.njit(cache=True, nogil=True)
def encrypt_rows(
    zero: Arr, d0: U64, d1: U64, v0: Arr, v1: Arr, tweaks: Arr, rows: Arr, k: tuple
) -> None:
    """Output rows (:mod:`.tables`): for labels ``zero[j, i]`` (of bit 0) and ``zero ^ Delta``
    (bit 1), ``rows[j, i, lsb(W_b)] = low64(H(W_b, t)) ^ v_b[j, i]``; arrays ``(K, m[, 2])``."""
    for j in range(zero.shape[0]):
        for i in range(zero.shape[1]):
            z0, z1, t = zero[j, i, 0], zero[j, i, 1], tweaks[j, i]
            h0, _, h1, _ = tccr2((z0, z1, z0 ^ d0, z1 ^ d1), (t, t), k)
            c0, c1 = h0 ^ v0[j, i], h1 ^ v1[j, i]
            if z0 & _ONE:
                rows[j, i, 0], rows[j, i, 1] = c1, c0
            else:
                rows[j, i, 0], rows[j, i, 1] = c0, c1


@numba.njit(cache=True, nogil=True)
def decrypt_rows(labels: Arr, rows: Arr, tweaks: Arr, out: Arr, k: tuple) -> None:
    """The values ``out[j, i]`` that the active ``labels[j, i]`` open in ``rows[j, i]``."""
    m = labels.shape[1]
    for j in range(labels.shape[0]):
        for i in range(0, m - 1, 2):  # two instances per hash call: two AES chains in flight
            a0, a1 = labels[j, i, 0], labels[j, i, 1]
            b0, b1 = labels[j, i + 1, 0], labels[j, i + 1, 1]
            ha, _, hb, _ = tccr2((a0, a1, b0, b1), (tweaks[j, i], tweaks[j, i + 1]), k)
            out[j, i] = ha ^ rows[j, i, a0 & _ONE]
            out[j, i + 1] = hb ^ rows[j, i + 1, b0 & _ONE]
        if m % 2:
            i = m - 1
            a0 = labels[j, i, 0]
            ha, _ = tccr1((a0, labels[j, i, 1]), (tweaks[j, i],), k)
            out[j, i] = ha ^ rows[j, i, a0 & _ONE]


@numba.njit(inline="always")
def _add_mod(z: Arr, i: int, v: U64, p: U64) -> int:
    """``z[i] = (z[i] + v) mod p`` for ``z[i] < p``; 1 if ``v`` was not a residue, else 0."""
    acc = z[i] + v % p
    z[i] = acc - p if acc >= p else acc
    return 1 if v >= p else 0


@numba.njit(cache=True, nogil=True)
def open_rows_sum(
    L: Arr, slots: Arr, rows: Arr, base: int, n_total: int, i0: int, p: U64, z: Arr, k: tuple
) -> int:
    """For instances ``i0 .. i0 + m`` of an evaluated chunk (``L``), open the rows of every
    output bit ``j`` (label ``L[slots[j], i]``, tweak ``2 (base + j n_total + i0 + i)``) and
    sum the values mod ``p`` into ``z[i0 + i]``; returns how many values were not below ``p``
    (a row that does not open to a residue: corrupt material)."""
    m, bad = L.shape[1], 0
    for i in range(m):
        z[i0 + i] = _ZERO
    for j in range(slots.shape[0]):
        s = slots[j]
        tj = U64(base) + U64(j) * U64(n_total) + U64(i0)
        for i in range(0, m - 1, 2):  # two instances per hash call: two AES chains in flight
            a0, a1, b0, b1 = L[s, i, 0], L[s, i, 1], L[s, i + 1, 0], L[s, i + 1, 1]
            t = (tj + U64(i)) << _ONE
            ha, _, hb, _ = tccr2((a0, a1, b0, b1), (t, t + U64(2)), k)
            bad += _add_mod(z, i0 + i, ha ^ rows[j, i0 + i, a0 & _ONE], p)
            bad += _add_mod(z, i0 + i + 1, hb ^ rows[j, i0 + i + 1, b0 & _ONE], p)
        if m % 2:
            i = m - 1
            a0 = L[s, i, 0]
            ha, _ = tccr1((a0, L[s, i, 1]), ((tj + U64(i)) << _ONE,), k)
            bad += _add_mod(z, i0 + i, ha ^ rows[j, i0 + i, a0 & _ONE], p)
    return bad


_drop_stale_cache()

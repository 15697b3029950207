"""AES-NI inside numba kernels: the tweakable hash of :mod:`safenet.crypto.aes`, callable per
block from compiled code so that hashing fuses with the label arithmetic of garbling.

``cryptography`` encrypts whole buffers at the AES floor, but a garbled AND gate needs its
hash inputs gathered into a buffer, encrypted twice and combined again: six label copies
around four AES calls. Here the hash is a numba intrinsic (:func:`tccr1`, :func:`tccr2`)
that emits the round instructions (``llvm.x86.aesni.aesenc``) into the gate loop, and a block
stays in vector registers from its first round to its last XOR. The key schedule of the fixed
public key is expanded once in Python (FIPS-197, section 5.2); :func:`supported` checks the
compiled hash against ``cryptography``'s before any kernel uses it.

Where the CPU also has VAES, :class:`Wide` builds the same hash over wide registers, four
blocks per instruction with AVX-512 (512 bits), two with AVX2 (256 bits), for kernels that
step that many instances at a time (:mod:`safenet.crypto.gc._fused`); :func:`wide_lanes`
checks each width the same way.

:func:`available` is false on CPUs without AES-NI (or outside x86-64), if that check fails,
or with ``SAFENET_AESNI=0``; callers then keep the buffer path. :func:`step_lanes` says how
many instances a step takes: one with ``SAFENET_AESNI=128``, at most two with ``=256``. The
settings exist for comparisons; every path gives the same garbled tables.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from safenet.crypto.aes import FIXED_KEY, FixedKeyAES

__all__ = [
    "FIXED_ROUND_KEYS",
    "SOURCE_HASH",
    "available",
    "hash_blocks",
    "hash_blocks_wide",
    "path",
    "shuffle_mask",
    "step_lanes",
    "round_keys",
    "supported",
    "tccr1",
    "tccr2",
    "tccr4",
    "wide_lanes",
    "Wide",
]

#: a digest of this file: numba keys a cached kernel on its own file only, so kernels
#: elsewhere that compile these intrinsics drop their cache when it changes (gc._fused)
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]

_V2 = ir.VectorType(ir.IntType(64), 2)
_I32 = ir.IntType(32)
_U64 = types.uint64


def _tccr(n: int):  # noqa: ANN202 - returns a numba intrinsic
    """An intrinsic ``(x, t, k) -> h`` hashing ``n`` blocks at once, interleaved round by round:
    ``h_j = pi(pi(x_j) ^ t_j) ^ pi(x_j)`` (:meth:`safenet.crypto.aes.FixedKeyAES.hash`).

    ``x`` and ``h`` are tuples of ``2 n`` words (block ``j`` is words ``2j, 2j + 1``, low word
    first), ``t`` holds ``n`` tweaks (XORed into the low word), ``k`` the 22 round-key words.
    The blocks stay in vector registers from the first round to the last XOR.
    """

    @intrinsic
    def tccr(typingctx, x, t, k):  # noqa: ANN001, ANN202, ARG001
        sig = types.UniTuple(_U64, 2 * n)(
            types.UniTuple(_U64, 2 * n), types.UniTuple(_U64, n), types.UniTuple(_U64, 22)
        )

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            xs, ts, ks = args

            def vec(lo: ir.Value, hi: ir.Value) -> ir.Value:
                v = builder.insert_element(ir.Constant(_V2, ir.Undefined), lo, _I32(0))
                return builder.insert_element(v, hi, _I32(1))

            def word(tup: ir.Value, i: int) -> ir.Value:
                return builder.extract_value(tup, i)

            fnty = ir.FunctionType(_V2, [_V2, _V2])
            enc = builder.module.declare_intrinsic("llvm.x86.aesni.aesenc", fnty=fnty)
            last = builder.module.declare_intrinsic("llvm.x86.aesni.aesenclast", fnty=fnty)
            rk = [vec(word(ks, 2 * r), word(ks, 2 * r + 1)) for r in range(11)]

            def aes(vs: list[ir.Value]) -> list[ir.Value]:
                vs = [builder.xor(v, rk[0]) for v in vs]
                for r in range(1, 10):
                    vs = [builder.call(enc, [v, rk[r]]) for v in vs]
                return [builder.call(last, [v, rk[10]]) for v in vs]

            p = aes([vec(word(xs, 2 * j), word(xs, 2 * j + 1)) for j in range(n)])
            zero = ir.Constant(ir.IntType(64), 0)
            r = aes([builder.xor(p[j], vec(word(ts, j), zero)) for j in range(n)])
            parts = []
            for j in range(n):
                h = builder.xor(r[j], p[j])
                parts += [builder.extract_element(h, _I32(0)), builder.extract_element(h, _I32(1))]
            return context.make_tuple(builder, signature.return_type, parts)

        return sig, codegen

    return tccr


def shuffle_mask(*idx: int) -> ir.Constant:
    """A shuffle mask picking the given 64-bit lanes."""
    return ir.Constant(ir.VectorType(_I32, len(idx)), list(idx))


class Wide:
    """LLVM IR for the hash over wide registers, ``lanes`` blocks per AES instruction: 4 with
    VAES + AVX-512 (512-bit registers), 2 with VAES + AVX2 (256-bit), for intrinsics that
    process ``lanes`` instances per step.

    A ``<2 lanes x i64>`` holds blocks ``q = 0 .. lanes - 1`` in words ``2q`` (low) and
    ``2q + 1``. Built inside an intrinsic's codegen with its ``builder`` and the round-key
    tuple ``ks``.
    """

    def __init__(self, builder: ir.IRBuilder, ks: ir.Value, lanes: int = 4) -> None:
        if lanes not in (2, 4):
            raise ValueError("lanes must be 2 or 4")
        self.b, self.lanes = builder, lanes
        self.vt = ir.VectorType(ir.IntType(64), 2 * lanes)
        fnty = ir.FunctionType(self.vt, [self.vt, self.vt])
        bits = 128 * lanes
        mod = builder.module
        self._enc = mod.declare_intrinsic(f"llvm.x86.aesni.aesenc.{bits}", fnty=fnty)
        self._last = mod.declare_intrinsic(f"llvm.x86.aesni.aesenclast.{bits}", fnty=fnty)
        word = builder.extract_value
        self.rk = [self.pairs(word(ks, 2 * r), word(ks, 2 * r + 1)) for r in range(11)]

    def const(self, words: list[int]) -> ir.Constant:
        return ir.Constant(self.vt, words)

    def pairs(self, lo: ir.Value, hi: ir.Value) -> ir.Value:
        """The block ``(lo, hi)`` in every lane."""
        v = ir.Constant(self.vt, ir.Undefined)
        for q in range(self.lanes):
            v = self.b.insert_element(v, lo, _I32(2 * q))
            v = self.b.insert_element(v, hi, _I32(2 * q + 1))
        return v

    def aes(self, vs: list[ir.Value]) -> list[ir.Value]:
        """AES-128 of every register of ``vs``, round by round across them."""
        vs = [self.b.xor(v, self.rk[0]) for v in vs]
        for r in range(1, 10):
            vs = [self.b.call(self._enc, [v, self.rk[r]]) for v in vs]
        return [self.b.call(self._last, [v, self.rk[10]]) for v in vs]

    def hash(self, xs: list[ir.Value], ts: list[ir.Value]) -> list[ir.Value]:
        """``H(x, t) = pi(pi(x) ^ t) ^ pi(x)`` per block (``ts`` hold tweaks in the low words
        and zeros in the high words)."""
        p = self.aes(xs)
        r = self.aes([self.b.xor(x, t) for x, t in zip(p, ts, strict=True)])
        return [self.b.xor(x, y) for x, y in zip(r, p, strict=True)]

    def low_bit_masks(self, v: ir.Value) -> ir.Value:
        """Per lane, all ones where the block's low word is odd (its permute bit), else zero."""
        low_words = shuffle_mask(*[2 * (i // 2) for i in range(2 * self.lanes)])
        dup = self.b.shuffle_vector(v, v, low_words)
        n63 = self.const([63] * 2 * self.lanes)
        return self.b.ashr(self.b.shl(dup, n63), n63)

    def tweaks(self, t: ir.Value, step: int, plus: int) -> ir.Value:
        """Low words ``t + step q + plus`` for lanes ``q``, high words zero."""
        v = self.const([0] * 2 * self.lanes)
        for q in range(self.lanes):
            v = self.b.insert_element(v, t, _I32(2 * q))
        offsets = [w for q in range(self.lanes) for w in (step * q + plus, 0)]
        return self.b.add(v, self.const(offsets))

    def split_tables(self, t0: ir.Value, t1: ir.Value) -> tuple[ir.Value, ir.Value]:
        """``(T_G, T_E)`` per lane from two registers of tables laid out per instance as
        ``T_G, T_E`` (each instance takes four words)."""
        tg = [w for q in range(self.lanes) for w in (4 * q, 4 * q + 1)]
        te = [w + 2 for w in tg]
        sv = self.b.shuffle_vector
        return sv(t0, t1, shuffle_mask(*tg)), sv(t0, t1, shuffle_mask(*te))

    def join_tables(self, tg: ir.Value, te: ir.Value) -> tuple[ir.Value, ir.Value]:
        """The inverse of :meth:`split_tables`: two registers of ``T_G, T_E`` per instance."""
        n = 2 * self.lanes  # words per register; te's words follow tg's in the shuffle
        order = [w for q in range(self.lanes) for w in (2 * q, 2 * q + 1, n + 2 * q, n + 2 * q + 1)]
        sv = self.b.shuffle_vector
        return sv(tg, te, shuffle_mask(*order[:n])), sv(tg, te, shuffle_mask(*order[n:]))

    def ptr(self, data: ir.Value, word: ir.Value) -> ir.Value:
        """A vector pointer at word offset ``word`` of an array's data."""
        return self.b.bitcast(self.b.gep(data, [word]), self.vt.as_pointer())

    def load(self, data: ir.Value, word: ir.Value) -> ir.Value:
        return self.b.load(self.ptr(data, word), align=8)

    def store(self, v: ir.Value, data: ir.Value, word: ir.Value) -> None:
        self.b.store(v, self.ptr(data, word), align=8)


@functools.cache
def wide_lanes() -> int:
    """Blocks per AES instruction this CPU's wide registers take: 4 with VAES and AVX-512F,
    2 with VAES and AVX2, else 0; each checked once per process by comparing the compiled
    wide hash with ``cryptography``'s (a failure falls back to fewer lanes)."""
    if not supported():
        return 0
    try:
        import llvmlite.binding as llvm

        f = llvm.get_host_cpu_features()
    except Exception:  # noqa: BLE001
        return 0
    widths = [(4, "avx512f"), (2, "avx2")] if f.get("vaes", False) else []
    for n, feature in widths:
        if f.get(feature, False) and _wide_check(n):
            return n
    return 0


def _wide_check(n: int) -> bool:
    try:
        src, tweaks = _check_blocks()
        dst = np.empty_like(src)
        hash_blocks_wide(FIXED_ROUND_KEYS, src, tweaks, dst, lanes=n)
        return bool(np.array_equal(dst, FixedKeyAES().hash(src, tweaks)))
    except Exception:  # noqa: BLE001 - any failure means: not this width
        return False


def _check_blocks() -> tuple[np.ndarray, np.ndarray]:
    """33 blocks and tweaks for the self-checks (wide steps and a remainder)."""
    src = np.arange(66, dtype=np.uint64).reshape(33, 2) * np.uint64(0x9E3779B97F4A7C15)
    return src, np.arange(33, dtype=np.uint64) << np.uint64(40)


def step_lanes() -> int:
    """Instances per step of the garbling kernels now: 0 without AES-NI (:func:`available`)
    or with ``SAFENET_AESNI=128`` (one lane), 2 with ``SAFENET_AESNI=256`` where the CPU has at
    least two, else :func:`wide_lanes`. The settings exist for comparisons."""
    mode = os.environ.get("SAFENET_AESNI", "1")
    if not available() or mode == "128":
        return 0
    most = wide_lanes()
    return min(most, 2) if mode == "256" else most


def path() -> str:
    """Which hash path garbling and evaluation take in this process: ``"vaes-512"`` (four
    lanes), ``"vaes-256"`` (two), ``"aes-ni"`` (one lane) or ``"cryptography"`` (buffers)."""
    if not available():
        return "cryptography"
    return {4: "vaes-512", 2: "vaes-256"}.get(step_lanes(), "aes-ni")


#: the hash of one block, and of two and four blocks interleaved (see :func:`_tccr`)
tccr1 = _tccr(1)
tccr2 = _tccr(2)
tccr4 = _tccr(4)


@numba.njit(nogil=True, cache=True)
def hash_blocks(k: tuple, x: np.ndarray, tweaks: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = H(x[i], tweaks[i])`` over uint64 blocks ``(n, 2)`` (self-check and tests)."""
    for i in range(x.shape[0]):
        out[i, 0], out[i, 1] = tccr1((x[i, 0], x[i, 1]), (tweaks[i],), k)


def _hash_wide(n: int):  # noqa: ANN202 - returns a numba intrinsic
    """An intrinsic ``out[i:i+n] = H(x[i:i+n], tweaks[i:i+n])`` in one register of ``n``
    lanes (:class:`Wide`)."""

    @intrinsic
    def hash_step(typingctx, x, tweaks, out, i, k):  # noqa: ANN001, ANN202, ARG001
        sig = types.void(x, tweaks, out, types.intp, types.UniTuple(_U64, 22))

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            xa, ta, oa = (context.make_array(signature.args[j])(context, builder, args[j]).data
                          for j in range(3))  # fmt: skip
            i, ks = args[3], args[4]
            w = Wide(builder, ks, n)
            v = w.const([0] * 2 * n)
            for q in range(n):
                t = builder.load(builder.gep(ta, [builder.add(i, i.type(q))]))
                v = builder.insert_element(v, t, _I32(2 * q))
            word = builder.mul(i, i.type(2))
            (h,) = w.hash([w.load(xa, word)], [v])
            w.store(h, oa, word)
            return context.get_dummy_value()

        return sig, codegen

    return hash_step


_hash2, _hash4 = _hash_wide(2), _hash_wide(4)  # module-level: cached kernels hold constants


def _make_hash_blocks(n: int):  # noqa: ANN202 - returns a numba function
    @numba.njit(nogil=True, cache=True)
    def hash_blocks_n(k: tuple, x: np.ndarray, tweaks: np.ndarray, out: np.ndarray) -> None:
        m = x.shape[0]
        for i in range(0, m - n + 1, n):
            if n == 4:
                _hash4(x, tweaks, out, i, k)
            else:
                _hash2(x, tweaks, out, i, k)
        for i in range(m - m % n, m):
            out[i, 0], out[i, 1] = tccr1((x[i, 0], x[i, 1]), (tweaks[i],), k)

    return hash_blocks_n


_HASH_WIDE = {n: _make_hash_blocks(n) for n in (2, 4)}


def hash_blocks_wide(
    k: tuple, x: np.ndarray, tweaks: np.ndarray, out: np.ndarray, lanes: int = 4
) -> None:
    """:func:`hash_blocks` ``lanes`` (2 or 4) blocks per register with VAES (only where
    :func:`wide_lanes` allows it; ``x``, ``tweaks`` and ``out`` C-contiguous)."""
    _HASH_WIDE[lanes](k, x, tweaks, out)


def _sbox() -> list[int]:
    """The AES S-box: multiplicative inverse in GF(2^8) (through powers of the generator 3),
    then the affine map (FIPS-197 5.1.1)."""
    exp, log, x = [0] * 255, [0] * 256, 1
    for i in range(255):
        exp[i], log[x] = x, i
        x ^= ((x << 1) ^ (0x11B if x & 0x80 else 0)) & 0xFF  # x * 3
    out = []
    for a in range(256):
        v = exp[(255 - log[a]) % 255] if a else 0
        rot = [((v << s) | (v >> (8 - s))) & 0xFF for s in range(1, 5)]
        out.append(v ^ rot[0] ^ rot[1] ^ rot[2] ^ rot[3] ^ 0x63)
    return out


def round_keys(key: bytes) -> tuple[np.uint64, ...]:
    """The 11 AES-128 round keys of ``key`` as 22 little-endian words (FIPS-197 5.2)."""
    if len(key) != 16:
        raise ValueError("AES-128 needs a 16-byte key")
    sbox = _sbox()
    words = [list(key[4 * i : 4 * i + 4]) for i in range(4)]
    rcon = 1
    for i in range(4, 44):
        t = list(words[i - 1])
        if i % 4 == 0:
            t = [sbox[b] for b in t[1:] + t[:1]]
            t[0] ^= rcon
            rcon = ((rcon << 1) ^ (0x11B if rcon & 0x80 else 0)) & 0xFF
        words.append([a ^ b for a, b in zip(words[i - 4], t, strict=True)])
    flat = np.frombuffer(bytes(sum(words, [])), dtype="<u8")
    return tuple(np.uint64(w) for w in flat)


def available() -> bool:
    """Whether the fused AES-NI kernels may run here: ``SAFENET_AESNI`` is not ``0`` and the
    CPU passes :func:`supported`."""
    return os.environ.get("SAFENET_AESNI", "1") != "0" and supported()


@functools.cache
def supported() -> bool:
    """Whether this is an x86-64 CPU with AES-NI whose compiled rounds match
    ``cryptography``'s AES (checked once per process)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        import llvmlite.binding as llvm

        if not llvm.get_host_cpu_features().get("aes", False):
            return False
        src, tweaks = _check_blocks()
        dst = np.empty_like(src)
        hash_blocks(FIXED_ROUND_KEYS, src, tweaks, dst)
        return bool(np.array_equal(dst, FixedKeyAES().hash(src, tweaks)))
    except Exception:  # noqa: BLE001 - any failure means: use the buffer path
        return False


#: round keys of the fixed public key of :class:`safenet.crypto.aes.FixedKeyAES`
FIXED_ROUND_KEYS = round_keys(FIXED_KEY)

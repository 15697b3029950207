"""Conv and fully connected layers: the HE offline phase and the exact plaintext online phase.

Offline the client sends BFV encryptions of its mask ``R`` (shaped like the layer input);
the server answers with encryptions of ``W*R - T`` for a fresh uniform ``T`` of the output
shape that it keeps (``W*R`` is the conv/linear without bias, mod p). Online the server
computes ``W*(x - R) + b + T`` in the clear with :func:`linear_mod_p`.

Packing: coefficient encoding, no rotations (the idea of Cheetah, Huang et al. 2022).

* A stride-s conv is first rewritten as a stride-1 "valid" conv: the zero-padded input is
  split into its s x s polyphase components (virtual channel ``(c, a, b)`` holds padded
  pixels ``(i*s + a, j*s + b)``) and the kernel likewise, to ``ceil(k / s)`` taps a side.
  Phases that no kernel tap reads (a >= k, e.g. every phase but one of a 1x1 stride-2
  conv) are dropped, so no input is sent twice or in vain. A linear layer is a 1x1 conv on
  a 1x1 image.
* An input ciphertext holds ``cb`` virtual channels of ``Hq x Wq`` pixels (row-major,
  channel after channel): ``X(t) = sum R[c, i, j] t^(c*Hq*Wq + i*Wq + j)``.
* An output ciphertext holds ``cg`` output channels. Its kernel polynomial for one input
  block puts tap ``K[o, c, dy, dx]`` at degree ``o*D + O - c*Hq*Wq - dy*Wq - dx`` with
  ``D = cb*Hq*Wq`` and ``O = (cb-1)*Hq*Wq + (kh-1)*Wq + kw-1``; the product ``X * K`` then
  holds output ``(o, y, x)`` at degree ``o*D + O + y*Wq + x`` and no other term lands there
  as long as ``cg * cb * Hq * Wq <= N`` (terms that wrap past ``X^N`` land below ``O``).
  Products are summed over the input blocks.
* Images too tall for one polynomial are cut into row tiles (with ``kh - 1`` halo rows).
  ``cb``, ``cg`` and the tile height minimise the number of ciphertexts sent both ways.

Privacy of the reply (semi-honest client): the server subtracts a uniform polynomial ``M``
mod p, so every coefficient that is not an output (partial sums, wrapped terms) is uniform
and the outputs read ``W*R - T`` with ``T = M`` at the output degrees; it then adds a fresh
public-key encryption of zero (:func:`~safenet.crypto.he.rerandomize`) and floods c0 with
uniform noise of ``flood_bits`` bits (:func:`~safenet.crypto.he.flood`). The only
weight-dependent noise is ``sum_b (e_b + eps_b) * K_b`` (``e_b``: the client's own encryption
noise, |e| <= 21 for SEAL's centred binomial sampler; ``eps_b``: BFV rounding, <= 1/2):
the server checks that ``2^flood_bits >= 2^b * 22 * max_g sum_b |K_bg|_1`` with ``b`` the bits
each coefficient needs for 2^-40 over the whole session (:mod:`safenet.protocol.statistical`:
``42 + log2`` of the session's linear reply coefficients), so all replies of a session are
within statistical distance 2^-42 of replies that do not depend on W.
``flood_bits`` is a public constant (``FLOOD_BITS`` = 90), not derived from the weights,
so the noise level the client observes says nothing about them. After flooding the reply
is switched down to ``reply_primes`` coefficient primes (public post-processing) to halve
the download. Measured noise budgets left: see docs/benchmarks.md ("HE linear layers").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import seal

from safenet.crypto.he import ClientKeys, HEContext, HEError, flood, rerandomize
from safenet.field import mod_centered
from safenet.plan.ops import Conv, Linear, Op
from safenet.protocol import arith
from safenet.protocol.arith import STAT_BITS

__all__ = [
    "FLOOD_BITS",
    "LinearPacking",
    "ServerLinear",
    "client_decrypt",
    "client_encrypt",
    "linear_mod_p",
    "prepare_weights",
]

#: default flood noise (bits); public, the same for every layer (see the module docstring)
FLOOD_BITS = 90
#: max |e| + 1/2 for SEAL's noise sampler (centred binomial, 21 bits each side) and rounding
ENC_NOISE_MAX = 22
#: noise budget (bits) the parameter checks keep in reserve
BUDGET_MARGIN = 20
#: bits of noise a modulus switch leaves (measured: budget = log2 Q_L - log2 p - 8 at N=8192)
MODSWITCH_NOISE_BITS = 10


# ---------------------------------------------------------------------------------------------
# layer geometry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvShape:
    """A conv (or linear, as a 1x1 conv on a 1x1 image) by its public attributes."""

    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    groups: int

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @classmethod
    def of(cls, op: Op, in_shape: tuple[int, ...]) -> ConvShape:
        """Read the geometry from an op's public attributes (no weights needed)."""
        in_shape = tuple(int(d) for d in in_shape)
        if isinstance(op.attrs, Linear):
            if len(in_shape) != 1 or len(op.shape) != 1:
                raise ValueError(f"linear op {op.name!r}: shapes {in_shape} -> {op.shape}")
            return cls(in_shape[0], 1, 1, int(op.shape[0]), 1, 1, 1, 1, 0, 0, 1)
        if not isinstance(op.attrs, Conv):
            raise ValueError(f"op {op.name!r} of kind {op.kind!r} is not conv or linear")
        if len(in_shape) != 3:
            raise ValueError(f"conv op {op.name!r}: input shape {in_shape} is not (C, H, W)")
        a = op.attrs
        kernel = a.kernel or list(op.arrays["weight"].shape[2:])
        g = cls(
            in_shape[0], in_shape[1], in_shape[2], int(op.shape[0]),
            int(kernel[0]), int(kernel[1]), int(a.stride[0]), int(a.stride[1]),
            int(a.padding[0]), int(a.padding[1]), int(a.groups),
        )  # fmt: skip
        if g.c_in % g.groups or g.c_out % g.groups:
            raise ValueError(f"conv op {op.name!r}: channels not divisible by groups")
        if tuple(op.shape) != (g.c_out, g.ho, g.wo):
            raise ValueError(
                f"conv op {op.name!r}: output shape {tuple(op.shape)} does not match input "
                f"{in_shape} (expected {(g.c_out, g.ho, g.wo)})"
            )
        return g

    def weight(self, op: Op) -> np.ndarray:
        """The op's weight as (c_out, c_in / groups, kh, kw) int64."""
        w = np.asarray(op.arrays["weight"], dtype=np.int64)
        return w.reshape(self.c_out, self.c_in // self.groups, self.kh, self.kw)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------
class LinearPacking:
    """Where every input and output value of one conv/linear op sits in which ciphertext.

    Depends only on public data (op kind, attributes, shapes, HE parameters), so client and
    server build the same one. Attributes: ``n_in`` / ``n_out`` ciphertexts each way,
    ``cb`` virtual input channels per input ciphertext, ``cg`` output channels per output
    ciphertext, ``tiles`` row tiles, ``reply_primes`` coefficient primes in a reply.
    """

    def __init__(self, op: Op, in_shape: tuple[int, ...], he: HEContext) -> None:
        self.he = he
        self.n = he.params.poly_degree
        self.p = he.params.plain_modulus
        self.geom = g = ConvShape.of(op, in_shape)
        self.in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(int(d) for d in op.shape)
        # polyphase split: a stride-1 valid conv on cv virtual channels
        self.pa, self.pb = min(g.sh, g.kh), min(g.sw, g.kw)
        self.kqh, self.kqw = _ceil(g.kh, g.sh), _ceil(g.kw, g.sw)
        self.cv = g.c_in * self.pa * self.pb
        self.wq = g.wo + self.kqw - 1
        self.hq_full = g.ho + self.kqh - 1
        self.reply_primes = reply_primes(he)
        full = len(he.coeff_primes)
        best = None
        for ht in sorted({_ceil(g.ho, t) for t in range(1, g.ho + 1)}, reverse=True):
            iq = (ht + self.kqh - 1) * self.wq
            if iq > self.n:
                continue
            tiles = _ceil(g.ho, ht)
            cb, cg, nb, ng = _blocks(self.cv, g.c_out, self.n // iq, self.reply_primes / full)
            key = (tiles * (nb + ng), tiles * nb * ng, tiles)
            if best is None or key < best[0]:
                best = (key, ht, cb, cg, nb, ng)
        if best is None:
            raise ValueError(
                f"op {op.name!r}: {self.kqh} rows of {self.wq} pixels exceed the ring "
                f"dimension {self.n}; column tiling is not implemented"
            )
        _, self.ht, self.cb, self.cg, self.nb, self.ng = best
        self.tiles = _ceil(g.ho, self.ht)
        self.hq = self.ht + self.kqh - 1
        self.iq = self.hq * self.wq
        self.d = self.cb * self.iq
        self.origin = (self.cb - 1) * self.iq + (self.kqh - 1) * self.wq + self.kqw - 1
        self.n_in = self.tiles * self.nb
        self.n_out = self.tiles * self.ng

    def __repr__(self) -> str:
        return (
            f"LinearPacking({self.in_shape} -> {self.out_shape}: {self.n_in} in / "
            f"{self.n_out} out ciphertexts, {self.cb} virtual channels x {self.hq}x{self.wq} "
            f"per input, {self.cg} output channels per output, {self.tiles} tile(s))"
        )

    @property
    def products(self) -> int:
        """Plaintext-ciphertext products of a dense layer (fewer when groups zero some out)."""
        return self.tiles * self.nb * self.ng

    @cached_property
    def in_src(self) -> np.ndarray:
        """(n_in, N) int64: the flat index into R of every input coefficient (-1: zero)."""
        g = self.geom
        tau = np.arange(self.tiles)[:, None, None, None, None]
        ib = np.arange(self.nb)[None, :, None, None, None]
        cl = np.arange(self.cb)[None, None, :, None, None]
        i = np.arange(self.hq)[None, None, None, :, None]
        j = np.arange(self.wq)[None, None, None, None, :]
        v = ib * self.cb + cl
        c, a, b = v // (self.pa * self.pb), (v // self.pb) % self.pa, v % self.pb
        vi = tau * self.ht + i
        y = vi * g.sh + a - g.ph
        x = j * g.sw + b - g.pw
        ok = (v < self.cv) & (vi < self.hq_full) & (y >= 0) & (y < g.h) & (x >= 0) & (x < g.w)
        src = np.where(ok, (c * g.h + y) * g.w + x, -1)
        out = np.full((self.n_in, self.n), -1, dtype=np.int64)
        out[:, : self.cb * self.iq] = src.reshape(self.n_in, -1)
        return out

    @cached_property
    def out_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(ciphertext, coefficient) of every output value, each shaped like the output."""
        g = self.geom
        o = np.arange(g.c_out)[:, None, None]
        y = np.arange(g.ho)[None, :, None]
        x = np.arange(g.wo)[None, None, :]
        tau, yl = y // self.ht, y % self.ht
        og, ol = o // self.cg, o % self.cg
        ct = np.broadcast_to(tau * self.ng + og, (g.c_out, g.ho, g.wo))
        pos = ol * self.d + self.origin + yl * self.wq + x
        return ct.reshape(self.out_shape), pos.reshape(self.out_shape)

    def encode_input(self, r: np.ndarray) -> np.ndarray:
        """R (input-shaped residues) -> (n_in, N) int64 coefficients."""
        flat = np.asarray(r, dtype=np.int64).reshape(-1)
        src = self.in_src
        return np.where(src >= 0, flat[np.maximum(src, 0)], 0)

    def decode_output(self, coeffs: np.ndarray) -> np.ndarray:
        """(n_out, N) decrypted coefficients -> output-shaped int64 residues."""
        ct, pos = self.out_index
        return np.asarray(coeffs, dtype=np.int64)[ct, pos]


def _blocks(cv: int, co: int, m: int, reply_size: float = 1.0) -> tuple[int, int, int, int]:
    """(cb, cg, input blocks, output groups) with cb * cg <= m: fewest blocks + groups,
    then fewest bytes (a reply is ``reply_size`` of an input ciphertext), then products."""
    best = None
    for nb in sorted({_ceil(cv, b) for b in range(1, min(cv, m) + 1)}):
        cb = _ceil(cv, nb)
        cg_max = min(co, m // cb)
        if cg_max < 1:
            continue
        ng = _ceil(co, cg_max)
        cg = _ceil(co, ng)
        key = (nb + ng, nb + ng * reply_size, nb * ng)
        if best is None or key < best[0]:
            best = (key, cb, cg, nb, ng)
    assert best is not None  # cb = 1, cg = 1 always fits since m >= 1
    return best[1:]


def reply_primes(he: HEContext) -> int:
    """Fewest coefficient primes a flooded reply keeps with ``BUDGET_MARGIN`` bits to spare.

    After a modulus switch to Q_L the budget is about log2 Q_L - log2 p - 8 (measured), the
    flood noise being scaled down with the modulus; depends on public parameters only.
    """
    t_bits = math.log2(he.params.plain_modulus)
    # SEAL's chain of levels ends before the modulus gets too small for p
    lowest = len(he.coeff_primes) - he.context.first_context_data().chain_index()
    total = 0.0
    for level, q in enumerate(he.coeff_primes, start=1):
        total += math.log2(q)
        if level >= lowest and total - t_bits - MODSWITCH_NOISE_BITS >= BUDGET_MARGIN:
            return level
    return len(he.coeff_primes)


# ---------------------------------------------------------------------------------------------
# the two parties
# ---------------------------------------------------------------------------------------------
def client_encrypt(packing: LinearPacking, keys: ClientKeys, r: np.ndarray) -> list[bytes]:
    """Encrypt the client's mask R (input-shaped residues in [0, p)): serialised ciphertexts."""
    r = np.asarray(r)
    if r.shape != packing.in_shape:
        raise ValueError(f"mask shape {r.shape} does not match the layer input {packing.in_shape}")
    if r.size and (r.min() < 0 or r.max() >= packing.p):
        raise ValueError("mask values must be residues in [0, p)")
    return [keys.encrypt_coeffs(c).to_string() for c in packing.encode_input(r)]


def client_decrypt(packing: LinearPacking, keys: ClientKeys, replies: list[bytes]) -> np.ndarray:
    """The client's share ``(W*R - T) mod p`` (output-shaped int64) from the server's replies."""
    if len(replies) != packing.n_out:
        raise ValueError(f"expected {packing.n_out} reply ciphertexts, got {len(replies)}")
    coeffs = np.stack(
        [
            keys.decrypt_coeffs(keys.he.load_ciphertext(d, packing.reply_primes, f"reply {i}"))
            for i, d in enumerate(replies)
        ]
    )
    return packing.decode_output(coeffs)


class ServerLinear:
    """The server's side of one conv/linear op: kernel plaintexts built once, then
    :meth:`respond` per inference.

    Args:
        op: the conv/linear op with its integer ``weight``.
        in_shape: the op's input shape, (C, H, W) or (K,).
        he: the HE context (plaintext modulus p = the plan's prime).
        ntt: keep kernels in NTT form: 4x the memory of coefficient form, 9x faster
            products, replies about 2x faster (docs/benchmarks.md).
        flood_bits: flood noise in bits; must hide the weight-dependent noise with
            ``STAT_BITS`` of statistical security and leave ``BUDGET_MARGIN`` bits of budget.
    """

    def __init__(
        self,
        op: Op,
        in_shape: tuple[int, ...],
        he: HEContext,
        *,
        ntt: bool = True,
        flood_bits: int = FLOOD_BITS,
    ) -> None:
        self.he = he
        self.packing = pk = LinearPacking(op, in_shape, he)
        #: the online layer's weight digits (:func:`prepare_weights`), made once per model
        self.prepared = prepare_weights(op, in_shape, pk.p)
        self.ntt = ntt
        self.flood_bits = int(flood_bits)
        kv = _virtual_kernel(pk, op)
        p, parms = pk.p, he.context.first_parms_id()
        # kernel polynomial of (input block ib, output group og); all-zero ones are skipped
        self.kernels: dict[tuple[int, int], seal.Plaintext] = {}
        l1 = np.zeros(pk.ng)
        cl = np.arange(pk.cb)[None, :, None, None]
        dy = np.arange(pk.kqh)[None, None, :, None]
        dx = np.arange(pk.kqw)[None, None, None, :]
        for og in range(pk.ng):
            o0, o1 = og * pk.cg, min((og + 1) * pk.cg, pk.geom.c_out)
            ol = np.arange(o1 - o0)[:, None, None, None]
            for ib in range(pk.nb):
                v0, v1 = ib * pk.cb, min((ib + 1) * pk.cb, pk.cv)
                taps = kv[o0:o1, v0:v1]
                if not taps.any():
                    continue
                pos = ol * pk.d + pk.origin - cl[:, : v1 - v0] * pk.iq - dy * pk.wq - dx
                coeffs = np.zeros(pk.n, dtype=np.int64)
                coeffs[pos.reshape(-1)] = np.broadcast_to(taps, pos.shape).reshape(-1)
                l1[og] += float(np.abs(taps).sum())
                plain = he.plain_from_coeffs(np.mod(coeffs, p))
                if ntt:
                    he.evaluator.transform_to_ntt_inplace(plain, parms)
                self.kernels[ib, og] = plain
        # the weight-dependent noise and the flood that hides it (module docstring)
        bound = ENC_NOISE_MAX * max(float(l1.max(initial=0.0)), 1.0)
        self.noise_bits = math.ceil(math.log2(bound))
        self.name = op.name
        self.check_flood(STAT_BITS + math.ceil(math.log2(pk.n * pk.n_out)))
        q_bits = sum(math.log2(q) for q in he.coeff_primes)
        budget = q_bits - math.log2(p) - self.flood_bits - 2
        if budget < BUDGET_MARGIN:
            raise HEError(
                f"flood_bits={self.flood_bits} leaves about {budget:.0f} bits of noise budget "
                f"with a {p.bit_length()}-bit plaintext modulus (need {BUDGET_MARGIN})"
            )

    def check_flood(self, element_bits: int) -> None:
        """Refuse a flood that does not exceed the weight-dependent noise by ``element_bits``
        (the security each reply coefficient needs: :mod:`safenet.protocol.statistical`)."""
        self.required_flood_bits = self.noise_bits + int(element_bits)
        if self.flood_bits < self.required_flood_bits:
            raise ValueError(
                f"op {self.name!r}: weight-dependent noise up to 2^{self.noise_bits} needs "
                f"flood_bits >= {self.required_flood_bits} (got {self.flood_bits})"
            )

    @property
    def kernel_bytes(self) -> int:
        """Memory held by the kernel plaintexts."""
        limbs = len(self.he.coeff_primes) if self.ntt else 1
        return len(self.kernels) * limbs * self.packing.n * 8

    def respond(
        self, ciphertexts: list[bytes], public_key: seal.PublicKey | bytes
    ) -> tuple[list[bytes], np.ndarray]:
        """Answer the client's encrypted mask: (serialised replies, the server's share T).

        Every call draws a fresh uniform mask (T is never reused). Raises ValueError for a
        wrong number of ciphertexts and HEError for one that is malformed.
        """
        he, pk, ev = self.he, self.packing, self.he.evaluator
        if isinstance(public_key, bytes | bytearray):
            public_key = he.public_key_from_bytes(bytes(public_key))
        if len(ciphertexts) != pk.n_in:
            raise ValueError(
                f"expected {pk.n_in} input ciphertexts for {pk.in_shape}, got {len(ciphertexts)}"
            )
        full = len(he.coeff_primes)
        cts = [he.load_ciphertext(d, full, f"input {i}") for i, d in enumerate(ciphertexts)]
        if self.ntt:
            for ct in cts:
                ev.transform_to_ntt_inplace(ct)
        mask = arith.uniform((pk.n_out, pk.n), pk.p)
        replies = []
        for tau in range(pk.tiles):
            for og in range(pk.ng):
                acc = None
                for ib in range(pk.nb):
                    k = self.kernels.get((ib, og))
                    if k is None:
                        continue
                    prod = ev.multiply_plain(cts[tau * pk.nb + ib], k)
                    if acc is None:
                        acc = prod
                    else:
                        ev.add_inplace(acc, prod)
                if acc is None:  # an output group no weight reaches (grouped convs)
                    acc = he.encrypt_zero(public_key)
                elif self.ntt:
                    ev.transform_from_ntt_inplace(acc)
                ev.sub_plain_inplace(acc, he.plain_from_coeffs(mask[tau * pk.ng + og]))
                out = flood(he, rerandomize(he, acc, public_key), self.flood_bits)
                for _ in range(full - pk.reply_primes):
                    ev.mod_switch_to_next_inplace(out)
                replies.append(out.to_string())
        return replies, pk.decode_output(mask)


def _virtual_kernel(pk: LinearPacking, op: Op) -> np.ndarray:
    """(c_out, cv, kqh, kqw) int64: the kernel of the polyphase stride-1 conv (dense over
    groups, zero across them), entries centred mod p."""
    g = pk.geom
    w = arith.to_residues(g.weight(op), pk.p)
    w = mod_centered(w, pk.p)
    cpg, opg = g.c_in // g.groups, g.c_out // g.groups
    dense = np.zeros((g.c_out, g.c_in, pk.kqh * g.sh, pk.kqw * g.sw), dtype=np.int64)
    for gi in range(g.groups):
        o, c = slice(gi * opg, (gi + 1) * opg), slice(gi * cpg, (gi + 1) * cpg)
        dense[o, c, : g.kh, : g.kw] = w[o]
    dense = dense.reshape(g.c_out, g.c_in, pk.kqh, g.sh, pk.kqw, g.sw)[:, :, :, : pk.pa, :, : pk.pb]
    return dense.transpose(0, 1, 3, 5, 2, 4).reshape(g.c_out, pk.cv, pk.kqh, pk.kqw)


# ---------------------------------------------------------------------------------------------
# exact plaintext conv/linear mod p
# ---------------------------------------------------------------------------------------------
#: every partial sum of a float64 product stays below this (exact, and q*p below 2^53)
EXACT = 2**52
#: cap on the im2col buffer (float64 elements) per BLAS call
_IM2COL_ELEMS = 1 << 22


def _digits(v: np.ndarray, n: int, bits: int) -> list[np.ndarray]:
    """Balanced base-2^bits digits of centred int64 values: v = sum_j d_j 2^(bits*j)."""
    out, half, lo = [], 1 << (bits - 1), (1 << bits) - 1
    for _ in range(n - 1):
        d = ((v + half) & lo) - half
        out.append(d)
        v = (v - d) >> bits
    out.append(v)
    return out


def _digit_bound(vmax: int, n: int, bits: int) -> int:
    """Largest |digit| :func:`_digits` yields for |v| <= vmax."""
    if n == 1:
        return vmax
    top, half = vmax, 1 << (bits - 1)
    for _ in range(n - 1):
        top = (top + half) >> bits
    return max(half, top)


def _split_plan(vmax: int, budget: int) -> tuple[int, int] | None:
    """(digits, bits) with the fewest digits whose magnitude is at most ``budget``."""
    for n in range(1, 9):
        b0 = _ceil(max(vmax, 1).bit_length(), n)
        for bits in range(max(1, b0 - 1), b0 + 3):
            if _digit_bound(vmax, n, bits) <= budget:
                return n, bits
    return None


def _conv_f64(x: np.ndarray, w: np.ndarray, g: ConvShape) -> np.ndarray:
    """(B, C, H, W) float64 conv with (Co, C/groups, kh, kw) float64 weights, by im2col and
    BLAS; exact for integer operands while partial sums stay below 2^53."""
    b = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (g.ph, g.ph), (g.pw, g.pw))) if g.ph or g.pw else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (g.kh, g.kw), axis=(2, 3))
    win = win[:, :, :: g.sh, :: g.sw][:, :, : g.ho, : g.wo]  # (B, C, Ho, Wo, kh, kw)
    cpg, opg = g.c_in // g.groups, g.c_out // g.groups
    out = np.empty((b, g.ho, g.wo, g.c_out))
    step = max(1, _IM2COL_ELEMS // max(1, g.ho * g.wo * cpg * g.kh * g.kw))
    for gi in range(g.groups):
        wg = w[gi * opg : (gi + 1) * opg].reshape(opg, -1).T
        for s in range(0, b, step):
            cols = win[s : s + step, gi * cpg : (gi + 1) * cpg].transpose(0, 2, 3, 1, 4, 5)
            cols = cols.reshape(-1, cpg * g.kh * g.kw)
            out[s : s + step, :, :, gi * opg : (gi + 1) * opg] = (cols @ wg).reshape(
                -1, g.ho, g.wo, opg
            )
    return out.transpose(0, 3, 1, 2)


def _reduce_f64(y: np.ndarray, p: int) -> np.ndarray:
    """Exact integers |y| < 2^52 held in float64 -> int64 residues in [0, p).

    The quotient is estimated in float64 (off by at most one) and the remainder computed
    exactly in int64, where |q * p| <= |y| + p cannot overflow; no integer division.
    """
    q = np.floor(y * (1.0 / p)).astype(np.int64)
    r = y.astype(np.int64)
    r -= q * p
    r[r < 0] += p
    r[r >= p] -= p
    return r


def prepare_weights(op: Op, in_shape: tuple[int, ...], p: int) -> tuple:
    """The input-independent part of :func:`linear_mod_p` for one op: its geometry and the
    fewest (weight digits) x (input digits) split that keeps every partial sum exact, with
    the weight digits in float64. Compute once per model and pass to :func:`linear_mod_p`."""
    g = ConvShape.of(op, tuple(in_shape))
    half = (p - 1) // 2
    wc = mod_centered(arith.to_residues(g.weight(op), p), p)
    terms = (g.c_in // g.groups) * g.kh * g.kw
    best = None
    wmax = int(np.abs(wc).max(initial=0))
    for nw in range(1, 5):
        if best is not None and best[0] <= nw:
            break
        wbits = max(1, _ceil(max(wmax, 1).bit_length() + 1, nw))
        wd = _digits(wc, nw, wbits) if nw > 1 else [wc]
        l1 = max(int(np.abs(d).reshape(g.c_out, -1).sum(1).max(initial=0)) for d in wd)
        plan = _split_plan(half, EXACT // max(l1, 1) - 1) if l1 < EXACT else None
        if plan and (best is None or nw * plan[0] < best[0]):
            best = (nw * plan[0], nw, wbits, wd, plan)
    if best is None:
        raise OverflowError(f"op {op.name!r}: cannot split {terms}-term sums exactly")
    _, _, wbits, wd, (nx, xbits) = best
    return g, wbits, [w.astype(np.float64) for w in wd], nx, xbits


def linear_mod_p(op: Op, x: np.ndarray, p: int, prepared: tuple | None = None) -> np.ndarray:
    """The exact conv/linear of ``op`` without bias, mod p, on residues ``x`` in [0, p).

    ``x`` is shaped like the op input, (C, H, W) or (K,), or batched with a leading axis.
    Inputs (centred) and, if needed, weights are split into balanced digits small enough
    that every float64 partial sum stays below 2^52; each digit product runs as one BLAS
    call and the digits recombine with exact modular products. ``prepared`` is
    :func:`prepare_weights`'s result for this op (computed here when not given).
    Returns int64 in [0, p).
    """
    per_item = 1 if isinstance(op.attrs, Linear) else 3
    x = np.asarray(x, dtype=np.int64)
    single = x.ndim == per_item
    if single:
        x = x[None]
    if x.ndim != per_item + 1:
        raise ValueError(f"op {op.name!r}: input of shape {x.shape} is not {per_item}-D")
    g, wbits, wd, nx, xbits = prepared or prepare_weights(op, x.shape[1:], p)
    x4 = x.reshape(x.shape[0], g.c_in, g.h, g.w)
    xc = mod_centered(x4, p)
    xd = np.concatenate(_digits(xc, nx, xbits)).astype(np.float64)  # (nx * B, C, H, W)
    nb = x4.shape[0]
    acc = None
    for k, wk in enumerate(wd):
        y = _conv_f64(xd, wk, g)
        r = _reduce_f64(y, p)
        for j in range(nx):
            part = r[j * nb : (j + 1) * nb]
            factor = pow(2, wbits * k + xbits * j, p)
            if factor != 1:
                part = arith.mulmod(part, factor, p)
            acc = part if acc is None else arith.add(acc, part, p)
    assert acc is not None
    conv = isinstance(op.attrs, Conv)
    out = acc.reshape((nb,) + tuple(op.shape)) if conv else acc.reshape(nb, -1)
    return out[0] if single else out

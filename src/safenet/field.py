"""Fixed-point numbers in a prime field F_p: the number system of the secure protocol.

A real x is carried as the integer round(x * 2^s) mod p for some *scale* s (fractional
bits); integers above p/2 stand for negatives. Linear layers add scales (input scale +
weight bits), activation layers truncate back to ``frac_bits``.

The default prime is Delphi's p = 2^41 - 2^37 + 1: p = 1 mod 2^37, so BFV batching works for
every ring dimension SEAL offers, and a 41-bit modulus keeps garbled ReLU circuits small.
Plans with polynomial channels default to :data:`POLY_PRIME` (48 bits), whose headroom
makes local share truncation fail rarely and fits degree-3 sums (see
:func:`safenet.plan.compiler.default_field`). All parameters are explicit; any prime up to
60 bits with p = 1 mod 2N works with SEAL batching.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "Field",
    "DELPHI_PRIME",
    "POLY_PRIME",
    "TRUNC_MARGIN_BITS",
    "is_probable_prime",
    "mod_centered",
    "mulmod",
    "trunc_bound",
]

DELPHI_PRIME = 2**41 - 2**37 + 1
#: the prime for plans with polynomial channels: 2^48 - 2^44 + 1 (= 1 mod 2^44, so BFV
#: batching works). Local truncation of polynomial sums fails with probability ~|v| / p per
#: element; measured on a half-ReLU ResNet-20 (72,128 polynomial activations) that is 0.089
#: expected failures per inference with the 41-bit prime and 0.0007 with this one, and
#: degree-3 sums fit. The protocol's ReLU circuit grows from 200 to 228 AND gates (7,296
#: bytes of tables) and its online labels from 656 to 768 bytes.
POLY_PRIME = 2**48 - 2**44 + 1

#: exact truncation of polynomial channels opens ``v + R`` with ``R`` uniform in
#: ``[B, p - B)``, ``B = 2^(bits(p) - TRUNC_MARGIN_BITS)``: exact for every ``|v| < B``
TRUNC_MARGIN_BITS = 4


def trunc_bound(p: int) -> int:
    """``B``: the magnitude below which the protocol's truncation of a polynomial channel is
    exact (``safenet.protocol.arith.open_trunc``); about p/16, so 3 bits below p/2."""
    return 1 << (p.bit_length() - TRUNC_MARGIN_BITS)


def is_probable_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (enough for any 64-bit modulus)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for q in small:
        if n % q == 0:
            return n == q
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@dataclass(frozen=True)
class Field:
    """Prime field and fixed-point parameters shared by a Plan and the secure protocol.

    Attributes:
        p: the prime modulus (< 2^62 so that centred values fit in int64).
        frac_bits: fractional bits of activations (inputs and activation outputs).
        weight_bits: fractional bits of weights; a linear layer's output scale is its
            input scale plus ``weight_bits`` (more when an average pool is folded in).
        coef_bits: fractional bits of polynomial coefficients.
        poly_frac_bits: fractional bits of a polynomial channel's input ``X`` (default
            ``frac_bits``). Fewer bits make the polynomial's sum ``d`` times fewer bits
            smaller, and its opening hides it that much better (docs/fixed-point.md): the
            lever for degree 3. ReLU channels and linear layers keep ``frac_bits``.
    """

    p: int = DELPHI_PRIME
    frac_bits: int = 8
    weight_bits: int = 9
    coef_bits: int = 8
    poly_frac_bits: int | None = None

    def __post_init__(self) -> None:
        if not (2**20 < self.p < 2**62) or not is_probable_prime(self.p):
            raise ValueError(f"p must be a prime between 2^20 and 2^62, got {self.p}")
        for name in ("frac_bits", "weight_bits", "coef_bits"):
            v = getattr(self, name)
            if not 0 <= v <= 30:
                raise ValueError(f"{name} must be in [0, 30], got {v}")
        if self.poly_frac_bits is not None and not 0 <= self.poly_frac_bits <= self.frac_bits:
            raise ValueError(
                f"poly_frac_bits must be in [0, frac_bits = {self.frac_bits}], "
                f"got {self.poly_frac_bits}"
            )
        if self.poly_frac_bits == self.frac_bits:  # one spelling per field (fingerprints)
            object.__setattr__(self, "poly_frac_bits", None)

    @property
    def poly_bits(self) -> int:
        """Fractional bits of polynomial inputs: ``poly_frac_bits``, else ``frac_bits``."""
        return self.frac_bits if self.poly_frac_bits is None else self.poly_frac_bits

    @property
    def half(self) -> int:
        """Largest magnitude a signed value may have: floor(p / 2)."""
        return self.p // 2

    @property
    def bits(self) -> int:
        """Bit length of p."""
        return self.p.bit_length()

    def encode(self, x: np.ndarray, scale: int | None = None) -> np.ndarray:
        """Reals -> signed integers round(x * 2^scale) (int64, not yet reduced mod p)."""
        s = self.frac_bits if scale is None else scale
        v = np.rint(np.asarray(x, dtype=np.float64) * 2.0**s)
        if np.abs(v).max(initial=0) > self.half:
            raise OverflowError(f"value too large to encode at scale 2^{s} mod p")
        return v.astype(np.int64)

    def decode(self, v: np.ndarray, scale: int | None = None) -> np.ndarray:
        """Signed integers (or residues mod p) at ``scale`` -> float64 reals."""
        s = self.frac_bits if scale is None else scale
        return mod_centered(np.asarray(v, dtype=np.int64), self.p).astype(np.float64) / 2.0**s

    def to_dict(self) -> dict[str, int]:
        """The parameters (``poly_frac_bits`` only when set: older fingerprints stay valid)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def mod_centered(v: np.ndarray, p: int) -> np.ndarray:
    """Reduce int64 ``v`` mod p into the centred range [-(p-1)/2, (p-1)/2]."""
    v = np.asarray(v, dtype=np.int64)
    r = np.mod(v, p)
    return np.where(r > p // 2, r - p, r)


def mulmod(a: np.ndarray, b: np.ndarray | int, p: int) -> np.ndarray:
    """Exact ``a * b mod p`` (centred) for int64 operands of any size below p.

    Uses int64 directly when the product cannot overflow, Python integers otherwise.
    """
    a = np.asarray(a, dtype=np.int64)
    b_arr = np.asarray(b, dtype=np.int64)
    amax = int(np.abs(a).max(initial=0))
    bmax = int(np.abs(b_arr).max(initial=0))
    if amax * bmax < 2**62:
        return mod_centered(a * b_arr, p)
    prod = a.astype(object) * b_arr.astype(object) % p
    return mod_centered(prod.astype(np.int64), p)

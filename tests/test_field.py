"""Tests for safenet.field: the prime field and fixed-point encoding of the protocol."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from safenet.field import DELPHI_PRIME, Field, is_probable_prime, mod_centered, mulmod

MERSENNE_61 = 2**61 - 1


def _next_prime(n: int) -> int:
    while not is_probable_prime(n):
        n += 1
    return n


def _centred(v: int, p: int) -> int:
    """Reference centred residue with Python integers."""
    r = v % p
    return r - p if r > p // 2 else r


def _trial_division_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


# ---- is_probable_prime ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n",
    [
        2,
        3,
        5,
        41,
        43,
        65537,
        2**31 - 1,
        MERSENNE_61,
        DELPHI_PRIME,
        2**41 - 2**37 + 1,
        1_000_000_007,
        # 2^62 - 57 is the largest prime below 2^62
        2**62 - 57,
    ],
)
def test_is_probable_prime_accepts_primes(n):
    assert is_probable_prime(n)


@pytest.mark.parametrize(
    "n",
    [
        -7,
        0,
        1,
        4,
        9,
        49,
        41 * 43,
        # Carmichael numbers (Fermat pseudoprimes to every coprime base)
        561,
        1105,
        1729,
        2465,
        2821,
        6601,
        8911,
        41041,
        825265,
        # strong pseudoprimes: base 2; bases 2,3,5,7; bases 2..23; every prime base up to 37
        2047,
        3215031751,
        3825123056546413051,
        318665857834031151167461,
        # products of large primes
        (2**31 - 1) ** 2,
        (2**31 - 1) * MERSENNE_61,
        DELPHI_PRIME * 3,
        DELPHI_PRIME * (2**19 - 1),
        2**61 + 1,
        2**62 - 1,
    ],
)
def test_is_probable_prime_rejects_composites(n):
    assert not is_probable_prime(n)


def test_is_probable_prime_matches_trial_division_below_3000():
    got = [n for n in range(3000) if is_probable_prime(n)]
    want = [n for n in range(3000) if _trial_division_prime(n)]
    assert got == want


# ---- Field validation -----------------------------------------------------------------------


def test_default_field_is_delphi():
    f = Field()
    assert f.p == DELPHI_PRIME == 2**41 - 2**37 + 1
    assert f.p % 2**37 == 1
    assert f.half == f.p // 2
    assert f.bits == 41
    assert Field(**f.to_dict()) == f
    assert f.to_dict() == {"p": DELPHI_PRIME, "frac_bits": 8, "weight_bits": 9, "coef_bits": 8}


def test_field_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Field().p = 7  # type: ignore[misc]


@pytest.mark.parametrize(
    "p",
    [
        2**21,  # even
        DELPHI_PRIME + 2,  # odd composite (divisible by 3)
        3 * 5 * 7 * 11 * 13 * 17 * 19 * 23,  # composite in range
        561 * 2**20,  # composite
        MERSENNE_61 * 3,  # composite and too large
        65537,  # prime, too small
        1_048_573,  # largest prime below 2^20, too small
        2**89 - 1,  # prime, too large
        2**62 + 135,  # prime just above 2^62
    ],
)
def test_field_rejects_bad_prime(p):
    with pytest.raises(ValueError, match="p must be a prime"):
        Field(p=p)


def test_field_prime_bounds_used_above_are_what_they_claim():
    assert is_probable_prime(1_048_573) and 1_048_573 < 2**20
    assert is_probable_prime(2**62 + 135) and 2**62 + 135 > 2**62
    assert not is_probable_prime(DELPHI_PRIME + 2)


@pytest.mark.parametrize("p", [_next_prime(2**20 + 1), _next_prime(2**23), MERSENNE_61, 2**62 - 57])
def test_field_accepts_primes_in_range(p):
    f = Field(p=p)
    assert f.p == p
    assert f.bits == p.bit_length()


@pytest.mark.parametrize("name", ["frac_bits", "weight_bits", "coef_bits"])
@pytest.mark.parametrize("value", [-1, 31, 64])
def test_field_rejects_bad_bit_counts(name, value):
    with pytest.raises(ValueError, match=name):
        Field(**{name: value})


@pytest.mark.parametrize("name", ["frac_bits", "weight_bits", "coef_bits"])
@pytest.mark.parametrize("value", [0, 30])
def test_field_accepts_bit_count_bounds(name, value):
    assert getattr(Field(**{name: value}), name) == value


# ---- encode / decode ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0, 1, 8, 13, 20, 30])
def test_encode_decode_roundtrip(scale):
    f = Field()
    rng = np.random.default_rng(scale)
    limit = min(1000.0, f.half / 2.0**scale / 2)
    x = rng.uniform(-limit, limit, size=500)
    x = np.concatenate([x, [0.0, 0.5 / 2**scale, -0.5 / 2**scale, limit, -limit]])
    v = f.encode(x, scale)
    assert v.dtype == np.int64
    assert np.array_equal(v, np.rint(x * 2.0**scale).astype(np.int64))
    back = f.decode(v, scale)
    assert back.dtype == np.float64
    assert np.all(np.abs(back - x) <= 2.0 ** -(scale + 1))


def test_encode_default_scale_is_frac_bits():
    f = Field(frac_bits=5)
    x = np.array([[1.0, -2.25], [0.03125, 3.0]])
    assert np.array_equal(f.encode(x), [[32, -72], [1, 96]])
    assert np.array_equal(f.decode(f.encode(x)), x)


def test_decode_accepts_residues_mod_p():
    f = Field()
    p = f.p
    v = np.array([p - 5, 5, p - 1, 0, p + 3, -p - 7])
    assert np.array_equal(f.decode(v, 0), [-5.0, 5.0, -1.0, 0.0, 3.0, -7.0])
    assert np.array_equal(f.decode(np.array([p - 256]), 8), [-1.0])


def test_encode_overflow_raises():
    f = Field()
    assert f.encode(np.array([float(f.half)]), 0)[0] == f.half
    assert f.encode(np.array([-float(f.half)]), 0)[0] == -f.half
    with pytest.raises(OverflowError):
        f.encode(np.array([float(f.half + 1)]), 0)
    with pytest.raises(OverflowError):
        f.encode(np.array([0.0, -float(f.half + 1)]), 0)
    # at a larger scale a much smaller number already overflows
    big = f.half / 2.0**8 * 1.01
    with pytest.raises(OverflowError):
        f.encode(np.array([1.0, big]), 8)
    f.encode(np.array([big]), 0)
    # empty input is fine
    assert f.encode(np.zeros((0,))).shape == (0,)


# ---- mod_centered ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", [_next_prime(2**23), DELPHI_PRIME, MERSENNE_61, 2**62 - 57])
def test_mod_centered_range_and_congruence(p):
    rng = np.random.default_rng(p % 1000)
    info = np.iinfo(np.int64)
    v = rng.integers(info.min, info.max, size=2000, dtype=np.int64)
    edges = np.array(
        [0, 1, -1, p // 2, p // 2 + 1, -(p // 2), -(p // 2) - 1, p - 1, p, p + 1, -p, info.max],
        dtype=np.int64,
    )
    lim = min(3 * p, info.max)
    v = np.concatenate([v, edges, rng.integers(-lim, lim, size=500, dtype=np.int64)])
    r = mod_centered(v, p)
    assert r.dtype == np.int64
    assert np.all(np.abs(r) <= (p - 1) // 2)
    for a, b in zip(v.tolist(), r.tolist(), strict=True):
        assert (a - b) % p == 0
        assert b == _centred(a, p)
    assert mod_centered(np.array([p // 2]), p)[0] == p // 2
    assert mod_centered(np.array([p // 2 + 1]), p)[0] == -(p // 2)


# ---- mulmod ---------------------------------------------------------------------------------


def _check_mulmod(a: np.ndarray, b: np.ndarray | int, p: int) -> None:
    got = mulmod(a, b, p)
    assert got.dtype == np.int64
    bb = np.broadcast_to(np.asarray(b, dtype=np.int64), np.shape(a))
    want = [_centred(int(x) * int(y), p) for x, y in zip(a.ravel(), bb.ravel(), strict=True)]
    assert got.ravel().tolist() == want


PRIMES = [_next_prime(2**23 + 12345), DELPHI_PRIME, _next_prime(2**55), MERSENNE_61]


@pytest.mark.parametrize("p", PRIMES)
def test_mulmod_int64_path_exact(p):
    rng = np.random.default_rng(1)
    a = rng.integers(-(2**30), 2**30, size=1000, dtype=np.int64)
    b = rng.integers(-(2**30), 2**30, size=1000, dtype=np.int64)
    assert int(np.abs(a).max()) * int(np.abs(b).max()) < 2**62  # stays on the int64 path
    _check_mulmod(a, b, p)
    _check_mulmod(a, -12345, p)


@pytest.mark.parametrize("p", PRIMES)
def test_mulmod_products_beyond_int64(p):
    """Operands of ~32 bits: products up to 2^64 overflow int64 but not the field's range."""
    rng = np.random.default_rng(5)
    a = rng.integers(2**31, 2**32, size=500, dtype=np.int64) * rng.choice([-1, 1], 500)
    b = rng.integers(2**31, 2**32, size=500, dtype=np.int64) * rng.choice([-1, 1], 500)
    a[0], b[0] = 2**32 - 1, 2**32 - 1
    _check_mulmod(a, b, p)


@pytest.mark.parametrize("p", PRIMES)
def test_mulmod_big_path_exact_near_half(p):
    rng = np.random.default_rng(2)
    half = p // 2
    n = 1000
    a = rng.integers(-half, half + 1, size=n, dtype=np.int64)
    b = rng.integers(-half, half + 1, size=n, dtype=np.int64)
    # values right at the edge of the centred range, both signs
    near = half - rng.integers(0, 1000, size=n, dtype=np.int64)
    sign = rng.choice(np.array([-1, 1], dtype=np.int64), size=n)
    a[: n // 2] = (near * sign)[: n // 2]
    b[n // 4 : 3 * n // 4] = (near * sign[::-1])[n // 4 : 3 * n // 4]
    a[0], b[0] = half, half
    a[1], b[1] = -half, half
    a[2], b[2] = -half, -half
    _check_mulmod(a, b, p)
    _check_mulmod(a, half, p)
    _check_mulmod(a, -half, p)


@pytest.mark.parametrize("p", [DELPHI_PRIME, MERSENNE_61])
def test_mulmod_uncentred_residues_and_shapes(p):
    """Operands in [0, p) (not centred) and 2-D arrays are handled exactly too."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, p, size=(20, 30), dtype=np.int64)
    b = rng.integers(0, p, size=(20, 30), dtype=np.int64)
    got = mulmod(a, b, p)
    assert got.shape == (20, 30)
    _check_mulmod(a, b, p)


def test_mulmod_random_int64_operands_below_p_in_magnitude():
    """Random int64 values of every size below p, the full contract of mulmod."""
    p = MERSENNE_61
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 61, size=2000)
    a = (rng.integers(0, 2**61, size=2000, dtype=np.int64) >> bits) * rng.choice([-1, 1], 2000)
    b = (rng.integers(0, 2**61, size=2000, dtype=np.int64) >> bits[::-1]) * rng.choice(
        [-1, 1], 2000
    )
    assert np.abs(a).max() < p and np.abs(b).max() < p
    _check_mulmod(a, b, p)


def test_poly_frac_bits_is_validated_and_left_out_of_fingerprints_when_unset():
    from safenet.field import POLY_PRIME

    assert "poly_frac_bits" not in Field(p=POLY_PRIME).to_dict()  # older plans keep their hash
    f = Field(p=POLY_PRIME, poly_frac_bits=6)
    assert f.to_dict()["poly_frac_bits"] == 6 and f.poly_bits == 6
    assert Field().poly_bits == Field().frac_bits
    with pytest.raises(ValueError, match="poly_frac_bits"):
        Field(poly_frac_bits=9)  # more than frac_bits

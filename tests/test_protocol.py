"""The secure protocol's building blocks: share arithmetic, polynomial tuples, the garbled ReLU
layer between two parties."""

import numpy as np
import pytest

from safenet.crypto.he import ClientKeys, HEContext, HEParams
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.field import DELPHI_PRIME, POLY_PRIME, is_probable_prime
from safenet.protocol import arith as A
from safenet.protocol import poly as P
from safenet.protocol.relu import ReluClient, ReluServer

PRIMES = [DELPHI_PRIME, POLY_PRIME]


def test_poly_prime_is_batching_friendly():
    assert is_probable_prime(POLY_PRIME) and (POLY_PRIME - 1) % (2 * 8192) == 0
    assert POLY_PRIME.bit_length() == 48


@pytest.mark.parametrize("p", PRIMES + [2**61 - 1])
def test_mulmod_matches_python_integers(p):
    a = A.uniform(20000, p)
    b = A.uniform(20000, p)
    a[:3], b[:3] = [0, p - 1, p - 1], [p - 1, p - 1, 1]
    got = A.mulmod(a, b, p)
    want = [int(x) * int(y) % p for x, y in zip(a, b, strict=True)]
    assert got.tolist() == want
    assert A.mulmod(a, 3, p).tolist() == [int(x) * 3 % p for x in a]


def test_mulmod_rejects_non_residues():
    with pytest.raises(ValueError, match="residues"):
        A.mulmod(np.array([DELPHI_PRIME]), np.array([1]), DELPHI_PRIME)


def test_uniform_is_in_range_and_covers_it():
    p = 1009 * 1013  # small, so the top of the range gets hit
    u = A.uniform((50, 2000), p)
    assert u.shape == (50, 2000) and u.min() >= 0 and u.max() < p
    assert u.max() > p - p // 50 and u.min() < p // 50
    assert abs(u.mean() / p - 0.5) < 0.01


@pytest.mark.parametrize("p", PRIMES)
@pytest.mark.parametrize("k", [1, 9, 16])
def test_local_truncation_error_is_zero_or_one(p, k):
    rng = np.random.default_rng(k)
    v = rng.integers(-(2**30), 2**30, 100000)
    c = A.uniform(v.shape, p)
    s = A.sub(A.to_residues(v, p), c, p)
    t = A.add(A.trunc_server(s, k), A.trunc_client(c, k, p), p)
    err = np.where(t > p // 2, t - p, t) - (v >> k)
    # a wrap has probability ~2^31 / p per element: below 2^-9 here, so at most a few
    wraps = int((np.abs(err) > 1).sum())
    assert wraps <= 3 * (100000 * 2**31 // p + 1)
    ok = np.abs(err) <= 1
    assert set(np.unique(err[ok]).tolist()) <= {0, 1}
    # the carry: probability (1 - 2^-k) / 2 for uniform low bits
    assert abs((err[ok] == 1).mean() - (1 - 2.0**-k) / 2) < 0.02


def test_local_truncation_wraps_with_probability_abs_v_over_p():
    """The model behind ``RangeStats.failure_rate``: truncating a shared v fails with
    probability |v| / p (a small prime here, so failures are common enough to count)."""
    from safenet.field import is_probable_prime

    p = next(q for q in range(2**20 + 1, 2**21, 2) if is_probable_prime(q))
    rng = np.random.default_rng(7)
    v = rng.integers(-(2**17), 2**17, 400000)
    k = 8
    x = A.to_residues(v, p)
    c = A.uniform(v.shape, p)
    s = A.sub(x, c, p)
    t = A.add(A.trunc_share(s, k, p, server=True), A.trunc_share(c, k, p, server=False), p)
    err = np.where(t > p // 2, t - p, t) - np.floor((v + 2 ** (k - 1)) / 2**k).astype(np.int64)
    failures = int((np.abs(err) > 1).sum())
    expected = float(np.abs(v).sum()) / p  # about 25,000
    assert abs(failures - expected) < 0.03 * expected


def test_bits_roundtrip():
    v = A.uniform(1000, POLY_PRIME)
    b = A.bits(v, 48)
    assert b.shape == (48, 1000) and b.dtype == np.uint8
    assert (A.from_bits(b) == v).all()


# ---- polynomial channels -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=PRIMES)
def he_keys(request):
    he = HEContext(HEParams(8192, request.param))
    return he, ClientKeys(he)


@pytest.mark.parametrize("degree", [2, 3])
def test_power_tuples_give_shares_of_the_polynomial(he_keys, degree):
    he, keys = he_keys
    p = he.params.plain_modulus
    rng = np.random.default_rng(degree)
    n = 9000  # two ciphertexts per power
    X = rng.integers(-3000, 3000, n)
    coef = rng.integers(-(2**20), 2**20, (n, degree + 1))
    coef[:10, 1:] = 0  # zero plaintexts must not trip SEAL ("transparent" products)
    xc = A.uniform(n, p)
    xs = A.sub(A.to_residues(X, p), xc, p)
    srv = P.PolyServer(he, coef, flood_bits=P.flood_bits(he))
    replies = srv.respond(P.client_encrypt(keys, xc, degree), keys.public_key)
    assert len(replies) == degree * 2
    budgets = [keys.noise_budget(he.ciphertext_from_bytes(r)) for r in replies]
    assert min(budgets) >= 5, budgets  # decryption has margin after flooding
    g_c = P.client_decrypt(keys, replies, n, degree)
    a_s, g_s = srv.take()
    with pytest.raises(RuntimeError, match="already used"):
        srv.take()
    e = A.sub(xs, a_s, p)
    y = A.add(P.evaluate_share(e, g_s, p), P.evaluate_share(e, g_c, p), p)
    want = sum(coef[:, j].astype(object) * X.astype(object) ** j for j in range(degree + 1))
    assert [int(v) for v in y] == [int(w) % p for w in want]
    # what the client sees is masked: its shares alone are uncorrelated with the truth
    assert abs(np.corrcoef(g_c[0].astype(float), coef[:, 0].astype(float))[0, 1]) < 0.05


def test_power_tuple_reply_count_is_checked(he_keys):
    he, keys = he_keys
    srv = P.PolyServer(he, np.ones((10, 3), dtype=np.int64), flood_bits=40)
    with pytest.raises(ValueError, match="expects 2 ciphertexts"):
        srv.respond(P.client_encrypt(keys, np.ones(10, dtype=np.int64), 1), keys.public_key)


# ---- the garbled ReLU layer between two parties ------------------------------------------------
@pytest.mark.parametrize("p, k", [(DELPHI_PRIME, 9), (POLY_PRIME, 9), (POLY_PRIME, 17)])
def test_relu_layer_protocol(p, k, run_parties):
    rng = np.random.default_rng(k)
    n1, n2 = 700, 300  # two layers under one Delta, disjoint tweak ranges
    v = [rng.integers(-(2**30), 2**30, n) for n in (n1, n2)]
    c = [A.uniform(n, p) for n in (n1, n2)]
    s = [A.sub(A.to_residues(vi, p), ci, p) for vi, ci in zip(v, c, strict=True)]

    def server(conn):
        from safenet.crypto.aes import random_blocks

        delta = random_blocks((1,))[0]
        delta[0] |= np.uint64(1)
        ot = OTSender(conn, delta=delta)
        layers = [ReluServer(p, k, n1, delta, 0)]
        layers.append(ReluServer(p, k, n2, delta, layers[0].tweak_end))
        for layer in layers:
            layer.garble()
            layer.send_offline(conn, ot)
        for layer, si in zip(layers, s, strict=True):
            conn.send_array(layer.online_labels(si), label="labels")
        with pytest.raises(RuntimeError, match="already used"):
            layers[0].online_labels(s[0])
        return [layer.out_share for layer in layers]

    def client(conn):
        ot = OTReceiver(conn)
        layers = [ReluClient(p, k, n1, 0)]
        layers.append(ReluClient(p, k, n2, layers[0].tweak_end))
        for layer, ci in zip(layers, c, strict=True):
            layer.recv_offline(conn, ot, ci)
        z = [layer.evaluate(conn.recv_array(label="labels")) for layer in layers]
        with pytest.raises(RuntimeError, match="already used"):
            layers[0].evaluate(np.zeros((p.bit_length(), n1, 2), dtype=np.uint64))
        return z

    out = run_parties(server, client)
    for vi, zi, ri in zip(v, out["client"], out["server"], strict=True):
        y = A.add(zi, ri, p)  # client z plus server -r
        want = np.maximum((vi + (1 << (k - 1))) >> k, 0)
        assert (y == want).all()


@pytest.mark.parametrize("nbits", [1, 41, 64, 72, 130])
def test_bits_mod_p_any_width(nbits):
    p = POLY_PRIME
    b = A.random_bits(nbits, 500)
    assert b.shape == (nbits, 500) and set(np.unique(b)) <= {0, 1}
    b[:, 0] = 1  # all ones: 2^nbits - 1
    want = [sum(int(x) << j for j, x in enumerate(col)) % p for col in b.T]
    assert A.bits_mod_p(b, p).tolist() == want

"""The secure protocol's building blocks: share arithmetic, polynomial tuples, the garbled ReLU
layer between two parties."""

import math

import numpy as np
import pytest

from safenet.crypto.he import ClientKeys, HEContext, HEError, HEParams
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.field import DELPHI_PRIME, POLY_PRIME, is_probable_prime, trunc_bound
from safenet.protocol import arith as A
from safenet.protocol import poly as P
from safenet.protocol.relu_layer import ReluClient, ReluServer

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


def _poly_layer(he, keys, v, coef, k, q):
    """The polynomial protocol of one layer between two parties (all three online steps) on
    shared ``v``; returns the reconstructed output and the server and client material."""
    p = he.params.plain_modulus
    n, d = coef.shape[0], coef.shape[1] - 1
    c = A.uniform(n, p)  # the client's share of v, known offline
    s = A.sub(A.to_residues(v, p), c, p)
    rp = P.reply_params(he, d * -(-n // he.slots), d)
    srv = P.PolyServer(he, coef, rp, shift=k)
    a_c, r2 = A.uniform(n, p), A.bounded_mask(n, p)
    replies = srv.respond(P.client_encrypt(keys, a_c, d, rp), keys.public_key)
    g_c = P.client_decrypt(keys, replies, n, d)
    r1, g_s = srv.take()
    w = P.server_open(s, r1, p)
    e, z = P.client_step(w, c, a_c, g_c, r2, k, p)
    out = A.add(P.server_finish(e, z, g_s, q, p), A.mask_trunc(r2, q, p), p)
    return np.where(out > p // 2, out - p, out), srv, replies, g_c


def _poly_reference(v, coef, k, q):
    """The secure output may carry one unit into X and one into the result: every allowed
    value, as a set per element."""
    d = coef.shape[1] - 1
    X = (v.astype(object) + (1 << (k - 1))) >> k
    allowed = []
    for dx in (0, 1):
        y = sum(coef[:, j].astype(object) * (X + dx) ** j for j in range(d + 1))
        base = (y + (1 << (q - 1))) >> q
        allowed += [base, base + 1]
    return allowed


@pytest.mark.parametrize("degree", [2, 3])
def test_polynomial_layer_is_exact_up_to_one_carry(he_keys, degree):
    """Both truncations are exact: every element lands within the carry bound, including
    inputs near the truncation bound B where local truncation would wrap half the time."""
    he, keys = he_keys
    p = he.params.plain_modulus
    rng = np.random.default_rng(degree)
    n, k, q = 9000, 9, 8 * degree  # two ciphertexts per power
    v = rng.integers(-(2**17), 2**17, n)  # |X| <= 2^8, |Y| < 2^34 < B for both primes
    coef = rng.integers(-(2**8), 2**8, (n, degree + 1))
    coef[:10, 1:] = 0  # zero plaintexts must not trip SEAL ("transparent" products)
    # a few elements whose input or sum sits just below B
    b = trunc_bound(p)
    v[10:20] = [b - 1, -(b - 1)] * 5
    coef[10:20] = 0
    coef[10:20, 0] = [b - 1, -(b - 1)] * 5  # Y = C_0 = +-(B - 1)
    coef[10:20, 1:] = 0
    got, srv, replies, g_c = _poly_layer(he, keys, v, coef, k, q)
    assert len(replies) == degree * 2
    budgets = [keys.noise_budget(he.ciphertext_from_bytes(r)) for r in replies]
    assert min(budgets) >= 5, budgets  # decryption has margin after flooding
    with pytest.raises(RuntimeError, match="already used"):
        srv.take()
    allowed = _poly_reference(v, coef, k, q)
    ok = np.zeros(n, dtype=bool)
    for a in allowed:
        ok |= got.astype(object) == a
    assert ok.all(), f"{int((~ok).sum())} elements off, e.g. index {np.flatnonzero(~ok)[:5]}"
    # what the client sees is masked: its shares alone are uncorrelated with the truth
    assert abs(np.corrcoef(g_c[0].astype(float), coef[:, 0].astype(float))[0, 1]) < 0.05


def test_exact_truncation_never_wraps_where_local_truncation_does():
    """open_trunc / mask_trunc are exact for every |v| < B; local truncation of the same
    values on the same (small) prime wraps about |v| / p of the time."""
    p = next(q for q in range(2**24 + 1, 2**25, 2) if is_probable_prime(q))
    b = trunc_bound(p)
    rng = np.random.default_rng(3)
    v = rng.integers(-(b - 1), b, 200000)
    v[:4] = [b - 1, -(b - 1), 0, 1]
    k = 5
    want = (v + (1 << (k - 1))) >> k
    r = A.bounded_mask(v.shape, p)
    assert r.min() >= b and r.max() < p - b
    u = A.add(A.to_residues(v, p), r, p)  # what the opener receives
    t = A.add(A.open_trunc(u, k), A.mask_trunc(r, k, p), p)
    err = np.where(t > p // 2, t - p, t) - want
    assert set(np.unique(err).tolist()) <= {0, 1}
    c = A.uniform(v.shape, p)
    s = A.sub(A.to_residues(v, p), c, p)
    loc = A.add(A.trunc_share(s, k, p, server=True), A.trunc_share(c, k, p, server=False), p)
    wraps = int((np.abs(np.where(loc > p // 2, loc - p, loc) - want) > 1).sum())
    assert wraps > 0.5 * float(np.abs(v).sum()) / p  # about 6,000 here


def test_power_tuple_reply_count_is_checked(he_keys):
    he, keys = he_keys
    rp = P.reply_params(he, 2, 2)
    srv = P.PolyServer(he, np.ones((10, 3), dtype=np.int64), rp, shift=8)
    want = 2 * rp.digits
    with pytest.raises(ValueError, match=f"expects {want} ciphertexts"):
        srv.respond(P.client_encrypt(keys, np.ones(10, dtype=np.int64), 1, rp), keys.public_key)


def test_polynomial_ciphertexts_get_the_form_checks(he_keys):
    """A ciphertext of the wrong level, a plaintext-sized blob or garbage is refused with a
    clear HEError before any product (the flooding bound assumes fresh full-level ones)."""
    he, keys = he_keys
    rp = P.reply_params(he, 1, 1)
    srv = P.PolyServer(he, np.ones((10, 2), dtype=np.int64), rp, shift=8)
    good = P.client_encrypt(keys, np.ones(10, dtype=np.int64), 1, rp)
    low = keys.encrypt(np.ones(10, dtype=np.int64))
    he.evaluator.mod_switch_to_next_inplace(low)
    for bad, why in [(low.to_string(), "coefficient primes"), (b"\x00" * 100, "malformed"),
                     (b"x" * (he.max_ciphertext_bytes + 1), "too large")]:  # fmt: skip
        with pytest.raises(HEError, match=why):
            srv.respond([bad, *good[1:]], keys.public_key)


def test_polynomial_replies_meet_the_session_bound():
    """Every flooded coefficient of the session's polynomial replies gets 42 + log2(count)
    bits beyond the reply noise, and the digit split keeps the decryption budget."""
    he = HEContext(HEParams(8192, POLY_PRIME))
    for replies, degree in [(1, 2), (40, 3), (5000, 3)]:
        rp = P.reply_params(he, replies, degree)
        noise = math.log2(degree * rp.digits * 8192 * 22) + rp.base_bits
        assert rp.flood_bits >= noise + 42 + math.log2(8192 * replies)
        assert rp.digits * rp.base_bits >= POLY_PRIME.bit_length()
        q = sum(math.log2(x) for x in he.coeff_primes)
        assert q - math.log2(POLY_PRIME) - rp.flood_bits - 2 >= 20
    # full-size plaintexts cannot: about 2^123 of flood against a 174-bit modulus
    assert P.reply_params(he, 40, 3).digits >= 2


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


def test_overlapping_online_phases_restore_the_blas_threads():
    """The one-BLAS-thread limit of the online phase is process-wide: two parties in one
    process (server thread, client thread) ending in either order leave the original."""
    from threadpoolctl import threadpool_info

    from safenet.protocol.engine import _one_blas_thread

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    first, second = _one_blas_thread(), _one_blas_thread()
    first.__enter__()
    second.__enter__()
    assert set(blas()) <= {1}
    first.__exit__(None, None, None)  # the first to start ends first
    assert set(blas()) <= {1}
    second.__exit__(None, None, None)
    assert blas() == before


def test_garbling_worker_stays_within_its_lookahead():
    """With room for one layer, the worker garbles the next only after the previous was sent;
    an error in the worker reaches the session's thread."""
    from safenet.protocol.garbled import GarblingWorker

    delta = np.array([3, 5], dtype=np.uint64)
    layers = {i: ReluServer(DELPHI_PRIME, 4, 64, delta, 10_000 * i) for i in (2, 5, 7)}
    worker = GarblingWorker(layers, ahead_bytes=1).start()
    try:
        assert worker.wait(2) is layers[2]
        assert not worker._done[5].wait(0.3)  # blocked: layer 2's tables are still here
        worker.sent(2)
        assert worker.wait(5) is layers[5]
        assert not worker._done[7].is_set()
        worker.sent(5)
        worker.wait(7)
        assert worker.seconds > 0
    finally:
        worker.close()
    bad = {0: ReluServer(DELPHI_PRIME, 4, 64, np.array([2, 0], dtype=np.uint64), 0)}
    worker = GarblingWorker(bad).start()  # an even Delta: garble() refuses it
    with pytest.raises(ValueError, match="lowest bit"):
        worker.wait(0)
    worker.close()

"""Oblivious transfer: Chou-Orlandi base OTs and IKNP extension, both parties in threads."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rbcl

from safenet.channel import (
    ConnectionClosed,
    PeerError,
    TransportTimeout,
    connection_pair,
)
from safenet.crypto.ot import (
    InvalidPointError,
    OTError,
    OTReceiver,
    OTSender,
    base_ot_recv,
    base_ot_send,
)
from safenet.crypto.ot.bitmatrix import pack_bits, transpose, transpose_reference

JOIN = 20.0  # seconds; every test joins its threads with a timeout, nothing can hang


def both(f, g, timeout: float = JOIN):
    """Run f() and g() in two threads; return both results (re-raising either's error)."""
    with ThreadPoolExecutor(2) as ex:
        fa, fb = ex.submit(f), ex.submit(g)
        return fa.result(timeout), fb.result(timeout)


def outcomes(f, g, timeout: float = JOIN):
    """Like :func:`both` but returns each side's result or exception."""
    with ThreadPoolExecutor(2) as ex:
        futs = ex.submit(f), ex.submit(g)
        out = []
        for fut in futs:
            try:
                out.append(fut.result(timeout))
            except Exception as e:
                out.append(e)
        return out


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def ot_pair():
    a, b = connection_pair(timeout=10)
    sender, receiver = OTSender(a), OTReceiver(b)
    both(sender.setup, receiver.setup)
    yield sender, receiver
    a.close()
    b.close()


def blocks(rng, *shape):
    return rng.integers(0, 2**64, size=(*shape, 2), dtype=np.uint64)


# ---- bit matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_words", [1, 2, 3, 17])
def test_transpose_matches_reference(rng, n_words):
    rows = rng.integers(0, 2**64, size=(128, n_words), dtype=np.uint64)
    out = transpose(rows)
    assert out.shape == (64 * n_words, 2)
    np.testing.assert_array_equal(out, transpose_reference(rows))
    # column j of the rows is block j: bit i of block j == bit j of row i
    bits = np.unpackbits(rows.view(np.uint8), axis=1, bitorder="little")
    j = 64 * n_words - 1
    col = np.packbits(bits[:, j], bitorder="little").view("<u8")
    np.testing.assert_array_equal(out[j], col)


def test_pack_bits_pads_with_zeros():
    bits = np.array([1, 0, 1] + [0] * 60 + [1], dtype=np.uint8)
    w = pack_bits(bits, 2)
    assert w.tolist() == [(1 | 4 | (1 << 63)), 0]


# ---- base OT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 5, 128])
def test_base_ot_receiver_gets_exactly_the_chosen_keys(rng, count):
    a, b = connection_pair(timeout=5)
    choices = rng.integers(0, 2, count).astype(np.uint8)
    keys, got = both(lambda: base_ot_send(a, count), lambda: base_ot_recv(b, choices))
    assert keys.shape == (count, 2, 2) and got.shape == (count, 2)
    idx = np.arange(count)
    np.testing.assert_array_equal(got, keys[idx, choices])
    assert np.all(np.any(got != keys[idx, 1 - choices], axis=1))
    # all 2*count keys distinct (index and transcript are hashed in)
    assert len({k.tobytes() for k in keys.reshape(-1, 2)}) == 2 * count


def test_base_ot_fresh_keys_each_run(rng):
    a, b = connection_pair(timeout=5)
    choices = np.zeros(8, dtype=np.uint8)
    k1, r1 = both(lambda: base_ot_send(a, 8), lambda: base_ot_recv(b, choices))
    k2, r2 = both(lambda: base_ot_send(a, 8), lambda: base_ot_recv(b, choices))
    assert not np.any(np.all(k1 == k2, axis=-1))
    np.testing.assert_array_equal(r1, k1[:, 0])
    np.testing.assert_array_equal(r2, k2[:, 0])


def test_base_ot_receiver_sends_only_valid_points(rng):
    """The receiver's only message (the B_i) is valid ristretto255 points, for both choices."""
    a, b = connection_pair(timeout=5)
    seen = []
    real_send = b.send

    def spy(data, label="data"):
        seen.append(data)
        real_send(data, label=label)

    b.send = spy
    choices = np.array([0, 1, 0, 1], dtype=np.uint8)
    both(lambda: base_ot_send(a, 4), lambda: base_ot_recv(b, choices))
    pts = [seen[0][32 * i : 32 * (i + 1)] for i in range(4)]
    assert all(rbcl.crypto_core_ristretto255_is_valid_point(p) for p in pts)


@pytest.mark.parametrize(
    "bad",
    [bytes(32), b"\xff" * 32, (2**255 - 19 + 2).to_bytes(32, "little")],
    ids=["identity", "not-a-point", "non-canonical"],
)
def test_base_ot_rejects_invalid_sender_point(bad):
    a, b = connection_pair(timeout=2)
    hello = struct.pack("<16sI", b"s" * 16, 4) + bad

    def evil_sender():
        a.send(hello, label="ot.base")
        return a.recv(label="ot.base")  # the receiver gives up: PeerError

    sent, got = outcomes(evil_sender, lambda: base_ot_recv(b, np.zeros(4, np.uint8)))
    assert isinstance(got, InvalidPointError)
    assert "sender's A" in str(got) and "not a valid ristretto255 point" in str(got)
    assert isinstance(sent, PeerError)


@pytest.mark.parametrize("which", ["identity", "garbage", "equals-A"])
def test_base_ot_rejects_invalid_receiver_point(which):
    a, b = connection_pair(timeout=2)

    def evil_receiver():
        hello = b.recv(label="ot.base")
        a_pt = hello[-32:]
        good = rbcl.crypto_core_ristretto255_random()
        bad = {"identity": bytes(32), "garbage": b"\xee" * 32, "equals-A": a_pt}[which]
        b.send(good + bad + good, label="ot.base")
        return b.recv(label="ot.base")

    sent, got = outcomes(lambda: base_ot_send(a, 3), evil_receiver)
    assert isinstance(sent, InvalidPointError) and "base OT 1" in str(sent)
    assert isinstance(got, PeerError)


def test_base_ot_count_mismatch_is_clear():
    a, b = connection_pair(timeout=2)
    sent, got = outcomes(lambda: base_ot_send(a, 4), lambda: base_ot_recv(b, np.zeros(5, np.uint8)))
    assert isinstance(got, OTError) and "4" in str(got) and "5" in str(got)
    assert isinstance(sent, PeerError)


# ---- IKNP extension --------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 127, 1000, 100003])
def test_iknp_chosen_messages(ot_pair, rng, m):
    sender, receiver = ot_pair
    pairs = blocks(rng, m, 2)
    choices = rng.integers(0, 2, m).astype(np.uint8)
    _, got = both(lambda: sender.send(pairs), lambda: receiver.recv(choices))
    idx = np.arange(m)
    np.testing.assert_array_equal(got, pairs[idx, choices])
    assert np.all(np.any(got != pairs[idx, 1 - choices], axis=1))


def test_iknp_bool_choices_and_empty(ot_pair, rng):
    sender, receiver = ot_pair
    pairs = blocks(rng, 9, 2)
    choices = rng.integers(0, 2, 9).astype(bool)
    _, got = both(lambda: sender.send(pairs), lambda: receiver.recv(choices))
    np.testing.assert_array_equal(got, pairs[np.arange(9), choices.astype(int)])
    _, got = both(lambda: sender.send(blocks(rng, 0, 2)), lambda: receiver.recv(np.zeros(0, bool)))
    assert got.shape == (0, 2)


def _record_arrays(conn):
    seen = []
    real = conn.send_array

    def spy(arr, label="array"):
        seen.append(np.array(arr, copy=True))
        real(arr, label=label)

    conn.send_array = spy
    return seen


def test_repeated_extensions_never_reuse_pads(ot_pair, rng):
    sender, receiver = ot_pair
    sent_by_sender = _record_arrays(sender.conn)
    sent_by_receiver = _record_arrays(receiver.conn)
    m = 1000
    pairs = blocks(rng, m, 2)
    choices = rng.integers(0, 2, m).astype(np.uint8)
    outs = [both(lambda: sender.send(pairs), lambda: receiver.recv(choices))[1] for _ in range(3)]
    for out in outs:
        np.testing.assert_array_equal(out, pairs[np.arange(m), choices])
    # same pairs and choices, yet every ciphertext and every u row differs between calls
    for x, y in [(0, 1), (0, 2), (1, 2)]:
        assert not np.any(np.all(sent_by_sender[x] == sent_by_sender[y], axis=-1))
        assert not np.any(sent_by_receiver[x] == sent_by_receiver[y])
    # random OTs from successive calls are independent too
    r1, _ = both(lambda: sender.send_random(m), lambda: receiver.recv_random(choices))
    r2, _ = both(lambda: sender.send_random(m), lambda: receiver.recv_random(choices))
    assert not np.any(np.all(r1 == r2, axis=-1))


@pytest.mark.parametrize("m", [1, 127, 1000, 100003])
def test_iknp_random_ot(ot_pair, rng, m):
    sender, receiver = ot_pair
    choices = rng.integers(0, 2, m).astype(np.uint8)
    pairs, got = both(lambda: sender.send_random(m), lambda: receiver.recv_random(choices))
    idx = np.arange(m)
    np.testing.assert_array_equal(got, pairs[idx, choices])
    assert np.all(np.any(got != pairs[idx, 1 - choices], axis=1))


@pytest.mark.parametrize("m", [1, 127, 1000, 100003])
def test_correlated_ot_one_block_per_ot(rng, m):
    a, b = connection_pair(timeout=10)
    delta = blocks(rng)
    delta[0] |= np.uint64(1)
    sender, receiver = OTSender(a, delta=delta), OTReceiver(b)
    np.testing.assert_array_equal(sender.delta, delta)
    both(sender.setup, receiver.setup)
    zero = blocks(rng, m)
    choices = rng.integers(0, 2, m).astype(np.uint8)
    wire = _record_arrays(a)
    _, got = both(
        lambda: sender.send_correlated(zero, delta), lambda: receiver.recv_correlated(choices)
    )
    np.testing.assert_array_equal(got, zero ^ (choices[:, None].astype(np.uint64) * delta))
    assert wire[0].shape == (m, 2)  # one masked block per OT
    ext = a.stats.counters[("setup", "ot.ext")]
    assert ext.bytes_sent <= 16 * m + 100  # the masked blocks and one frame header
    assert ext.bytes_received <= 16 * 64 * -(-m // 64) + 200  # u (padded to 64 OTs), header
    # default delta = the sender's own
    _, got = both(lambda: sender.send_correlated(zero), lambda: receiver.recv_correlated(choices))
    np.testing.assert_array_equal(got, zero ^ (choices[:, None].astype(np.uint64) * delta))


def test_correlated_ot_other_delta_falls_back(ot_pair, rng):
    sender, receiver = ot_pair
    m = 777
    delta = blocks(rng)
    zero = blocks(rng, m)
    choices = rng.integers(0, 2, m).astype(np.uint8)
    _, got = both(
        lambda: sender.send_correlated(zero, delta), lambda: receiver.recv_correlated(choices)
    )
    np.testing.assert_array_equal(got, zero ^ (choices[:, None].astype(np.uint64) * delta))


def test_default_delta_has_lsb_set(ot_pair):
    sender, _ = ot_pair
    assert int(sender.delta[0]) & 1 == 1


# ---- failures --------------------------------------------------------------------------------


def test_call_mismatch_is_detected(ot_pair, rng):
    sender, receiver = ot_pair
    res_s, res_r = outcomes(
        lambda: sender.send(blocks(rng, 10, 2)), lambda: receiver.recv(np.zeros(11, np.uint8))
    )
    assert isinstance(res_s, OTError) and "mismatch" in str(res_s)
    assert isinstance(res_r, PeerError)
    with pytest.raises(OTError, match="cannot be reused"):
        sender.send(blocks(rng, 10, 2))


def test_peer_disconnects_during_base_ot():
    a, b = connection_pair(timeout=2)
    receiver = OTReceiver(b)

    def vanish():
        a.recv(label="ot.base")  # take the sender's hello, then drop the connection
        a.close()

    _, err = outcomes(vanish, receiver.setup, timeout=10)
    assert isinstance(err, ConnectionClosed) and "peer closed" in str(err)


def test_peer_disconnects_mid_extension(ot_pair, rng):
    sender, receiver = ot_pair

    def vanish():
        sender.conn.recv(label="ot.ext")  # header, then quit before answering
        sender.conn.close()

    _, err = outcomes(vanish, lambda: receiver.recv(np.ones(5000, np.uint8)), timeout=10)
    assert isinstance(err, ConnectionClosed)
    with pytest.raises(OTError, match="cannot be reused"):
        receiver.recv(np.ones(5, np.uint8))


def test_silent_peer_times_out():
    a, b = connection_pair(timeout=0.3)
    sender = OTSender(a)
    err = outcomes(sender.setup, lambda: None, timeout=10)[0]
    assert isinstance(err, TransportTimeout)


def test_bad_inputs_are_refused_before_talking(ot_pair, rng):
    sender, receiver = ot_pair
    with pytest.raises(TypeError):
        sender.send(np.zeros((3, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError):
        sender.send(np.zeros((3, 2), dtype=np.uint64))
    with pytest.raises(ValueError):
        receiver.recv(np.array([0, 2]))
    with pytest.raises(ValueError):
        OTSender(sender.conn, delta=np.zeros(3, np.uint64))
    # still usable after refused inputs
    pairs = blocks(rng, 4, 2)
    _, got = both(lambda: sender.send(pairs), lambda: receiver.recv(np.array([1, 0, 1, 1])))
    np.testing.assert_array_equal(got, pairs[np.arange(4), [1, 0, 1, 1]])

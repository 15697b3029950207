"""Oblivious transfer: Chou-Orlandi base OTs and IKNP extension, both parties in threads.

One harness (:data:`MODES`) runs every OT mode the extension offers (chosen, correlated with
the sender's Δ, a default Δ or another Δ, random) through the same checks: the receiver gets
exactly its chosen message and not the other, the sender sends what the mode costs, repeated
calls never reuse a pad, a mismatched call is caught. The parties talk over the in-memory
channel except where a socket is the point (one harness size runs over a socket pair).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import rbcl

from safenet.channel import (
    ConnectionClosed,
    PeerError,
    TransportTimeout,
    connection_pair,
    memory_pair,
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
from safenet.crypto.ot.extension import _NAMES

JOIN = 20.0  # seconds; every test joins its threads with a timeout, nothing can hang
PAIRS = {"memory": memory_pair, "socket": connection_pair}


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
    a, b = memory_pair(timeout=10)
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
    a, b = memory_pair(timeout=5)
    choices = rng.integers(0, 2, count).astype(np.uint8)
    keys, got = both(lambda: base_ot_send(a, count), lambda: base_ot_recv(b, choices))
    assert keys.shape == (count, 2, 2) and got.shape == (count, 2)
    idx = np.arange(count)
    np.testing.assert_array_equal(got, keys[idx, choices])
    assert np.all(np.any(got != keys[idx, 1 - choices], axis=1))
    # all 2*count keys distinct (index and transcript are hashed in)
    assert len({k.tobytes() for k in keys.reshape(-1, 2)}) == 2 * count


def test_base_ot_fresh_keys_each_run(rng):
    a, b = memory_pair(timeout=5)
    choices = np.zeros(8, dtype=np.uint8)
    k1, r1 = both(lambda: base_ot_send(a, 8), lambda: base_ot_recv(b, choices))
    k2, r2 = both(lambda: base_ot_send(a, 8), lambda: base_ot_recv(b, choices))
    assert not np.any(np.all(k1 == k2, axis=-1))
    np.testing.assert_array_equal(r1, k1[:, 0])
    np.testing.assert_array_equal(r2, k2[:, 0])


def test_base_ot_receiver_sends_only_valid_points(rng):
    """The receiver's only message (the B_i) is valid ristretto255 points, for both choices."""
    a, b = memory_pair(timeout=5)
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
    a, b = memory_pair(timeout=2)
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
    a, b = memory_pair(timeout=2)

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
    a, b = memory_pair(timeout=2)
    sent, got = outcomes(lambda: base_ot_send(a, 4), lambda: base_ot_recv(b, np.zeros(5, np.uint8)))
    assert isinstance(got, OTError) and "4" in str(got) and "5" in str(got)
    assert isinstance(sent, PeerError)


# ---- IKNP extension: one harness over every mode ------------------------------------------


@dataclass(frozen=True)
class Mode:
    """One way of calling the extension: what the sender is given and what it sends."""

    name: str
    kind: str  # the extension call it makes (the wire's call kind)
    make: Callable[[np.random.Generator, int, np.ndarray], Any]  # sender's input (rng, m, Δ)
    send: Callable[[OTSender, Any], Any]
    recv: Callable[[OTReceiver, np.ndarray], np.ndarray]
    messages: Callable[[Any, Any], np.ndarray]  # (input, send's result) -> both, (m, 2, 2)
    blocks_per_ot: int  # 128-bit blocks the sender sends per OT


def _correlated(zero, delta):
    return np.stack([zero, zero ^ delta], axis=1)


MODES = [
    Mode(
        "chosen", "chosen",
        make=lambda rng, m, _: blocks(rng, m, 2),
        send=lambda s, pairs: s.send(pairs),
        recv=lambda r, c: r.recv(c),
        messages=lambda pairs, _: pairs,
        blocks_per_ot=2,
    ),
    Mode(  # the sender's own Δ, given: one masked block per OT
        "correlated", "correlated",
        make=lambda rng, m, delta: (blocks(rng, m), delta),
        send=lambda s, x: s.send_correlated(*x),
        recv=lambda r, c: r.recv_correlated(c),
        messages=lambda x, _: _correlated(*x),
        blocks_per_ot=1,
    ),
    Mode(  # Δ left out: the sender's own
        "correlated-default-delta", "correlated",
        make=lambda rng, m, delta: (blocks(rng, m), delta),
        send=lambda s, x: s.send_correlated(x[0]),
        recv=lambda r, c: r.recv_correlated(c),
        messages=lambda x, _: _correlated(*x),
        blocks_per_ot=1,
    ),
    Mode(  # another Δ: two hashed blocks per OT
        "correlated-other-delta", "correlated",
        make=lambda rng, m, _: (blocks(rng, m), blocks(rng)),
        send=lambda s, x: s.send_correlated(*x),
        recv=lambda r, c: r.recv_correlated(c),
        messages=lambda x, _: _correlated(*x),
        blocks_per_ot=2,
    ),
    Mode(
        "random", "random",
        make=lambda rng, m, _: m,
        send=lambda s, m: s.send_random(m),
        recv=lambda r, c: r.recv_random(c),
        messages=lambda _, pairs: pairs,
        blocks_per_ot=0,
    ),
]  # fmt: skip
WITH_REPLY = [m for m in MODES if m.blocks_per_ot]  # the receiver waits for the sender
SIZES = [0, 1, 127, 1000, 100003]
CASES = [("memory", m) for m in SIZES] + [("socket", 1000)]


def test_the_harness_covers_every_mode():
    assert {m.kind for m in MODES} == set(_NAMES.values())


def _record_arrays(conn):
    seen = []
    real = conn.send_array

    def spy(arr, label="array"):
        seen.append(np.array(arr, copy=True))
        real(arr, label=label)

    conn.send_array = spy
    return seen


def _setup(channel, rng):
    """A sender with a known Δ (lowest bit set) and a receiver, base OTs done."""
    a, b = PAIRS[channel](timeout=10)
    delta = blocks(rng)
    delta[0] |= np.uint64(1)
    sender, receiver = OTSender(a, delta=delta), OTReceiver(b)
    np.testing.assert_array_equal(sender.delta, delta)
    both(sender.setup, receiver.setup)
    return sender, receiver, delta


def _run(mode, sender, receiver, inp, choices):
    """One call of ``mode``; returns both messages of every OT and what the receiver got."""
    out, got = both(lambda: mode.send(sender, inp), lambda: mode.recv(receiver, choices))
    return mode.messages(inp, out), got


def _check(msgs, got, choices):
    m = choices.size
    idx = np.arange(m)
    assert got.shape == (m, 2) and got.dtype == np.uint64
    np.testing.assert_array_equal(got, msgs[idx, choices])
    assert np.all(np.any(got != msgs[idx, 1 - choices], axis=1))


@pytest.mark.parametrize(("channel", "m"), CASES)
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_ot_mode(mode, channel, m, rng):
    sender, receiver, delta = _setup(channel, rng)
    inp = mode.make(rng, m, delta)
    choices = rng.integers(0, 2, m).astype(np.uint8)
    wire = _record_arrays(sender.conn)
    msgs, got = _run(mode, sender, receiver, inp, choices)
    _check(msgs, got, choices)
    # what the sender sent: blocks_per_ot blocks per OT in one array (nothing for random OT)
    assert [w.shape for w in wire] == {0: [], 1: [(m, 2)], 2: [(m, 2, 2)]}[mode.blocks_per_ot]
    ext = sender.conn.stats.counters[("setup", "ot.ext")]
    assert ext.messages_sent == (1 if mode.blocks_per_ot else 0)
    assert ext.bytes_sent <= 16 * mode.blocks_per_ot * m + 100  # the blocks, one frame header
    assert ext.bytes_received <= 16 * 64 * -(-m // 64) + 200  # u (padded to 64 OTs), header
    sender.conn.close()
    receiver.conn.close()


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_repeated_calls_never_reuse_pads(mode, rng):
    sender, receiver, delta = _setup("memory", rng)
    sent_by_sender = _record_arrays(sender.conn)
    sent_by_receiver = _record_arrays(receiver.conn)
    m = 1000
    inp = mode.make(rng, m, delta)
    choices = rng.integers(0, 2, m).astype(np.uint8)
    outs = [_run(mode, sender, receiver, inp, choices) for _ in range(3)]
    for msgs, got in outs:
        _check(msgs, got, choices)
    # same inputs and choices, yet every block sent and every u row differs between calls
    for x, y in [(0, 1), (0, 2), (1, 2)]:
        if mode.blocks_per_ot:
            assert not np.any(np.all(sent_by_sender[x] == sent_by_sender[y], axis=-1))
        assert not np.any(sent_by_receiver[x] == sent_by_receiver[y])
        if mode.kind == "random":  # random OTs from successive calls are independent too
            assert not np.any(np.all(outs[x][0] == outs[y][0], axis=-1))


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_call_mismatch_is_detected(mode, rng):
    sender, receiver, delta = _setup("memory", rng)
    inp = mode.make(rng, 10, delta)
    res_s, res_r = outcomes(
        lambda: mode.send(sender, inp), lambda: mode.recv(receiver, np.zeros(11, np.uint8))
    )
    assert isinstance(res_s, OTError) and "mismatch" in str(res_s)
    if mode.blocks_per_ot:
        assert isinstance(res_r, PeerError)
    else:  # a random-OT receiver waits for nothing: it hears of it at its next receive
        with pytest.raises(PeerError):
            receiver.conn.recv(label="ot.ext")
    with pytest.raises(OTError, match="cannot be reused"):
        mode.send(sender, inp)


def test_a_call_of_another_mode_is_a_mismatch(rng):
    sender, receiver, _ = _setup("memory", rng)
    res_s, res_r = outcomes(
        lambda: sender.send(blocks(rng, 10, 2)),
        lambda: receiver.recv_correlated(np.zeros(10, np.uint8)),
    )
    assert isinstance(res_s, OTError) and "chosen OT of 10" in str(res_s)
    assert isinstance(res_r, PeerError)


@pytest.mark.parametrize("mode", WITH_REPLY, ids=lambda mode: mode.name)
def test_peer_disconnects_mid_extension(mode, rng):
    sender, receiver, _ = _setup("memory", rng)

    def vanish():
        sender.conn.recv(label="ot.ext")  # header, then quit before answering
        sender.conn.close()

    _, err = outcomes(vanish, lambda: mode.recv(receiver, np.ones(5000, np.uint8)), timeout=10)
    assert isinstance(err, ConnectionClosed)
    with pytest.raises(OTError, match="cannot be reused"):
        mode.recv(receiver, np.ones(5, np.uint8))


def test_iknp_bool_choices_and_empty(ot_pair, rng):
    sender, receiver = ot_pair
    pairs = blocks(rng, 9, 2)
    choices = rng.integers(0, 2, 9).astype(bool)
    _, got = both(lambda: sender.send(pairs), lambda: receiver.recv(choices))
    np.testing.assert_array_equal(got, pairs[np.arange(9), choices.astype(int)])
    _, got = both(lambda: sender.send(blocks(rng, 0, 2)), lambda: receiver.recv(np.zeros(0, bool)))
    assert got.shape == (0, 2)


def test_correlated_ot_other_delta_falls_back(ot_pair, rng):
    """With a default (drawn) Δ too, another Δ is served correctly."""
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


def test_peer_disconnects_during_base_ot():
    a, b = memory_pair(timeout=2)
    receiver = OTReceiver(b)

    def vanish():
        a.recv(label="ot.base")  # take the sender's hello, then drop the connection
        a.close()

    _, err = outcomes(vanish, receiver.setup, timeout=10)
    assert isinstance(err, ConnectionClosed) and "peer closed" in str(err)


def test_silent_peer_times_out():
    a, b = memory_pair(timeout=0.3)
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

"""The in-memory channel: the socket's frames, limits, errors and counters without a socket;
and the channel package's place below crypto."""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import safenet
from helpers import ARRAYS, exchange
from safenet.channel import (
    ERROR_MAX,
    HEADER,
    JSON_MAX,
    Channel,
    Connection,
    ConnectionClosed,
    MemoryChannel,
    PeerError,
    ProtocolError,
    TransportTimeout,
    array_bytes,
    connection_pair,
    memory_pair,
)


def test_both_ends_are_channels():
    a, b = memory_pair()
    assert isinstance(a, Channel) and isinstance(b, MemoryChannel)
    c, d = connection_pair()
    assert isinstance(c, Channel)
    c.close()
    d.close()


def test_round_trips_and_counters_match_the_socket():
    ma, mb = memory_pair(timeout=5)
    sa, sb = connection_pair(timeout=5)
    got_m, got_s = exchange(ma, mb), exchange(sa, sb)
    for x, y in zip(ARRAYS, got_m, strict=False):
        assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)
        assert y.ctypes.data % 16 == 0 or y.size == 0  # the data arrives aligned, as on a socket
    assert got_m[-2:] == [b"hello!", {"got": [1, "two"]}]
    assert got_m[-2:] == got_s[-2:]
    # same frames, so the same bytes, messages and rounds on both ends
    assert ma.stats.as_dict() == sa.stats.as_dict()
    assert mb.stats.as_dict() == sb.stats.as_dict()
    assert ma.stats.as_dict()["rounds"] == {"offline": len(ARRAYS) + 2}
    sa.close()
    sb.close()


def test_the_bytes_are_the_socket_frames():
    """What a memory end carries is byte for byte what a Connection writes on a socket."""
    x = np.arange(6, dtype="<u8").reshape(3, 2)
    raw, theirs = socket.socketpair()
    conn = Connection(raw, timeout=2)
    conn.send_array(x, "ot.ext")
    conn.send_json({"a": 1}, "hello")
    conn.send_error("bye\n")
    theirs.settimeout(2)
    n = conn.stats.total().bytes_sent  # error frames are counted too
    on_socket = b""
    while len(on_socket) < n:
        on_socket += theirs.recv(n - len(on_socket))
    a, b = memory_pair(timeout=2)
    a.send_array(x, "ot.ext")
    a.send_json({"a": 1}, "hello")
    a.send_error("bye\n")
    assert b._read_exact(n, "all").tobytes() == on_socket
    conn.close()
    theirs.close()


def test_labels_and_kinds_are_checked():
    a, b = memory_pair(timeout=2)
    a.send(b"x", "one")
    with pytest.raises(ProtocolError, match="expected message 'two', peer sent 'one'"):
        b.recv("two")
    a.send(b"x", "arr")
    with pytest.raises(ProtocolError, match="expected an array, got frame kind 0"):
        b.recv_array("arr")
    a.send_array(np.zeros(3), "b")
    with pytest.raises(ProtocolError, match="expected bytes, got frame kind 1"):
        b.recv("b")
    a.send(b"{not json", "j")
    with pytest.raises(ProtocolError, match="malformed JSON"):
        b.recv_json("j")


def test_size_limits_refuse_before_reading():
    a, b = memory_pair(timeout=2, max_message=1000)
    a.send(bytes(1001), "big")
    with pytest.raises(ProtocolError, match="peer announced 1001 bytes, limit 1000"):
        b.recv("big")
    a, b = memory_pair(timeout=2)  # a refused frame is left unread: the stream is spent
    a.send_array(np.zeros(20, np.uint64), "arr")
    limit = array_bytes((4,), np.uint64)
    with pytest.raises(ProtocolError, match=f"limit {limit}"):
        b.recv_array("arr", max_bytes=limit)
    c, d = memory_pair(timeout=2)
    c.send(b'"' + b"x" * JSON_MAX + b'"', "j")
    with pytest.raises(ProtocolError, match=f"limit {JSON_MAX}"):
        d.recv_json("j")


def test_error_frames_raise_peer_error_with_printable_text():
    a, b = memory_pair(timeout=2)
    a.send_error("giving up\x1b[31m\nfake log line")
    with pytest.raises(PeerError) as e:
        b.recv("anything")
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert "peer gave up: giving up" in str(e.value)
    a.send_error("x" * (3 * ERROR_MAX))  # long text arrives cut short
    with pytest.raises(PeerError, match="peer gave up: x+"):
        b.recv_json("j")


def test_close_is_seen_by_the_peer_after_what_was_sent():
    a, b = memory_pair(timeout=2)
    a.send(b"last words", "w")
    a.close()
    a.close()  # idempotent
    assert b.recv("w") == b"last words"
    for _ in range(2):  # every later receive, not just the first
        with pytest.raises(ConnectionClosed, match="peer closed the connection"):
            b.recv("w")
    with pytest.raises(ConnectionClosed, match="peer closed the connection"):
        b.send(b"anyone?", "w")
    with pytest.raises(ConnectionClosed, match="already closed"):
        a.send(b"x", "w")
    with pytest.raises(ConnectionClosed, match="already closed"):
        a.recv("w")
    a.send_error("ignored")  # best effort: never raises


def test_close_mid_frame_names_what_was_missing():
    a, b = memory_pair(timeout=2)
    a._write([HEADER.pack(b"SN", 2, 0, 1, 100) + b"x", b"only ten b"], "x")
    a.close()
    with pytest.raises(ConnectionClosed, match="after 10 of 100 bytes"):
        b.recv("x")


def test_context_manager_closes():
    a, b = memory_pair(timeout=2)
    with a as same:
        assert same is a
    assert a.closed
    with pytest.raises(ConnectionClosed):
        b.recv("x")


def test_silence_times_out():
    a, b = memory_pair(timeout=0.2)
    t = time.perf_counter()
    with pytest.raises(TransportTimeout, match="no data from the peer in time"):
        b.recv("x")
    assert time.perf_counter() - t < 2


def test_closing_wakes_a_waiting_reader():
    a, b = memory_pair(timeout=10)
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(b.recv, "x")
        time.sleep(0.1)
        a.close()
        with pytest.raises(ConnectionClosed):
            fut.result(5)


def test_large_arrays_cross_intact():
    a, b = memory_pair(timeout=5)
    x = np.random.default_rng(1).integers(0, 2**63, size=(128, 1 << 12), dtype=np.uint64)
    a.send_array(x, "big")
    x[0, 0] ^= np.uint64(1)  # the sender reusing its buffer does not change what was sent
    y = b.recv_array("big", max_bytes=array_bytes(x.shape, x.dtype))
    x[0, 0] ^= np.uint64(1)
    np.testing.assert_array_equal(x, y)


def test_the_channel_sits_below_crypto():
    """safenet.channel imports nothing else of safenet; OT (crypto) needs only the channel."""
    code = (
        "import sys, safenet.channel; a = sorted(sys.modules); import safenet.crypto.ot; "
        "print(' '.join(m for m in a if m.startswith('safenet'))); "
        "print(' '.join(m for m in sys.modules if m.startswith('safenet')))"
    )
    src = str(Path(safenet.__file__).parents[1])  # the safenet this test imported
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
        env=env,
    ).stdout.splitlines()  # fmt: skip
    channel, ot = out[0].split(), out[1].split()
    assert all(m == "safenet" or m.startswith("safenet.channel") for m in channel), channel
    assert not [m for m in ot if m.startswith(("safenet.protocol", "safenet.plan"))], ot

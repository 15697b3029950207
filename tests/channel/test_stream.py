"""Framed transport: round trips, counters, and every way a peer can misbehave."""

import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers import ARRAYS, exchange
from safenet.channel import (
    HEADER,
    KIND_ERROR,
    MAGIC,
    VERSION,
    Connection,
    ConnectionClosed,
    PeerError,
    ProtocolError,
    TransportTimeout,
    connection_pair,
)


def _raw_pair(timeout=2.0, max_message=1 << 20):
    a, b = socket.socketpair()
    return a, Connection(b, timeout=timeout, max_message=max_message)


def test_round_trips_and_counters():
    a, b = connection_pair(timeout=5)
    got = exchange(a, b)
    for x, y in zip(ARRAYS, got, strict=False):
        assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)
    assert got[len(ARRAYS) :] == [b"hello!", {"got": [1, "two"]}]
    s = a.stats.as_dict()
    assert s["offline"]["x"]["messages_sent"] == len(ARRAYS)
    assert s["offline"]["echo"]["messages_received"] == len(ARRAYS)
    assert s["rounds"]["offline"] == len(ARRAYS) + 2
    total = a.stats.total("offline")
    assert total.bytes_sent == b.stats.total("offline").bytes_received
    assert total.bytes_received == b.stats.total("offline").bytes_sent


def test_label_mismatch_is_a_protocol_error():
    a, b = connection_pair(timeout=2)
    a.send(b"x", "gc.tables")
    with pytest.raises(ProtocolError, match="expected message 'ot.ext'"):
        b.recv("ot.ext")


def test_peer_closing_mid_frame():
    raw, conn = _raw_pair()
    raw.sendall(HEADER.pack(MAGIC, VERSION, 0, 1, 100) + b"x" + b"only ten b")
    raw.close()
    with pytest.raises(ConnectionClosed, match="after 10 of 100 bytes"):
        conn.recv("x")


def test_peer_closing_before_anything():
    raw, conn = _raw_pair()
    raw.close()
    with pytest.raises(ConnectionClosed):
        conn.recv("x")


def test_bad_magic_and_version():
    raw, conn = _raw_pair()
    raw.sendall(b"XX" + bytes(HEADER.size - 2))
    with pytest.raises(ProtocolError, match="bad magic"):
        conn.recv("x")
    raw, conn = _raw_pair()
    raw.sendall(HEADER.pack(MAGIC, VERSION + 1, 0, 0, 0))
    with pytest.raises(ProtocolError, match="wire version"):
        conn.recv("x")


def test_oversized_frame_is_refused_before_reading_it():
    raw, conn = _raw_pair(max_message=1000)
    raw.sendall(HEADER.pack(MAGIC, VERSION, 0, 1, 1 << 40) + b"x")
    with pytest.raises(ProtocolError, match="limit 1000"):
        conn.recv("x")
    # a receiver that knows the exact size takes it even above max_message, and nothing more
    a, b = connection_pair(max_message=10)
    a.send(bytes(11), "big")
    assert b.recv("big", max_bytes=11) == bytes(11)
    a.send(bytes(12), "big")
    with pytest.raises(ProtocolError, match="limit 11"):
        b.recv("big", max_bytes=11)


def test_json_and_error_frames_have_small_caps():
    """A JSON frame above 64 KiB or an error frame above 4 KiB is refused unread, and error
    text is made printable before anyone logs it (no forged log lines)."""
    raw, conn = _raw_pair()
    raw.sendall(HEADER.pack(MAGIC, VERSION, 0, 1, (64 << 10) + 1) + b"x")
    with pytest.raises(ProtocolError, match="limit 65536"):
        conn.recv_json("x")
    raw, conn = _raw_pair()
    raw.sendall(HEADER.pack(MAGIC, VERSION, KIND_ERROR, 5, 1 << 30) + b"error")
    with pytest.raises(PeerError, match="error frame of 1073741824 bytes"):
        conn.recv("x")
    raw, conn = _raw_pair()
    text = b"bad\n2026-12-05 INFO served 10.0.0.1 \x1b[31m" + b"y" * 1000
    raw.sendall(HEADER.pack(MAGIC, VERSION, KIND_ERROR, 5, len(text)) + b"error" + text)
    with pytest.raises(PeerError) as err:
        conn.recv("x")
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg and "\\n2026" in msg and len(msg) < 400


def test_silence_times_out():
    _raw, conn = _raw_pair(timeout=0.2)
    with pytest.raises(TransportTimeout):
        conn.recv("x")


def test_peer_error_is_reported():
    a, b = connection_pair(timeout=2)
    a.send_error("wrong plan fingerprint")
    with pytest.raises(PeerError, match="wrong plan fingerprint"):
        b.recv("anything")


def _send_array_frame(dtype: bytes, length: int, data: bytes):
    """A v2 array frame (dtype, 1-d shape, pad byte) with label "a" on a fresh raw pair."""
    raw, conn = _raw_pair()
    payload = struct.pack(">B", len(dtype)) + dtype + struct.pack(">BQB", 1, length, 0) + data
    raw.sendall(HEADER.pack(MAGIC, VERSION, 1, 1, len(payload)) + b"a" + payload)
    return conn


def test_malformed_arrays_are_refused():
    with pytest.raises(ProtocolError, match="object arrays"):
        _send_array_frame(b"|O", 1, bytes(8)).recv_array("a")
    with pytest.raises(ProtocolError, match="does not match its size"):
        _send_array_frame(b"<u8", 5, bytes(8)).recv_array("a")
    with pytest.raises(TypeError):
        connection_pair()[0].send_array(np.array([object()]), "o")


def test_closed_connection_raises():
    a, b = connection_pair(timeout=2)
    a.close()
    a.close()
    with pytest.raises(ConnectionClosed):
        a.send(b"x")
    with pytest.raises(ConnectionClosed):
        b.recv("x")


def _both(fa, fb):
    with ThreadPoolExecutor(2) as ex:
        x, y = ex.submit(fa), ex.submit(fb)
        return [f.exception(timeout=5) or f.result(timeout=5) for f in (x, y)]


def test_handshake_agrees_or_names_the_difference():
    from safenet.protocol.handshake import HandshakeError, handshake

    a, b = connection_pair(timeout=3)
    ra, rb = _both(
        lambda: handshake(a, "client", "f" * 64), lambda: handshake(b, "server", "f" * 64)
    )
    assert ra["role"] == "server" and rb["role"] == "client"

    a, b = connection_pair(timeout=3)
    ra, rb = _both(
        lambda: handshake(a, "client", "a" * 64), lambda: handshake(b, "server", "b" * 64)
    )
    assert isinstance(ra, HandshakeError) and "fingerprints differ" in str(ra)
    assert isinstance(rb, HandshakeError)

    a, b = connection_pair(timeout=3)
    ra, rb = _both(lambda: handshake(a, "client", "f"), lambda: handshake(b, "client", "f"))
    assert isinstance(ra, HandshakeError) and "both ends" in str(ra)


def test_listen_accept_connect_over_tcp():
    from safenet.channel import accept, connect, listen

    with listen("127.0.0.1", 0, accept_timeout=5) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        port = listener.getsockname()[1]
        assert port != 0

        def serve():
            conn, address = accept(listener, timeout=5)
            with conn:
                conn.phase = "online"
                conn.send_array(conn.recv_array("x") * 2, "x")
                conn.send_json({"peer": list(address)[:2]}, "j")
                return conn.stats.total("online"), conn.tls_version

        with ThreadPoolExecutor(1) as ex:
            fut = ex.submit(serve)
            with connect("127.0.0.1", port, timeout=5) as c:
                c.phase = "online"
                c.send_array(np.arange(1000, dtype=np.int64).reshape(10, 100), "x")
                assert np.array_equal(c.recv_array("x"), 2 * np.arange(1000).reshape(10, 100))
                peer = c.recv_json("j")["peer"]
                assert peer == ["127.0.0.1", c.sock.getsockname()[1]]
                assert c.tls_version is None and c.peer_certificate is None
            total, tls_version = fut.result(5)
        assert total.bytes_received == c.stats.total("online").bytes_sent > 8000
        assert tls_version is None


def test_accept_and_connect_fail_cleanly():
    from safenet.channel import TransportError, accept, connect, listen

    listener = listen("127.0.0.1", 0, accept_timeout=0.1)
    port = listener.getsockname()[1]
    with pytest.raises(TransportTimeout, match="no client connected"):
        accept(listener)
    listener.close()
    with pytest.raises(TransportError, match="accept failed"):
        accept(listener)
    with pytest.raises(ConnectionClosed, match="cannot connect"):
        connect("127.0.0.1", port, timeout=2)  # nobody listens there any more


def test_a_tls_record_is_named_as_such():
    raw, conn = _raw_pair()
    raw.sendall(b"\x16\x03\x01" + bytes(HEADER.size))
    with pytest.raises(ProtocolError, match="seems to speak TLS"):
        conn.recv("x")

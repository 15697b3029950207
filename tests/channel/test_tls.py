"""TLS over real TCP on 127.0.0.1: trust, mutual TLS, and peers that are wrong or silent.

Every wait is bounded (accept 5 s, handshake 5 s or less, futures 5 s): no test can hang.
"""

import hashlib
import socket
import ssl
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from cryptography import x509

from safenet.channel import (
    HEADER,
    MAGIC,
    VERSION,
    ConnectionClosed,
    ProtocolError,
    TLSConfig,
    TLSError,
    TransportError,
    TransportTimeout,
    accept,
    connect,
    listen,
    make_ca,
    make_certificate,
    make_self_signed,
)
from safenet.protocol.handshake import handshake

WAIT = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    server = make_self_signed(d / "server")
    ca = make_ca(d / "ca")
    return {
        "server": server,
        "ca": ca,
        "alice": make_certificate(d / "ca", ca, "alice"),
        "stranger": make_self_signed(d / "stranger"),  # an unrelated self-signed issuer
    }


@pytest.fixture
def listener():
    sock = listen("127.0.0.1", 0, accept_timeout=WAIT)
    yield sock
    sock.close()


def _port(listener):
    return listener.getsockname()[1]


def _serve(listener, handler, **kwargs) -> Future:
    """Accept one client in a thread and run ``handler(conn)`` on it; the future holds its
    result or the exception accept/handler raised."""

    def run():
        conn, _ = accept(listener, timeout=WAIT, handshake_timeout=WAIT, **kwargs)
        with conn:
            return handler(conn)

    ex = ThreadPoolExecutor(1)
    fut = ex.submit(run)
    ex.shutdown(wait=False)
    return fut


def _server_tls(pki, **kwargs):
    cert, key = pki["server"]
    return TLSConfig(cert, key, **kwargs)


def _echo(conn):
    conn.send_array(conn.recv_array("x"), "x")
    conn.send_json({"echo": conn.recv_json("j")}, "j")
    return conn.peer_common_name


def test_tls_round_trip_with_a_self_signed_server(listener, pki):
    fut = _serve(listener, _echo, tls=_server_tls(pki))
    with connect("127.0.0.1", _port(listener), WAIT, TLSConfig(cafile=pki["server"][0])) as c:
        assert c.tls_version in ("TLSv1.2", "TLSv1.3")
        assert c.peer_common_name == "localhost"
        der = ssl.PEM_cert_to_DER_cert(pki["server"][0].read_text())
        assert c.peer_fingerprint == hashlib.sha256(der).hexdigest()
        big = np.random.default_rng(1).integers(0, 1 << 62, size=(3, 200_000), dtype=np.uint64)
        c.send_array(big, "x")  # 4.8 MB: many TLS records each way
        assert np.array_equal(c.recv_array("x"), big)
        c.send_json({"a": [1, 2]}, "j")
        assert c.recv_json("j") == {"echo": {"a": [1, 2]}}
    assert fut.result(WAIT) is None  # no client certificate asked for


def test_mutual_tls_identifies_the_client_and_rejects_one_without_certificate(listener, pki):
    server = _server_tls(pki, cafile=pki["ca"][0], require_client_cert=True)
    cafile = pki["server"][0]
    fut = _serve(listener, _echo, tls=server)
    cert, key = pki["alice"]
    with connect("127.0.0.1", _port(listener), WAIT, TLSConfig(cert, key, cafile=cafile)) as c:
        c.send_array(np.arange(3), "x")
        c.send_json(1, "j")
        c.recv_array("x")
        assert c.recv_json("j") == {"echo": 1}
    assert fut.result(WAIT) == "alice"

    fut = _serve(listener, _echo, tls=server)
    # TLS 1.3: the client's handshake completes; the refusal arrives as an alert.
    with (
        connect("127.0.0.1", _port(listener), WAIT, TLSConfig(cafile=cafile)) as c,
        pytest.raises(TLSError, match="requires a client certificate"),
    ):
        c.recv_json("hello")
    err = fut.exception(WAIT)
    assert isinstance(err, TLSError) and "sent no certificate" in str(err)


def test_a_client_trusting_another_issuer_fails_cleanly(listener, pki):
    fut = _serve(listener, _echo, tls=_server_tls(pki))
    with pytest.raises(TLSError, match="certificate verification failed"):
        connect("127.0.0.1", _port(listener), WAIT, TLSConfig(cafile=pki["stranger"][0]))
    assert isinstance(fut.exception(WAIT), TLSError)

    fut = _serve(listener, _echo, tls=_server_tls(pki))
    wrong_name = TLSConfig(cafile=pki["server"][0], server_hostname="other.example")
    with pytest.raises(TLSError, match="Hostname mismatch"):
        connect("127.0.0.1", _port(listener), WAIT, wrong_name)
    assert isinstance(fut.exception(WAIT), TLSError)

    fut = _serve(listener, _echo, tls=_server_tls(pki))
    with pytest.raises(TLSError, match="certificate verification failed"):
        connect("127.0.0.1", _port(listener), WAIT, TLSConfig())  # system store: not ours
    assert isinstance(fut.exception(WAIT), TLSError)


def test_plain_client_fails_and_the_server_accepts_the_next_one(listener, pki):
    fut = _serve(listener, _echo, tls=_server_tls(pki))
    with connect("127.0.0.1", _port(listener), WAIT) as c:
        c.send_array(np.arange(4), "x")
        with pytest.raises(TransportError):  # reset, closed, or an alert that is no frame
            c.recv_array("x")
    err = fut.exception(WAIT)
    assert isinstance(err, TLSError) and "does not speak TLS" in str(err)

    fut = _serve(listener, lambda conn: conn.send_json("next", "j"), tls=_server_tls(pki))
    with connect("127.0.0.1", _port(listener), WAIT, TLSConfig(cafile=pki["server"][0])) as c:
        assert c.recv_json("j") == "next"
    assert fut.exception(WAIT) is None


def test_garbage_or_silence_before_the_handshake(listener, pki):
    fut = _serve(listener, _echo, tls=_server_tls(pki))
    with socket.create_connection(("127.0.0.1", _port(listener)), timeout=WAIT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
        err = fut.exception(WAIT)
    assert isinstance(err, TLSError) and "does not speak TLS" in str(err)

    def serve_briefly():
        return accept(listener, tls=_server_tls(pki), handshake_timeout=0.3)

    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(serve_briefly)
        with socket.create_connection(("127.0.0.1", _port(listener)), timeout=WAIT) as raw:
            raw.sendall(b"\x16\x03")  # a TLS record header that never continues
            t0 = time.monotonic()
            err = fut.exception(WAIT)
            assert time.monotonic() - t0 < 2
    assert isinstance(err, TLSError) and "timed out" in str(err)


def test_tls_client_against_a_plain_server(listener, pki):
    fut = _serve(listener, lambda conn: conn.recv("x"))
    with pytest.raises(TLSError, match="connection was closed"):
        connect("127.0.0.1", _port(listener), WAIT, TLSConfig(cafile=pki["server"][0]))
    err = fut.exception(WAIT)
    assert isinstance(err, ProtocolError) and "speak TLS" in str(err)


def test_tls_peer_closing_mid_frame_or_going_silent(listener, pki):
    def truncate(conn):
        conn.sock.sendall(HEADER.pack(MAGIC, VERSION, 0, 1, 100) + b"x" + b"only ten b")

    fut = _serve(listener, truncate, tls=_server_tls(pki))
    trust = TLSConfig(cafile=pki["server"][0])
    with (
        connect("127.0.0.1", _port(listener), WAIT, trust) as c,
        pytest.raises(ConnectionClosed, match="after 10 of 100 bytes"),
    ):
        c.recv("x")
    assert fut.exception(WAIT) is None

    fut = _serve(listener, lambda conn: conn.recv("never"), tls=_server_tls(pki))
    with (
        connect("127.0.0.1", _port(listener), 0.2, trust) as c,
        pytest.raises(TransportTimeout),
    ):
        c.recv("x")
    assert isinstance(fut.exception(WAIT), ConnectionClosed)  # our close reached the server


def test_handshake_over_tls(listener, pki):
    fut = _serve(listener, lambda conn: handshake(conn, "server", "f" * 64), tls=_server_tls(pki))
    with connect("127.0.0.1", _port(listener), WAIT, TLSConfig(cafile=pki["server"][0])) as c:
        assert handshake(c, "client", "f" * 64)["role"] == "server"
    assert fut.result(WAIT)["role"] == "client"


def test_insecure_client_encrypts_without_verifying(listener, pki):
    fut = _serve(listener, lambda conn: conn.send(b"hi", "x"), tls=_server_tls(pki))
    with connect("127.0.0.1", _port(listener), WAIT, TLSConfig(insecure=True)) as c:
        assert c.recv("x") == b"hi"
        assert c.peer_certificate is None and c.peer_common_name is None
        assert c.peer_fingerprint is not None  # still there for pinning
    fut.result(WAIT)


def test_config_errors(tmp_path, pki):
    with pytest.raises(ValueError, match="needs certfile"):
        TLSConfig().server_context()
    with pytest.raises(ValueError, match="needs cafile"):
        _server_tls(pki, require_client_cert=True).server_context()
    with pytest.raises(ValueError, match="keyfile given without certfile"):
        TLSConfig(keyfile=pki["server"][1])
    with pytest.raises(TLSError, match="cannot load"):  # key of another certificate
        TLSConfig(pki["server"][0], pki["stranger"][1]).server_context()
    with pytest.raises(TLSError, match="cannot load"):
        TLSConfig(cafile=tmp_path / "missing.pem").client_context()
    ctx = TLSConfig(cafile=pki["server"][0]).client_context()
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_generated_certificates(pki):
    cert, key = pki["server"]
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert (c.not_valid_after_utc - c.not_valid_before_utc).days <= 8
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(pki["ca"][0].read_bytes())
    alice = x509.load_pem_x509_certificate(pki["alice"][0].read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert alice.issuer == ca.subject
    alice.verify_directly_issued_by(ca)

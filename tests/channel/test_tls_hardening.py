"""TLS fails closed (CLI flags and TLSConfig) and issues no session tickets, TLS 1.2 included."""

import socket
import ssl
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import safenet.secure
from safenet.channel import TLSConfig, make_ca, make_self_signed
from safenet.cli import _tls, build_parser, main

WAIT = 5.0
C, K, CA = "srv.crt", "srv.key", "ca.crt"  # _tls only checks which flags are given


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return {"server": make_self_signed(d / "server"), "ca": make_ca(d / "ca")}


# ---- TLSConfig --------------------------------------------------------------------------
def test_require_client_cert_cannot_be_configured_away(pki):
    cert, key = pki["server"]
    with pytest.raises(ValueError, match="require_client_cert needs cafile"):
        TLSConfig(cert, key, require_client_cert=True)
    with pytest.raises(ValueError, match="require_client_cert .* needs certfile"):
        TLSConfig(cafile=pki["ca"][0], require_client_cert=True)
    ctx = TLSConfig(cert, key, cafile=pki["ca"][0], require_client_cert=True).server_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_contexts_refuse_session_tickets(pki):
    server = TLSConfig(*pki["server"]).server_context()
    client = TLSConfig(cafile=pki["server"][0]).client_context()
    assert server.options & ssl.OP_NO_TICKET and client.options & ssl.OP_NO_TICKET
    assert server.num_tickets == 0


def _client12(certfile) -> ssl.SSLContext:
    """A client context capped at TLS 1.2 that asks for tickets (the server must say no)."""
    client = TLSConfig(cafile=certfile).client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.options &= ~ssl.OP_NO_TICKET
    return client


def _tls12(server: ssl.SSLContext, client: ssl.SSLContext, session=None):
    """Handshake over a socketpair (offering ``session``); the client's session, resumed?"""
    a, b = socket.socketpair()
    a.settimeout(WAIT)
    b.settimeout(WAIT)
    errors = []

    def serve():
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.recv(1)  # wait until the client is done
        except (OSError, ssl.SSLError) as e:
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b, server_hostname="localhost", session=session) as s:
        assert s.version() == "TLSv1.2"
        session, reused = s.session, s.session_reused
        s.sendall(b"x")
    t.join(WAIT)
    assert not errors
    return session, reused


def test_tls12_handshake_gets_no_ticket_and_no_resumption(pki):
    cert, key = pki["server"]
    server, client = TLSConfig(cert, key).server_context(), _client12(cert)
    session, _ = _tls12(server, client)
    assert session.has_ticket is False
    assert _tls12(server, client, session)[1] is False  # nor a session-id resumption
    server.options &= ~ssl.OP_NO_TICKET  # control: without the option, TLS 1.2 sends one
    session, _ = _tls12(server, client)
    assert session.has_ticket is True
    assert _tls12(server, client, session)[1] is True  # ... and the control resumes


# ---- CLI --------------------------------------------------------------------------------
def _args(server: bool, flags: list[str]):
    cmd = ["serve"] if server else ["infer", "--server", "127.0.0.1:1"]
    return build_parser().parse_args(cmd + flags)


@pytest.mark.parametrize(
    "server, flags, message",
    [
        (True, ["--require-client-cert"], "--require-client-cert needs --tls-cert and --tls-ca"),
        (True, ["--require-client-cert", "--tls-cert", C], "--require-client-cert needs"),
        (True, ["--require-client-cert", "--tls-ca", CA], "--require-client-cert needs"),
        (True, ["--require-client-cert", "--tls-key", K], "--require-client-cert needs"),
        (True, ["--tls-key", K], "--tls-key needs --tls-cert"),
        (True, ["--tls-key", K, "--tls-ca", CA], "--tls-key needs --tls-cert"),
        (True, ["--tls-ca", CA], "--tls-ca needs --tls-cert on the server"),
        (False, ["--tls-key", K], "--tls-key needs --tls-cert"),
        (False, ["--tls-key", K, "--tls-ca", CA], "--tls-key needs --tls-cert"),
    ],
)
def test_incomplete_tls_flags_are_errors(server, flags, message):
    with pytest.raises(ValueError, match=message):
        _tls(_args(server, flags), server=server)


@pytest.mark.parametrize(
    "server, flags, expected",
    [
        (True, [], None),
        (True, ["--tls-cert", C], (C, None, None, False)),
        (True, ["--tls-cert", C, "--tls-key", K], (C, K, None, False)),
        (True, ["--tls-cert", C, "--tls-ca", CA], (C, None, CA, False)),
        (True, ["--tls-cert", C, "--tls-key", K, "--tls-ca", CA, "--require-client-cert"],
         (C, K, CA, True)),
        (False, [], None),
        (False, ["--tls-ca", CA], (None, None, CA, False)),
        (False, ["--tls-cert", C], (C, None, None, False)),  # server checked on system store
        (False, ["--tls-cert", C, "--tls-key", K, "--tls-ca", CA], (C, K, CA, False)),
    ],
)  # fmt: skip
def test_complete_tls_flags_build_the_config(server, flags, expected):
    cfg = _tls(_args(server, flags), server=server)
    if expected is None:
        assert cfg is None
        return
    got = (cfg.certfile, cfg.keyfile, cfg.cafile, cfg.require_client_cert)
    assert tuple(None if v is None else str(v) for v in got[:3]) + got[3:] == expected


def test_client_has_no_require_client_cert_flag():
    with pytest.raises(SystemExit):
        _args(False, ["--require-client-cert"])


def _never(*_a, **_k):
    raise AssertionError("reached the network in the clear")


def test_serve_with_incomplete_mutual_tls_exits_before_serving(monkeypatch, capsys):
    plan = SimpleNamespace(counts=lambda: {"relu_count": 0, "poly_count": 0})
    monkeypatch.setattr("safenet.cli._plan_for", lambda _name: plan)
    monkeypatch.setattr(safenet.secure, "serve", _never)
    assert main(["serve", "--require-client-cert", "--tls-cert", C]) == 2
    err = capsys.readouterr().err
    assert "safenet: error: --require-client-cert needs --tls-cert and --tls-ca" in err


def test_infer_with_key_but_no_cert_exits_before_connecting(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(safenet.secure, "infer", _never)
    monkeypatch.setattr(safenet.secure, "preprocess", _never)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 28, 28)))
    base = ["infer", "--server", "127.0.0.1:9", "--tls-key", K]
    assert main([*base, "--input", str(x)]) == 2
    assert main([*base, "--preprocess", "1", "--bank", str(tmp_path / "bank"), "--json"]) == 2
    assert capsys.readouterr().err.count("--tls-key needs --tls-cert") == 2

"""Frames over TCP (or any stream socket), optionally under TLS: :class:`Connection`, and
how two peers meet (:func:`listen` / :func:`accept` / :func:`wrap_accepted` on one side,
:func:`connect` on the other; :func:`connection_pair` for two ends in one process).

A peer that closes mid-frame raises :class:`~safenet.channel.base.ConnectionClosed`; silence
beyond ``timeout`` raises :class:`~safenet.channel.base.TransportTimeout`. Nothing here ever
waits forever. :func:`accept` and :func:`connect` take an optional
:class:`~safenet.channel.tls.TLSConfig`: the TLS handshake then runs under its own short
deadline (a silent or non-TLS peer costs the server at most ``handshake_timeout``) and any
TLS failure is a :class:`~safenet.channel.base.TLSError`. Framing, counters and errors are
the same over TLS; counters count frame bytes, not TLS record overhead.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
from typing import TYPE_CHECKING, Any

import numpy as np

from safenet.channel.base import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_TIMEOUT,
    ConnectionClosed,
    TLSError,
    TransportError,
    TransportTimeout,
)
from safenet.channel.framed import FramedChannel
from safenet.channel.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    TLS_CLOSED,
    TLSConfig,
    describe_tls_error,
    tls_handshake,
)

if TYPE_CHECKING:
    from safenet.channel.base import Channel


class Connection(FramedChannel):
    """One end of a framed, counted, time-limited byte stream over a socket.

    ``phase`` (e.g. ``"offline"`` / ``"online"``) is attached to every counter; set it as
    the protocol moves on. A *round* is counted each time this end starts sending after
    having received (or at its very first send).

    ``sock`` may be an ``ssl.SSLSocket`` whose handshake is done; then ``tls_version`` is
    set, ``peer_certificate`` holds the peer's *verified* certificate (``getpeercert()``
    form; None if it sent none or it was not checked), ``peer_common_name`` its subject CN
    (what later authentication keys on) and ``peer_fingerprint`` the SHA-256 of its DER
    encoding (even unverified, for pinning). Use a Connection from one thread at a time:
    an SSL socket cannot read and write concurrently.
    """

    def __init__(
        self,
        sock: socket.socket,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        super().__init__(max_message)
        self.sock = sock
        self.sock.settimeout(timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls_version: str | None = None
        self.peer_certificate: dict[str, Any] | None = None
        self.peer_common_name: str | None = None
        self.peer_fingerprint: str | None = None
        if isinstance(sock, ssl.SSLSocket):
            self._read_peer_certificate(sock)

    def _read_peer_certificate(self, sock: ssl.SSLSocket) -> None:
        self.tls_version = sock.version()  # None while the handshake is not done
        if self.tls_version is None:
            return
        der = sock.getpeercert(binary_form=True)
        if der:
            self.peer_fingerprint = hashlib.sha256(der).hexdigest()
        self.peer_certificate = sock.getpeercert() or None  # {} when not verified
        subject: Any = (self.peer_certificate or {}).get("subject", ())
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    self.peer_common_name = value

    def _write(self, chunks: list[bytes | memoryview], label: str) -> None:
        try:
            for chunk in chunks:
                self.sock.sendall(chunk)
        except TimeoutError as e:
            raise TransportTimeout(f"{label}: send timed out") from e
        except (BrokenPipeError, ConnectionResetError, *TLS_CLOSED) as e:
            raise ConnectionClosed(f"{label}: peer closed the connection") from e
        except ssl.SSLError as e:
            raise TLSError(f"{label}: {describe_tls_error(e)}") from e

    def _read_exact(self, n: int, what: str) -> np.ndarray:
        """Exactly n bytes (uint8 array: not zero-filled first, large payloads are not copied)."""
        buf = np.empty(n, dtype=np.uint8)
        view = buf.data
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], min(n - got, 1 << 24))
            except TimeoutError as e:
                raise TransportTimeout(f"{what}: no data from the peer in time") from e
            except ConnectionResetError as e:
                raise ConnectionClosed(f"{what}: connection reset by the peer") from e
            except TLS_CLOSED:
                k = 0  # TLS's own way of saying "closed" (ragged EOFs already read as 0)
            except ssl.SSLError as e:
                raise TLSError(f"{what}: {describe_tls_error(e)}") from e
            if k == 0:
                raise ConnectionClosed(
                    f"{what}: peer closed the connection"
                    + (f" after {got} of {n} bytes" if got else "")
                )
            got += k
        return buf

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connection_pair(
    timeout: float | None = DEFAULT_TIMEOUT, max_message: int = DEFAULT_MAX_MESSAGE
) -> tuple[Connection, Connection]:
    """Two connected Connections over a real ``socket.socketpair()`` (tests, local runs)."""
    a, b = socket.socketpair()
    return Connection(a, timeout, max_message), Connection(b, timeout, max_message)


def listen(
    host: str, port: int, backlog: int = 16, *, accept_timeout: float | None = None
) -> socket.socket:
    """A listening TCP socket for :func:`accept`.

    ``SO_REUSEADDR`` is set (where it is safe) so a restarted server rebinds at once.
    ``port=0`` takes a free port: read it from ``listener.getsockname()[1]``.
    ``accept_timeout`` bounds each wait for a client (None: wait as long as it takes).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as e:
        raise TransportError(f"cannot listen on {host}:{port}: {e}") from e
    listener.settimeout(accept_timeout)
    return listener


def accept(
    listener: socket.socket,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_message: int = DEFAULT_MAX_MESSAGE,
    tls: TLSConfig | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
) -> tuple[Connection, tuple[Any, ...]]:
    """Wait for the next client; return its Connection and address.

    With ``tls`` the TLS handshake must finish within ``handshake_timeout`` seconds in
    all, so a silent, slow or non-TLS client cannot stall the server: it gets
    :class:`TLSError` for that client and can go on accepting. No client within the
    listener's ``accept_timeout`` raises :class:`TransportTimeout`.
    """
    if tls is not None:
        tls.server_context()  # a bad configuration fails before any client waits
    try:
        sock, address = listener.accept()
    except TimeoutError as e:
        raise TransportTimeout(f"no client connected within {listener.gettimeout()} s") from e
    except OSError as e:  # e.g. the listener was closed to stop the server
        raise TransportError(f"accept failed: {e}") from e
    conn = wrap_accepted(
        sock, address, timeout=timeout, max_message=max_message, tls=tls,
        handshake_timeout=handshake_timeout,
    )  # fmt: skip
    return conn, address


def wrap_accepted(
    sock: socket.socket,
    address: tuple[Any, ...],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_message: int = DEFAULT_MAX_MESSAGE,
    tls: TLSConfig | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Connection:
    """A Connection over a socket from ``listener.accept()``, TLS handshake included.

    Split from :func:`accept` so a concurrent server can hand the raw socket to a worker
    process and let the worker pay for the (time-limited) TLS handshake.
    """
    if tls is not None:
        sock = tls_handshake(
            tls.server_context(),
            sock,
            server_side=True,
            server_hostname=None,
            timeout=handshake_timeout,
            peer=f"client {address[0]}:{address[1]}",
        )
    return Connection(sock, timeout, max_message)


def connect(
    host: str,
    port: int,
    timeout: float | None = DEFAULT_TIMEOUT,
    tls: TLSConfig | None = None,
    max_message: int = DEFAULT_MAX_MESSAGE,
    *,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Connection:
    """Open a TCP connection to a listening peer, over TLS if ``tls`` is given.

    The server certificate is checked against ``tls.server_hostname`` or else ``host``.
    In TLS 1.3 a server's refusal of our client certificate arrives after the handshake,
    so it surfaces as :class:`TLSError` on the first receive rather than here.
    """
    context = tls.client_context() if tls is not None else None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise ConnectionClosed(f"cannot connect to {host}:{port}: {e}") from e
    if context is not None:
        assert tls is not None
        sock = tls_handshake(
            context,
            sock,
            server_side=False,
            server_hostname=tls.server_hostname or host,
            timeout=handshake_timeout,
            peer=f"server {host}:{port}",
        )
    return Connection(sock, timeout, max_message)


if TYPE_CHECKING:

    def _is_a_channel(conn: Connection) -> Channel:  # mypy: Connection satisfies Channel
        return conn

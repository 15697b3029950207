"""Framed messages over TCP (or any stream socket), with byte/message/round counters.

Every message is one frame:

    magic b"SN" | version u8 | kind u8 | label length u8 | payload length u64 | label | payload

``label`` names the primitive that sent it (``"ot.base"``, ``"gc.tables"``...): the receiver
checks it, so two parties that disagree on the protocol's step fail at once with a clear
:class:`ProtocolError` instead of misreading bytes, and counters are kept per phase and label.
A frame is refused before anything is allocated when it is larger than the receiver allows:
the exact size where the receiver knows it (``max_bytes`` of :meth:`Connection.recv` and
friends: ciphertexts, keys, arrays of known shape), 64 KiB for JSON, 4 KiB for an error
frame, ``max_message`` (256 MiB by default) otherwise. Text from a peer (error frames) is
made printable and cut short (:func:`printable`) before anyone logs or echoes it. A peer that
closes mid-frame raises :class:`ConnectionClosed`; silence beyond ``timeout`` raises
:class:`TransportTimeout`. Nothing here ever waits forever.

Peers meet with :func:`listen` / :func:`accept` on one side and :func:`connect` on the other.
Both take an optional :class:`~safenet.protocol.tls.TLSConfig`: the TLS handshake then runs
under its own short deadline (a silent or non-TLS peer costs the server at most
``handshake_timeout``) and any TLS failure is a :class:`TLSError`. Framing, counters and
errors are the same over TLS; counters count frame bytes, not TLS record overhead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import socket
import ssl
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from safenet.protocol.tls import TLSConfig

MAGIC = b"SN"
VERSION = 2  # 2: array frames pad their header so the data arrives 16-byte aligned
ALIGN = 16
HEADER = struct.Struct(">2sBBBQ")
KIND_BYTES, KIND_ARRAY, KIND_ERROR = 0, 1, 2
#: largest frame of a size the receiver cannot predict (e.g. a public plan)
DEFAULT_MAX_MESSAGE = 256 << 20
#: largest JSON frame (requests, hellos, counts)
JSON_MAX = 64 << 10
#: largest error frame (text)
ERROR_MAX = 4096
#: largest frame this end will send (a receiver checks its own, smaller limits)
SEND_MAX = 1 << 40
DEFAULT_TIMEOUT = 120.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


class TransportError(RuntimeError):
    """Base class of everything that can go wrong on the wire."""


class ConnectionClosed(TransportError):
    """The peer closed the connection (possibly in the middle of a message)."""


class TransportTimeout(TransportError):
    """The peer sent nothing for longer than the timeout."""


class ProtocolError(TransportError):
    """The peer sent something that is not the expected frame."""


class PeerError(TransportError):
    """The peer reported an error and gave up."""


class TLSError(TransportError):
    """TLS failed: handshake refused, timed out or not TLS at all, certificate rejected,
    corrupted record, or unusable certificate/key files."""


_TLS_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
# OpenSSL reasons worth translating: what they usually mean for safenet's two parties.
_TLS_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate's issuer",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer rejected our certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer refused the handshake (a client certificate?)",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS",
    "HTTP_REQUEST": "the peer does not speak TLS",
    "RECORD_LAYER_FAILURE": "the peer does not speak TLS",
    "PACKET_LENGTH_TOO_LONG": "the peer does not speak TLS",
    "UNEXPECTED_MESSAGE": "the peer does not speak TLS",
}


def _describe_tls(e: ssl.SSLError) -> str:
    """A short human reason for an ``ssl.SSLError`` (no OpenSSL source locations)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {e.verify_message}"
    if isinstance(e, _TLS_CLOSED):
        return "the peer closed the connection"
    reason = getattr(e, "reason", None)
    if not reason:
        return str(e)
    hint = _TLS_HINTS.get(reason)
    return f"{hint} ({reason})" if hint else reason.lower().replace("_", " ")


@dataclass
class Counter:
    """Bytes and messages in each direction for one (phase, label)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0


@dataclass
class Stats:
    """Traffic per phase and label, and the number of rounds (direction changes)."""

    counters: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    rounds: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def total(self, phase: str | None = None) -> Counter:
        """Sum over labels (of one phase, or of all)."""
        out = Counter()
        for (ph, _), c in self.counters.items():
            if phase is None or ph == phase:
                out.bytes_sent += c.bytes_sent
                out.bytes_received += c.bytes_received
                out.messages_sent += c.messages_sent
                out.messages_received += c.messages_received
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: {phase: {label: counters}, "rounds": {phase: n}}."""
        out: dict[str, Any] = {}
        for (ph, label), c in sorted(self.counters.items()):
            out.setdefault(ph, {})[label] = c.__dict__.copy()
        out["rounds"] = dict(self.rounds)
        return out


class Connection:
    """One end of a framed, counted, time-limited byte stream.

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
        self.sock = sock
        self.sock.settimeout(timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.max_message = max_message
        self.phase = "setup"
        self.stats = Stats()
        self._last = "recv"
        self.closed = False
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
        for rdn in (self.peer_certificate or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    self.peer_common_name = value

    # ---- sending --------------------------------------------------------------------------
    def _send_frame(self, kind: int, label: str, parts: list[bytes | memoryview]) -> None:
        if self.closed:
            raise ConnectionClosed("connection already closed")
        lab = label.encode()
        if len(lab) > 255:
            raise ValueError("label longer than 255 bytes")
        length = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        if length > SEND_MAX:
            raise ProtocolError(f"{label}: message of {length} bytes exceeds {SEND_MAX}")
        if self._last == "recv":
            self.stats.rounds[self.phase] += 1
            self._last = "send"
        try:
            self.sock.sendall(HEADER.pack(MAGIC, VERSION, kind, len(lab), length) + lab)
            for p in parts:
                self.sock.sendall(p)
        except TimeoutError as e:
            raise TransportTimeout(f"{label}: send timed out") from e
        except (BrokenPipeError, ConnectionResetError, *_TLS_CLOSED) as e:
            raise ConnectionClosed(f"{label}: peer closed the connection") from e
        except ssl.SSLError as e:
            raise TLSError(f"{label}: {_describe_tls(e)}") from e
        c = self.stats.counters[(self.phase, label)]
        c.bytes_sent += HEADER.size + len(lab) + length
        c.messages_sent += 1

    def send(self, data: bytes, label: str = "data") -> None:
        """Send one message of raw bytes."""
        self._send_frame(KIND_BYTES, label, [bytes(data)])

    def send_json(self, obj: Any, label: str = "json") -> None:
        """Send a JSON-serialisable object."""
        self.send(json.dumps(obj).encode(), label)

    def send_array(self, array: np.ndarray, label: str = "array") -> None:
        """Send a numpy array (dtype and shape travel with it; no pickling)."""
        a = np.require(array, requirements="C")  # unlike ascontiguousarray, keeps 0-d shapes
        if a.dtype.hasobject:
            raise TypeError("object arrays cannot be sent")
        dt = a.dtype.str.encode()
        meta = struct.pack(">B", len(dt)) + dt + struct.pack(f">B{a.ndim}Q", a.ndim, *a.shape)
        pad = -(len(meta) + 1) % ALIGN  # the data starts aligned in the receiver's buffer
        meta += struct.pack(">B", pad) + bytes(pad)
        self._send_frame(KIND_ARRAY, label, [meta, memoryview(a.reshape(-1).view(np.uint8))])

    def send_error(self, message: str) -> None:
        """Tell the peer we are giving up (best effort), so it fails fast and clearly."""
        with contextlib.suppress(TransportError, OSError):
            self._send_frame(KIND_ERROR, "error", [printable(message).encode()[:ERROR_MAX]])

    # ---- receiving ------------------------------------------------------------------------
    def _read_exact(self, n: int, what: str) -> np.ndarray:
        """Exactly n bytes (uint8 array: not zero-filled first, large payloads are not copied)."""
        buf = np.empty(n, dtype=np.uint8)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], min(n - got, 1 << 24))
            except TimeoutError as e:
                raise TransportTimeout(f"{what}: no data from the peer in time") from e
            except ConnectionResetError as e:
                raise ConnectionClosed(f"{what}: connection reset by the peer") from e
            except _TLS_CLOSED:
                k = 0  # TLS's own way of saying "closed" (ragged EOFs already read as 0)
            except ssl.SSLError as e:
                raise TLSError(f"{what}: {_describe_tls(e)}") from e
            if k == 0:
                raise ConnectionClosed(
                    f"{what}: peer closed the connection"
                    + (f" after {got} of {n} bytes" if got else "")
                )
            got += k
        return buf

    def _recv_frame(self, label: str, max_bytes: int | None = None) -> tuple[int, np.ndarray]:
        if self.closed:
            raise ConnectionClosed("connection already closed")
        self._last = "recv"
        magic, version, kind, lab_len, length = HEADER.unpack(
            self._read_exact(HEADER.size, f"{label} header")
        )
        if magic != MAGIC:
            hint = ""
            if magic[0] in (0x15, 0x16) and magic[1] == 3:  # TLS alert / handshake record
                hint = "; the peer seems to speak TLS (pass tls=TLSConfig(...))"
            raise ProtocolError(f"{label}: not a safenet frame (bad magic {bytes(magic)!r}){hint}")
        if version != VERSION:
            raise ProtocolError(f"{label}: peer speaks wire version {version}, we speak {VERSION}")
        got_label = self._read_exact(lab_len, f"{label} label").tobytes().decode(errors="replace")
        if kind == KIND_ERROR:
            if length > ERROR_MAX:
                raise PeerError(f"peer gave up with an error frame of {length} bytes (not read)")
            text = self._read_exact(length, label).tobytes().decode(errors="replace")
            raise PeerError(f"peer gave up: {printable(text)}")
        limit = self.max_message if max_bytes is None else max_bytes
        if length > limit:
            raise ProtocolError(f"{label}: peer announced {length} bytes, limit {limit}")
        payload = self._read_exact(length, label)
        if got_label != label:
            raise ProtocolError(f"expected message {label!r}, peer sent {printable(got_label)!r}")
        c = self.stats.counters[(self.phase, label)]
        c.bytes_received += HEADER.size + lab_len + length
        c.messages_received += 1
        return kind, payload

    def recv(self, label: str = "data", max_bytes: int | None = None) -> bytes:
        """Receive one raw-bytes message with this label (at most ``max_bytes``, default
        ``max_message``; a larger announcement is refused before it is read)."""
        kind, payload = self._recv_frame(label, max_bytes)
        if kind != KIND_BYTES:
            raise ProtocolError(f"{label}: expected bytes, got frame kind {kind}")
        return payload.tobytes()

    def recv_json(self, label: str = "json", max_bytes: int | None = None) -> Any:
        """Receive a JSON object (at most ``max_bytes``; default ``JSON_MAX`` or
        ``max_message`` if smaller)."""
        limit = min(JSON_MAX, self.max_message) if max_bytes is None else max_bytes
        try:
            return json.loads(self.recv(label, limit))
        except (ValueError, RecursionError) as e:  # also over-long integers, deep nesting
            raise ProtocolError(f"{label}: malformed JSON: {e}") from e

    def recv_array(self, label: str = "array", max_bytes: int | None = None) -> np.ndarray:
        """Receive a numpy array sent with :meth:`send_array` (validated, never unpickled);
        ``max_bytes`` as for :meth:`recv` (see :func:`array_bytes`)."""
        kind, payload = self._recv_frame(label, max_bytes)
        if kind != KIND_ARRAY:
            raise ProtocolError(f"{label}: expected an array, got frame kind {kind}")
        try:
            n = int(payload[0])
            dtype = np.dtype(payload[1 : 1 + n].tobytes().decode())
            ndim = int(payload[1 + n])
            shape = struct.unpack_from(f">{ndim}Q", payload, 2 + n)
            offset = 3 + n + 8 * ndim + int(payload[2 + n + 8 * ndim])
        except (IndexError, struct.error, TypeError, ValueError, SyntaxError) as e:
            # SyntaxError: numpy parses some dtype strings ("(,)i4") with ast.literal_eval
            raise ProtocolError(f"{label}: malformed array header: {e}") from e
        if dtype.hasobject:
            raise ProtocolError(f"{label}: object arrays are refused")
        if dtype.itemsize == 0 or dtype.shape:  # frombuffer/reshape would fail on these
            raise ProtocolError(f"{label}: dtype {dtype.str!r} {dtype.shape} is refused")
        if math.prod(shape) * dtype.itemsize != len(payload) - offset:  # exact, no overflow
            raise ProtocolError(f"{label}: array of shape {shape} does not match its size")
        try:
            return np.frombuffer(payload, dtype=dtype, offset=offset).reshape(shape)
        except ValueError as e:  # e.g. more dimensions than numpy allows, or too large a one
            raise ProtocolError(f"{label}: unusable array shape {shape}: {e}") from e

    # ---- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def array_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Most payload bytes :meth:`Connection.send_array` uses for an array of this shape and
    dtype (data plus header): the ``max_bytes`` for a receiver that knows what to expect."""
    return math.prod(shape) * np.dtype(dtype).itemsize + 3 + 16 + 8 * len(shape) + ALIGN


def printable(text: str, limit: int = 300) -> str:
    """Peer-supplied text made safe to log and echo: control and other unprintable
    characters escaped (no forged log lines or terminal sequences), cut to ``limit``."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return out if len(out) <= limit else out[:limit] + f"... ({len(text)} characters)"


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
        sock = _tls_handshake(
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
        sock = _tls_handshake(
            context,
            sock,
            server_side=False,
            server_hostname=tls.server_hostname or host,
            timeout=handshake_timeout,
            peer=f"server {host}:{port}",
        )
    return Connection(sock, timeout, max_message)


def _tls_handshake(
    context: ssl.SSLContext,
    sock: socket.socket,
    *,
    server_side: bool,
    server_hostname: str | None,
    timeout: float | None,
    peer: str,
) -> ssl.SSLSocket:
    """Wrap ``sock`` and run the handshake; on any failure close it and raise TLSError.

    CPython applies an SSL socket's timeout to the whole handshake (one deadline, not one
    per read), which is what bounds a peer that trickles bytes.
    """
    try:
        tls_sock = context.wrap_socket(
            sock,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
        )
    except BaseException:
        sock.close()
        raise
    try:
        tls_sock.settimeout(timeout)
        tls_sock.do_handshake()
    except TimeoutError as e:
        tls_sock.close()
        raise TLSError(f"TLS handshake with {peer} timed out after {timeout} s") from e
    except OSError as e:  # ssl.SSLError, or the TCP connection reset
        tls_sock.close()
        if isinstance(e, ssl.SSLError) and not isinstance(e, _TLS_CLOSED):
            why = _describe_tls(e)
        else:
            why = "the connection was closed (does the peer speak TLS? did it refuse us?)"
        raise TLSError(f"TLS handshake with {peer} failed: {why}") from e
    return tls_sock


class HandshakeError(ProtocolError):
    """The peers disagree on the protocol, their roles or the plan."""


PROTOCOL_NAME = "safenet"
#: 2: polynomial channels truncate exactly (online.open, online.poly); 3: statistical bounds
#: per session (ReLU masks as wide as the session needs, polynomial plaintexts in digits);
#: 4: max pools, and the masks' high parts as garbled output rows (gc.rows); 5: every garbled
#: output bit read through two 8-byte rows into an additive share (no masks, no decode bits)
PROTOCOL_VERSION = 5


def handshake(conn: Connection, role: str, fingerprint: str, **extra: Any) -> dict[str, Any]:
    """Exchange hellos; check protocol version, complementary roles and the plan fingerprint.

    Both sides send first (the hellos cross), so it costs one round. Returns the peer's
    hello. On disagreement the peer is told why and :class:`HandshakeError` is raised.
    """
    if role not in ("client", "server"):
        raise ValueError("role must be 'client' or 'server'")
    hello = {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION, "role": role,
             "fingerprint": fingerprint} | extra  # fmt: skip
    conn.send_json(hello, "hello")
    peer = conn.recv_json("hello")
    problem = None
    if not isinstance(peer, dict) or peer.get("protocol") != PROTOCOL_NAME:
        problem = f"peer does not speak {PROTOCOL_NAME}"
    elif peer.get("version") != PROTOCOL_VERSION:
        problem = f"peer speaks protocol version {peer.get('version')}, we {PROTOCOL_VERSION}"
    elif peer.get("role") == role or peer.get("role") not in ("client", "server"):
        problem = f"both ends claim the role {role!r}" if peer.get("role") == role else "bad role"
    elif peer.get("fingerprint") != fingerprint:
        problem = (
            f"plan fingerprints differ: ours {fingerprint[:16]}..., "
            f"peer's {str(peer.get('fingerprint'))[:16]}..."
        )
    if problem is not None:
        conn.send_error(problem)
        raise HandshakeError(problem)
    return peer

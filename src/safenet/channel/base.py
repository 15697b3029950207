"""What every channel shares: the :class:`Channel` interface, the errors, the frame layout
and limits, the traffic counters, and two helpers for what crosses the wire.

Every message is one frame::

    magic b"SN" | version u8 | kind u8 | label length u8 | payload length u64 | label | payload

``label`` names the primitive that sent it (``"ot.base"``, ``"gc.tables"``...): the receiver
checks it, so two parties that disagree on the protocol's step fail at once with a clear
:class:`ProtocolError` instead of misreading bytes, and counters are kept per phase and label.
A frame is refused before anything is allocated when it is larger than the receiver allows:
the exact size where the receiver knows it (``max_bytes``: ciphertexts, keys, arrays of
known shape, see :func:`array_bytes`), :data:`JSON_MAX` for JSON, :data:`ERROR_MAX` for an
error frame, ``max_message`` (:data:`DEFAULT_MAX_MESSAGE`) otherwise. Text from a peer
(error frames) is made printable and cut short (:func:`printable`) before anyone logs or
echoes it.
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

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


@runtime_checkable
class Channel(Protocol):
    """One end of a two-party channel of labelled, counted, size-limited messages.

    What OT, garbling and the protocol need, whatever carries the bytes (a socket, TLS,
    memory). ``phase`` names the protocol's step for the counters in ``stats``; a *round*
    is counted each time this end starts sending after having received. Every receive
    checks the label and refuses anything over ``max_bytes`` before reading it; a peer's
    error frame raises :class:`PeerError`, a closed peer :class:`ConnectionClosed`,
    silence :class:`TransportTimeout`.

    Example::

        def ping(ch: Channel) -> bytes:
            ch.send(b"ping", label="ping")
            return ch.recv(label="pong", max_bytes=4)
    """

    phase: str
    stats: Stats
    closed: bool

    def send(self, data: bytes, label: str = "data") -> None:
        """Send one message of raw bytes."""
        ...

    def send_json(self, obj: Any, label: str = "json") -> None:
        """Send a JSON-serialisable object."""
        ...

    def send_array(self, array: np.ndarray, label: str = "array") -> None:
        """Send a numpy array (dtype and shape travel with it)."""
        ...

    def send_error(self, message: str) -> None:
        """Tell the peer we are giving up (best effort, never raises a TransportError)."""
        ...

    def recv(self, label: str = "data", max_bytes: int | None = None) -> bytes:
        """Receive one raw-bytes message with this label (at most ``max_bytes``)."""
        ...

    def recv_json(self, label: str = "json", max_bytes: int | None = None) -> Any:
        """Receive a JSON object."""
        ...

    def recv_array(self, label: str = "array", max_bytes: int | None = None) -> np.ndarray:
        """Receive a numpy array sent with :meth:`send_array`."""
        ...

    def close(self) -> None:
        """Close this end (idempotent); the peer's next receive raises ConnectionClosed."""
        ...


def array_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Most payload bytes :meth:`Channel.send_array` uses for an array of this shape and
    dtype (data plus header): the ``max_bytes`` for a receiver that knows what to expect."""
    return math.prod(shape) * np.dtype(dtype).itemsize + 3 + 16 + 8 * len(shape) + ALIGN


def printable(text: str, limit: int = 300) -> str:
    """Peer-supplied text made safe to log and echo: control and other unprintable
    characters escaped (no forged log lines or terminal sequences), cut to ``limit``."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return out if len(out) <= limit else out[:limit] + f"... ({len(text)} characters)"

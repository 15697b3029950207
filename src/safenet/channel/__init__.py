"""Two-party channels: labelled, counted, size-limited messages between two peers.

The layer below :mod:`safenet.crypto` (OT runs over it) and :mod:`safenet.protocol`; it
imports nothing else of safenet. :mod:`.base` holds the :class:`Channel` interface that
callers type against, the errors, the frame layout and limits, and the traffic counters;
:mod:`.framed` writes, checks and counts frames over any byte pipe; :mod:`.stream` carries
them over sockets (:class:`Connection`, :func:`listen` / :func:`accept` / :func:`connect`),
:mod:`.tls` adds TLS underneath (:class:`TLSConfig`, certificates), and :mod:`.memory`
joins two ends in memory for tests (:func:`memory_pair`).
"""

from safenet.channel.base import (
    ALIGN,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_TIMEOUT,
    ERROR_MAX,
    HEADER,
    JSON_MAX,
    KIND_ARRAY,
    KIND_BYTES,
    KIND_ERROR,
    MAGIC,
    SEND_MAX,
    VERSION,
    Channel,
    ConnectionClosed,
    Counter,
    PeerError,
    ProtocolError,
    Stats,
    TLSError,
    TransportError,
    TransportTimeout,
    array_bytes,
    printable,
)
from safenet.channel.framed import FramedChannel
from safenet.channel.memory import MemoryChannel, memory_pair
from safenet.channel.stream import (
    Connection,
    accept,
    connect,
    connection_pair,
    listen,
    wrap_accepted,
)
from safenet.channel.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    TLSConfig,
    make_ca,
    make_certificate,
    make_self_signed,
)

__all__ = [
    "ALIGN",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_TIMEOUT",
    "ERROR_MAX",
    "HEADER",
    "JSON_MAX",
    "KIND_ARRAY",
    "KIND_BYTES",
    "KIND_ERROR",
    "MAGIC",
    "SEND_MAX",
    "VERSION",
    "Channel",
    "Connection",
    "ConnectionClosed",
    "Counter",
    "FramedChannel",
    "MemoryChannel",
    "PeerError",
    "ProtocolError",
    "Stats",
    "TLSConfig",
    "TLSError",
    "TransportError",
    "TransportTimeout",
    "accept",
    "array_bytes",
    "connect",
    "connection_pair",
    "listen",
    "make_ca",
    "make_certificate",
    "make_self_signed",
    "memory_pair",
    "printable",
    "wrap_accepted",
]

"""The frame format over any byte pipe: :class:`FramedChannel` writes and reads frames
(bytes, JSON, arrays, errors), checks them and counts them; a subclass only moves bytes.

The layout and limits are :mod:`safenet.channel.base`'s. A subclass provides
:meth:`~FramedChannel._write` (send chunks, mapping its failures to :class:`TransportError`),
:meth:`~FramedChannel._read_exact` (exactly n bytes or a :class:`TransportError`) and
:meth:`~FramedChannel._shutdown`; sockets (:mod:`.stream`) and queues (:mod:`.memory`) do.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from typing import Any, Self

import numpy as np

from safenet.channel.base import (
    ALIGN,
    DEFAULT_MAX_MESSAGE,
    ERROR_MAX,
    HEADER,
    JSON_MAX,
    KIND_ARRAY,
    KIND_BYTES,
    KIND_ERROR,
    MAGIC,
    SEND_MAX,
    VERSION,
    ConnectionClosed,
    PeerError,
    ProtocolError,
    Stats,
    TransportError,
    printable,
)


class FramedChannel:
    """One end of a framed, counted byte pipe (a :class:`~safenet.channel.base.Channel`).

    ``phase`` (e.g. ``"offline"`` / ``"online"``) is attached to every counter; set it as
    the protocol moves on. A *round* is counted each time this end starts sending after
    having received (or at its very first send). Use one end from one thread at a time.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.phase = "setup"
        self.stats = Stats()
        self._last = "recv"
        self.closed = False

    # ---- what a subclass provides ---------------------------------------------------------
    def _write(self, chunks: list[bytes | memoryview], label: str) -> None:
        """Send ``chunks`` in order; failures as TransportError naming ``label``."""
        raise NotImplementedError

    def _read_exact(self, n: int, what: str) -> np.ndarray:
        """Exactly n bytes as a uint8 array; failures as TransportError naming ``what``."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        """Release the pipe (called once, by :meth:`close`)."""
        raise NotImplementedError

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
        self._write([HEADER.pack(MAGIC, VERSION, kind, len(lab), length) + lab, *parts], label)
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
        self._send_frame(KIND_ARRAY, label, [meta, a.reshape(-1).view(np.uint8).data])

    def send_error(self, message: str) -> None:
        """Tell the peer we are giving up (best effort), so it fails fast and clearly."""
        with contextlib.suppress(TransportError, OSError):
            self._send_frame(KIND_ERROR, "error", [printable(message).encode()[:ERROR_MAX]])

    # ---- receiving ------------------------------------------------------------------------
    def _recv_frame(self, label: str, max_bytes: int | None = None) -> tuple[int, np.ndarray]:
        if self.closed:
            raise ConnectionClosed("connection already closed")
        self._last = "recv"
        magic, version, kind, lab_len, length = HEADER.unpack(
            self._read_exact(HEADER.size, f"{label} header").data
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
        ``max_bytes`` as for :meth:`recv` (see :func:`~safenet.channel.base.array_bytes`)."""
        kind, payload = self._recv_frame(label, max_bytes)
        if kind != KIND_ARRAY:
            raise ProtocolError(f"{label}: expected an array, got frame kind {kind}")
        try:
            n = int(payload[0])
            dtype = np.dtype(payload[1 : 1 + n].tobytes().decode())
            ndim = int(payload[1 + n])
            shape = struct.unpack_from(f">{ndim}Q", payload.data, 2 + n)
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
        """Close this end (idempotent)."""
        if not self.closed:
            self.closed = True
            self._shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

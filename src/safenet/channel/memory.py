"""Two channel ends joined in memory (:func:`memory_pair`), for tests and single-process runs.

Each direction is a queue of byte chunks carrying exactly the frames a socket would carry,
so framing, labels, limits, error frames and counters are those of
:class:`~safenet.channel.stream.Connection`. Closing one end makes the peer's next receive
(once it has read what was already sent) and its next send raise
:class:`~safenet.channel.base.ConnectionClosed`; a receive that waits longer than
``timeout`` raises :class:`~safenet.channel.base.TransportTimeout`. Sends never block.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

import numpy as np

from safenet.channel.base import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_TIMEOUT,
    ConnectionClosed,
    TransportTimeout,
)
from safenet.channel.framed import FramedChannel

if TYPE_CHECKING:
    from safenet.channel.base import Channel

_EOF = None  # the end of a direction's stream


class MemoryChannel(FramedChannel):
    """One end of an in-memory channel; make both ends with :func:`memory_pair`.

    Args:
        timeout: seconds a receive waits for the peer (None: no limit).
        max_message: largest frame of unannounced size this end accepts.
    """

    def __init__(
        self, timeout: float | None = DEFAULT_TIMEOUT, max_message: int = DEFAULT_MAX_MESSAGE
    ) -> None:
        super().__init__(max_message)
        self.timeout = timeout
        self._inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._peer: MemoryChannel | None = None
        self._chunk = b""  # the chunk being read, from self._offset on
        self._offset = 0

    def _write(self, chunks: list[bytes | memoryview], label: str) -> None:
        peer = self._peer
        if peer is None or peer.closed:
            raise ConnectionClosed(f"{label}: peer closed the connection")
        for chunk in chunks:
            if len(chunk):
                peer._inbox.put(bytes(chunk))  # a copy: the sender may reuse its buffer

    def _read_exact(self, n: int, what: str) -> np.ndarray:
        buf = np.empty(n, dtype=np.uint8)
        got = 0
        while got < n:
            if self._offset == len(self._chunk):
                try:
                    chunk = self._inbox.get(timeout=self.timeout)
                except queue.Empty as e:
                    raise TransportTimeout(f"{what}: no data from the peer in time") from e
                if chunk is _EOF:
                    self._inbox.put(_EOF)  # later reads see the end too
                    raise ConnectionClosed(
                        f"{what}: peer closed the connection"
                        + (f" after {got} of {n} bytes" if got else "")
                    )
                self._chunk, self._offset = chunk, 0
            k = min(n - got, len(self._chunk) - self._offset)
            buf[got : got + k] = np.frombuffer(self._chunk, np.uint8, k, self._offset)
            self._offset += k
            got += k
        return buf

    def _shutdown(self) -> None:
        self._inbox.put(_EOF)  # wakes a read of our own that is waiting
        if self._peer is not None:
            self._peer._inbox.put(_EOF)


def memory_pair(
    timeout: float | None = DEFAULT_TIMEOUT, max_message: int = DEFAULT_MAX_MESSAGE
) -> tuple[MemoryChannel, MemoryChannel]:
    """Two joined :class:`MemoryChannel` ends (use each from its own thread).

    Example::

        a, b = memory_pair(timeout=5)
        a.send_json({"hello": 1}, label="hi")
        assert b.recv_json(label="hi") == {"hello": 1}
    """
    a, b = MemoryChannel(timeout, max_message), MemoryChannel(timeout, max_message)
    a._peer, b._peer = b, a
    return a, b


if TYPE_CHECKING:

    def _is_a_channel(ch: MemoryChannel) -> Channel:  # mypy: MemoryChannel satisfies Channel
        return ch

"""ReLU channels: the garbled circuit of :mod:`safenet.crypto.gc.relu` as a garbled layer.

A :class:`~safenet.protocol.garbled.GarbledServer` / ``GarbledClient`` pair (see
:mod:`.garbled` for the offline and online messages) with one element per instance: online
the server inputs its share ``s + 2^(k-1)`` (the round-half-up offset); the client learns
``z = max(round(v / 2^k), 0) + r + 1`` (``min(.., clip)`` for clipped ReLUs), so its share is
``z mod p`` and the server's ``-(r + 1) mod p``. The engine sets ``stat_bits`` per session
(:func:`safenet.protocol.statistical.garbled_stat_bits`).
"""

from __future__ import annotations

import numpy as np

from safenet.crypto.gc import relu_circuit
from safenet.protocol import arith as A
from safenet.protocol.arith import STAT_BITS
from safenet.protocol.garbled import GarbledClient, GarbledServer

__all__ = ["STAT_BITS", "ReluClient", "ReluServer"]


class ReluServer(GarbledServer):
    """The garbler's half of one activation layer's ReLU channels (``n`` elements)."""

    offset = 1

    def __init__(
        self,
        p: int,
        shift: int,
        n: int,
        delta: np.ndarray,
        tweak_base: int,
        stat_bits: int = STAT_BITS,
        clip: int | None = None,
    ) -> None:
        circuit = relu_circuit(p, shift, stat_bits, clip)
        super().__init__(p, circuit, n, delta, tweak_base, stat_bits)
        self.shift = shift

    def online_labels(self, s: np.ndarray) -> np.ndarray:
        """Labels of the server's share ``s`` (+ the rounding offset): once."""
        off = 1 << (self.shift - 1) if self.shift else 0
        return self.encode_shares(A.add(s, off, self.p))


class ReluClient(GarbledClient):
    """The evaluator's half of one activation layer's ReLU channels."""

    def __init__(
        self,
        p: int,
        shift: int,
        n: int,
        tweak_base: int,
        stat_bits: int = STAT_BITS,
        clip: int | None = None,
    ) -> None:
        super().__init__(p, relu_circuit(p, shift, stat_bits, clip), n, tweak_base)
        self.shift = shift

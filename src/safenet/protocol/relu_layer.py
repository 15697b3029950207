"""ReLU channels: the garbled circuit of :mod:`safenet.crypto.gc.relu_circuit` as a garbled
layer.

A :class:`~safenet.protocol.garbled.GarbledServer` / ``GarbledClient`` pair (see
:mod:`.garbled` for the offline and online messages) with one element per instance: online
the server inputs its share ``s + 2^(k-1)`` (the round-half-up offset), and the circuit's
output bits, weighted by :func:`~safenet.crypto.gc.relu_circuit.relu_weights`, become additive
shares of ``max(round(v / 2^k), 0)`` (``min(.., clip)`` for clipped ReLUs) mod p.
"""

from __future__ import annotations

import numpy as np

from safenet.crypto.gc.relu_circuit import relu_circuit, relu_weights
from safenet.protocol import arith as A
from safenet.protocol.garbled import GarbledClient, GarbledServer

__all__ = ["ReluClient", "ReluServer"]


class ReluServer(GarbledServer):
    """The garbler's half of one activation layer's ReLU channels (``n`` elements)."""

    def __init__(
        self,
        p: int,
        shift: int,
        n: int,
        delta: np.ndarray,
        tweak_base: int,
        clip: int | None = None,
    ) -> None:
        circuit = relu_circuit(p, shift, clip)
        super().__init__(p, circuit, n, delta, tweak_base, relu_weights(p, shift))
        self.shift = shift

    def online_labels(self, s: np.ndarray) -> np.ndarray:
        """Labels of the server's share ``s`` (+ the rounding offset): once."""
        off = 1 << (self.shift - 1) if self.shift else 0
        return self.encode_shares(A.add(s, off, self.p))


class ReluClient(GarbledClient):
    """The evaluator's half of one activation layer's ReLU channels."""

    def __init__(
        self, p: int, shift: int, n: int, tweak_base: int, clip: int | None = None
    ) -> None:
        super().__init__(p, relu_circuit(p, shift, clip), n, tweak_base)
        self.shift = shift

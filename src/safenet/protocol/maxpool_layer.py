"""Max pooling: the garbled max of :mod:`safenet.crypto.gc.maxpool_circuit` as a garbled
layer.

One instance per output element, one circuit input element per window position
(:func:`safenet.plan.pooling.window_index`; positions in the padding are input as 0 by both
parties, which the circuit reads as the smallest value). Online the server inputs its shares
offset by ``h = p // 2``; the circuit's output bits are ``max_j v_j + h`` and become additive
shares of ``max_j v_j`` mod p (the server's share takes back ``h``); the engine then
reshares the output like an activation's (the client sends ``z - R`` for an offline mask
``R``). Offline and online messages are those of :mod:`.garbled`: one round trip per max-pool
layer online.
"""

from __future__ import annotations

import numpy as np

from safenet.crypto.gc.maxpool_circuit import max_circuit, max_weights
from safenet.plan.ops import MaxPool, Op
from safenet.plan.pooling import window_index
from safenet.protocol import arith as A
from safenet.protocol.garbled import GarbledClient, GarbledServer

__all__ = ["MaxPoolClient", "MaxPoolServer", "pool_windows"]


def pool_windows(op: Op, in_shape: tuple[int, ...]) -> np.ndarray:
    """Flat input indices ``(outputs, K)`` of a ``maxpool`` op, ``-1`` for padding."""
    a = op.attrs_as(MaxPool)
    return window_index(a.rows, a.cols, tuple(in_shape))


def _gather(x: np.ndarray, idx: np.ndarray, offset: int, p: int) -> np.ndarray:
    """``(K, outputs)`` circuit inputs: ``x[idx] + offset mod p``, 0 at padding."""
    flat = A.add(x.reshape(-1), offset % p, p)
    return np.where(idx >= 0, flat[np.maximum(idx, 0)], 0).T


class MaxPoolServer(GarbledServer):
    """The garbler's half of one max-pool layer (``n`` windows of ``K`` elements)."""

    def __init__(self, p: int, windows: np.ndarray, delta: np.ndarray, tweak_base: int) -> None:
        n, k = windows.shape
        h = p // 2
        super().__init__(p, max_circuit(p, k), n, delta, tweak_base, max_weights(p), offset=h)
        self.windows = windows

    def online_labels(self, s: np.ndarray) -> np.ndarray:
        """Labels of the server's shares of the layer input ``s`` (the whole tensor): once."""
        return self.encode_shares(_gather(s, self.windows, self.p // 2, self.p))


class MaxPoolClient(GarbledClient):
    """The evaluator's half of one max-pool layer."""

    def __init__(self, p: int, windows: np.ndarray, tweak_base: int) -> None:
        n, k = windows.shape
        super().__init__(p, max_circuit(p, k), n, tweak_base)
        self.windows = windows

    def inputs(self, c: np.ndarray) -> np.ndarray:
        """Our circuit inputs from our share ``c`` of the layer input (the whole tensor)."""
        return _gather(c, self.windows, 0, self.p)

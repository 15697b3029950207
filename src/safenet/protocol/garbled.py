"""One garbled layer run between the parties: shares in, additive shares mod p out.

A layer is ``n`` instances of one circuit with two input groups, ``server_share`` and
``client_share`` (``m`` field elements of ``bits(p)`` bits per instance, element ``j`` in bits
``j bits(p) ..``), whose output bits ``b_j`` carry public weights ``w_j`` (the circuit module
says which): the layer's value is ``y = sum_j w_j b_j - offset`` (each layer kind fixes its
``offset``). Every output bit becomes an additive share through a pair of garbled output rows
(:mod:`safenet.crypto.gc.tables`): the server draws uniform ``s_j`` mod p and the rows give the
client ``w_j b_j + s_j mod p`` for the bit it holds, so the client's share is the sum of what
it reads and the server's is ``-(sum_j s_j + offset) mod p``. Each value the client reads is
uniform on its own: the shares hide ``y`` perfectly, with no statistical term and no mask
inside the circuit. No decode bits are ever sent.

Offline the server garbles the instances under the session's Delta with the layer's own tweak
range (:func:`~safenet.crypto.gc.walk.tweak_span`: the AND gates', then the rows'), sends
the tables and the rows, and hands the client the labels of the client's shares (known
offline) by correlated OT. Online it sends only the labels of its own shares, ``m bits(p)``
labels of 16 bytes per instance. :mod:`.relu_layer` and :mod:`.maxpool_layer` say what their
circuits compute.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from safenet.channel import Channel, ProtocolError, array_bytes
from safenet.crypto.gc import garble
from safenet.crypto.gc.circuit import Circuit
from safenet.crypto.gc.evaluate import evaluate_shares
from safenet.crypto.gc.garble import Garbled, encode_labels
from safenet.crypto.gc.walk import tweak_span
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.protocol import arith as A

__all__ = ["GarbledClient", "GarbledServer", "GarblingWorker", "share_bits"]


def share_bits(values: np.ndarray, nbits: int) -> np.ndarray:
    """Residues of shape ``(m, n)`` (element ``j`` of instance ``i`` at ``[j, i]``) -> circuit
    input bits of shape ``(m nbits, n)``, element-major as the circuits lay them out."""
    v = np.asarray(values, dtype=np.int64)
    v = v.reshape(1, -1) if v.ndim == 1 else v
    m, n = v.shape
    return A.bits(v, nbits).reshape(nbits, m, n).transpose(1, 0, 2).reshape(m * nbits, n)


class GarbledServer:
    """The garbler's half of one garbled layer (``n`` instances of ``circuit`` whose output
    bits carry ``weights``; the weighted sum is the layer's value plus ``offset``)."""

    def __init__(
        self,
        p: int,
        circuit: Circuit,
        n: int,
        delta: np.ndarray,
        tweak_base: int,
        weights: list[int],
        offset: int = 0,
    ) -> None:
        if len(weights) != circuit.n_outputs:
            raise ValueError(f"{len(weights)} weights for {circuit.n_outputs} output bits")
        self.p, self.n, self.circuit = p, n, circuit
        self.tweak_base = tweak_base
        self.delta = delta
        self.weights = [w % p for w in weights]
        self.offset = offset
        self._garbled: Garbled | None = None
        self._stored: tuple[np.ndarray, np.ndarray] | None = None
        self.out_share: np.ndarray | None = None  # -(sum_j s_j + offset)

    @property
    def tweak_end(self) -> int:
        """First tweak after this layer's range (the next layer's ``tweak_base``)."""
        return self.tweak_base + tweak_span(self.circuit, self.n, rows=True)

    @property
    def share_width(self) -> int:
        """Input bits of the server's (and the client's) shares per instance."""
        return len(self.circuit.inputs["server_share"])

    def garble(self) -> None:
        """Draw the row masks ``s_j`` and garble the layer with its output rows (CPU work, no
        communication; may run in a worker thread)."""
        p = self.p
        s = A.uniform((self.circuit.n_outputs, self.n), p)
        w = np.array(self.weights, dtype=np.int64)[:, None]
        v1 = A.add(s, np.broadcast_to(w, s.shape), p)
        self._garbled = garble(self.circuit, self.n, delta=self.delta,
                               tweak_base=self.tweak_base, rows=(s, v1))  # fmt: skip
        total = s.sum(axis=0) % p  # at most bits(p) + 1 rows below 2^52: no int64 overflow
        self.out_share = A.neg(A.add(total, self.offset % p, p), p)

    def send_offline(self, conn: Channel, ot: OTSender) -> None:
        """Tables and rows to the client; client-share labels by OT."""
        g = self._garbled
        if g is None or self.out_share is None:
            raise RuntimeError("garble() first")
        rows, g.rows = g.rows, None
        assert rows is not None  # garble() made them
        conn.send_array(g.take_tables(), label="gc.tables")  # no copy on either side
        conn.send_array(rows, label="gc.rows")
        zero, _ = g.label_pairs("client_share")
        ot.send_correlated(zero.reshape(-1, 2))

    def online_labels(self, s: np.ndarray) -> np.ndarray:
        """Labels of the server's inputs for its share ``s`` of the layer input: once.
        Each layer kind says which part of the input it takes and how it is offset."""
        raise NotImplementedError

    def encode_shares(self, values: np.ndarray) -> np.ndarray:
        """Labels of the server's circuit inputs (residues ``(m, n)``): once."""
        bits = share_bits(values, self.p.bit_length())
        if self._stored is not None:  # restored from a preprocessing bank
            zero, delta = self._stored
            self._stored = None
            return encode_labels(zero, delta, bits)
        g = self._garbled
        if g is None:
            raise RuntimeError("garbled material already used")
        self._garbled = None
        return g.encode("server_share", bits)

    def export_state(self) -> dict[str, np.ndarray]:
        """What the online phase needs, moved out for a preprocessing bank (once)."""
        g = self._garbled
        if g is None or self.out_share is None:
            raise RuntimeError("garbled material already used (or offline not done)")
        self._garbled = None
        zero, delta = g.release_for_storage("server_share")
        return {"zero": zero, "delta": delta, "out": self.out_share}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Load :meth:`export_state`'s arrays (the layer is then ready for its online phase)."""
        if state["zero"].shape != (self.share_width, self.n, 2):
            raise ValueError("stored garbled labels do not match the layer")
        self._stored = (state["zero"], state["delta"])
        self.out_share = state["out"]


class GarbledClient:
    """The evaluator's half of one garbled layer."""

    def __init__(self, p: int, circuit: Circuit, n: int, tweak_base: int) -> None:
        self.p, self.n, self.circuit = p, n, circuit
        self.tweak_base = tweak_base
        self._material: dict[str, np.ndarray] | None = None

    @property
    def tweak_end(self) -> int:
        return self.tweak_base + tweak_span(self.circuit, self.n, rows=True)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        c, n = self.circuit, self.n
        return {"tables": (c.and_count, n, 2, 2),
                "client_share": (len(c.inputs["client_share"]), n, 2),
                "rows": (c.n_outputs, n, 2)}  # fmt: skip

    def inputs(self, c: np.ndarray) -> np.ndarray:
        """Our circuit inputs ``(m, n)`` from our share ``c`` of the layer input (as given)."""
        return c

    def recv_offline(self, conn: Channel, ot: OTReceiver, c: np.ndarray) -> None:
        """Receive tables and rows; get the labels of our shares ``c`` (residues ``(m, n)``,
        or ``(n,)`` for one element per instance) by OT."""
        want = self._shapes()
        got: dict[str, Any] = {}
        for key, label in (("tables", "gc.tables"), ("rows", "gc.rows")):
            a = conn.recv_array(label, array_bytes(want[key], np.uint64))
            if a.shape != want[key] or a.dtype != np.uint64:
                raise ProtocolError(f"bad {label} {a.dtype} {a.shape}, want {want[key]}")
            got[key] = a
        bits = share_bits(c, self.p.bit_length())
        got["client_share"] = ot.recv_correlated(bits.reshape(-1)).reshape(want["client_share"])
        self._material = got

    def export_state(self) -> dict[str, np.ndarray]:
        """The received material, moved out for a preprocessing bank (once)."""
        m = self._material
        if m is None:
            raise RuntimeError("garbled material already used (or never received)")
        self._material = None
        return dict(m)

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Load :meth:`export_state`'s arrays (shapes checked against the layer)."""
        want = self._shapes()
        for k, shape in want.items():
            if state[k].shape != shape:
                raise ValueError(f"stored garbled {k} has shape {state[k].shape}, want {shape}")
        self._material = {k: state[k] for k in want}

    def evaluate(self, server_labels: np.ndarray) -> np.ndarray:
        """Evaluate with the server's online labels; returns our additive share (the sum of the
        output rows the labels open, mod p). Once."""
        m = self._material
        if m is None:
            raise RuntimeError("garbled material already used (or never received)")
        self._material = None
        want = (len(self.circuit.inputs["server_share"]), self.n, 2)
        if server_labels.shape != want or server_labels.dtype != np.uint64:
            raise ProtocolError(f"bad server labels {server_labels.dtype} {server_labels.shape}")
        ins = {"server_share": server_labels, "client_share": m["client_share"]}
        try:
            return evaluate_shares(self.circuit, m["tables"], ins, m["rows"], self.p,
                                   tweak_base=self.tweak_base)  # fmt: skip
        except ValueError as e:  # a row that opens outside [0, p): corrupt material
            raise ProtocolError(str(e)) from None


class GarblingWorker:
    """Garbles a session's layers in a background thread, in layer order, while the session
    runs its HE work: :meth:`wait` for a layer before sending it, :meth:`sent` after.

    At most ``ahead_bytes`` of tables and rows are garbled and not yet sent (one layer more if a
    single layer is larger): the garbler's memory stays bounded however fast it runs ahead.
    """

    def __init__(self, layers: dict[int, GarbledServer], ahead_bytes: int = 384 << 20) -> None:
        self.layers = layers
        self.ahead_bytes = ahead_bytes
        self.seconds = 0.0  #: time spent garbling
        self._done = {i: threading.Event() for i in layers}
        self._cond = threading.Condition()
        self._pending = 0  # bytes of tables and rows garbled and not yet sent
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="garble", daemon=True)

    @staticmethod
    def _size(layer: GarbledServer) -> int:
        return layer.circuit.sent_bytes * layer.n

    def start(self) -> GarblingWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        for i, layer in self.layers.items():
            size = self._size(layer)

            def room(size: int = size) -> bool:
                return self._stop or self._pending + size <= max(self.ahead_bytes, size)

            with self._cond:
                self._cond.wait_for(room)
                if self._stop:
                    return
                self._pending += size
            try:
                t = time.perf_counter()
                layer.garble()
                self.seconds += time.perf_counter() - t
            except BaseException as e:  # surfaced by wait() in the session's thread
                self._error = e
                for ev in self._done.values():
                    ev.set()
                return
            self._done[i].set()

    def wait(self, i: int) -> GarbledServer:
        """Layer ``i``, once garbled (re-raises the worker's error)."""
        self._done[i].wait()
        if self._error is not None:
            raise self._error
        return self.layers[i]

    def sent(self, i: int) -> None:
        """Layer ``i``'s tables have left: the worker may garble further ahead."""
        with self._cond:
            self._pending -= self._size(self.layers[i])
            self._cond.notify_all()

    def close(self) -> None:
        """Stop (after the current layer) and join the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

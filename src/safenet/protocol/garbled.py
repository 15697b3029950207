"""One garbled layer run between the parties: shares in, a masked integer out.

A layer is ``n`` instances of one circuit with three input groups: ``server_share`` and
``client_share`` (``m`` field elements of ``bits(p)`` bits per instance, element ``j`` in bits
``j bits(p) ..``) and ``server_mask``, and two output groups: ``z`` (``W`` bits) and ``carry``
(one bit). The server's mask is an integer ``r = r_low + 2^W r_high`` of ``W + s`` bits: the
circuit adds ``r_low`` and the carry ``c`` of that sum selects ``r_high + c`` through one
garbled output row (:mod:`safenet.crypto.gc.tables`), so the client learns the integer
``z = y + r + offset`` (each circuit fixes its ``offset``) and keeps ``z mod p``; the server
keeps ``-(r + offset) mod p``. ``r`` is ``s`` bits wider than ``y + offset``, so ``z`` hides
``y`` up to statistical distance ``2^-s`` (:mod:`.statistical` sets ``s`` per session); the
decode bits of ``z`` are sent, never the carry's.

Offline the server garbles the instances under the session's Delta with the layer's own tweak
range (:func:`~safenet.crypto.gc.garble.tweak_span`: the AND gates', then the rows'), sends
the tables, the labels of ``r_low``, the decode bits of ``z`` and the rows, and hands the
client the labels of the client's shares (known offline) by correlated OT. Online it sends
only the labels of its own shares, ``m bits(p)`` labels of 16 bytes per instance.
:mod:`.relu` and :mod:`.maxpool` say what their circuits compute.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from safenet.crypto.gc import decode, evaluate, garble
from safenet.crypto.gc.circuit import Circuit
from safenet.crypto.gc.garble import Garbled, encode_labels, tweak_span
from safenet.crypto.gc.tables import decrypt_rows
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.protocol import arith as A
from safenet.protocol.arith import STAT_BITS
from safenet.protocol.transport import Connection, ProtocolError, array_bytes

__all__ = [
    "GarbledClient",
    "GarbledServer",
    "GarblingWorker",
    "add_one128",
    "share_bits",
    "words128",
]


def words128(bits: np.ndarray) -> np.ndarray:
    """Little-endian bits ``(k, n)`` (``k <= 128``) -> 128-bit integers as uint64 ``(n, 2)``."""
    k, n = bits.shape
    if k > 128:
        raise ValueError(f"{k} bits do not fit 128")
    padded = np.zeros((128, n), dtype=np.uint8)
    padded[:k] = bits
    packed = np.packbits(padded, axis=0, bitorder="little")  # (16, n)
    return np.ascontiguousarray(packed.T).view("<u8").reshape(n, 2).astype(np.uint64)


def add_one128(v: np.ndarray) -> np.ndarray:
    """``v + 1`` for 128-bit integers as uint64 ``(n, 2)`` (below 2^128 - 1)."""
    out = v.copy()
    out[:, 0] += np.uint64(1)
    out[:, 1] += (out[:, 0] == 0).astype(np.uint64)
    return out


def share_bits(values: np.ndarray, nbits: int) -> np.ndarray:
    """Residues of shape ``(m, n)`` (element ``j`` of instance ``i`` at ``[j, i]``) -> circuit
    input bits of shape ``(m nbits, n)``, element-major as the circuits lay them out."""
    v = np.asarray(values, dtype=np.int64)
    v = v.reshape(1, -1) if v.ndim == 1 else v
    m, n = v.shape
    return A.bits(v, nbits).reshape(nbits, m, n).transpose(1, 0, 2).reshape(m * nbits, n)


def _join_mod_p(low: np.ndarray, high: np.ndarray, p: int) -> np.ndarray:
    """``(z_low + 2^W high) mod p`` for the bits ``(W, n)`` of ``z_low`` and the 128-bit
    ``high`` as uint64 ``(n, 2)``, with vector mulmods (no per-bit work on the 128 bits)."""
    w = len(low)
    words = [np.mod(high[:, j], np.uint64(p)).astype(np.int64) for j in (0, 1)]
    out = A.bits_mod_p(low, p)
    for j, word in enumerate(words):
        out = A.add(out, A.mulmod(word, pow(2, w + 64 * j, p), p), p)
    return out


class GarbledServer:
    """The garbler's half of one garbled layer (``n`` instances of ``circuit``)."""

    #: the server's output share is ``-(r + offset)``; each circuit fixes it
    offset: int = 0

    def __init__(
        self,
        p: int,
        circuit: Circuit,
        n: int,
        delta: np.ndarray,
        tweak_base: int,
        stat_bits: int = STAT_BITS,
    ) -> None:
        self.p, self.n, self.circuit = p, n, circuit
        self.tweak_base = tweak_base
        self.delta = delta
        self.stat_bits = stat_bits
        self._garbled: Garbled | None = None
        self._stored: tuple[np.ndarray, np.ndarray] | None = None
        self._mask: np.ndarray | None = None  # bits of r: r_low (W rows), then r_high
        self.out_share: np.ndarray | None = None  # -(r + offset)

    @property
    def tweak_end(self) -> int:
        """First tweak after this layer's range (the next layer's ``tweak_base``)."""
        return self.tweak_base + tweak_span(self.circuit, self.n, 1)

    @property
    def share_width(self) -> int:
        """Input bits of the server's (and the client's) shares per instance."""
        return len(self.circuit.inputs["server_share"])

    def garble(self) -> None:
        """Draw the mask and garble the layer with the row of its high part (CPU work, no
        communication; may run in a worker thread)."""
        w = len(self.circuit.inputs["server_mask"])
        self._mask = A.random_bits(w + self.stat_bits, self.n)
        high = words128(self._mask[w:])
        rows = {"carry": (high, add_one128(high))}
        self._garbled = garble(self.circuit, self.n, delta=self.delta,
                               tweak_base=self.tweak_base, rows=rows)  # fmt: skip

    def send_offline(self, conn: Connection, ot: OTSender) -> None:
        """Tables, mask labels, decode bits of ``z`` and the carry's rows to the client;
        client-share labels by OT."""
        g, r = self._garbled, self._mask
        if g is None or r is None:
            raise RuntimeError("garble() first")
        w = len(self.circuit.inputs["server_mask"])
        conn.send_array(g.take_tables(), label="gc.tables")  # no copy on either side
        conn.send_array(g.encode("server_mask", r[:w]), label="gc.mask")
        conn.send_array(g.decode_bits[self.circuit.output_slices["z"]], label="gc.decode")
        conn.send_array(g.rows["carry"], label="gc.rows")
        zero, _ = g.label_pairs("client_share")
        ot.send_correlated(zero.reshape(-1, 2))
        self._mask = None
        self.out_share = A.neg(A.add(A.bits_mod_p(r, self.p), self.offset % self.p, self.p), self.p)

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
        return self.tweak_base + tweak_span(self.circuit, self.n, 1)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        c, n = self.circuit, self.n
        return {"tables": (c.and_count, n, 2, 2),
                "client_share": (len(c.inputs["client_share"]), n, 2),
                "server_mask": (len(c.inputs["server_mask"]), n, 2),
                "decode": (len(c.outputs["z"]), n),
                "rows": (n, 2, 2)}  # fmt: skip

    def inputs(self, c: np.ndarray) -> np.ndarray:
        """Our circuit inputs ``(m, n)`` from our share ``c`` of the layer input (as given)."""
        return c

    def recv_offline(self, conn: Connection, ot: OTReceiver, c: np.ndarray) -> None:
        """Receive tables, mask labels, decode bits; get the labels of our shares ``c``
        (residues ``(m, n)``, or ``(n,)`` for one element per instance) by OT."""
        want = self._shapes()
        dtypes = {"tables": np.uint64, "server_mask": np.uint64, "decode": np.uint8,
                  "rows": np.uint64}  # fmt: skip
        got: dict[str, Any] = {}
        for key, label in (("tables", "gc.tables"), ("server_mask", "gc.mask"),
                           ("decode", "gc.decode"), ("rows", "gc.rows")):  # fmt: skip
            a = conn.recv_array(label, array_bytes(want[key], dtypes[key]))
            if a.shape != want[key] or a.dtype != dtypes[key]:
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
        """Evaluate with the server's online labels; returns ``z mod p`` (our share). Once."""
        m = self._material
        if m is None:
            raise RuntimeError("garbled material already used (or never received)")
        self._material = None
        want = (len(self.circuit.inputs["server_share"]), self.n, 2)
        if server_labels.shape != want or server_labels.dtype != np.uint64:
            raise ProtocolError(f"bad server labels {server_labels.dtype} {server_labels.shape}")
        out = evaluate(
            self.circuit,
            m["tables"],
            {"server_share": server_labels, "client_share": m["client_share"],
             "server_mask": m["server_mask"]},
            tweak_base=self.tweak_base,
        )  # fmt: skip
        sl = self.circuit.output_slices
        low = decode(out[sl["z"]], m["decode"])
        row_base = self.tweak_base + self.circuit.and_count * self.n
        high = decrypt_rows(out[sl["carry"].start], m["rows"], row_base)  # r_high + carry
        return _join_mod_p(low, high, self.p)


class GarblingWorker:
    """Garbles a session's layers in a background thread, in layer order, while the session
    runs its HE work: :meth:`wait` for a layer before sending it, :meth:`sent` after.

    At most ``ahead_bytes`` of tables are garbled and not yet sent (one layer more if a single
    layer is larger): the garbler's memory stays bounded however fast it runs ahead.
    """

    def __init__(self, layers: dict[int, GarbledServer], ahead_bytes: int = 384 << 20) -> None:
        self.layers = layers
        self.ahead_bytes = ahead_bytes
        self.seconds = 0.0  #: time spent garbling
        self._done = {i: threading.Event() for i in layers}
        self._cond = threading.Condition()
        self._pending = 0  # table bytes garbled and not yet sent
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="garble", daemon=True)

    @staticmethod
    def _size(layer: GarbledServer) -> int:
        return layer.circuit.table_bytes * layer.n

    def start(self) -> GarblingWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        for i, layer in self.layers.items():
            size = self._size(layer)
            with self._cond:
                self._cond.wait_for(
                    lambda s=size: self._stop or self._pending + s <= max(self.ahead_bytes, s)
                )
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

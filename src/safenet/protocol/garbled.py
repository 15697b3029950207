"""One garbled layer run between the parties: shares in, a masked integer out.

A layer is ``n`` instances of one circuit with three input groups: ``server_share`` and
``client_share`` (``m`` field elements of ``bits(p)`` bits per instance, element ``j`` in bits
``j bits(p) ..``) and ``server_mask``. Offline the server garbles the instances under the
session's Delta with the layer's own tweak range, sends the tables, the labels of its output
mask ``r`` and the decode bits, and hands the client the labels of the client's shares (known
offline) by correlated OT. Online it sends only the labels of its own shares, ``m bits(p)``
labels of 16 bytes per instance; the client evaluates and decodes the integer ``z = y + r +
offset`` (each circuit fixes its ``offset``), keeps ``z mod p`` and the server
``-(r + offset) mod p``. The mask ``r`` is ``stat_bits`` wider than ``y + offset``, so ``z``
hides ``y`` up to statistical distance ``2^-stat_bits`` (:mod:`.statistical` sets the width
per session). :mod:`.relu` and :mod:`.maxpool` say what their circuits compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from safenet.crypto.gc import decode, evaluate, garble
from safenet.crypto.gc.circuit import Circuit
from safenet.crypto.gc.garble import Garbled, encode_labels
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.protocol import arith as A
from safenet.protocol.transport import Connection, ProtocolError, array_bytes

__all__ = ["GarbledClient", "GarbledServer", "share_bits"]


def share_bits(values: np.ndarray, nbits: int) -> np.ndarray:
    """Residues of shape ``(m, n)`` (element ``j`` of instance ``i`` at ``[j, i]``) -> circuit
    input bits of shape ``(m nbits, n)``, element-major as the circuits lay them out."""
    v = np.asarray(values, dtype=np.int64)
    v = v.reshape(1, -1) if v.ndim == 1 else v
    m, n = v.shape
    return A.bits(v, nbits).reshape(nbits, m, n).transpose(1, 0, 2).reshape(m * nbits, n)


class GarbledServer:
    """The garbler's half of one garbled layer (``n`` instances of ``circuit``)."""

    #: the server's output share is ``-(r + offset)``; each circuit fixes it
    offset: int = 0

    def __init__(
        self, p: int, circuit: Circuit, n: int, delta: np.ndarray, tweak_base: int
    ) -> None:
        self.p, self.n, self.circuit = p, n, circuit
        self.tweak_base = tweak_base
        self.delta = delta
        self._garbled: Garbled | None = None
        self._stored: tuple[np.ndarray, np.ndarray] | None = None
        self.out_share: np.ndarray | None = None  # -(r + offset)

    @property
    def tweak_end(self) -> int:
        """First tweak after this layer's range (the next layer's ``tweak_base``)."""
        return self.tweak_base + self.circuit.and_count * self.n

    @property
    def share_width(self) -> int:
        """Input bits of the server's (and the client's) shares per instance."""
        return len(self.circuit.inputs["server_share"])

    def garble(self) -> None:
        """Garble the layer (CPU work, no communication; may run in a worker thread)."""
        self._garbled = garble(self.circuit, self.n, delta=self.delta, tweak_base=self.tweak_base)

    def send_offline(self, conn: Connection, ot: OTSender) -> None:
        """Tables, mask labels and decode bits to the client; client-share labels by OT."""
        g = self._garbled
        if g is None:
            raise RuntimeError("garble() first")
        r = A.random_bits(len(self.circuit.inputs["server_mask"]), self.n)
        conn.send_array(g.take_tables(), label="gc.tables")  # no copy on either side
        conn.send_array(g.encode("server_mask", r), label="gc.mask")
        conn.send_array(g.decode_bits, label="gc.decode")
        zero, _ = g.label_pairs("client_share")
        ot.send_correlated(zero.reshape(-1, 2))
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
        return self.tweak_base + self.circuit.and_count * self.n

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        c, n = self.circuit, self.n
        return {"tables": (c.and_count, n, 2, 2),
                "client_share": (len(c.inputs["client_share"]), n, 2),
                "server_mask": (len(c.inputs["server_mask"]), n, 2),
                "decode": (c.n_outputs, n)}  # fmt: skip

    def inputs(self, c: np.ndarray) -> np.ndarray:
        """Our circuit inputs ``(m, n)`` from our share ``c`` of the layer input (as given)."""
        return c

    def recv_offline(self, conn: Connection, ot: OTReceiver, c: np.ndarray) -> None:
        """Receive tables, mask labels, decode bits; get the labels of our shares ``c``
        (residues ``(m, n)``, or ``(n,)`` for one element per instance) by OT."""
        want = self._shapes()
        dtypes = {"tables": np.uint64, "server_mask": np.uint64, "decode": np.uint8}
        got: dict[str, Any] = {}
        for key, label in (("tables", "gc.tables"), ("server_mask", "gc.mask"),
                           ("decode", "gc.decode")):  # fmt: skip
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
        return A.bits_mod_p(decode(out, m["decode"]), self.p)

"""ReLU channels: the garbled circuit of :mod:`safenet.crypto.gc.relu` run between the parties.

Offline, the server garbles one circuit instance per ReLU element of the layer under the
session's Delta with the layer's own tweak range, sends the tables, the labels of its output
mask ``r`` and the decode bits, and hands the client the labels of the client's share
(known offline) by correlated OT. Online it sends only the labels of its own share
``s + 2^(k-1)`` (the round-half-up offset), ``bits(p)`` labels of 16 bytes per ReLU; the
client evaluates and decodes the integer ``z = max(round(v / 2^k), 0) + r + 1``. The mask
``r`` is a uniform integer ``stat_bits`` wider than the ReLU output (integer masking: ``z``
hides the output up to statistical distance ``2^-stat_bits``, and the circuit needs no
reduction mod p); the client's share is ``z mod p``, the server's ``-(r + 1) mod p``. The
engine sets ``stat_bits`` per session (:func:`safenet.protocol.statistical.relu_stat_bits`:
``42 + log2`` of the session's ReLU elements) so that all masks together stay within 2^-42.
"""

from __future__ import annotations

import numpy as np

from safenet.crypto.gc import decode, evaluate, garble, relu_circuit
from safenet.crypto.gc.circuit import Circuit
from safenet.crypto.gc.garble import Garbled, encode_labels
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.protocol import arith as A
from safenet.protocol.arith import STAT_BITS
from safenet.protocol.transport import Connection, ProtocolError, array_bytes

__all__ = ["STAT_BITS", "ReluClient", "ReluServer"]


class ReluServer:
    """The garbler's half of one activation layer's ReLU channels (``n`` elements)."""

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
        self.p, self.shift, self.n = p, shift, n
        self.circuit: Circuit = relu_circuit(p, shift, stat_bits, clip)
        self.tweak_base = tweak_base
        self.delta = delta
        self._garbled: Garbled | None = None
        self._stored: tuple[np.ndarray, np.ndarray] | None = None
        self.out_share: np.ndarray | None = None  # -r

    @property
    def tweak_end(self) -> int:
        """First tweak after this layer's range (the next layer's ``tweak_base``)."""
        return self.tweak_base + self.circuit.and_count * self.n

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
        self.out_share = A.neg(A.add(A.bits_mod_p(r, self.p), 1, self.p), self.p)  # -(r + 1)

    def online_labels(self, s: np.ndarray) -> np.ndarray:
        """Labels of the server's share ``s`` (+ the rounding offset): once."""
        off = 1 << (self.shift - 1) if self.shift else 0
        bits = A.bits(A.add(s, off, self.p), self.p.bit_length())
        if self._stored is not None:  # restored from a preprocessing bank
            zero, delta = self._stored
            self._stored = None
            return encode_labels(zero, delta, bits)
        g = self._garbled
        if g is None:
            raise RuntimeError("garbled ReLU material already used")
        self._garbled = None
        return g.encode("server_share", bits)

    def export_state(self) -> dict[str, np.ndarray]:
        """What the online phase needs, moved out for a preprocessing bank (once)."""
        g = self._garbled
        if g is None or self.out_share is None:
            raise RuntimeError("garbled ReLU material already used (or offline not done)")
        self._garbled = None
        zero, delta = g.release_for_storage("server_share")
        return {"zero": zero, "delta": delta, "out": self.out_share}

    @classmethod
    def from_state(
        cls,
        p: int,
        shift: int,
        n: int,
        state: dict[str, np.ndarray],
        stat_bits: int = STAT_BITS,
        clip: int | None = None,
    ) -> ReluServer:
        """A layer ready for its online phase, from :meth:`export_state`."""
        obj = cls(p, shift, n, state["delta"], 0, stat_bits, clip)
        if state["zero"].shape != (p.bit_length(), n, 2):
            raise ValueError("stored ReLU labels do not match the layer")
        obj._stored = (state["zero"], state["delta"])
        obj.out_share = state["out"]
        return obj


class ReluClient:
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
        self.p, self.shift, self.n = p, shift, n
        self.circuit: Circuit = relu_circuit(p, shift, stat_bits, clip)
        self.tweak_base = tweak_base
        self._material: dict[str, np.ndarray] | None = None

    @property
    def tweak_end(self) -> int:
        return self.tweak_base + self.circuit.and_count * self.n

    def recv_offline(self, conn: Connection, ot: OTReceiver, c: np.ndarray) -> None:
        """Receive tables, mask labels, decode bits; get own-share labels by OT."""
        nbits, n = self.p.bit_length(), self.n
        want = (self.circuit.and_count, n, 2, 2)
        tables = conn.recv_array("gc.tables", array_bytes(want, np.uint64))
        if tables.shape != want or tables.dtype != np.uint64:
            raise ProtocolError(f"bad garbled tables {tables.dtype} {tables.shape}, want {want}")
        mbits = len(self.circuit.inputs["server_mask"])
        mask = conn.recv_array("gc.mask", array_bytes((mbits, n, 2), np.uint64))
        dec = conn.recv_array("gc.decode", array_bytes((self.circuit.n_outputs, n), np.uint8))
        if mask.shape != (mbits, n, 2) or mask.dtype != np.uint64:
            raise ProtocolError(f"bad mask labels {mask.dtype} {mask.shape}")
        if dec.shape != (self.circuit.n_outputs, n) or dec.dtype != np.uint8:
            raise ProtocolError(f"bad decode bits {dec.dtype} {dec.shape}")
        own = ot.recv_correlated(A.bits(c, nbits).reshape(-1)).reshape(nbits, n, 2)
        self._material = {"tables": tables, "server_mask": mask, "decode": dec, "client_share": own}

    def export_state(self) -> dict[str, np.ndarray]:
        """The received material, moved out for a preprocessing bank (once)."""
        m = self._material
        if m is None:
            raise RuntimeError("garbled ReLU material already used (or never received)")
        self._material = None
        return dict(m)

    @classmethod
    def from_state(
        cls,
        p: int,
        shift: int,
        n: int,
        tweak_base: int,
        stat_bits: int,
        clip: int | None,
        state: dict[str, np.ndarray],
    ) -> ReluClient:
        """A layer ready for its online phase, from :meth:`export_state`."""
        obj = cls(p, shift, n, tweak_base, stat_bits, clip)
        want = {"tables": (obj.circuit.and_count, n, 2, 2),
                "client_share": (p.bit_length(), n, 2),
                "server_mask": (len(obj.circuit.inputs["server_mask"]), n, 2),
                "decode": (obj.circuit.n_outputs, n)}  # fmt: skip
        for k, shape in want.items():
            if state[k].shape != shape:
                raise ValueError(f"stored ReLU {k} has shape {state[k].shape}, want {shape}")
        obj._material = {k: state[k] for k in want}
        return obj

    def evaluate(self, server_labels: np.ndarray) -> np.ndarray:
        """Evaluate with the server's online labels; returns ``z`` (the client's share). Once."""
        m = self._material
        if m is None:
            raise RuntimeError("garbled ReLU material already used (or never received)")
        self._material = None
        nbits = self.p.bit_length()
        if server_labels.shape != (nbits, self.n, 2) or server_labels.dtype != np.uint64:
            raise ProtocolError(f"bad server labels {server_labels.dtype} {server_labels.shape}")
        out = evaluate(
            self.circuit,
            m["tables"],
            {"server_share": server_labels, "client_share": m["client_share"],
             "server_mask": m["server_mask"]},
            tweak_base=self.tweak_base,
        )  # fmt: skip
        return A.bits_mod_p(decode(out, m["decode"]), self.p)

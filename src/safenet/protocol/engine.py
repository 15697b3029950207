"""The two parties of one secure inference: walking a Plan, offline then online.

Invariant that shapes everything: **every client share is known offline.** The client's
share of the input is a random mask ``R_0`` (online it sends ``x - R_0``); a conv/linear
output's client share is what it decrypts from the HE reply; local ops (sum pools, rescales,
residual adds, concatenation, flatten, truncation) act on each share separately; and an
activation's output is *reshared* online: on ReLU channels the client, which learns its
share ``z`` only then, sends ``z - R`` for a fresh offline mask ``R`` and keeps ``R``; on
polynomial channels its share ``R = -floor(R2 / 2^q)`` is fixed offline and it sends the
masked sum ``Y_c + R2`` that the server truncates exactly (:mod:`safenet.protocol.poly`). So
the client does all its work for linear and local ops offline, the server online does
plaintext arithmetic, and each activation layer costs one round trip: the server sends its
garbled-circuit input labels (ReLU channels) and the opening ``v + R1`` (polynomial
channels) in one message, the client answers with the opened ``e`` of the polynomial
channels and the reshare of the whole layer's output.

Per op, with ``S`` / ``C`` the server / client shares of the op's output:

``input``      ``C = R_0``; online ``S = x - R_0`` (sent by the client)
``conv``       offline HE: client sends ``Enc(C_in)``, decrypts ``C = W C_in - T``;
``linear``     online ``S = W S_in + b + T`` (:mod:`safenet.protocol.linear`)
local ops      applied to ``S`` online and to ``C`` offline (:func:`local_op`)
``truncate``   local probabilistic truncation (:mod:`safenet.protocol.arith`); only a
               linear layer fed straight by another one needs it
``activation`` ReLU channels by garbled circuit (:mod:`safenet.protocol.relu`),
               polynomial channels by HE-made tuples (:mod:`safenet.protocol.poly`)
``maxpool``    garbled max per window (:mod:`safenet.protocol.maxpool`), reshared like
               an activation: ``C = R``, one round trip
output         the server sends ``S``; only the client learns ``S + C``.

The server garbles all garbled layers (ReLU channels, max pools) in a worker thread as soon
as the offline phase starts (:class:`~safenet.protocol.garbled.GarblingWorker`, a bounded
amount of tables ahead of what it has sent), under one session Delta that is also its
correlated-OT secret, each layer with its own tweak range; its main thread meanwhile answers
the client's HE requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from safenet.channel import Connection, ProtocolError, array_bytes
from safenet.crypto.aes import random_blocks
from safenet.crypto.gc import relu_circuit, tweak_span, warm_up
from safenet.crypto.gc.circuit import Circuit
from safenet.crypto.gc.maxpool_circuit import max_circuit
from safenet.crypto.he import ClientKeys, HEContext, HEParams
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.field import mod_centered
from safenet.plan.ir import Op, Plan
from safenet.protocol import arith as A
from safenet.protocol import linear as L
from safenet.protocol import poly as P
from safenet.protocol.garbled import GarbledClient, GarbledServer, GarblingWorker
from safenet.protocol.maxpool_layer import MaxPoolClient, MaxPoolServer, pool_windows
from safenet.protocol.profile import Profile
from safenet.protocol.relu_layer import ReluClient, ReluServer
from safenet.protocol.statistical import (
    SessionBudget,
    poly_replies,
)

__all__ = [
    "ClientSession",
    "MaterialSpent",
    "ServerModel",
    "ServerSession",
    "SessionConfig",
    "GarbledLayer",
    "garbled_layers",
    "garbled_table_bytes",
    "local_op",
    "model_version",
]

LOCAL_KINDS = ("sumpool", "rescale", "add", "concat", "flatten", "truncate")


class MaterialSpent(RuntimeError):
    """The session's offline material was already consumed (it is single-use)."""


@dataclass(frozen=True)
class SessionConfig:
    """Parameters both parties must agree on (sent in the handshake).

    Attributes:
        poly_degree: BFV ring dimension N.
    """

    poly_degree: int = 8192

    def he_params(self, p: int) -> HEParams:
        return HEParams(self.poly_degree, p)


def _channel_select(op: Op) -> np.ndarray:
    """The ReLU elements of an activation op: its channel mask broadcast over op.shape."""
    mask = op.arrays["relu_mask"].astype(bool)
    bshape = (op.shape[0],) + (1,) * (len(op.shape) - 1)
    return np.broadcast_to(mask.reshape(bshape), op.shape)


@dataclass(frozen=True, eq=False)
class GarbledLayer:
    """One garbled layer of a session, derived from the public plan by both parties.

    Attributes:
        kind: ``"relu"`` (an activation's ReLU channels) or ``"maxpool"``.
        p: the field prime.
        n: circuit instances (ReLU elements, or max-pool outputs).
        tweak: first tweak of the layer's range (all layers share the session's Delta).
        shift, clip: the ReLU circuit's truncation and clip bound.
        windows: a max pool's input indices per output (:func:`.maxpool.pool_windows`).
    """

    kind: str
    p: int
    n: int
    tweak: int
    shift: int = 0
    clip: int | None = None
    windows: np.ndarray | None = None

    @property
    def circuit(self) -> Circuit:
        if self.windows is not None:
            return max_circuit(self.p, self.windows.shape[1])
        return relu_circuit(self.p, self.shift, self.clip)

    def server(self, delta: np.ndarray) -> GarbledServer:
        """The garbler's half (a fresh layer to garble, or one to :meth:`restore` into)."""
        if self.windows is not None:
            return MaxPoolServer(self.p, self.windows, delta, self.tweak)
        return ReluServer(self.p, self.shift, self.n, delta, self.tweak, self.clip)

    def client(self) -> GarbledClient:
        """The evaluator's half."""
        if self.windows is not None:
            return MaxPoolClient(self.p, self.windows, self.tweak)
        return ReluClient(self.p, self.shift, self.n, self.tweak, self.clip)


def garbled_layers(plan: Plan) -> dict[int, GarbledLayer]:
    """``{op index: layer}`` of every activation with ReLU channels and every max pool, each
    with the next tweak range."""
    p = plan.field.p
    out: dict[int, GarbledLayer] = {}
    tweak = 0
    for i, op in enumerate(plan.ops):
        if op.kind == "activation" and (n := int(_channel_select(op).sum())):
            layer = GarbledLayer("relu", p, n, tweak, op.attrs["shift"], op.attrs.get("clip"))
        elif op.kind == "maxpool":
            windows = pool_windows(op, plan.ops[op.inputs[0]].shape)
            layer = GarbledLayer("maxpool", p, len(windows), tweak, windows=windows)
        else:
            continue
        out[i] = layer
        tweak += tweak_span(layer.circuit, layer.n, rows=True)
    return out


def garbled_table_bytes(plan: Plan) -> int:
    """Bytes of all garbled tables of one session of ``plan``: 32 per AND gate, and 16 per
    output bit (its two 8-byte rows)."""
    layers = garbled_layers(plan).values()
    return sum((32 * g.circuit.and_count + 16 * g.circuit.n_outputs) * g.n for g in layers)


def model_version(plan: Plan) -> str:
    """16 hex digits naming a full plan (weights, coefficients, field): retraining the same
    architecture with the same ReLU masks keeps the public fingerprint but not this."""
    return hashlib.sha256(f"safenet-model-version:{plan.fingerprint()}".encode()).hexdigest()[:16]


def poly_reply_params(plan: Plan, he: HEContext) -> P.ReplyParams:
    """The session's polynomial reply parameters, from the public plan and HE parameters."""
    degrees = [op.attrs.get("degree", 0) for _, op in plan.activations()]
    return P.reply_params(he, poly_replies(plan, he.slots), max(degrees, default=0))


def _pack(
    garbled: dict[int, dict[str, np.ndarray]], polys: dict[int, list[np.ndarray]]
) -> dict[str, np.ndarray]:
    """Bank arrays of per-layer garbled-layer states and polynomial shares (:func:`_unpack`)."""
    arrays = {f"gc/{i}/{k}": v for i, st in garbled.items() for k, v in st.items()}
    arrays |= {f"poly/{i}/{m}": g for i, gs in polys.items() for m, g in enumerate(gs)}
    return arrays


def _unpack(arrays: dict[str, np.ndarray], prefix: str) -> dict[int, dict[str, np.ndarray]]:
    """``{layer: {key: array}}`` of the bank arrays named ``prefix/<layer>/<key>``."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for name, a in arrays.items():
        head, _, rest = name.partition("/")
        if head == prefix:
            i, _, key = rest.partition("/")
            out.setdefault(int(i), {})[key] = a
    return out


def _poly_list(parts: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [parts[str(m)] for m in range(len(parts))]


def local_op(op: Op, ins: list[np.ndarray], p: int, server: bool) -> np.ndarray:
    """A local op on one party's shares (residues); ``server`` picks the truncation half."""
    x = ins[0]
    if op.kind == "sumpool":
        k, s = op.attrs["kernel"], op.attrs["stride"]
        win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
        return np.mod(win.sum(axis=(-1, -2), dtype=np.int64), p)
    if op.kind == "rescale":
        return A.mulmod(x, int(op.attrs["multiplier"]) % p, p)
    if op.kind == "add":
        acc = np.zeros(op.shape, dtype=np.int64)
        for t, sh in zip(ins, op.attrs["shifts"], strict=True):
            acc = A.add(acc, A.mulmod(t, pow(2, sh, p), p), p)
        return acc
    if op.kind == "concat":  # along channels, each share shifted to the common scale
        parts = [
            A.mulmod(t, pow(2, sh, p), p) for t, sh in zip(ins, op.attrs["shifts"], strict=True)
        ]
        return np.concatenate(parts, axis=0)
    if op.kind == "flatten":
        return x.reshape(op.shape)
    if op.kind == "truncate":
        return A.trunc_share(x, op.attrs["shift"], p, server)
    raise ValueError(f"not a local op: {op.kind}")


class ServerModel:
    """What the server prepares once per model and reuses across sessions.

    Holds the full plan (weights), its public view, the HE context and the per-layer HE
    kernels (encoded once).
    """

    def __init__(self, plan: Plan, config: SessionConfig | None = None) -> None:
        if plan.is_public:
            raise ValueError("the server needs the full plan (with weights)")
        self.plan = plan
        self.public = plan.public()
        self.fingerprint = self.public.fingerprint()
        #: which weights answer: a short hash of the full plan, told to clients in the
        #: handshake and recorded with banked material (which it must match)
        self.version = model_version(plan)
        self.config = config or SessionConfig()
        self.he = HEContext(self.config.he_params(plan.field.p))
        self.linear: dict[int, L.ServerLinear] = {}
        for i, op in enumerate(plan.ops):
            if op.kind in ("conv", "linear"):
                in_shape = plan.ops[op.inputs[0]].shape
                self.linear[i] = L.ServerLinear(op, in_shape, self.he)
        #: the session's statistical terms (:mod:`safenet.protocol.statistical`)
        self.budget = SessionBudget(
            poly_degree=self.config.poly_degree,
            linear_replies=sum(lin.packing.n_out for lin in self.linear.values()),
            poly_replies=poly_replies(plan, self.he.slots),
        )
        for lin in self.linear.values():
            lin.check_flood(self.budget.linear_bits)
        #: digits and flood of the polynomial replies (public: the client derives the same)
        self.poly_params = poly_reply_params(plan, self.he)


class _Party:
    def __init__(self, plan: Plan, conn: Connection, keep_trace: bool = False) -> None:
        self.plan = plan
        #: with ``keep_trace``, this party's own share of every op output (for tests that
        #: check a run op by op; a party's own shares reveal nothing it does not hold anyway)
        self.keep_trace = keep_trace
        self.trace: list[np.ndarray] | None = None
        self.conn = conn
        self.p = plan.field.p
        self.prof = Profile(conn)
        self._state = "new"

    def _advance(self, want: str, to: str) -> None:
        if self._state != want:
            if self._state in ("online", "spent"):
                raise MaterialSpent("this session's offline material was already used")
            raise RuntimeError(f"session is {self._state!r}; expected {want!r}")
        self._state = to

    def offline(self) -> None:
        """Run the offline phase with the peer (once)."""
        self._advance("new", "offline")
        with self.prof.phase("offline"):
            self._offline()
            warm_up()  # numba kernels loaded before the online clock starts
        self._state = "ready"

    def _offline(self) -> None:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """This party's profile: phase times, primitives, per-layer bytes, traffic, memory."""
        return self.prof.as_dict()

    def _send_blobs(self, blobs: list[bytes], label: str) -> None:
        self.conn.send_json(len(blobs), label=label)
        for b in blobs:
            self.conn.send(b, label=label)

    def _recv_blobs(self, label: str, expected: int, max_bytes: int) -> list[bytes]:
        """``expected`` frames of at most ``max_bytes`` each; an announced count or size that
        differs is refused before anything is read (a peer cannot make us buffer more)."""
        n = self.conn.recv_json(label=label)
        if n != expected or not isinstance(n, int):
            raise ProtocolError(f"{label}: expected {expected} ciphertexts, peer announced {n!r}")
        return [self.conn.recv(label=label, max_bytes=max_bytes) for _ in range(n)]


class ServerSession(_Party):
    """The server's side of one inference (offline, then online once)."""

    def __init__(self, model: ServerModel, conn: Connection, keep_trace: bool = False) -> None:
        super().__init__(model.plan, conn, keep_trace)
        self.model = model
        self.he = model.he
        self._ct_bytes = model.he.max_ciphertext_bytes

    # ---- offline ------------------------------------------------------------------------
    def _offline(self) -> None:
        conn = self.conn
        with self.prof.primitive("he.keys"):
            data = conn.recv(label="he.pk", max_bytes=self.he.max_public_key_bytes)
            pk = self.he.public_key_from_bytes(data)
        delta = random_blocks((1,))[0]
        delta[0] |= np.uint64(1)
        with self.prof.primitive("ot"):
            ot = OTSender(conn, delta=delta)
            ot.setup()
        # ReLU and max-pool layers, garbled in a worker thread while HE runs here
        gcs = {i: g.server(delta) for i, g in garbled_layers(self.plan).items()}
        worker = GarblingWorker(gcs).start()
        self.T: dict[int, np.ndarray] = {}
        self.garbled = gcs
        self.polys: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        try:
            for i, op in enumerate(self.plan.ops):
                with self.prof.layer(i):
                    if op.kind in ("conv", "linear"):
                        lin = self.model.linear[i]
                        cts = self._recv_blobs("he.linear", lin.packing.n_in, self._ct_bytes)
                        with self.prof.primitive("he.linear"):
                            replies, self.T[i] = lin.respond(cts, pk)
                        self._send_blobs(replies, "he.linear")
                    elif op.kind in ("activation", "maxpool"):
                        if i in gcs:
                            with self.prof.primitive("gc.wait"):
                                layer = worker.wait(i)
                            with self.prof.primitive("gc.send+ot"):
                                layer.send_offline(conn, ot)
                            worker.sent(i)
                        if op.kind == "activation":
                            self._poly_offline(i, op, pk)
        finally:
            worker.close()
        self.prof.seconds["offline", "gc.garble(thread)"] += worker.seconds
        conn.send_json("offline-done", label="offline.done")

    def _poly_offline(self, i: int, op: Op, pk: Any) -> None:
        sel = _channel_select(op)
        if sel.all():
            return
        d = op.attrs["degree"]
        coef = op.arrays["coefficients"]
        per_ch = np.broadcast_to(coef, (op.shape[0], d + 1)) if len(coef) == 1 else coef
        bshape = (op.shape[0],) + (1,) * (len(op.shape) - 1)
        chan = np.broadcast_to(np.arange(op.shape[0]).reshape(bshape), op.shape)
        srv = P.PolyServer(
            self.he, per_ch[chan[~sel]], self.model.poly_params, op.poly_input_shift()
        )
        cts = self._recv_blobs("he.poly", srv.expected_ciphertexts, self._ct_bytes)
        with self.prof.primitive("he.poly"):
            replies = srv.respond(cts, pk)
        self._send_blobs(replies, "he.poly")
        self.polys[i] = srv.take()

    # ---- preprocessing bank -------------------------------------------------------------
    def export_material(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Move this session's offline material out, for a bank; the session is then spent.

        Everything else the online phase needs (layer shapes, shifts) comes from the plan."""
        self._advance("ready", "spent")
        relu = {i: r.export_state() for i, r in self.garbled.items()}
        polys = {i: [r1, *g_s] for i, (r1, g_s) in self.polys.items()}
        arrays = _pack(relu, polys) | {f"T/{i}": t for i, t in self.T.items()}
        self.T, self.garbled, self.polys = {}, {}, {}
        return arrays, {}

    @classmethod
    def from_material(
        cls,
        model: ServerModel,
        conn: Connection,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
    ) -> ServerSession:
        """A session ready for its online phase, from :meth:`export_material`."""
        sess = cls(model, conn)
        sess.T = {int(i): st[""] for i, st in _unpack(arrays, "T").items()}
        states = _unpack(arrays, "gc")
        sess.garbled = {}
        for i, g in garbled_layers(model.plan).items():
            sess.garbled[i] = g.server(states[i]["delta"])
            sess.garbled[i].restore(states[i])
        polys = {i: _poly_list(parts) for i, parts in _unpack(arrays, "poly").items()}
        sess.polys = {i: (lst[0], lst[1:]) for i, lst in polys.items()}
        want = {i for i, op in enumerate(model.plan.ops) if op.kind in ("conv", "linear")}
        if set(sess.T) != want:
            raise ValueError("stored material does not match the plan's linear layers")
        warm_up()
        sess._state = "ready"
        return sess

    # ---- online -------------------------------------------------------------------------
    def online(self) -> None:
        self._advance("ready", "online")
        with self.prof.phase("online"), _one_blas_thread():
            self._online()
        self._state = "spent"
        self.T.clear()
        self.polys.clear()

    def _online(self) -> None:
        conn, p, plan = self.conn, self.p, self.plan
        S: list[np.ndarray] = []
        for i, op in enumerate(plan.ops):
            with self.prof.layer(i):
                ins = [S[j] for j in op.inputs]
                if op.kind == "input":
                    x = conn.recv_array("online.input", array_bytes(op.shape, np.int64))
                    _check(x, op.shape, p, "input")
                    out = x
                elif op.kind in ("conv", "linear"):
                    with self.prof.primitive("linear.plain"):
                        wx = L.linear_mod_p(op, ins[0], p, self.model.linear[i].prepared)
                        b = A.to_residues(op.arrays["bias"], p)
                        b = b.reshape((-1,) + (1,) * (len(op.shape) - 1))
                        out = A.add(A.add(wx, np.broadcast_to(b, op.shape), p), self.T.pop(i), p)
                elif op.kind in LOCAL_KINDS:
                    out = local_op(op, ins, p, server=True)
                elif op.kind == "activation":
                    out = self._activation_online(i, op, ins[0])
                elif op.kind == "maxpool":
                    out = self._maxpool_online(i, op, ins[0])
                else:
                    raise ValueError(f"unknown op kind {op.kind!r}")
                S.append(out)
        conn.send_array(S[-1], label="online.output")
        if self.keep_trace:
            self.trace = S

    def _activation_online(self, i: int, op: Op, s: np.ndarray) -> np.ndarray:
        p = self.p
        sel = _channel_select(op)
        msg_labels = np.zeros((0,), dtype=np.uint64)
        w = np.zeros(0, dtype=np.int64)
        out = np.zeros(op.shape, dtype=np.int64)
        if i in self.garbled:
            with self.prof.primitive("gc.encode"):
                msg_labels = self.garbled[i].online_labels(s[sel])
            out[sel] = self.garbled[i].out_share
            del self.garbled[i]
        poly = self.polys.pop(i, None)
        if poly is not None:
            with self.prof.primitive("poly"):
                w = P.server_open(s[~sel], poly[0], p)
        self.conn.send_array(msg_labels, label="online.labels")
        self.conn.send_array(w, label="online.open")
        # the plan says which layers have polynomial channels: only those carry ``e``
        if poly is not None:
            e = self.conn.recv_array("online.poly", array_bytes(w.shape, np.int64))
        else:
            e = w
        d = self.conn.recv_array("online.reshare", array_bytes(op.shape, np.int64))
        _check(e, (len(w),), p, "polynomial opening")
        _check(d, op.shape, p, "reshare")
        out = A.add(out, d, p)
        if poly is not None:
            with self.prof.primitive("poly"):
                out[~sel] = P.server_finish(e, d[~sel], poly[1], op.attrs["poly_shift"], p)
        return out

    def _maxpool_online(self, i: int, op: Op, s: np.ndarray) -> np.ndarray:
        """Labels of our input shares out, the client's reshare ``z - R`` back."""
        layer = self.garbled.pop(i)
        with self.prof.primitive("gc.encode"):
            labels = layer.online_labels(s)
        self.conn.send_array(labels, label="online.labels")
        d = self.conn.recv_array("online.reshare", array_bytes(op.shape, np.int64))
        _check(d, op.shape, self.p, "reshare")
        return A.add(layer.out_share.reshape(op.shape), d, self.p)


class ClientSession(_Party):
    """The client's side of one inference, on the public plan (it never sees weights)."""

    def __init__(
        self,
        plan: Plan,
        conn: Connection,
        config: SessionConfig | None = None,
        keep_trace: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(plan if plan.is_public else plan.public(), conn, keep_trace)
        self.config = config or SessionConfig()
        #: ``progress(done, total)`` after each op of the offline phase (for progress bars)
        self.progress = progress

    # ---- offline ------------------------------------------------------------------------
    def _offline(self) -> None:
        conn, p, plan = self.conn, self.p, self.plan
        with self.prof.primitive("he.keys"):
            keys = ClientKeys(HEContext(self.config.he_params(p)))
            conn.send(keys.public_key_bytes, label="he.pk")
        with self.prof.primitive("ot"):
            ot = OTReceiver(conn)
            ot.setup()
        C: list[np.ndarray] = []
        self._poly_params = poly_reply_params(plan, keys.he)
        self.garbled: dict[int, GarbledClient] = {}
        self.polys: dict[int, list[np.ndarray]] = {}
        self.masks: dict[int, np.ndarray] = {}
        layers = garbled_layers(plan)
        for i, op in enumerate(plan.ops):
            with self.prof.layer(i):
                ins = [C[j] for j in op.inputs]
                if op.kind == "input":
                    out = A.uniform(op.shape, p)
                    self.masks[i] = out
                elif op.kind in ("conv", "linear"):
                    in_shape = plan.ops[op.inputs[0]].shape
                    packing = L.LinearPacking(op, in_shape, keys.he)
                    with self.prof.primitive("he.linear"):
                        cts = L.client_encrypt(packing, keys, ins[0])
                    self._send_blobs(cts, "he.linear")
                    replies = self._recv_blobs(
                        "he.linear", packing.n_out, keys.he.max_ciphertext_bytes
                    )
                    with self.prof.primitive("he.linear"):
                        out = L.client_decrypt(packing, keys, replies)
                elif op.kind in LOCAL_KINDS:
                    out = local_op(op, ins, p, server=False)
                elif op.kind == "activation":
                    sel = _channel_select(op)
                    c = ins[0]
                    if i in layers:
                        r = layers[i].client()
                        with self.prof.primitive("gc.recv+ot"):
                            r.recv_offline(conn, ot, c[sel])
                        self.garbled[i] = r
                    out = A.uniform(op.shape, p)  # the reshare mask R: our share after the layer
                    if not sel.all():
                        out[~sel] = self._poly_offline(i, op, keys, c[~sel])
                    self.masks[i] = out
                elif op.kind == "maxpool":
                    mp = layers[i].client()
                    with self.prof.primitive("gc.recv+ot"):
                        mp.recv_offline(conn, ot, mp.inputs(ins[0]))
                    self.garbled[i] = mp
                    out = A.uniform(op.shape, p)  # the reshare mask, as for activations
                    self.masks[i] = out
                else:
                    raise ValueError(f"unknown op kind {op.kind!r}")
                C.append(out)
            if self.progress is not None:
                self.progress(i + 1, len(plan.ops))
        if conn.recv_json(label="offline.done") != "offline-done":
            raise ProtocolError("server did not finish the offline phase")
        self.C_out = C[-1]
        if self.keep_trace:
            self.trace = C

    def _poly_offline(self, i: int, op: Op, keys: ClientKeys, c: np.ndarray) -> np.ndarray:
        """Tuples for the polynomial channels (share ``c`` of their input); keeps
        ``[c, a_c, R2, G_0..G_d]`` and returns its output share ``-floor(R2 / 2^q)``."""
        d, p = op.attrs["degree"], self.p
        a_c, r2 = A.uniform(len(c), p), A.bounded_mask(len(c), p)
        with self.prof.primitive("he.poly"):
            cts = P.client_encrypt(keys, a_c, d, self._poly_params)
        self._send_blobs(cts, "he.poly")
        n_replies = d * -(-len(c) // keys.he.slots)
        replies = self._recv_blobs("he.poly", n_replies, keys.he.max_ciphertext_bytes)
        with self.prof.primitive("he.poly"):
            self.polys[i] = [c, a_c, r2, *P.client_decrypt(keys, replies, len(c), d)]
        return A.mask_trunc(r2, op.attrs["poly_shift"], p)

    # ---- preprocessing bank -------------------------------------------------------------
    def export_material(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Move this session's offline material out, for a bank; the session is then spent."""
        self._advance("ready", "spent")
        relu = {i: r.export_state() for i, r in self.garbled.items()}
        arrays = _pack(relu, self.polys) | {"C_out": self.C_out}
        arrays |= {f"mask/{i}": m for i, m in self.masks.items()}
        self.masks, self.garbled, self.polys = {}, {}, {}
        return arrays, {}

    @classmethod
    def from_material(
        cls,
        plan: Plan,
        conn: Connection,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        config: SessionConfig | None = None,
    ) -> ClientSession:
        """A session ready for its online phase, from :meth:`export_material`."""
        sess = cls(plan, conn, config)
        sess.C_out = arrays["C_out"]
        sess.masks = {int(k.split("/")[1]): v for k, v in arrays.items() if k.startswith("mask/")}
        states = _unpack(arrays, "gc")
        sess.garbled = {}
        for i, g in garbled_layers(sess.plan).items():
            sess.garbled[i] = g.client()
            sess.garbled[i].restore(states[i])
        sess.polys = {i: _poly_list(parts) for i, parts in _unpack(arrays, "poly").items()}
        kinds = ("input", "activation", "maxpool")
        want = {i for i, op in enumerate(sess.plan.ops) if op.kind in kinds}
        if set(sess.masks) != want or sess.C_out.shape != tuple(sess.plan.output.shape):
            raise ValueError("stored material does not match the plan")
        warm_up()
        sess._state = "ready"
        return sess

    # ---- online -------------------------------------------------------------------------
    def online(self, x: np.ndarray) -> np.ndarray:
        """Run the online phase on encoded input ``x`` (signed int64, the plan's input shape);
        returns the output as centred int64 at the plan's output scale."""
        x = np.asarray(x)
        if tuple(x.shape) != tuple(self.plan.input_shape):
            raise ValueError(f"input shape {tuple(x.shape)} != plan input {self.plan.input_shape}")
        self._advance("ready", "online")
        with self.prof.phase("online"), _one_blas_thread():
            y = self._online(A.to_residues(x, self.p))
        self._state = "spent"
        return y

    def _online(self, x: np.ndarray) -> np.ndarray:
        conn, p = self.conn, self.p
        for i, op in enumerate(self.plan.ops):
            with self.prof.layer(i):
                if op.kind == "input":
                    conn.send_array(A.sub(x, self.masks.pop(i), p), label="online.input")
                elif op.kind == "activation":
                    self._activation_online(i, op)
                elif op.kind == "maxpool":
                    self._maxpool_online(i, op)
        s = conn.recv_array("online.output", array_bytes(self.plan.output.shape, np.int64))
        _check(s, self.plan.output.shape, p, "output")
        y = A.add(s, self.C_out, p)
        return mod_centered(y, p)

    def _activation_online(self, i: int, op: Op) -> None:
        p = self.p
        sel = _channel_select(op)
        n_relu = int(sel.sum()) if i in self.garbled else 0
        labels = self.conn.recv_array(
            "online.labels", array_bytes((p.bit_length(), n_relu, 2), np.uint64)
        )
        n_open = int((~sel).sum()) if i in self.polys else 0
        w = self.conn.recv_array("online.open", array_bytes((n_open,), np.int64))
        out = np.zeros(op.shape, dtype=np.int64)
        if i in self.garbled:
            with self.prof.primitive("gc.eval"):
                out[sel] = self.garbled.pop(i).evaluate(labels)
        reshare = A.sub(out, self.masks.pop(i), p)
        if i in self.polys:
            c, a_c, r2, *g_c = self.polys.pop(i)
            _check(w, c.shape, p, "opening")
            with self.prof.primitive("poly"):
                e, reshare[~sel] = P.client_step(w, c, a_c, g_c, r2, op.poly_input_shift(), p)
            self.conn.send_array(e, label="online.poly")
        self.conn.send_array(reshare, label="online.reshare")

    def _maxpool_online(self, i: int, op: Op) -> None:
        layer = self.garbled.pop(i)
        width = len(layer.circuit.inputs["server_share"])
        labels = self.conn.recv_array("online.labels", array_bytes((width, layer.n, 2), np.uint64))
        with self.prof.primitive("gc.eval"):
            z = layer.evaluate(labels).reshape(op.shape)
        self.conn.send_array(A.sub(z, self.masks.pop(i), self.p), label="online.reshare")


_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0
_BLAS_LIMIT: threadpool_limits | None = None


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the online phase: its matrix products are small there, and
    OpenBLAS's idle threads spin for a while after each call, taking the cores the garbled
    circuit evaluation needs (measured: 1.6 -> 1.1-1.3 s online for an all-ReLU ResNet-32
    with both parties on one 2-core machine). The limit is process-wide, so it is counted:
    set by the first online phase to start, restored by the last to end (both parties may
    run in one process)."""
    global _BLAS_USERS, _BLAS_LIMIT
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0 and _BLAS_LIMIT is not None:
                _BLAS_LIMIT.restore_original_limits()
                _BLAS_LIMIT = None


def _check(a: np.ndarray, shape: tuple[int, ...], p: int, what: str) -> None:
    if a.dtype != np.int64 or tuple(a.shape) != tuple(shape):
        raise ProtocolError(f"{what}: expected int64 {tuple(shape)}, got {a.dtype} {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= p):
        raise ProtocolError(f"{what}: values are not residues mod p")

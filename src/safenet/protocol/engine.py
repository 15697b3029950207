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
local ops      applied to ``S`` online and to ``C`` offline (:func:`.layers.local_op`)
``truncate``   local probabilistic truncation (:mod:`safenet.protocol.arith`); only a
               linear layer fed straight by another one needs it
``activation`` ReLU channels by garbled circuit (:mod:`safenet.protocol.relu_layer`),
               polynomial channels by HE-made tuples (:mod:`safenet.protocol.poly`)
``maxpool``    garbled max per window (:mod:`safenet.protocol.maxpool_layer`), reshared like
               an activation: ``C = R``, one round trip
output         the server sends ``S``; only the client learns ``S + C``.

Each op kind's steps (both parties, offline and online) are one handler class in
:mod:`safenet.protocol.layers`; this module holds the sessions, which walk the plan and
dispatch every op through :func:`~safenet.protocol.layers.handler`, the session-wide setup
(keys, OT, the garbling worker) and the preprocessing-bank export and import.

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

from safenet.channel import Channel, ProtocolError, array_bytes
from safenet.crypto.aes import random_blocks
from safenet.crypto.gc import tweak_span, warm_up
from safenet.crypto.he import ClientKeys, HEContext, HEParams
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.field import mod_centered
from safenet.plan.ir import Plan
from safenet.plan.ops import Activation
from safenet.protocol import arith as A
from safenet.protocol import linear as L
from safenet.protocol import poly as P
from safenet.protocol.garbled import GarbledClient, GarbledServer, GarblingWorker
from safenet.protocol.layers import (
    ClientOffline,
    GarbledLayer,
    ServerOffline,
    handler,
)
from safenet.protocol.profile import Profile
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
    "garbled_layers",
    "garbled_table_bytes",
    "model_version",
]


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


def garbled_layers(plan: Plan) -> dict[int, GarbledLayer]:
    """``{op index: layer}`` of every activation with ReLU channels and every max pool, each
    with the next tweak range."""
    out: dict[int, GarbledLayer] = {}
    tweak = 0
    for i, op in enumerate(plan.ops):
        layer = handler(op).garbled_layer(op, plan, tweak)
        if layer is not None:
            out[i] = layer
            tweak += tweak_span(layer.circuit, layer.n, rows=True)
    return out


def garbled_table_bytes(plan: Plan) -> int:
    """Bytes of all garbled tables of one session of ``plan``: 32 per AND gate, and 16 per
    output bit (its two 8-byte rows)."""
    layers = garbled_layers(plan).values()
    return sum(g.circuit.sent_bytes * g.n for g in layers)


def model_version(plan: Plan) -> str:
    """16 hex digits naming a full plan (weights, coefficients, field): retraining the same
    architecture with the same ReLU masks keeps the public fingerprint but not this."""
    return hashlib.sha256(f"safenet-model-version:{plan.fingerprint()}".encode()).hexdigest()[:16]


def poly_reply_params(plan: Plan, he: HEContext) -> P.ReplyParams:
    """The session's polynomial reply parameters, from the public plan and HE parameters."""
    degrees = [op.attrs_as(Activation).degree for _, op in plan.activations()]
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


def _poly_lists(arrays: dict[str, np.ndarray]) -> dict[int, list[np.ndarray]]:
    """The banked polynomial shares ``poly/<layer>/<m>``, per layer in order of ``m``."""
    polys = _unpack(arrays, "poly")
    return {i: [parts[str(m)] for m in range(len(parts))] for i, parts in polys.items()}


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
            if handler(op).he_linear:
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
    """What both sessions share: the plan, the connection, the profile, the phase state and
    the message helpers the per-op steps (:mod:`safenet.protocol.layers`) use."""

    def __init__(self, plan: Plan, conn: Channel, keep_trace: bool = False) -> None:
        self.plan = plan
        #: with ``keep_trace``, this party's own share of every op output (for tests that
        #: check a run op by op; a party's own shares reveal nothing it does not hold anyway)
        self.keep_trace = keep_trace
        self.trace: list[np.ndarray] | None = None
        self.conn = conn
        self.p: int = plan.field.p
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

    def _restored(self, ok: bool, message: str) -> None:
        """Finish :meth:`from_material`: refuse material that does not fit the plan, else
        the session is ready for its online phase."""
        if not ok:
            raise ValueError(message)
        warm_up()
        self._state = "ready"

    def _mask_ops(self, client_mask: bool) -> set[int]:
        """Ops whose handler keeps an HE mask (server) or a client mask (client)."""
        return {
            i
            for i, op in enumerate(self.plan.ops)
            if (handler(op).client_mask if client_mask else handler(op).he_linear)
        }

    def report(self) -> dict[str, Any]:
        """This party's profile: phase times, primitives, per-layer bytes, traffic, memory."""
        return self.prof.as_dict()

    def send_blobs(self, blobs: list[bytes], label: str) -> None:
        self.conn.send_json(len(blobs), label=label)
        for b in blobs:
            self.conn.send(b, label=label)

    def recv_blobs(self, label: str, expected: int, max_bytes: int) -> list[bytes]:
        """``expected`` frames of at most ``max_bytes`` each; an announced count or size that
        differs is refused before anything is read (a peer cannot make us buffer more)."""
        n = self.conn.recv_json(label=label)
        if n != expected or not isinstance(n, int):
            raise ProtocolError(f"{label}: expected {expected} ciphertexts, peer announced {n!r}")
        return [self.conn.recv(label=label, max_bytes=max_bytes) for _ in range(n)]

    def check(self, a: np.ndarray, shape: tuple[int, ...], what: str) -> None:
        """Refuse a received array that is not int64 residues mod p of ``shape``."""
        _check(a, shape, self.p, what)


class ServerSession(_Party):
    """The server's side of one inference (offline, then online once)."""

    def __init__(self, model: ServerModel, conn: Channel, keep_trace: bool = False) -> None:
        super().__init__(model.plan, conn, keep_trace)
        self.model = model
        self.he = model.he
        self.linear = model.linear
        self.poly_params = model.poly_params
        self.ct_bytes: int = model.he.max_ciphertext_bytes
        #: per linear layer, the mask ``T`` of its output
        self.T: dict[int, np.ndarray] = {}
        #: the garbled layers (ReLU channels, max pools), garbled offline, encoded online
        self.garbled: dict[int, GarbledServer] = {}
        #: per activation with polynomial channels, ``(R1, [G_0..G_d])``
        self.polys: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}

    # ---- offline ------------------------------------------------------------------------
    def _offline(self) -> None:
        pk = self._recv_public_key()
        delta, ot = self._setup_ot()
        # ReLU and max-pool layers, garbled in a worker thread while HE runs here
        self.garbled = {i: g.server(delta) for i, g in garbled_layers(self.plan).items()}
        worker = GarblingWorker(self.garbled).start()
        try:
            ctx = ServerOffline(pk, ot, worker)
            for i, op in enumerate(self.plan.ops):
                with self.prof.layer(i):
                    handler(op).server_offline(self, i, op, ctx)
        finally:
            worker.close()
        self.prof.seconds["offline", "gc.garble(thread)"] += worker.seconds
        self.conn.send_json("offline-done", label="offline.done")

    def _recv_public_key(self) -> Any:
        with self.prof.primitive("he.keys"):
            data = self.conn.recv(label="he.pk", max_bytes=self.he.max_public_key_bytes)
            return self.he.public_key_from_bytes(data)

    def _setup_ot(self) -> tuple[np.ndarray, OTSender]:
        """The session's Delta (lowest bit set: the point-and-permute bit) and the
        correlated OT that uses it as its secret."""
        delta = random_blocks((1,))[0]
        delta[0] |= np.uint64(1)
        with self.prof.primitive("ot"):
            ot = OTSender(self.conn, delta=delta)
            ot.setup()
        return delta, ot

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
        conn: Channel,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
    ) -> ServerSession:
        """A session ready for its online phase, from :meth:`export_material`."""
        sess = cls(model, conn)
        sess.T = {int(i): st[""] for i, st in _unpack(arrays, "T").items()}
        states = _unpack(arrays, "gc")
        for i, g in garbled_layers(model.plan).items():
            sess.garbled[i] = g.server(states[i]["delta"])
            sess.garbled[i].restore(states[i])
        sess.polys = {i: (lst[0], lst[1:]) for i, lst in _poly_lists(arrays).items()}
        sess._restored(
            set(sess.T) == sess._mask_ops(client_mask=False),
            "stored material does not match the plan's linear layers",
        )
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
        S: list[np.ndarray] = []
        for i, op in enumerate(self.plan.ops):
            with self.prof.layer(i):
                S.append(handler(op).server_online(self, i, op, [S[j] for j in op.inputs]))
        self.conn.send_array(S[-1], label="online.output")
        if self.keep_trace:
            self.trace = S


class ClientSession(_Party):
    """The client's side of one inference, on the public plan (it never sees weights)."""

    def __init__(
        self,
        plan: Plan,
        conn: Channel,
        config: SessionConfig | None = None,
        keep_trace: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(plan if plan.is_public else plan.public(), conn, keep_trace)
        self.config = config or SessionConfig()
        #: ``progress(done, total)`` after each op of the offline phase (for progress bars)
        self.progress = progress
        #: the garbled layers' evaluator halves, received offline, evaluated online
        self.garbled: dict[int, GarbledClient] = {}
        #: per activation with polynomial channels, ``[c, a_c, R2, G_0..G_d]``
        self.polys: dict[int, list[np.ndarray]] = {}
        #: the input mask ``R_0`` and each reshared layer's mask ``R``
        self.masks: dict[int, np.ndarray] = {}
        #: the client's share of the output (set offline)
        self.C_out: np.ndarray | None = None

    # ---- offline ------------------------------------------------------------------------
    def _offline(self) -> None:
        keys = self._send_public_key()
        with self.prof.primitive("ot"):
            ot = OTReceiver(self.conn)
            ot.setup()
        ctx = ClientOffline(
            keys, ot, garbled_layers(self.plan), poly_reply_params(self.plan, keys.he)
        )
        C: list[np.ndarray] = []
        for i, op in enumerate(self.plan.ops):
            with self.prof.layer(i):
                C.append(handler(op).client_offline(self, i, op, [C[j] for j in op.inputs], ctx))
            if self.progress is not None:
                self.progress(i + 1, len(self.plan.ops))
        if self.conn.recv_json(label="offline.done") != "offline-done":
            raise ProtocolError("server did not finish the offline phase")
        self.C_out = C[-1]
        if self.keep_trace:
            self.trace = C

    def _send_public_key(self) -> ClientKeys:
        with self.prof.primitive("he.keys"):
            keys = ClientKeys(HEContext(self.config.he_params(self.p)))
            self.conn.send(keys.public_key_bytes, label="he.pk")
        return keys

    # ---- preprocessing bank -------------------------------------------------------------
    def export_material(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Move this session's offline material out, for a bank; the session is then spent."""
        self._advance("ready", "spent")
        assert self.C_out is not None  # set by the offline phase, which "ready" implies
        relu = {i: r.export_state() for i, r in self.garbled.items()}
        arrays = _pack(relu, self.polys) | {"C_out": self.C_out}
        arrays |= {f"mask/{i}": m for i, m in self.masks.items()}
        self.masks, self.garbled, self.polys = {}, {}, {}
        return arrays, {}

    @classmethod
    def from_material(
        cls,
        plan: Plan,
        conn: Channel,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        config: SessionConfig | None = None,
    ) -> ClientSession:
        """A session ready for its online phase, from :meth:`export_material`."""
        sess = cls(plan, conn, config)
        c_out = sess.C_out = arrays["C_out"]
        sess.masks = {int(k.split("/")[1]): v for k, v in arrays.items() if k.startswith("mask/")}
        states = _unpack(arrays, "gc")
        for i, g in garbled_layers(sess.plan).items():
            sess.garbled[i] = g.client()
            sess.garbled[i].restore(states[i])
        sess.polys = _poly_lists(arrays)
        sess._restored(
            set(sess.masks) == sess._mask_ops(client_mask=True)
            and c_out.shape == tuple(sess.plan.output.shape),
            "stored material does not match the plan",
        )
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
        for i, op in enumerate(self.plan.ops):
            with self.prof.layer(i):
                handler(op).client_online(self, i, op, x)
        out_shape = self.plan.output.shape
        s = self.conn.recv_array("online.output", array_bytes(out_shape, np.int64))
        self.check(s, out_shape, "output")
        assert self.C_out is not None  # set offline or from material
        return mod_centered(A.add(s, self.C_out, self.p), self.p)


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

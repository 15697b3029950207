"""The protocol's steps per op kind: one handler class each, and the registry the engine
dispatches through (:func:`handler`).

A :class:`Layer` holds, for one op kind, what each party does with an op of that kind in the
offline and online phases, and what it contributes to a session's derived structure (a
garbled layer, HE kernels, a client mask). The engine (:mod:`safenet.protocol.engine`) walks
the plan and calls these steps in plan order, so the messages each step sends and receives
are the protocol's lockstep order. Adding an op kind means one class here and one entry in
:data:`HANDLERS`.

The sessions reach the handlers as :class:`ServerParty` / :class:`ClientParty`: the state and
message helpers a step may use (this module imports nothing from the engine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from safenet.channel import Channel, array_bytes
from safenet.crypto.gc import relu_circuit
from safenet.crypto.gc.circuit import Circuit
from safenet.crypto.gc.maxpool_circuit import max_circuit
from safenet.crypto.he import ClientKeys, HEContext
from safenet.crypto.ot import OTReceiver, OTSender
from safenet.plan.ir import Plan
from safenet.plan.ops import (
    LOCAL_OPS,
    Activation,
    Add,
    Concat,
    Conv,
    Flatten,
    Input,
    Linear,
    MaxPool,
    Op,
    OpAttrs,
    Rescale,
    SumPool,
    Truncate,
)
from safenet.protocol import arith as A
from safenet.protocol import linear as L
from safenet.protocol import poly as P
from safenet.protocol.garbled import GarbledClient, GarbledServer, GarblingWorker
from safenet.protocol.maxpool_layer import MaxPoolClient, MaxPoolServer, pool_windows
from safenet.protocol.profile import Profile
from safenet.protocol.relu_layer import ReluClient, ReluServer

__all__ = [
    "HANDLERS",
    "ClientOffline",
    "ClientParty",
    "GarbledLayer",
    "Layer",
    "ServerOffline",
    "ServerParty",
    "channel_select",
    "handler",
    "local_op",
]


def channel_select(op: Op) -> np.ndarray:
    """The ReLU elements of an activation op: its channel mask broadcast over op.shape."""
    mask = op.arrays["relu_mask"].astype(bool)
    bshape = (op.shape[0],) + (1,) * (len(op.shape) - 1)
    return np.broadcast_to(mask.reshape(bshape), op.shape)


@dataclass(frozen=True, eq=False)
class GarbledLayer:
    """One garbled layer of a session, derived from the public plan by both parties.

    Attributes:
        p: the field prime.
        n: circuit instances (ReLU elements, or max-pool outputs).
        tweak: first tweak of the layer's range (all layers share the session's Delta).
        shift, clip: the ReLU circuit's truncation and clip bound.
        windows: a max pool's input indices per output (:func:`.maxpool_layer.pool_windows`).
    """

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


# ---- what a step may use of its session -----------------------------------------------------
class _Party(Protocol):
    plan: Plan
    conn: Channel
    p: int
    prof: Profile

    def send_blobs(self, blobs: list[bytes], label: str) -> None: ...

    def recv_blobs(self, label: str, expected: int, max_bytes: int) -> list[bytes]: ...

    def check(self, a: np.ndarray, shape: tuple[int, ...], what: str) -> None: ...


class ServerParty(_Party, Protocol):
    """The server session as its steps see it."""

    @property
    def linear(self) -> dict[int, L.ServerLinear]: ...  # the model's HE kernels

    @property
    def poly_params(self) -> P.ReplyParams: ...

    he: HEContext
    ct_bytes: int
    #: per linear layer, the mask ``T`` of its output
    T: dict[int, np.ndarray]
    garbled: dict[int, GarbledServer]
    #: per activation with polynomial channels, ``(R1, [G_0..G_d])``
    polys: dict[int, tuple[np.ndarray, list[np.ndarray]]]


class ClientParty(_Party, Protocol):
    """The client session as its steps see it."""

    garbled: dict[int, GarbledClient]
    #: per activation with polynomial channels, ``[c, a_c, R2, G_0..G_d]``
    polys: dict[int, list[np.ndarray]]
    #: the input mask ``R_0`` and each reshared layer's mask ``R``
    masks: dict[int, np.ndarray]


@dataclass
class ServerOffline:
    """What the server's offline steps share: the client's key, the OT and the garbler."""

    public_key: Any
    ot: OTSender
    worker: GarblingWorker


@dataclass
class ClientOffline:
    """What the client's offline steps share: its keys, the OT, the garbled layers."""

    keys: ClientKeys
    ot: OTReceiver
    garbled: dict[int, GarbledLayer]
    poly_params: P.ReplyParams


# ---- the handlers -----------------------------------------------------------------------------
class Layer:
    """One op kind's protocol steps; the defaults do nothing (a party with no work there)."""

    #: the server answers this op's HE requests offline (and keeps its output mask ``T``)
    he_linear: ClassVar[bool] = False
    #: the client keeps a mask for this op from offline to online (its input or reshare)
    client_mask: ClassVar[bool] = False

    def garbled_layer(self, op: Op, plan: Plan, tweak: int) -> GarbledLayer | None:
        """The op's garbled layer starting at ``tweak``, if it has one."""
        return None

    def server_offline(self, srv: ServerParty, i: int, op: Op, ctx: ServerOffline) -> None:
        """The server's offline messages for op ``i``."""

    def server_online(self, srv: ServerParty, i: int, op: Op, ins: list[np.ndarray]) -> np.ndarray:
        """The server's share of op ``i``'s output from its shares of the inputs."""
        raise NotImplementedError

    def client_offline(
        self, cli: ClientParty, i: int, op: Op, ins: list[np.ndarray], ctx: ClientOffline
    ) -> np.ndarray:
        """The client's share of op ``i``'s output (all known offline)."""
        raise NotImplementedError

    def client_online(self, cli: ClientParty, i: int, op: Op, x: np.ndarray) -> None:
        """The client's online messages for op ``i`` (``x``: its input, as residues)."""


class InputLayer(Layer):
    """``C = R_0``; online the client sends ``x - R_0``, the server's share."""

    client_mask = True

    def server_online(self, srv: ServerParty, i: int, op: Op, ins: list[np.ndarray]) -> np.ndarray:
        x = srv.conn.recv_array("online.input", array_bytes(op.shape, np.int64))
        srv.check(x, op.shape, "input")
        return x

    def client_offline(
        self, cli: ClientParty, i: int, op: Op, ins: list[np.ndarray], ctx: ClientOffline
    ) -> np.ndarray:
        out = A.uniform(op.shape, cli.p)
        cli.masks[i] = out
        return out

    def client_online(self, cli: ClientParty, i: int, op: Op, x: np.ndarray) -> None:
        cli.conn.send_array(A.sub(x, cli.masks.pop(i), cli.p), label="online.input")


class LinearLayer(Layer):
    """Conv and linear: offline HE (the client sends ``Enc(C_in)``, decrypts
    ``C = W C_in - T``); online the server computes ``S = W S_in + b + T`` in plaintext."""

    he_linear = True

    def server_offline(self, srv: ServerParty, i: int, op: Op, ctx: ServerOffline) -> None:
        lin = srv.linear[i]
        cts = srv.recv_blobs("he.linear", lin.packing.n_in, srv.ct_bytes)
        with srv.prof.primitive("he.linear"):
            replies, srv.T[i] = lin.respond(cts, ctx.public_key)
        srv.send_blobs(replies, "he.linear")

    def server_online(self, srv: ServerParty, i: int, op: Op, ins: list[np.ndarray]) -> np.ndarray:
        p = srv.p
        with srv.prof.primitive("linear.plain"):
            wx = L.linear_mod_p(op, ins[0], p, srv.linear[i].prepared)
            b = A.to_residues(op.arrays["bias"], p)
            b = b.reshape((-1,) + (1,) * (len(op.shape) - 1))
            return A.add(A.add(wx, np.broadcast_to(b, op.shape), p), srv.T.pop(i), p)

    def client_offline(
        self, cli: ClientParty, i: int, op: Op, ins: list[np.ndarray], ctx: ClientOffline
    ) -> np.ndarray:
        keys = ctx.keys
        packing = L.LinearPacking(op, cli.plan.ops[op.inputs[0]].shape, keys.he)
        with cli.prof.primitive("he.linear"):
            cts = L.client_encrypt(packing, keys, ins[0])
        cli.send_blobs(cts, "he.linear")
        replies = cli.recv_blobs("he.linear", packing.n_out, keys.he.max_ciphertext_bytes)
        with cli.prof.primitive("he.linear"):
            return L.client_decrypt(packing, keys, replies)


def _shifted(ins: list[np.ndarray], shifts: list[int], p: int) -> list[np.ndarray]:
    return [A.mulmod(t, pow(2, sh, p), p) for t, sh in zip(ins, shifts, strict=True)]


def _sumpool(a: SumPool, op: Op, ins: list[np.ndarray], p: int, server: bool) -> np.ndarray:
    k, s = a.kernel, a.stride
    win = np.lib.stride_tricks.sliding_window_view(ins[0], (k, k), axis=(1, 2))[:, ::s, ::s]
    return np.mod(win.sum(axis=(-1, -2), dtype=np.int64), p)


def _add(a: Add, op: Op, ins: list[np.ndarray], p: int, server: bool) -> np.ndarray:
    acc = np.zeros(op.shape, dtype=np.int64)
    for t in _shifted(ins, a.shifts, p):
        acc = A.add(acc, t, p)
    return acc


#: each local op on one party's shares (residues): (attrs, op, inputs, p, server) -> share
LOCAL_RULES: dict[type[OpAttrs], Callable[[Any, Op, list[np.ndarray], int, bool], np.ndarray]] = {
    SumPool: _sumpool,
    Rescale: lambda a, op, ins, p, server: A.mulmod(ins[0], int(a.multiplier) % p, p),
    Add: _add,
    # along channels, each share shifted to the common scale
    Concat: lambda a, op, ins, p, server: np.concatenate(_shifted(ins, a.shifts, p), axis=0),
    Flatten: lambda a, op, ins, p, server: ins[0].reshape(op.shape),
    Truncate: lambda a, op, ins, p, server: A.trunc_share(ins[0], a.shift, p, server),
}


def local_op(op: Op, ins: list[np.ndarray], p: int, server: bool) -> np.ndarray:
    """A local op on one party's shares (residues); ``server`` picks the truncation half."""
    rule = LOCAL_RULES.get(type(op.attrs))
    if rule is None:
        raise ValueError(f"not a local op: {op.kind}")
    return rule(op.attrs, op, ins, p, server)


class LocalLayer(Layer):
    """Sum pools, rescales, adds, concatenations, flattens and truncations: each party
    applies them to its own share (the client offline, the server online)."""

    def server_online(self, srv: ServerParty, i: int, op: Op, ins: list[np.ndarray]) -> np.ndarray:
        return local_op(op, ins, srv.p, server=True)

    def client_offline(
        self, cli: ClientParty, i: int, op: Op, ins: list[np.ndarray], ctx: ClientOffline
    ) -> np.ndarray:
        return local_op(op, ins, cli.p, server=False)


def _out_share(layer: GarbledServer) -> np.ndarray:
    """The server's share of a garbled layer's output (drawn when it was garbled)."""
    if layer.out_share is None:
        raise RuntimeError("the garbled layer has no output share: it was never garbled")
    return layer.out_share


def _send_garbled(srv: ServerParty, i: int, ctx: ServerOffline) -> None:
    """Layer ``i``'s tables once the worker has garbled them, and its client labels by OT."""
    if i not in srv.garbled:
        return
    with srv.prof.primitive("gc.wait"):
        layer = ctx.worker.wait(i)
    with srv.prof.primitive("gc.send+ot"):
        layer.send_offline(srv.conn, ctx.ot)
    ctx.worker.sent(i)


class ActivationLayer(Layer):
    """ReLU channels by garbled circuit, polynomial channels by HE-made tuples; the whole
    output is reshared online (one round trip: labels and openings out, ``e`` and the
    reshare back)."""

    client_mask = True

    def garbled_layer(self, op: Op, plan: Plan, tweak: int) -> GarbledLayer | None:
        a = op.attrs_as(Activation)
        if not (n := int(channel_select(op).sum())):
            return None
        return GarbledLayer(plan.field.p, n, tweak, a.shift, a.clip)

    def server_offline(self, srv: ServerParty, i: int, op: Op, ctx: ServerOffline) -> None:
        _send_garbled(srv, i, ctx)
        sel = channel_select(op)
        if sel.all():
            return
        d = op.attrs_as(Activation).degree
        coef = op.arrays["coefficients"]
        per_ch = np.broadcast_to(coef, (op.shape[0], d + 1)) if len(coef) == 1 else coef
        bshape = (op.shape[0],) + (1,) * (len(op.shape) - 1)
        chan = np.broadcast_to(np.arange(op.shape[0]).reshape(bshape), op.shape)
        srv_poly = P.PolyServer(srv.he, per_ch[chan[~sel]], srv.poly_params, op.poly_input_shift())
        cts = srv.recv_blobs("he.poly", srv_poly.expected_ciphertexts, srv.ct_bytes)
        with srv.prof.primitive("he.poly"):
            replies = srv_poly.respond(cts, ctx.public_key)
        srv.send_blobs(replies, "he.poly")
        srv.polys[i] = srv_poly.take()

    def server_online(self, srv: ServerParty, i: int, op: Op, ins: list[np.ndarray]) -> np.ndarray:
        p, s = srv.p, ins[0]
        sel = channel_select(op)
        msg_labels = np.zeros((0,), dtype=np.uint64)
        w = np.zeros(0, dtype=np.int64)
        out = np.zeros(op.shape, dtype=np.int64)
        if i in srv.garbled:
            with srv.prof.primitive("gc.encode"):
                msg_labels = srv.garbled[i].online_labels(s[sel])
            out[sel] = _out_share(srv.garbled[i])
            del srv.garbled[i]
        poly = srv.polys.pop(i, None)
        if poly is not None:
            with srv.prof.primitive("poly"):
                w = P.server_open(s[~sel], poly[0], p)
        srv.conn.send_array(msg_labels, label="online.labels")
        srv.conn.send_array(w, label="online.open")
        # the plan says which layers have polynomial channels: only those carry ``e``
        if poly is not None:
            e = srv.conn.recv_array("online.poly", array_bytes(w.shape, np.int64))
        else:
            e = w
        d = srv.conn.recv_array("online.reshare", array_bytes(op.shape, np.int64))
        srv.check(e, (len(w),), "polynomial opening")
        srv.check(d, op.shape, "reshare")
        out = A.add(out, d, p)
        if poly is not None:
            q = op.attrs_as(Activation).poly_shift
            with srv.prof.primitive("poly"):
                out[~sel] = P.server_finish(e, d[~sel], poly[1], q, p)
        return out

    def client_offline(
        self, cli: ClientParty, i: int, op: Op, ins: list[np.ndarray], ctx: ClientOffline
    ) -> np.ndarray:
        sel = channel_select(op)
        c = ins[0]
        if i in ctx.garbled:
            r = ctx.garbled[i].client()
            with cli.prof.primitive("gc.recv+ot"):
                r.recv_offline(cli.conn, ctx.ot, c[sel])
            cli.garbled[i] = r
        out = A.uniform(op.shape, cli.p)  # the reshare mask R: our share after the layer
        if not sel.all():
            out[~sel] = self._client_poly(cli, i, op, c[~sel], ctx)
        cli.masks[i] = out
        return out

    @staticmethod
    def _client_poly(
        cli: ClientParty, i: int, op: Op, c: np.ndarray, ctx: ClientOffline
    ) -> np.ndarray:
        """Tuples for the polynomial channels (share ``c`` of their input); keeps
        ``[c, a_c, R2, G_0..G_d]`` and returns its output share ``-floor(R2 / 2^q)``."""
        a, p, keys = op.attrs_as(Activation), cli.p, ctx.keys
        d = a.degree
        a_c, r2 = A.uniform(len(c), p), A.bounded_mask(len(c), p)
        with cli.prof.primitive("he.poly"):
            cts = P.client_encrypt(keys, a_c, d, ctx.poly_params)
        cli.send_blobs(cts, "he.poly")
        n_replies = d * -(-len(c) // keys.he.slots)
        replies = cli.recv_blobs("he.poly", n_replies, keys.he.max_ciphertext_bytes)
        with cli.prof.primitive("he.poly"):
            cli.polys[i] = [c, a_c, r2, *P.client_decrypt(keys, replies, len(c), d)]
        return A.mask_trunc(r2, a.poly_shift, p)

    def client_online(self, cli: ClientParty, i: int, op: Op, x: np.ndarray) -> None:
        p = cli.p
        sel = channel_select(op)
        n_relu = int(sel.sum()) if i in cli.garbled else 0
        labels = cli.conn.recv_array(
            "online.labels", array_bytes((p.bit_length(), n_relu, 2), np.uint64)
        )
        n_open = int((~sel).sum()) if i in cli.polys else 0
        w = cli.conn.recv_array("online.open", array_bytes((n_open,), np.int64))
        out = np.zeros(op.shape, dtype=np.int64)
        if i in cli.garbled:
            with cli.prof.primitive("gc.eval"):
                out[sel] = cli.garbled.pop(i).evaluate(labels)
        reshare = A.sub(out, cli.masks.pop(i), p)
        if i in cli.polys:
            c, a_c, r2, *g_c = cli.polys.pop(i)
            cli.check(w, c.shape, "opening")
            with cli.prof.primitive("poly"):
                e, reshare[~sel] = P.client_step(w, c, a_c, g_c, r2, op.poly_input_shift(), p)
            cli.conn.send_array(e, label="online.poly")
        cli.conn.send_array(reshare, label="online.reshare")


class MaxPoolLayer(Layer):
    """A garbled max per window, reshared like an activation: ``C = R``, one round trip."""

    client_mask = True

    def garbled_layer(self, op: Op, plan: Plan, tweak: int) -> GarbledLayer | None:
        windows = pool_windows(op, plan.ops[op.inputs[0]].shape)
        return GarbledLayer(plan.field.p, len(windows), tweak, windows=windows)

    def server_offline(self, srv: ServerParty, i: int, op: Op, ctx: ServerOffline) -> None:
        _send_garbled(srv, i, ctx)

    def server_online(self, srv: ServerParty, i: int, op: Op, ins: list[np.ndarray]) -> np.ndarray:
        """Labels of our input shares out, the client's reshare ``z - R`` back."""
        layer = srv.garbled.pop(i)
        with srv.prof.primitive("gc.encode"):
            labels = layer.online_labels(ins[0])
        srv.conn.send_array(labels, label="online.labels")
        d = srv.conn.recv_array("online.reshare", array_bytes(op.shape, np.int64))
        srv.check(d, op.shape, "reshare")
        return A.add(_out_share(layer).reshape(op.shape), d, srv.p)

    def client_offline(
        self, cli: ClientParty, i: int, op: Op, ins: list[np.ndarray], ctx: ClientOffline
    ) -> np.ndarray:
        mp = ctx.garbled[i].client()
        with cli.prof.primitive("gc.recv+ot"):
            mp.recv_offline(cli.conn, ctx.ot, mp.inputs(ins[0]))
        cli.garbled[i] = mp
        out = A.uniform(op.shape, cli.p)  # the reshare mask, as for activations
        cli.masks[i] = out
        return out

    def client_online(self, cli: ClientParty, i: int, op: Op, x: np.ndarray) -> None:
        layer = cli.garbled.pop(i)
        width = len(layer.circuit.inputs["server_share"])
        labels = cli.conn.recv_array("online.labels", array_bytes((width, layer.n, 2), np.uint64))
        with cli.prof.primitive("gc.eval"):
            z = layer.evaluate(labels).reshape(op.shape)
        cli.conn.send_array(A.sub(z, cli.masks.pop(i), cli.p), label="online.reshare")


_LOCAL = LocalLayer()
_LINEAR = LinearLayer()
#: the protocol handler of every op kind
HANDLERS: dict[type[OpAttrs], Layer] = {
    Input: InputLayer(),
    Conv: _LINEAR,
    Linear: _LINEAR,
    **dict.fromkeys(LOCAL_OPS, _LOCAL),
    Activation: ActivationLayer(),
    MaxPool: MaxPoolLayer(),
}


def handler(op: Op) -> Layer:
    """The handler of ``op``'s kind."""
    h = HANDLERS.get(type(op.attrs))
    if h is None:
        raise ValueError(f"unknown op kind {op.kind!r}")
    return h

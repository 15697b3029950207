"""One connection = one secure inference: plan and parameter exchange, handshake, both phases.

Wire sequence (each step a labelled frame, see :mod:`safenet.channel`):

1. client -> server ``session.request``: whether it needs the public plan, and the mode:
   ``full`` (offline + online), ``preprocess`` (``count`` offline phases, each stored in
   both parties' :class:`~safenet.protocol.bank.Bank` under a server-chosen id, the client
   confirming each store) or ``online`` (the online phase on the banked session
   ``session_id``; each side consumes its copy before use);
2. server -> client ``session.config`` (the :class:`SessionConfig`) and, if asked,
   ``session.plan`` (the public plan: architecture and ReLU masks, no weights);
3. both: :func:`~safenet.protocol.handshake.handshake` (protocol version, roles and the
   public-plan fingerprint: a client that brought its own plan must match the server's);
4. the phases of the mode (:mod:`safenet.protocol.engine`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from safenet.channel import Channel, ProtocolError, printable
from safenet.plan.ir import Plan
from safenet.protocol.bank import Bank, BankError
from safenet.protocol.engine import ClientSession, ServerModel, ServerSession, SessionConfig
from safenet.protocol.handshake import handshake

__all__ = [
    "client_preprocess",
    "client_session",
    "encode_input",
    "open_client_bank",
    "server_session",
]


#: most sessions one ``preprocess`` request may ask for
MAX_PREPROCESS = 256


def _setup_server(conn: Channel, model: ServerModel) -> dict[str, Any]:
    """Steps 1-3 on the server; returns the validated request."""
    conn.phase = "setup"
    req = conn.recv_json(label="session.request")
    ok = isinstance(req, dict) and isinstance(req.get("fetch_plan"), bool)
    mode = req.get("mode", "full") if ok else None
    if ok and mode == "preprocess":
        ok = isinstance(req.get("count"), int) and 1 <= req["count"] <= MAX_PREPROCESS
    elif ok and mode == "online":
        ok = isinstance(req.get("session_id"), str)
    elif mode != "full":
        ok = False
    if not ok:
        conn.send_error("bad session request")
        raise ProtocolError(f"bad session request {printable(repr(req), 200)}")
    conn.send_json(asdict(model.config), label="session.config")
    if req["fetch_plan"]:
        conn.send(model.public.to_bytes(), label="session.plan")
    handshake(conn, "server", model.fingerprint, model_version=model.version)
    return req


def server_session(conn: Channel, model: ServerModel, bank: Bank | None = None) -> dict[str, Any]:
    """Serve one request on ``conn``: a full inference, a batch of offline phases for the
    bank (``preprocess``), or an online phase on banked material; returns the report."""
    t0 = time.perf_counter()
    req = _setup_server(conn, model)
    mode = req.get("mode", "full")
    if mode != "full" and bank is None:
        conn.send_error("this server keeps no preprocessing bank")
        raise ProtocolError(f"client asked for {mode!r} but the server has no bank")
    if mode == "preprocess":
        assert bank is not None
        reports = []
        for _ in range(req["count"]):
            sid = secrets.token_hex(16)
            conn.send_json(sid, label="bank.id")
            sess = ServerSession(model, conn)
            sess.offline()
            bank.put(sid, *sess.export_material())
            if conn.recv_json(label="bank.stored") != sid:
                raise ProtocolError("client did not confirm the stored session")
            reports.append(sess.report())
        return {"mode": "preprocess", "count": len(reports), "sessions": reports,
                "total_s": round(time.perf_counter() - t0, 6)}  # fmt: skip
    if mode == "online":
        assert bank is not None
        try:
            arrays, meta = bank.take(req["session_id"])
            sess = ServerSession.from_material(model, conn, arrays, meta)
        except (BankError, ValueError) as e:
            conn.send_error(f"banked session unusable: {e}")
            raise
        conn.send_json("ready", label="bank.ready")
    else:
        sess = ServerSession(model, conn)
        sess.offline()
    sess.online()
    rep = sess.report()
    rep["mode"] = mode
    rep["total_s"] = round(time.perf_counter() - t0, 6)
    return rep


def encode_input(plan: Plan, x: np.ndarray, encoded: bool = False) -> np.ndarray:
    """Check ``x`` against the plan's input shape; reals -> integers at the input scale."""
    x = np.asarray(x)
    if tuple(x.shape) != tuple(plan.input_shape):
        hint = ""
        if tuple(x.shape[1:]) == tuple(plan.input_shape):
            hint = ": one input at a time, without the batch dimension (pass x[0])"
        raise ValueError(
            f"input shape {tuple(x.shape)} does not match the model's input "
            f"{tuple(plan.input_shape)}{hint}"
        )
    if encoded:
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError("encoded inputs must be integers")
        if x.size and int(np.abs(x).max()) > plan.field.half:
            raise OverflowError("encoded input exceeds p/2: it would wrap mod p")
        return x.astype(np.int64)
    if not np.isfinite(x).all():
        raise ValueError("the input holds NaN or infinite values")
    return plan.field.encode(x.astype(np.float64), plan.ops[0].scale)


def _setup_client(
    conn: Channel, plan: Plan | None, request: dict[str, Any]
) -> tuple[Plan, SessionConfig]:
    conn.phase = "setup"
    conn.send_json({"fetch_plan": plan is None} | request, label="session.request")
    cfg = conn.recv_json(label="session.config")
    try:
        config = SessionConfig(**cfg)
    except TypeError as e:
        raise ProtocolError(f"bad session config from server: {cfg!r}") from e
    if plan is None:
        data = conn.recv(label="session.plan")
        try:
            plan = Plan.from_bytes(data)
        except Exception as e:  # zip, zlib, JSON, numpy or fingerprint errors
            raise ProtocolError(f"unreadable public plan from the server: {e}") from e
    public = plan if plan.is_public else plan.public()
    try:
        config.he_params(public.field.p)
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ProtocolError(f"bad session config from server: {cfg!r}") from e
    return public, config


def client_session(
    conn: Channel,
    x: np.ndarray | Callable[[Plan], np.ndarray],
    plan: Plan | None = None,
    *,
    encoded: bool = False,
    progress: Callable[[int, int], None] | None = None,
    bank: Bank | None = None,
) -> tuple[np.ndarray, dict[str, Any], Plan]:
    """Run one inference as the client; returns (centred integer output, report, public plan).

    ``plan`` (full or public) pins what the client expects; without it the public plan is
    fetched from the server. ``x`` is real (encoded here) unless ``encoded``, or a function
    of the public plan that returns it (to prepare a picture as ``plan.info["preprocess"]``
    says); it is checked against the plan before anything costly happens. With a ``bank``
    holding a preprocessed session, that session is consumed (before anything is sent) and
    only the online phase runs; otherwise both phases run.
    """
    t0 = time.perf_counter()
    banked: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None
    request: dict[str, Any] = {"mode": "full"}
    taken = bank.take_oldest() if bank is not None else None
    if taken is not None:  # consumed now: never reused, whatever happens next
        sid, arrays, meta = taken
        banked = arrays, meta
        request = {"mode": "online", "session_id": sid}
    public, config = _setup_client(conn, plan, request)
    try:
        if callable(x):  # e.g. a picture prepared as the public plan says
            x = x(public)
        xi = encode_input(public, x, encoded)
    except Exception as e:  # also an unreadable picture: the server hears of it at once
        conn.send_error(f"client input rejected: {e}")
        raise
    version = handshake(conn, "client", public.fingerprint()).get("model_version")
    if banked is not None:
        made = banked[1].get("model_version")
        if made != version:
            conn.send_error("banked session made for another model version")
            raise BankError(
                f"banked session {request['session_id']} was made with model version {made}, "
                f"the server now runs {version}: preprocess again"
            )
        sess = ClientSession.from_material(public, conn, banked[0], banked[1], config=config)
        if conn.recv_json(label="bank.ready") != "ready":
            raise ProtocolError("server did not confirm the banked session")
    else:
        sess = ClientSession(public, conn, config, progress=progress)
        sess.offline()
    y = sess.online(xi)
    rep = sess.report()
    rep["mode"] = request["mode"]
    rep["model_version"] = version
    rep["total_s"] = round(time.perf_counter() - t0, 6)
    return y, rep, public


def client_preprocess(
    conn: Channel,
    count: int,
    bank_root: str | Path,
    plan: Plan | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Bank, dict[str, Any]]:
    """Run ``count`` offline phases and store each in the client's bank under ``bank_root``.

    The public plan is saved beside the bank (``plan.zip``) so later queries need no plan.
    Returns the bank and a report.
    """
    t0 = time.perf_counter()
    public, config = _setup_client(conn, plan, {"mode": "preprocess", "count": int(count)})
    version = handshake(conn, "client", public.fingerprint()).get("model_version")
    root = Path(bank_root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    public.save(root / "plan.zip")
    bank = Bank(root, public.fingerprint(), "client")
    reports = []
    for k in range(count):
        sid = conn.recv_json(label="bank.id")
        sess = ClientSession(public, conn, config)
        sess.offline()
        arrays, meta = sess.export_material()
        bank.put(sid, arrays, meta | {"model_version": version})
        conn.send_json(sid, label="bank.stored")
        reports.append(sess.report())
        if progress is not None:
            progress(k + 1, count)
    return bank, {"mode": "preprocess", "count": count, "sessions": reports,
                  "model_version": version,
                  "total_s": round(time.perf_counter() - t0, 6)}  # fmt: skip


def open_client_bank(bank_root: str | Path) -> tuple[Plan, Bank]:
    """The public plan and client bank under ``bank_root`` (see :func:`client_preprocess`)."""
    root = Path(bank_root)
    if not (root / "plan.zip").exists():
        raise FileNotFoundError(f"no preprocessing bank at {root} (run a preprocess first)")
    plan = Plan.load(root / "plan.zip")
    return plan, Bank(root, plan.fingerprint(), "client")

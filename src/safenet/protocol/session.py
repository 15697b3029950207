"""One connection = one secure inference: plan and parameter exchange, handshake, both phases.

Wire sequence (each step a labelled frame, see :mod:`safenet.protocol.transport`):

1. client -> server ``session.request``: whether it needs the public plan;
2. server -> client ``session.config`` (the :class:`SessionConfig`) and, if asked,
   ``session.plan`` (the public plan: architecture and ReLU masks, no weights);
3. both: :func:`~safenet.protocol.transport.handshake` (protocol version, roles and the
   public-plan fingerprint: a client that brought its own plan must match the server's);
4. offline phase, then online phase (:mod:`safenet.protocol.engine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from safenet.plan.ir import Plan
from safenet.protocol.engine import ClientSession, ServerModel, ServerSession, SessionConfig
from safenet.protocol.transport import Connection, ProtocolError, handshake

__all__ = ["client_session", "encode_input", "server_session"]


def server_session(conn: Connection, model: ServerModel) -> dict[str, Any]:
    """Serve one inference on ``conn``; returns the server's report."""
    t0 = time.perf_counter()
    conn.phase = "setup"
    req = conn.recv_json(label="session.request")
    if not isinstance(req, dict) or not isinstance(req.get("fetch_plan"), bool):
        conn.send_error("bad session request")
        raise ProtocolError(f"bad session request {req!r}")
    conn.send_json(asdict(model.config), label="session.config")
    if req["fetch_plan"]:
        conn.send(model.public.to_bytes(), label="session.plan")
    handshake(conn, "server", model.fingerprint)
    sess = ServerSession(model, conn)
    sess.offline()
    sess.online()
    rep = sess.report()
    rep["total_s"] = round(time.perf_counter() - t0, 6)
    return rep


def encode_input(plan: Plan, x: np.ndarray, encoded: bool = False) -> np.ndarray:
    """Check ``x`` against the plan's input shape; reals -> integers at the input scale."""
    x = np.asarray(x)
    if tuple(x.shape) != tuple(plan.input_shape):
        raise ValueError(
            f"input shape {tuple(x.shape)} does not match the model's input {plan.input_shape}"
        )
    if encoded:
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError("encoded inputs must be integers")
        return x.astype(np.int64)
    if not np.isfinite(x).all():
        raise ValueError("the input holds NaN or infinite values")
    return plan.field.encode(x.astype(np.float64), plan.ops[0].scale)


def client_session(
    conn: Connection,
    x: np.ndarray,
    plan: Plan | None = None,
    *,
    encoded: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any], Plan]:
    """Run one inference as the client; returns (centred integer output, report, public plan).

    ``plan`` (full or public) pins what the client expects; without it the public plan is
    fetched from the server. ``x`` is real (encoded here) unless ``encoded``; it is checked
    against the plan before anything costly happens.
    """
    t0 = time.perf_counter()
    conn.phase = "setup"
    conn.send_json({"fetch_plan": plan is None}, label="session.request")
    cfg = conn.recv_json(label="session.config")
    try:
        config = SessionConfig(**cfg)
    except TypeError as e:
        raise ProtocolError(f"bad session config from server: {cfg!r}") from e
    if plan is None:
        plan = Plan.from_bytes(conn.recv(label="session.plan"))
    public = plan if plan.is_public else plan.public()
    try:
        xi = encode_input(public, x, encoded)
    except (ValueError, OverflowError) as e:
        conn.send_error(f"client input rejected: {e}")
        raise
    handshake(conn, "client", public.fingerprint())
    sess = ClientSession(public, conn, config, progress=progress)
    sess.offline()
    y = sess.online(xi)
    rep = sess.report()
    rep["total_s"] = round(time.perf_counter() - t0, 6)
    return y, rep, public

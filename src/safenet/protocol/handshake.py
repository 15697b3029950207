"""The application handshake that opens every session: protocol name and version, roles
and the public-plan fingerprint (:func:`handshake`, :class:`HandshakeError`)."""

from __future__ import annotations

from typing import Any

from safenet.channel import Channel, ProtocolError

__all__ = ["PROTOCOL_NAME", "PROTOCOL_VERSION", "HandshakeError", "handshake"]


class HandshakeError(ProtocolError):
    """The peers disagree on the protocol, their roles or the plan."""


PROTOCOL_NAME = "safenet"
#: 2: polynomial channels truncate exactly (online.open, online.poly); 3: statistical bounds
#: per session (ReLU masks as wide as the session needs, polynomial plaintexts in digits);
#: 4: max pools, and the masks' high parts as garbled output rows (gc.rows); 5: every garbled
#: output bit read through two 8-byte rows into an additive share (no masks, no decode bits)
PROTOCOL_VERSION = 5


def handshake(conn: Channel, role: str, fingerprint: str, **extra: Any) -> dict[str, Any]:
    """Exchange hellos; check protocol version, complementary roles and the plan fingerprint.

    Both sides send first (the hellos cross), so it costs one round. Returns the peer's
    hello. On disagreement the peer is told why and :class:`HandshakeError` is raised.
    """
    if role not in ("client", "server"):
        raise ValueError("role must be 'client' or 'server'")
    hello = {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION, "role": role,
             "fingerprint": fingerprint} | extra  # fmt: skip
    conn.send_json(hello, "hello")
    peer = conn.recv_json("hello")
    problem = None
    if not isinstance(peer, dict) or peer.get("protocol") != PROTOCOL_NAME:
        problem = f"peer does not speak {PROTOCOL_NAME}"
    elif peer.get("version") != PROTOCOL_VERSION:
        problem = f"peer speaks protocol version {peer.get('version')}, we {PROTOCOL_VERSION}"
    elif peer.get("role") == role or peer.get("role") not in ("client", "server"):
        problem = f"both ends claim the role {role!r}" if peer.get("role") == role else "bad role"
    elif peer.get("fingerprint") != fingerprint:
        problem = (
            f"plan fingerprints differ: ours {fingerprint[:16]}..., "
            f"peer's {str(peer.get('fingerprint'))[:16]}..."
        )
    if problem is not None:
        conn.send_error(problem)
        raise HandshakeError(problem)
    return peer

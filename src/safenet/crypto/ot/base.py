"""Base oblivious transfer: Chou-Orlandi "simplest OT" (2015) over ristretto255, batched.

k random OTs in one message each way. The sender draws a and sends A = aG; for OT i the
receiver with choice c_i draws b_i and answers B_i = b_iG + c_iA. The sender's two keys are
H(i, aB_i) and H(i, aB_i - aA); the receiver's key is H(i, b_iA), equal to the c_i-th one.

Security (semi-honest): B_i is uniform whatever c_i, so the sender learns nothing about the
choices; the unchosen key needs a·b_i·G (c_i = 1) or a·(b_iG - A) (c_i = 0), i.e. solving CDH
in the prime-order group, so it is hidden in the random-oracle model (SHA-256 as H). H binds
a fresh random session id, the caller's ``session`` label, the OT index, A and B_i, so keys of
different OTs, batches or sessions never coincide. Received encodings are checked: a
non-canonical encoding, the identity or B_i = A is refused with :class:`InvalidPointError`.
"""

from __future__ import annotations

import hashlib
import secrets
import struct

import numpy as np
import rbcl

from safenet.channel import Channel

POINT_BYTES = rbcl.crypto_core_ristretto255_BYTES  # 32
SID_BYTES = 16
_DOMAIN = b"safenet/ot/base/chou-orlandi/v1"
_IDENTITY = bytes(POINT_BYTES)
_HELLO = struct.Struct("<16sI")  # session id, number of OTs; followed by A


class OTError(RuntimeError):
    """An oblivious-transfer protocol step failed (bad message from the peer, misuse)."""


class InvalidPointError(OTError):
    """The peer sent a byte string that is not an acceptable ristretto255 point."""


def _fail(conn: Channel, err: OTError) -> OTError:
    """Tell the peer we give up (so it fails fast rather than waiting), return ``err``."""
    conn.send_error(str(err))
    return err


def _check_point(conn: Channel, p: bytes, what: str) -> None:
    if p == _IDENTITY or not rbcl.crypto_core_ristretto255_is_valid_point(p):
        raise _fail(conn, InvalidPointError(f"{what}: not a valid ristretto255 point ({p.hex()})"))


def _kdf(session: bytes, sid: bytes, index: int, a_pt: bytes, b_pt: bytes, shared: bytes) -> bytes:
    h = hashlib.sha256(_DOMAIN)
    h.update(struct.pack("<I", len(session)) + session + sid + struct.pack("<Q", index))
    h.update(a_pt + b_pt + shared)
    return h.digest()[:16]


def _blocks(keys: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(keys), dtype="<u8").reshape(len(keys), 2).copy()


def base_ot_send(
    conn: Channel, count: int = 128, *, session: bytes = b"", label: str = "ot.base"
) -> np.ndarray:
    """Sender side of ``count`` random OTs; returns both keys, uint64 shape (count, 2, 2)."""
    if count < 1:
        raise ValueError("count must be positive")
    a = rbcl.crypto_core_ristretto255_scalar_random()
    a_pt = rbcl.crypto_scalarmult_ristretto255_base(a)
    sid = secrets.token_bytes(SID_BYTES)
    conn.send(_HELLO.pack(sid, count) + a_pt, label=label)

    data = conn.recv(label=label, max_bytes=count * POINT_BYTES)
    if len(data) != count * POINT_BYTES:
        raise _fail(conn, OTError(f"base OT: expected {count} points, got {len(data)} bytes"))
    t_pt = rbcl.crypto_scalarmult_ristretto255(a, a_pt)  # aA, shared by all OTs
    keys0, keys1 = [], []
    for i in range(count):
        b_pt = data[i * POINT_BYTES : (i + 1) * POINT_BYTES]
        _check_point(conn, b_pt, f"base OT {i}: receiver's B")
        if b_pt == a_pt:
            raise _fail(conn, InvalidPointError(f"base OT {i}: receiver's B equals A"))
        p0 = rbcl.crypto_scalarmult_ristretto255(a, b_pt)
        p1 = rbcl.crypto_core_ristretto255_sub(p0, t_pt)
        keys0.append(_kdf(session, sid, i, a_pt, b_pt, p0))
        keys1.append(_kdf(session, sid, i, a_pt, b_pt, p1))
    return np.stack([_blocks(keys0), _blocks(keys1)], axis=1)


def base_ot_recv(
    conn: Channel, choices: np.ndarray, *, session: bytes = b"", label: str = "ot.base"
) -> np.ndarray:
    """Receiver side: for choice bits ``choices`` returns the chosen keys, shape (count, 2)."""
    c = np.asarray(choices).astype(np.uint8).reshape(-1)
    if c.size < 1 or np.any(c > 1):
        raise ValueError("choices must be a non-empty array of bits")
    data = conn.recv(label=label, max_bytes=_HELLO.size + POINT_BYTES)
    if len(data) != _HELLO.size + POINT_BYTES:
        raise _fail(conn, OTError(f"base OT: malformed sender message ({len(data)} bytes)"))
    sid, count = _HELLO.unpack_from(data)
    if count != c.size:
        raise _fail(conn, OTError(f"base OT: sender runs {count} OTs, receiver {c.size}"))
    a_pt = data[_HELLO.size :]
    _check_point(conn, a_pt, "base OT: sender's A")

    b_pts, keys = [], []
    for i in range(count):
        b = rbcl.crypto_core_ristretto255_scalar_random()
        b_pt = rbcl.crypto_scalarmult_ristretto255_base(b)
        if c[i]:
            b_pt = rbcl.crypto_core_ristretto255_add(b_pt, a_pt)
        b_pts.append(b_pt)
        keys.append(_kdf(session, sid, i, a_pt, b_pt, rbcl.crypto_scalarmult_ristretto255(b, a_pt)))
    conn.send(b"".join(b_pts), label=label)
    return _blocks(keys)

"""IKNP oblivious-transfer extension (Ishai, Kilian, Nissim, Petrank 2003), semi-honest, κ = 128.

Setup runs κ base OTs with the roles reversed: the extension *sender* picks a secret
s ∈ {0,1}^128 and learns one seed k_i^{s_i} of each of the receiver's pairs (k_i^0, k_i^1).
Each later call extends to any m OTs in one message each way:

* receiver, choices r: rows t_i = G(k_i^0), u_i = t_i ⊕ G(k_i^1) ⊕ r, sends u (16 B per OT);
* sender: rows q_i = G(k_i^{s_i}) ⊕ s_i·u_i, so after the bit-matrix transpose the per-OT
  blocks satisfy q_j = t_j ⊕ r_j·s.

G is AES-128-CTR keyed by the seed, with the call counter as nonce, so no pad is ever reused
across calls. The pads are then broken apart with the tweakable correlation-robust hash
H(x, i) (:class:`~safenet.crypto.aes.FixedKeyAES`): the sender masks m_0 with H(q_j, i_j) and
m_1 with H(q_j ⊕ s, i_j); the receiver can only compute H(t_j, i_j) = the pad of m_{r_j}.
Tweaks i_j = TWEAK_DOMAIN + (running OT index) are distinct for every OT of a setup; other
users of the same hash and Δ (garbling) must keep their tweaks below TWEAK_DOMAIN.

Security (semi-honest): the sender sees u_i masked by G(k_i^{1-s_i}), a seed it never
learned, so r stays hidden (PRG security + base-OT receiver privacy). The receiver knows t_j
but not s (base-OT sender privacy), so H(t_j ⊕ s, i_j) looks random (correlation robustness).

Correlated OT for free-XOR: construct the sender with ``delta=Δ``; then s = Δ and
q_j = t_j ⊕ r_j·Δ is already a Δ-correlated OT. :meth:`OTSender.send_correlated` sends one
block y_j = x_j ⊕ q_j and the receiver outputs y_j ⊕ t_j = x_j ⊕ r_j·Δ, no hashing needed:
y_j is a function of the receiver's output and its own t_j, so it reveals nothing more. The
zero labels x_j must be secret and uniform (as free-XOR requires anyway), since s = Δ also
protects every other OT of this sender. With any other Δ it falls back to two hashed blocks.

Objects are stateful and single-threaded; after any error they refuse further use (their
counters may be out of step with the peer's).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from safenet.channel import Channel, array_bytes
from safenet.crypto.aes import OT_TWEAK_DOMAIN, FixedKeyAES, random_blocks
from safenet.crypto.ot.base import OTError, _fail, base_ot_recv, base_ot_send
from safenet.crypto.ot.bitmatrix import KAPPA, pack_bits, transpose

TWEAK_DOMAIN = OT_TWEAK_DOMAIN  # OT tweaks live in [TWEAK_DOMAIN, TWEAK_DOMAIN + 2^48)
MAX_OTS = 1 << 48  # per setup; beyond it tweaks would leave their range

_CHOSEN, _CORRELATED, _RANDOM = 1, 2, 3
_NAMES = {_CHOSEN: "chosen", _CORRELATED: "correlated", _RANDOM: "random"}
_CALL = struct.Struct("<BQQ")  # kind, m, call counter


def _prg_rows(seeds: list[bytes], nonce: int, n_words: int) -> np.ndarray:
    """G(seed, nonce): AES-128-CTR keystream, one row of ``n_words`` uint64 per seed."""
    zeros = bytes(8 * n_words)
    iv = struct.pack(">QQ", nonce, 0)  # 64-bit call counter, 64-bit block counter
    out = np.empty((len(seeds), n_words), dtype="<u8")
    for i, seed in enumerate(seeds):
        enc = Cipher(algorithms.AES(seed), modes.CTR(iv)).encryptor()
        out[i] = np.frombuffer(enc.update(zeros), dtype="<u8")
    return out


def _as_choices(choices: np.ndarray) -> np.ndarray:
    c = np.asarray(choices)
    if c.ndim != 1:
        raise ValueError(f"choices must be one-dimensional, got shape {c.shape}")
    if c.dtype != np.bool_:
        if not np.issubdtype(c.dtype, np.integer):
            raise TypeError(f"choices must be bool or integer bits, got {c.dtype}")
        if c.size and (c.min() < 0 or c.max() > 1):
            raise ValueError("choices must be bits (0 or 1)")
    return c.astype(np.uint8)


def _as_blocks(x: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.uint64:
        raise TypeError(f"{what} must be uint64 blocks, got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    return a


class _Party:
    """State shared by both ends: connection, labels, counters, failure latch."""

    def __init__(self, conn: Channel, session: bytes, label: str) -> None:
        self.conn = conn
        self.session = bytes(session)
        self.label_base = f"{label}.base"
        self.label_ext = f"{label}.ext"
        self._aes = FixedKeyAES()
        self._calls = 0  # PRG nonce: one per extension call
        self._index = 0  # running OT index: hash tweaks
        self._failed = False
        self._ready = False

    def _check_usable(self) -> None:
        if self._failed:
            raise OTError(f"{type(self).__name__} failed earlier and cannot be reused")

    def _reserve(self, m: int) -> tuple[int, np.ndarray]:
        """Take the next call counter and m fresh tweaks (never handed out twice)."""
        if self._index + m > MAX_OTS:
            raise OTError("OT extension exhausted its tweak range; run a new setup")
        call = self._calls
        tweaks = np.arange(self._index, self._index + m, dtype=np.uint64) + np.uint64(TWEAK_DOMAIN)
        self._calls += 1
        self._index += m
        return call, tweaks

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._check_usable()
        try:
            return fn(*args)
        except BaseException:
            self._failed = True
            raise

    def setup(self) -> None:
        """Run the κ base OTs (once; later calls do nothing). Both ends must call it together."""
        if not self._ready:
            self._guarded(self._setup)
            self._ready = True

    def _setup(self) -> None:
        raise NotImplementedError


class OTSender(_Party):
    """IKNP OT-extension sender: chosen-message, Δ-correlated and random OTs.

    The first call (or :meth:`setup`) runs the κ = 128 base OTs with the receiver; each
    later call extends to any number m of OTs in one message each way, with fresh PRG
    nonces and hash tweaks. Messages and labels are 128-bit blocks, uint64 pairs.

    Args:
        conn: the channel to the :class:`OTReceiver` (any :class:`~safenet.channel.Channel`).
        delta: uint64 (2,), the global correlation s = Δ (correlated OT then costs one block
            per OT). Default: uniform with its lowest bit set, a free-XOR Δ usable with
            point-and-permute (read it from :attr:`delta`).
        session: bytes bound into the base OTs' keys.
        label: prefix of the frame labels (``<label>.base``, ``<label>.ext``).

    Returns:
        A sender whose :meth:`send` (pairs (m, 2, 2)), :meth:`send_correlated` (zero labels
        (m, 2)) and :meth:`send_random` (m; returns the uniform pairs (m, 2, 2)) each match
        the receiver's :meth:`~OTReceiver.recv`, :meth:`~OTReceiver.recv_correlated` and
        :meth:`~OTReceiver.recv_random`. After any error it refuses further use.

    Example::

        a, b = memory_pair()                      # or connection_pair(), connect()...
        sender, receiver = OTSender(a), OTReceiver(b)
        # each party in its own thread or process:
        sender.send(pairs)                        # pairs: uint64 (m, 2, 2)
        got = receiver.recv(choices)              # got[j] == pairs[j, choices[j]]
    """

    def __init__(
        self,
        conn: Channel,
        *,
        delta: np.ndarray | None = None,
        session: bytes = b"",
        label: str = "ot",
    ) -> None:
        super().__init__(conn, session, label)
        if delta is None:
            s = random_blocks(())
            s[0] |= np.uint64(1)
        else:
            s = _as_blocks(delta, (2,), "delta").copy()
        self._s = s
        self._s_bits = np.unpackbits(s.astype("<u8").view(np.uint8), bitorder="little")
        # all-ones word where s_i = 1: q_i = G(k_i^{s_i}) xor (u_i and mask_i)
        self._s_mask = (self._s_bits.astype(np.uint64) * np.uint64(2**64 - 1))[:, None]
        self._seeds: list[bytes] = []

    @property
    def delta(self) -> np.ndarray:
        """The global correlation s (a copy): message 1 = message 0 xor Δ in correlated OT."""
        return self._s.copy()

    def _setup(self) -> None:
        keys = base_ot_recv(self.conn, self._s_bits, session=self.session, label=self.label_base)
        self._seeds = [k.astype("<u8").tobytes() for k in keys]

    def _extend(self, kind: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Receive the receiver's u for this call; return q (m, 2) and the tweaks."""
        call, tweaks = self._reserve(m)
        hdr = self.conn.recv(label=self.label_ext, max_bytes=_CALL.size)
        n_words = -(-m // 64)
        if len(hdr) != _CALL.size or _CALL.unpack(hdr) != (kind, m, call):
            got = _CALL.unpack(hdr) if len(hdr) == _CALL.size else hdr.hex()
            raise _fail(
                self.conn,
                OTError(
                    f"OT call mismatch: sender is at call {call}, {_NAMES[kind]} OT of {m}; "
                    f"receiver sent (kind, m, call) = {got}"
                ),
            )
        u = self.conn.recv_array(self.label_ext, array_bytes((KAPPA, n_words), np.uint64))
        if u.dtype != np.dtype("<u8") or u.shape != (KAPPA, n_words):
            raise _fail(self.conn, OTError(f"OT extension: bad u matrix {u.dtype} {u.shape}"))
        q_rows = _prg_rows(self._seeds, call, n_words)
        q_rows ^= u & self._s_mask
        return transpose(q_rows)[:m], tweaks

    def _start(self, m: int) -> None:
        if m < 0:
            raise ValueError("negative number of OTs")
        self.setup()
        self._check_usable()

    def send(self, pairs: np.ndarray) -> None:
        """Chosen-message OT: ``pairs`` uint64 (m, 2, 2); the receiver gets pairs[j, r_j]."""
        p = np.asarray(pairs)
        m = p.shape[0] if p.ndim else 0
        p = _as_blocks(p, (m, 2, 2), "pairs")
        self._start(m)
        self._guarded(self._send, p)

    def _send(self, pairs: np.ndarray) -> None:
        m = pairs.shape[0]
        q, tw = self._extend(_CHOSEN, m)
        y = np.empty((m, 2, 2), dtype=np.uint64)
        y[:, 0] = pairs[:, 0] ^ self._aes.hash(q, tw)
        q ^= self._s
        y[:, 1] = pairs[:, 1] ^ self._aes.hash(q, tw)
        self.conn.send_array(y, label=self.label_ext)

    def send_correlated(self, zero_labels: np.ndarray, delta: np.ndarray | None = None) -> None:
        """Correlated OT: message 0 = zero_labels[j] (m, 2), message 1 = message 0 xor Δ.

        ``delta`` defaults to :attr:`delta`; that case costs one block per OT. Another Δ is
        served correctly with two hashed blocks per OT.
        """
        x = np.asarray(zero_labels)
        m = x.shape[0] if x.ndim else 0
        x = _as_blocks(x, (m, 2), "zero_labels")
        d = self._s if delta is None else _as_blocks(delta, (2,), "delta")
        self._start(m)
        self._guarded(self._send_correlated, x, d)

    def _send_correlated(self, x: np.ndarray, delta: np.ndarray) -> None:
        m = x.shape[0]
        q, tw = self._extend(_CORRELATED, m)
        if np.array_equal(delta, self._s):
            q ^= x  # y_j = x_j xor q_j = x_j xor t_j xor r_j·Δ
            self.conn.send_array(q, label=self.label_ext)
            return
        y = np.empty((m, 2, 2), dtype=np.uint64)
        y[:, 0] = x ^ self._aes.hash(q, tw)
        q ^= self._s
        y[:, 1] = x ^ delta ^ self._aes.hash(q, tw)
        self.conn.send_array(y, label=self.label_ext)

    def send_random(self, m: int) -> np.ndarray:
        """Random OT: returns m uniform pairs (m, 2, 2); the receiver gets pair[j, r_j].

        Nothing is sent beyond the receiver's u (16 bytes per OT).
        """
        m = int(m)
        self._start(m)
        return self._guarded(self._send_random, m)

    def _send_random(self, m: int) -> np.ndarray:
        q, tw = self._extend(_RANDOM, m)
        out = np.empty((m, 2, 2), dtype=np.uint64)
        out[:, 0] = self._aes.hash(q, tw)
        q ^= self._s
        out[:, 1] = self._aes.hash(q, tw)
        return out


class OTReceiver(_Party):
    """IKNP OT-extension receiver: learns one message of each of the sender's pairs.

    The base-OT *sender* at setup (the roles reverse), then one message each way per call.

    Args:
        conn: the channel to the :class:`OTSender` (any :class:`~safenet.channel.Channel`).
        session: bytes bound into the base OTs' keys (as the sender's).
        label: prefix of the frame labels (as the sender's).

    Returns:
        A receiver whose :meth:`recv`, :meth:`recv_correlated` and :meth:`recv_random` take
        choice bits (m,) and return the chosen blocks, uint64 (m, 2).

    Example::

        got = receiver.recv_correlated(choices)   # while the sender runs
        # sender.send_correlated(zero): got[j] == zero[j] ^ (choices[j] * sender.delta)
    """

    def __init__(self, conn: Channel, *, session: bytes = b"", label: str = "ot") -> None:
        super().__init__(conn, session, label)
        self._seeds0: list[bytes] = []
        self._seeds1: list[bytes] = []

    def _setup(self) -> None:
        keys = base_ot_send(self.conn, KAPPA, session=self.session, label=self.label_base)
        self._seeds0 = [k.astype("<u8").tobytes() for k in keys[:, 0]]
        self._seeds1 = [k.astype("<u8").tobytes() for k in keys[:, 1]]

    def _extend(self, kind: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Send u for choices r; return t (m, 2) (t_j = q_j xor r_j·s) and the tweaks."""
        m = r.size
        call, tweaks = self._reserve(m)
        n_words = -(-m // 64)
        t_rows = _prg_rows(self._seeds0, call, n_words)
        u = _prg_rows(self._seeds1, call, n_words)
        u ^= t_rows
        u ^= pack_bits(r, n_words)[None, :]
        self.conn.send(_CALL.pack(kind, m, call), label=self.label_ext)
        self.conn.send_array(u, label=self.label_ext)
        return transpose(t_rows)[:m], tweaks

    def _recv_y(self, shapes: tuple[tuple[int, ...], ...]) -> np.ndarray:
        y = self.conn.recv_array(self.label_ext, max(array_bytes(s, np.uint64) for s in shapes))
        if y.dtype != np.dtype("<u8") or y.shape not in shapes:
            raise _fail(self.conn, OTError(f"OT extension: bad sender reply {y.dtype} {y.shape}"))
        return y

    def _start(self, choices: np.ndarray) -> np.ndarray:
        r = _as_choices(choices)
        self.setup()
        self._check_usable()
        return r

    def recv(self, choices: np.ndarray) -> np.ndarray:
        """Chosen-message OT: returns pairs[j, choices[j]] as uint64 (m, 2)."""
        return self._guarded(self._recv, self._start(choices))

    def _recv(self, r: np.ndarray) -> np.ndarray:
        m = r.size
        t, tw = self._extend(_CHOSEN, r)
        y = self._recv_y(((m, 2, 2),))
        return y[np.arange(m), r] ^ self._aes.hash(t, tw)

    def recv_correlated(self, choices: np.ndarray) -> np.ndarray:
        """Correlated OT: returns zero_labels[j] xor choices[j]·Δ, uint64 (m, 2)."""
        return self._guarded(self._recv_correlated, self._start(choices))

    def _recv_correlated(self, r: np.ndarray) -> np.ndarray:
        m = r.size
        t, tw = self._extend(_CORRELATED, r)
        y = self._recv_y(((m, 2), (m, 2, 2)))
        if y.ndim == 2:
            t ^= y
            return t
        return y[np.arange(m), r] ^ self._aes.hash(t, tw)

    def recv_random(self, choices: np.ndarray) -> np.ndarray:
        """Random OT: returns the sender's random pair[j, choices[j]], uint64 (m, 2)."""
        return self._guarded(self._recv_random, self._start(choices))

    def _recv_random(self, r: np.ndarray) -> np.ndarray:
        t, tw = self._extend(_RANDOM, r)
        return self._aes.hash(t, tw)

"""Half-gates garbling (Zahur-Rosulek-Evans 2015) with free-XOR and point-and-permute.

One :func:`garble` call garbles ``n_instances`` independent copies of a circuit under one
fresh global offset Delta (lsb 1): every wire has a zero label ``W0`` and one label
``W0 ^ Delta``, the lsb of a label is its permute bit, XOR and NOT are free and an AND gate
costs two ciphertexts ``(T_G, T_E)``. Hashing is the tweakable correlation-robust hash of
:class:`safenet.crypto.aes.FixedKeyAES` with tweak ``2 * (b + g * n_instances + i) + {0, 1}`` for
AND gate ``g`` of instance ``i`` (unique within a garbling; see :func:`and_tweaks`); optional
garbled output rows (:mod:`.tables`) take the tweaks after the AND gates' (:func:`tweak_span`).
The protocol garbles every garbled layer of a session (ReLU channels, max pools) under one
Delta (the correlated-OT sender's), giving each layer its own tweak range through the base
``b`` (``tweak_base``). Chunks of instances run on a persistent thread pool, each thread with
its own AES context and reused buffers (wiped after garbling: no label or Delta stays).

Single use, enforced by :class:`Garbled`:

* the tables are handed out once (:meth:`Garbled.take_tables`); a second call raises;
* each input group is released once, either as the labels of chosen bits
  (:func:`encode`, the garbler's own inputs) or as ``(label0, label1)`` pairs for oblivious
  transfer (:func:`label_pairs`); a second release of the same group raises, because two
  labels of one wire reveal Delta. Released zero labels are dropped, and Delta is dropped once
  every group has been released, so a spent object holds no secret;
* a :class:`Garbled` cannot be copied or pickled, and every :func:`garble` call draws a fresh
  Delta from the OS CSPRNG and fresh labels from a PRG under a fresh OS-CSPRNG key
  (:func:`~safenet.crypto.aes.random_blocks`).

Python cannot stop code that reaches into private attributes; these checks stop accidental
reuse, which is what breaks security in practice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from safenet.crypto.aes import OT_TWEAK_DOMAIN, FixedKeyAES, random_blocks
from safenet.crypto.aesni import FIXED_ROUND_KEYS
from safenet.crypto.gc import _fused as F
from safenet.crypto.gc import _kernels as K
from safenet.crypto.gc.circuit import Circuit, Schedule
from safenet.crypto.gc.tables import encrypt_rows, row_tweaks

__all__ = [
    "Garbled",
    "and_tweaks",
    "tweak_span",
    "encode",
    "encode_labels",
    "garble",
    "label_pairs",
    "tables_from_bytes",
]

#: instances processed together; label memory is ``n_slots * chunk * 16`` bytes
DEFAULT_CHUNK = 16384
#: smallest chunk worth a thread of its own (below it the threads fight over the GIL)
MIN_SPLIT = 2048
#: most threads one garbling/evaluation uses
MAX_WORKERS = 8
#: gate-instances per AES call: wide layers are cut into pieces of about this size
PIECE = 1 << 15
#: garbling tweaks (before the final ``<< 1``) stay below this: OT extension uses
#: ``[0x4F54 << 48, ...)`` with the same hash and, in correlated OT, the same Delta
TWEAK_LIMIT = OT_TWEAK_DOMAIN >> 1


def _pieces(lo: int, hi: int, m: int) -> Iterator[tuple[int, int]]:
    step = max(1, PIECE // max(m, 1))
    for a in range(lo, hi, step):
        yield a, min(hi, a + step)


def _chunks(n: int, chunk: int | None, workers: int = 1) -> list[tuple[int, int]]:
    c = DEFAULT_CHUNK if chunk is None else chunk
    if c < 1:
        raise ValueError("chunk must be positive")
    if workers > 1 and chunk is None:  # enough chunks to keep every worker busy
        c = min(c, max(MIN_SPLIT, -(-n // workers)))
    return [(a, min(n, a + c)) for a in range(0, n, c)]


GARBLE_HALVES = np.array([0, 0, 1, 1], dtype=np.uint64)  # A0, A1 garbler half; B0, B1 evaluator
EVAL_HALVES = np.array([0, 1], dtype=np.uint64)


class _Scratch:
    """Per-chunk buffers for one AND-layer piece: labels X, P = pi(X), R = pi(P ^ tweak).

    Allocated once per chunk (sized for the largest piece) so a piece costs no allocation;
    the flat buffers keep the two spare words AES writes into.
    """

    def __init__(self, halves: np.ndarray, m: int) -> None:
        self.halves = halves
        self.h = len(halves)
        words = self.h * max(PIECE, m) * 2
        self.xf = _thread_buffer("x", words + 2)
        self.pf = _thread_buffer("p", words + 2)
        self.rf = _thread_buffer("r", words + 2)

    def x(self, g: int, m: int) -> np.ndarray:
        """The label view for a piece of ``g`` gates x ``m`` instances."""
        return self.xf[: self.h * g * m * 2].reshape(self.h, g, m, 2)

    def hash(
        self, aes: FixedKeyAES, g: int, m: int, lo: int, n_total: int, i0: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``P = pi(X)``, ``R = pi(P ^ tweak)``: the hash ``H = R ^ P`` of
        :meth:`FixedKeyAES.hash`, left for the combine kernel to XOR (no copies)."""
        nw = self.h * g * m * 2
        shape = (self.h, g, m, 2)
        aes.permute_words(self.xf, self.pf, nw)
        P = self.pf[:nw].reshape(shape)
        R = self.rf[:nw].reshape(shape)
        K.tweak_xor(P, R, lo, n_total, i0, self.halves)
        aes.permute_words(self.rf, self.rf, nw)
        return P, R


def walk_layers(
    sch: Schedule,
    L: np.ndarray,
    sc: _Scratch,
    aes: FixedKeyAES,
    n_total: int,
    tweak0: int,
    gather: Callable[[int, int, np.ndarray], None],
    combine: Callable[[int, int, np.ndarray, np.ndarray, np.ndarray], None],
) -> None:
    """Run one chunk's circuit in AND-depth order, the loop garbling and evaluation share:
    free XORs of a level, then each piece of its AND gates: ``gather(lo, hi, X)`` fills the
    hash inputs, the hash runs, ``combine(lo, hi, X, P, R)`` writes tables/output labels."""
    m = L.shape[1]
    for d in range(sch.depth + 1):
        K.xor_block(L, sch.xor_out, sch.xor_a, sch.xor_b, *sch.xor_block(d))
        if d == sch.depth:
            return
        for lo, hi in _pieces(*sch.and_layer(d), m):
            X = sc.x(hi - lo, m)
            gather(lo, hi, X)
            P, R = sc.hash(aes, hi - lo, m, lo, n_total, tweak0)
            combine(lo, hi, X, P, R)


def default_workers() -> int:
    """Threads for garbling/evaluation: the AES calls and numba kernels release the GIL."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


_local = threading.local()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _thread_aes() -> FixedKeyAES:
    """This thread's AES context (made once per thread)."""
    if not hasattr(_local, "aes"):
        _local.aes = FixedKeyAES()
    return _local.aes


def _thread_buffer(name: str, words: int) -> np.ndarray:
    """A uint64 scratch array of ``words`` owned by this thread and reused by its next chunks
    of the same :func:`run_chunks` call (fresh arrays of tens of MB per chunk cost page
    faults); its contents are whatever the last chunk left."""
    bufs = _local.__dict__.setdefault("buffers", {})
    buf = bufs.get(name)
    if buf is None or buf.size < words:
        buf = bufs[name] = np.empty(words, dtype=np.uint64)
    return buf[:words]


def _pool() -> ThreadPoolExecutor:
    """The process's helper threads, started once (not per layer: a thread start costs
    milliseconds); a forked child starts its own."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(MAX_WORKERS - 1, thread_name_prefix="safenet-gc")
        return _POOL


def _forget_pool() -> None:  # after fork: the parent's threads do not exist in the child
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _wipe_thread_buffers() -> None:
    """Zero this thread's scratch buffers (after a garbling chunk: they held labels)."""
    for buf in _local.__dict__.get("buffers", {}).values():
        buf.fill(0)


def _release_thread_state() -> None:
    """Drop this thread's AES context and buffers (they held labels): a pool thread keeps
    nothing between garblings or evaluations."""
    _local.__dict__.pop("aes", None)
    _local.__dict__.pop("buffers", None)


def run_chunks(
    chunks: list[tuple[int, int]], workers: int, body: Callable[[FixedKeyAES, int, int], None]
) -> None:
    """Run ``body(aes, i0, i1)`` on every chunk, on up to ``workers`` threads: this one and
    helpers from a persistent pool, each taking the next chunk when it is free.

    Chunks are independent (disjoint instances, disjoint output slices); each thread has its
    own AES context and buffers, reused across its chunks of this call and dropped after it.
    """
    todo = iter(chunks)
    lock = threading.Lock()

    def drain() -> None:
        try:
            aes = _thread_aes()
            while True:
                with lock:
                    nxt = next(todo, None)
                if nxt is None:
                    return
                body(aes, *nxt)
        finally:
            _release_thread_state()

    n_helpers = min(workers, len(chunks)) - 1
    helpers = [_pool().submit(drain) for _ in range(max(n_helpers, 0))]
    try:
        drain()
    finally:
        for f in helpers:
            f.result()


def _chunk_labels(sch: Schedule, labels: dict[str, np.ndarray], i0: int, i1: int) -> np.ndarray:
    """Wire-slot label buffer for instances [i0, i1): slot 0 (constant) zero, inputs loaded.

    Shared by garbling (inputs = zero labels) and evaluation (inputs = active labels).
    """
    L = _thread_buffer("labels", sch.n_slots * (i1 - i0) * 2).reshape(sch.n_slots, i1 - i0, 2)
    L[0] = 0
    for name, slots in sch.input_slots.items():
        used = slots >= 0
        if used.any():
            L[slots[used]] = np.asarray(labels[name], dtype=np.uint64)[used, i0:i1]
    return L


def and_tweaks(
    circuit: Circuit, n_instances: int, chunk: int | None = None, tweak_base: int = 0
) -> np.ndarray:
    """Every hash tweak a garbling uses, in order (for auditing uniqueness in tests).

    Runs the same chunk/layer/piece loops and the same tweak kernel as :func:`garble`, on
    zero blocks, and returns the tweaks it applies.
    """
    sch = circuit.schedule
    out = []
    for i0, i1 in _chunks(n_instances, chunk):
        m = i1 - i0
        for d in range(sch.depth):
            for lo, hi in _pieces(*sch.and_layer(d), m):
                zero = np.zeros((4, hi - lo, m, 2), dtype=np.uint64)
                Q = np.empty_like(zero)
                K.tweak_xor(zero, Q, lo, n_instances, i0 + tweak_base, GARBLE_HALVES)
                out.append(Q[[0, 2], ..., 0].reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def encode_labels(zero: np.ndarray, delta: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Active labels ``zero ^ (bit * Delta)`` of garbler inputs (free-XOR encoding)."""
    zero = np.ascontiguousarray(zero, dtype=np.uint64)
    bits = np.ascontiguousarray(bits, dtype=np.uint8)
    if zero.shape != (*bits.shape, 2):
        raise ValueError(f"labels {zero.shape} do not fit bits {bits.shape}")
    out = np.empty_like(zero)
    d = np.asarray(delta, dtype=np.uint64).reshape(2)
    K.encode_bits(zero.reshape(-1, 2), bits.reshape(-1), d[0], d[1], out.reshape(-1, 2))
    return out


class Garbled:
    """The garbler's side of one garbling: secrets released once each (see module doc).

    Attributes:
        circuit: the garbled circuit.
        n_instances: independent copies garbled.
        decode_bits: uint8 ``(n_outputs, n_instances)``, lsb of each output zero label;
            sent to the evaluator so that it can :func:`decode` its outputs (never those of
            a garbling with output rows: they would reveal the bits).
    """

    def __init__(
        self,
        circuit: Circuit,
        n_instances: int,
        delta: np.ndarray,
        input_zero: dict[str, np.ndarray],
        tables: np.ndarray,
        decode_bits: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> None:
        self.circuit = circuit
        self.n_instances = n_instances
        self.decode_bits = decode_bits
        self._delta: np.ndarray | None = delta
        self._input_zero: dict[str, np.ndarray] = dict(input_zero)
        self._tables: np.ndarray | None = tables
        self._released: set[str] = set()
        #: garbled output rows ``(n_outputs, n_instances, 2)`` (:func:`garble`'s ``rows``), or
        #: ``None``; public
        self.rows = rows

    def __copy__(self) -> Garbled:
        raise TypeError("a Garbled object is single-use and cannot be copied")

    def __deepcopy__(self, memo: dict) -> Garbled:
        raise TypeError("a Garbled object is single-use and cannot be copied")

    def __reduce__(self) -> tuple:
        raise TypeError("a Garbled object is single-use and cannot be pickled")

    @property
    def table_bytes(self) -> int:
        """Size of the garbled tables: 32 bytes per AND gate per instance."""
        return self.circuit.table_bytes * self.n_instances

    @property
    def tables_taken(self) -> bool:
        """Whether :meth:`take_tables` has been called."""
        return self._tables is None

    def take_tables(self) -> np.ndarray:
        """The AND tables, uint64 ``(and_count, n_instances, 2, 2)``; only once.

        Gate-major in layer order, so ``tables[a:b]`` is a contiguous run of layers and
        ``tables.tobytes()`` is the wire format (see :func:`tables_from_bytes`).
        """
        if self._tables is None:
            raise RuntimeError(
                "garbled tables were already taken (garbled circuits are single-use)"
            )
        t, self._tables = self._tables, None
        return t

    def _release(self, name: str) -> np.ndarray:
        if name in self._released:
            raise RuntimeError(
                f"labels of input {name!r} were already released (single use: two labels of "
                "one wire would reveal Delta)"
            )
        if name not in self._input_zero:
            raise KeyError(f"no input group {name!r}; have {sorted(self.circuit.inputs)}")
        self._released.add(name)
        return self._input_zero.pop(name)

    def _delta_after_release(self) -> np.ndarray:
        assert self._delta is not None
        delta = self._delta
        if not self._input_zero:  # everything released: forget Delta
            self._delta = None
        return delta

    def encode(self, name: str, bits: np.ndarray) -> np.ndarray:
        """Labels of the garbler's own input ``name`` for ``bits`` ``(nbits, n_instances)``."""
        b = np.asarray(bits)
        want = (len(self.circuit.inputs.get(name, ())), self.n_instances)
        if b.shape != want:
            raise ValueError(f"input {name!r}: bits must have shape {want}, got {b.shape}")
        if b.size and b.max() > 1:
            raise ValueError("bits must be 0 or 1")
        zero = self._release(name)
        return encode_labels(zero, self._delta_after_release(), b)

    def release_for_storage(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(zero labels, Delta)`` of the garbler's input ``name``, moved out of this object.

        For a preprocessing bank that stores the garbler's online input on disk: the single-use
        duty moves to the caller (the bank consumes each stored session once). Releases the
        group like :meth:`encode` would.
        """
        zero = self._release(name)
        return zero, self._delta_after_release().copy()

    def label_pairs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(label0, label1)``, each ``(nbits, n_instances, 2)``, of input ``name`` for OT."""
        zero = self._release(name)
        delta = self._delta_after_release()
        return zero, zero ^ delta


def encode(garbled: Garbled, input_name: str, bits: np.ndarray) -> np.ndarray:
    """Labels of the garbler's own input bits (see :meth:`Garbled.encode`)."""
    return garbled.encode(input_name, bits)


def label_pairs(garbled: Garbled, input_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs of an evaluator input, for OT (see :meth:`Garbled.label_pairs`)."""
    return garbled.label_pairs(input_name)


def tables_from_bytes(data: bytes, circuit: Circuit, n_instances: int) -> np.ndarray:
    """Inverse of ``tables.tobytes()``: a read-only ``(and_count, n_instances, 2, 2)`` view."""
    want = circuit.table_bytes * n_instances
    if len(data) != want:
        raise ValueError(f"expected {want} bytes of tables, got {len(data)}")
    return np.frombuffer(data, dtype="<u8").reshape(circuit.and_count, n_instances, 2, 2)


def _garble_buffered(
    sch: Schedule, L: np.ndarray, aes: FixedKeyAES, d0: np.uint64, d1: np.uint64,
    tables: np.ndarray, i0: int, n_total: int, tweak_base: int,
) -> None:  # fmt: skip
    """Garble one chunk through scratch buffers and ``cryptography``'s AES (no AES-NI)."""
    i1 = i0 + L.shape[1]

    def gather(lo: int, hi: int, X: np.ndarray) -> None:
        K.garble_gather(L, sch.and_a, sch.and_a_neg, sch.and_b, sch.and_b_neg, lo, hi, d0, d1, X)

    def combine(lo: int, hi: int, X: np.ndarray, P: np.ndarray, R: np.ndarray) -> None:
        K.garble_combine(X, P, R, d0, d1, tables[lo:hi, i0:i1], L, sch.and_out, lo)

    sc = _Scratch(GARBLE_HALVES, L.shape[1])
    walk_layers(sch, L, sc, aes, n_total, i0 + tweak_base, gather, combine)


def garble(
    circuit: Circuit,
    n_instances: int,
    *,
    chunk: int | None = None,
    rng: np.random.Generator | None = None,
    delta: np.ndarray | None = None,
    tweak_base: int = 0,
    workers: int | None = None,
    rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> Garbled:
    """Garble ``n_instances`` copies of ``circuit`` under a fresh Delta (or a given one).

    Args:
        circuit: the circuit (its schedule is computed once and cached on it).
        n_instances: copies; they share Delta and nothing else.
        chunk: instances per pass (memory ``n_slots * chunk * 16`` bytes for labels).
        rng: a seeded generator for reproducible tests only; ``None`` (the default) draws
            Delta and labels as :func:`~safenet.crypto.aes.random_blocks` does.
        delta: a session-wide Delta (uint64 (2,), lsb 1) shared by several garblings, so
            that one correlated-OT sender (s = Delta) serves all of them.
        tweak_base: added to every tweak; garblings sharing a Delta must use disjoint
            ranges ``[tweak_base, tweak_base + tweak_span(circuit, n_instances, rows))``
            (:func:`tweak_span`: the AND gates', then the rows'), all below
            :data:`TWEAK_LIMIT`.
        workers: threads (default :func:`default_workers`); results do not depend on it.
        rows: ``(v0, v1)``, uint64 ``(n_outputs, n_instances)`` each: garbled output rows for
            every output bit, which give the evaluator ``v_b`` for the bit ``b`` it holds
            (:mod:`.tables`), in :attr:`Garbled.rows`; they use the tweaks just after the AND
            gates' (:func:`tweak_span`), and no decode bits are kept.
    """
    if n_instances < 1:
        raise ValueError("n_instances must be positive")
    vals = None if rows is None else [np.asarray(v, dtype=np.uint64) for v in rows]
    want = (circuit.n_outputs, n_instances)
    if vals is not None and (len(vals) != 2 or any(v.shape != want for v in vals)):
        raise ValueError(f"row values must be two arrays of shape {want}")
    span = tweak_span(circuit, n_instances, vals is not None)
    if tweak_base < 0 or tweak_base + span >= TWEAK_LIMIT:
        raise ValueError("tweak range leaves [0, TWEAK_LIMIT): it would collide with OT tweaks")
    sch: Schedule = circuit.schedule
    if delta is None:
        delta = random_blocks((1,), rng)[0]
        delta[0] |= np.uint64(1)  # point-and-permute: lsb(Delta) = 1
    else:
        delta = np.array(delta, dtype=np.uint64).reshape(2)
        if not delta[0] & np.uint64(1):
            raise ValueError("Delta must have its lowest bit set (point-and-permute)")
    d0, d1 = delta[0], delta[1]
    input_zero = {
        name: random_blocks((len(w), n_instances), rng) for name, w in circuit.inputs.items()
    }
    tables = np.empty((circuit.and_count, n_instances, 2, 2), dtype=np.uint64)
    decode_bits = np.zeros((circuit.n_outputs, n_instances), dtype=np.uint8)
    out_rows = None if vals is None else np.empty((circuit.n_outputs, n_instances, 2), np.uint64)

    fused = F.kernels()

    def body(aes: FixedKeyAES, i0: int, i1: int) -> None:
        L = _chunk_labels(sch, input_zero, i0, i1)
        if fused:
            fused[0](
                L, sch.xor_out, sch.xor_a, sch.xor_b, sch.xor_ptr, sch.and_out, sch.and_a,
                sch.and_a_neg, sch.and_b, sch.and_b_neg, sch.and_ptr, d0, d1, tables, i0,
                n_instances, i0 + tweak_base, FIXED_ROUND_KEYS,
            )  # fmt: skip
        else:
            _garble_buffered(sch, L, aes, d0, d1, tables, i0, n_instances, tweak_base)
        if vals is None or out_rows is None:  # outputs read through decode bits
            lsb = (L[sch.out_slots, :, 0] & np.uint64(1)).astype(np.uint8)
            decode_bits[:, i0:i1] = lsb ^ sch.out_neg[:, None]
        else:  # outputs read through rows only: a decode bit would reveal the bit
            zero = L[sch.out_slots] ^ (sch.out_neg.astype(np.uint64)[:, None, None] * delta)
            base = tweak_base + circuit.and_count * n_instances
            tw = row_tweaks(base, circuit.n_outputs, n_instances, i0, i1)
            v0, v1 = vals[0][:, i0:i1], vals[1][:, i0:i1]
            out_rows[:, i0:i1] = encrypt_rows(zero, delta, v0, v1, tw, aes)
        _wipe_thread_buffers()  # reused buffers: no zero labels, no Delta left

    w = default_workers() if workers is None else workers
    run_chunks(_chunks(n_instances, chunk, w), w, body)
    return Garbled(circuit, n_instances, delta, input_zero, tables, decode_bits, out_rows)


def tweak_span(circuit: Circuit, n_instances: int, rows: bool = False) -> int:
    """Tweaks (before the final ``<< 1``) one garbling uses from its ``tweak_base``: its AND
    gates', then, with output rows, ``n_instances`` per output bit."""
    return (circuit.and_count + (circuit.n_outputs if rows else 0)) * n_instances

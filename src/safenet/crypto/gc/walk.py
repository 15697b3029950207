"""What the garbler (:mod:`.garble`) and the evaluator (:mod:`.evaluate`) share: the tweak
layout, the cut into chunks and pieces, the thread pool, and the buffer path's AND-layer walk.

Both sides run the same loops over the same :class:`~.circuit.Schedule` and must hash with
the same tweaks, so everything they have to agree on is written down here once:

* **tweaks** (:func:`tweak_span`, :func:`row_tweak_base`, :data:`TWEAK_LIMIT`,
  :func:`and_tweaks`): AND gate ``g`` of instance ``i`` (of ``n``) in a garbling with base
  ``b`` hashes with tweak ``2 * (b + g * n + i) + half``, ``half`` 0 for the garbler half
  gate and 1 for the evaluator half gate; garbled output rows (:mod:`.tables`) take the
  ``n_outputs * n`` tweaks just after the AND gates'. Garblings that share a Delta (a
  session's garbled layers) take disjoint ranges through ``b``, all below the OT's;
* **chunks and pieces** (:func:`chunks`, :func:`pieces`): instances run in chunks (the unit
  of a thread, :data:`DEFAULT_CHUNK`), and the buffer path cuts each AND layer of a chunk
  into pieces of about :data:`PIECE` gate-instances (the unit of an AES call);
* **threads** (:func:`run_chunks`, :func:`default_workers`): chunks run on this thread and a
  persistent pool, each thread with its own AES context and scratch buffers
  (:func:`thread_buffer`), reused across the chunks of one call and dropped after it;
  :func:`wipe_thread_buffers` zeroes them (the garbler's held zero labels and Delta);
* **a chunk's labels** (:func:`chunk_labels`): the wire-slot array with its inputs loaded
  (zero labels for the garbler, active labels for the evaluator);
* **the buffer path's walk** (:class:`Scratch`, :func:`walk_layers`): XOR blocks and AND
  layers in depth order, each AND piece gathered into scratch buffers, hashed by
  ``cryptography``'s AES, and combined by a side's kernels (:mod:`._kernels`). The compiled
  path (:mod:`._fused`) walks the same schedule inside one call per chunk.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from safenet.crypto.aes import OT_TWEAK_DOMAIN, FixedKeyAES
from safenet.crypto.gc import _kernels as K
from safenet.crypto.gc.circuit import Circuit, Schedule

__all__ = [
    "DEFAULT_CHUNK",
    "EVAL_HALVES",
    "GARBLE_HALVES",
    "MAX_WORKERS",
    "MIN_SPLIT",
    "PIECE",
    "TWEAK_LIMIT",
    "Scratch",
    "and_tweaks",
    "chunk_labels",
    "chunks",
    "default_workers",
    "pieces",
    "row_tweak_base",
    "run_chunks",
    "thread_buffer",
    "tweak_span",
    "walk_layers",
    "wipe_thread_buffers",
]

# -- tweaks -------------------------------------------------------------------------------

#: garbling tweaks (before the final ``<< 1``) stay below this: OT extension uses
#: ``[0x4F54 << 48, ...)`` with the same hash and, in correlated OT, the same Delta
TWEAK_LIMIT = OT_TWEAK_DOMAIN >> 1

#: the half gate of each hash of an AND gate, per side: the garbler hashes ``A0, A1``
#: (garbler half) and ``B0, B1`` (evaluator half), the evaluator its labels ``A, B``
GARBLE_HALVES = np.array([0, 0, 1, 1], dtype=np.uint64)
EVAL_HALVES = np.array([0, 1], dtype=np.uint64)


def tweak_span(circuit: Circuit, n_instances: int, rows: bool = False) -> int:
    """Tweaks (before the final ``<< 1``) one garbling uses from its ``tweak_base``: its AND
    gates', then, with output rows, ``n_instances`` per output bit."""
    return (circuit.and_count + (circuit.n_outputs if rows else 0)) * n_instances


def row_tweak_base(circuit: Circuit, n_instances: int, tweak_base: int) -> int:
    """Where a garbling's output rows' tweaks start (:func:`.tables.row_tweaks`): just after
    its AND gates'."""
    return tweak_base + circuit.and_count * n_instances


def and_tweaks(
    circuit: Circuit, n_instances: int, chunk: int | None = None, tweak_base: int = 0
) -> np.ndarray:
    """Every hash tweak a garbling uses, in order (for auditing uniqueness in tests).

    Runs the same chunk/layer/piece loops and the same tweak kernel as
    :func:`~.garble.garble`, on zero blocks, and returns the tweaks it applies.
    """
    sch = circuit.schedule
    out = []
    for i0, i1 in chunks(n_instances, chunk):
        m = i1 - i0
        for d in range(sch.depth):
            for lo, hi in pieces(*sch.and_layer(d), m):
                zero = np.zeros((4, hi - lo, m, 2), dtype=np.uint64)
                Q = np.empty_like(zero)
                K.tweak_xor(zero, Q, lo, n_instances, i0 + tweak_base, GARBLE_HALVES)
                out.append(Q[[0, 2], ..., 0].reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


# -- chunks and pieces --------------------------------------------------------------------

#: instances processed together; label memory is ``n_slots * chunk * 16`` bytes
DEFAULT_CHUNK = 16384
#: smallest chunk worth a thread of its own (below it the threads fight over the GIL)
MIN_SPLIT = 2048
#: most threads one garbling/evaluation uses
MAX_WORKERS = 8
#: gate-instances per AES call: wide layers are cut into pieces of about this size
PIECE = 1 << 15


def chunks(n: int, chunk: int | None, workers: int = 1) -> list[tuple[int, int]]:
    """Instance ranges ``[i0, i1)`` of ``chunk`` instances (default :data:`DEFAULT_CHUNK`,
    smaller when that leaves a worker idle, but not below :data:`MIN_SPLIT`)."""
    c = DEFAULT_CHUNK if chunk is None else chunk
    if c < 1:
        raise ValueError("chunk must be positive")
    if workers > 1 and chunk is None:  # enough chunks to keep every worker busy
        c = min(c, max(MIN_SPLIT, -(-n // workers)))
    return [(a, min(n, a + c)) for a in range(0, n, c)]


def pieces(lo: int, hi: int, m: int) -> Iterator[tuple[int, int]]:
    """AND gates ``lo..hi`` of a layer, for ``m`` instances, in runs of about :data:`PIECE`
    gate-instances."""
    step = max(1, PIECE // max(m, 1))
    for a in range(lo, hi, step):
        yield a, min(hi, a + step)


# -- threads ------------------------------------------------------------------------------

_local = threading.local()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def default_workers() -> int:
    """Threads for garbling/evaluation: the AES calls and numba kernels release the GIL."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


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


def thread_buffer(name: str, words: int) -> np.ndarray:
    """A uint64 scratch array of ``words`` owned by this thread and reused by its next chunks
    of the same :func:`run_chunks` call (fresh arrays of tens of MB per chunk cost page
    faults); its contents are whatever the last chunk left."""
    bufs = _local.__dict__.setdefault("buffers", {})
    buf = bufs.get(name)
    if buf is None or buf.size < words:
        buf = bufs[name] = np.empty(words, dtype=np.uint64)
    return buf[:words]


def wipe_thread_buffers() -> None:
    """Zero this thread's scratch buffers (after a garbling chunk: they held labels)."""
    for buf in _local.__dict__.get("buffers", {}).values():
        buf.fill(0)


def _thread_aes() -> FixedKeyAES:
    """This thread's AES context (made once per thread)."""
    if not hasattr(_local, "aes"):
        _local.aes = FixedKeyAES()
    return _local.aes


def _release_thread_state() -> None:
    """Drop this thread's AES context and buffers (they held labels): a pool thread keeps
    nothing between garblings or evaluations."""
    _local.__dict__.pop("aes", None)
    _local.__dict__.pop("buffers", None)


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


# -- a chunk's labels and the buffer path's walk ------------------------------------------


def chunk_labels(sch: Schedule, labels: dict[str, np.ndarray], i0: int, i1: int) -> np.ndarray:
    """Wire-slot label buffer for instances [i0, i1): slot 0 (constant) zero, inputs loaded.

    Shared by garbling (inputs = zero labels) and evaluation (inputs = active labels).
    """
    L = thread_buffer("labels", sch.n_slots * (i1 - i0) * 2).reshape(sch.n_slots, i1 - i0, 2)
    L[0] = 0
    for name, slots in sch.input_slots.items():
        used = slots >= 0
        if used.any():
            L[slots[used]] = np.asarray(labels[name], dtype=np.uint64)[used, i0:i1]
    return L


class Scratch:
    """Per-chunk buffers for one AND-layer piece: labels X, P = pi(X), R = pi(P ^ tweak).

    Allocated once per chunk (sized for the largest piece) so a piece costs no allocation;
    the flat buffers keep the two spare words AES writes into. ``halves`` is the side's hash
    layout (:data:`GARBLE_HALVES` or :data:`EVAL_HALVES`).
    """

    def __init__(self, halves: np.ndarray, m: int) -> None:
        self.halves = halves
        self.h = len(halves)
        words = self.h * max(PIECE, m) * 2
        self.xf = thread_buffer("x", words + 2)
        self.pf = thread_buffer("p", words + 2)
        self.rf = thread_buffer("r", words + 2)

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
    sc: Scratch,
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
        for lo, hi in pieces(*sch.and_layer(d), m):
            X = sc.x(hi - lo, m)
            gather(lo, hi, X)
            P, R = sc.hash(aes, hi - lo, m, lo, n_total, tweak0)
            combine(lo, hi, X, P, R)

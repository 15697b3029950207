"""The garbler's side of half-gates (Zahur-Rosulek-Evans 2015) with free-XOR and
point-and-permute; :mod:`.evaluate` is its mirror image, and both walk the schedule
through :mod:`.walk`.

One :func:`garble` call garbles ``n_instances`` independent copies of a circuit under one
fresh global offset Delta (lsb 1): every wire has a zero label ``W0`` and one label
``W0 ^ Delta``, the lsb of a label is its permute bit, XOR and NOT are free and an AND gate
costs two ciphertexts ``(T_G, T_E)``. Hashing is the tweakable correlation-robust hash of
:class:`safenet.crypto.aes.FixedKeyAES` with the tweaks of :mod:`.walk` (unique within a
garbling, see :func:`~.walk.and_tweaks`); optional garbled output rows (:mod:`.tables`) take
the tweaks after the AND gates'. The protocol garbles every garbled layer of a session (ReLU
channels, max pools) under one Delta (the correlated-OT sender's), giving each layer its own
tweak range through ``tweak_base`` (:func:`~.walk.tweak_span`). Chunks of instances run on
:mod:`.walk`'s thread pool, each in one compiled call where the CPU has AES-NI
(:mod:`._fused`), else one vectorised AES call per AND-layer piece (:mod:`._kernels`); the
reused buffers are wiped after each chunk (no label or Delta stays).

In this module, in the order of :mod:`.evaluate`: :func:`garble` (the entry point) and
:func:`_garble_chunk` (one chunk, compiled or buffered); then what the garbler hands out:
:class:`Garbled`, :func:`encode`, :func:`label_pairs` and :func:`encode_labels`.

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

from collections.abc import Callable

import numpy as np

from safenet.crypto.aes import FixedKeyAES, random_blocks
from safenet.crypto.aesni import FIXED_ROUND_KEYS
from safenet.crypto.gc import _fused as F
from safenet.crypto.gc import _kernels as K
from safenet.crypto.gc.circuit import Circuit, Schedule
from safenet.crypto.gc.tables import encrypt_rows, row_tweaks
from safenet.crypto.gc.walk import (
    GARBLE_HALVES,
    TWEAK_LIMIT,
    Scratch,
    chunk_labels,
    chunks,
    default_workers,
    row_tweak_base,
    run_chunks,
    tweak_span,
    walk_layers,
    wipe_thread_buffers,
)

__all__ = ["Garbled", "encode", "encode_labels", "garble", "label_pairs"]


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
            (:func:`~.walk.tweak_span`: the AND gates', then the rows'), all below
            :data:`~.walk.TWEAK_LIMIT`.
        workers: threads (default :func:`~.walk.default_workers`); results do not depend on
            it.
        rows: ``(v0, v1)``, uint64 ``(n_outputs, n_instances)`` each: garbled output rows for
            every output bit, which give the evaluator ``v_b`` for the bit ``b`` it holds
            (:mod:`.tables`), in :attr:`Garbled.rows`; they use the tweaks just after the AND
            gates' (:func:`~.walk.row_tweak_base`), and no decode bits are kept.
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
    kernel = fused[0] if fused else None

    def body(aes: FixedKeyAES, i0: int, i1: int) -> None:
        L = chunk_labels(sch, input_zero, i0, i1)
        _garble_chunk(kernel, sch, L, aes, d0, d1, tables, i0, n_instances, tweak_base)
        if vals is None or out_rows is None:  # outputs read through decode bits
            lsb = (L[sch.out_slots, :, 0] & np.uint64(1)).astype(np.uint8)
            decode_bits[:, i0:i1] = lsb ^ sch.out_neg[:, None]
        else:  # outputs read through rows only: a decode bit would reveal the bit
            zero = L[sch.out_slots] ^ (sch.out_neg.astype(np.uint64)[:, None, None] * delta)
            base = row_tweak_base(circuit, n_instances, tweak_base)
            tw = row_tweaks(base, circuit.n_outputs, n_instances, i0, i1)
            v0, v1 = vals[0][:, i0:i1], vals[1][:, i0:i1]
            out_rows[:, i0:i1] = encrypt_rows(zero, delta, v0, v1, tw, aes)
        wipe_thread_buffers()  # reused buffers: no zero labels, no Delta left

    w = default_workers() if workers is None else workers
    run_chunks(chunks(n_instances, chunk, w), w, body)
    return Garbled(circuit, n_instances, delta, input_zero, tables, decode_bits, out_rows)


def _garble_chunk(
    kernel: Callable[..., None] | None, sch: Schedule, L: np.ndarray, aes: FixedKeyAES,
    d0: np.uint64, d1: np.uint64, tables: np.ndarray, i0: int, n_total: int, tweak_base: int,
) -> None:  # fmt: skip
    """Garble instances ``i0 .. i0 + m`` of ``n_total`` (``L``: the chunk's zero labels,
    inputs loaded): AND tables into ``tables[:, i0:i0 + m]``, output zero labels into ``L``.

    In one compiled call where ``kernel`` (:mod:`._fused`'s ``garble_chunk``) is given, else
    through scratch buffers and ``cryptography``'s AES, one AND-layer piece at a time
    (:func:`~.walk.walk_layers` with :mod:`._kernels`' garbler gather and combine).
    """
    if kernel is not None:
        kernel(
            L, sch.xor_out, sch.xor_a, sch.xor_b, sch.xor_ptr, sch.and_out, sch.and_a,
            sch.and_a_neg, sch.and_b, sch.and_b_neg, sch.and_ptr, d0, d1, tables, i0,
            n_total, i0 + tweak_base, FIXED_ROUND_KEYS,
        )  # fmt: skip
        return
    i1 = i0 + L.shape[1]

    def gather(lo: int, hi: int, X: np.ndarray) -> None:
        K.garble_gather(L, sch.and_a, sch.and_a_neg, sch.and_b, sch.and_b_neg, lo, hi, d0, d1, X)

    def combine(lo: int, hi: int, X: np.ndarray, P: np.ndarray, R: np.ndarray) -> None:
        K.garble_combine(X, P, R, d0, d1, tables[lo:hi, i0:i1], L, sch.and_out, lo)

    sc = Scratch(GARBLE_HALVES, L.shape[1])
    walk_layers(sch, L, sc, aes, n_total, i0 + tweak_base, gather, combine)


class Garbled:
    """The garbler's side of one garbling: secrets released once each (see module doc).

    Attributes:
        circuit: the garbled circuit.
        n_instances: independent copies garbled.
        decode_bits: uint8 ``(n_outputs, n_instances)``, lsb of each output zero label;
            sent to the evaluator so that it can :func:`~.evaluate.decode` its outputs (never
            those of a garbling with output rows: they would reveal the bits).
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
        ``tables.tobytes()`` is the wire format (see :func:`~.evaluate.tables_from_bytes`).
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

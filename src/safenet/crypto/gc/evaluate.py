"""The evaluator's side of half-gates: the mirror image of :mod:`.garble`, walking the same
schedule through :mod:`.walk`.

The evaluator holds one label per input wire (its own through OT, the garbler's sent in the
clear) and the AND tables; it learns one label per output wire and, with the garbler's
decode bits, the output bits (:func:`evaluate`, :func:`decode`), or with the garbler's output
rows the additive share they sum to (:func:`evaluate_shares`). Two hashes per AND gate, with
the garbling's tweaks (:mod:`.walk`): chunks of instances on :mod:`.walk`'s thread pool, each
in one compiled call where the CPU has AES-NI (:mod:`._fused`), else one vectorised AES call
per AND-layer piece (:mod:`._kernels`).

In this module, in the order of :mod:`.garble`: :func:`evaluate` and :func:`evaluate_shares`
(the entry points), :func:`_evaluate_chunks` (their shared run over the chunks) and
:func:`_evaluate_chunk` (one chunk, compiled or buffered); then what the evaluator takes in
and reads out: :func:`_check` (tables and labels against the circuit),
:func:`tables_from_bytes` and :func:`decode`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from safenet.crypto.aes import FixedKeyAES
from safenet.crypto.aesni import FIXED_ROUND_KEYS
from safenet.crypto.gc import _fused as F
from safenet.crypto.gc import _kernels as K
from safenet.crypto.gc.circuit import Circuit, Schedule
from safenet.crypto.gc.tables import decrypt_rows, row_tweaks
from safenet.crypto.gc.walk import (
    EVAL_HALVES,
    Scratch,
    chunk_labels,
    chunks,
    default_workers,
    row_tweak_base,
    run_chunks,
    walk_layers,
)

__all__ = ["decode", "evaluate", "evaluate_shares", "tables_from_bytes"]


def evaluate(
    circuit: Circuit,
    tables: np.ndarray,
    input_labels: dict[str, np.ndarray],
    *,
    chunk: int | None = None,
    tweak_base: int = 0,
    workers: int | None = None,
) -> np.ndarray:
    """Evaluate garbled ``circuit``; returns output labels ``(n_outputs, n_instances, 2)``.

    Args:
        circuit: the circuit that was garbled.
        tables: uint64 ``(and_count, n_instances, 2, 2)`` from :meth:`Garbled.take_tables`
            (or :func:`tables_from_bytes`).
        input_labels: group name -> labels ``(nbits, n_instances, 2)``, one per input wire,
            for every input group the circuit uses.
        chunk: instances per pass (any value; results do not depend on it).
        tweak_base: the garbling's ``tweak_base`` (see :func:`~.garble.garble`).
        workers: threads (default: one per core, at most 8); results do not depend on it.

    Outputs are concatenated in declaration order; :meth:`Circuit.split_outputs` cuts them.
    """
    n = _check(circuit, tables, input_labels)
    out = np.empty((circuit.n_outputs, n, 2), dtype=np.uint64)
    slots = circuit.schedule.out_slots

    def finish(L: np.ndarray, i0: int, i1: int) -> None:
        out[:, i0:i1] = L[slots]

    _evaluate_chunks(circuit, tables, input_labels, n, chunk, tweak_base, workers, finish)
    return out


def evaluate_shares(
    circuit: Circuit,
    tables: np.ndarray,
    input_labels: dict[str, np.ndarray],
    rows: np.ndarray,
    p: int,
    *,
    chunk: int | None = None,
    tweak_base: int = 0,
    workers: int | None = None,
) -> np.ndarray:
    """Evaluate a garbling made with output rows (``garble(rows=)``) and sum, per instance,
    the values its output bits open in ``rows`` ``(n_outputs, n_instances, 2)`` mod ``p``
    (< 2^62): the evaluator's additive share, int64 ``(n_instances,)``. Each chunk's rows are
    opened right after its evaluation, on the same thread, while its labels are in cache.

    Raises ``ValueError`` if a row opens to a value that is not below ``p`` (corrupt or
    mismatched material). Other arguments as :func:`evaluate`.
    """
    n = _check(circuit, tables, input_labels)
    k = circuit.n_outputs
    if rows.shape != (k, n, 2) or rows.dtype != np.uint64:
        raise ValueError(f"rows must be uint64 {(k, n, 2)}, got {rows.dtype} {rows.shape}")
    z = np.empty(n, dtype=np.uint64)
    slots, base = circuit.schedule.out_slots, row_tweak_base(circuit, n, tweak_base)
    bad: list[int] = []  # per chunk (list.append is atomic; `+=` across threads is not)
    fused = F.kernels() is not None
    rows = np.ascontiguousarray(rows)

    def finish(L: np.ndarray, i0: int, i1: int) -> None:
        if fused:
            bad.append(F.open_rows_sum(L, slots, rows, base, n, i0, np.uint64(p), z,
                                       FIXED_ROUND_KEYS))  # fmt: skip
            return
        values = decrypt_rows(L[slots], rows[:, i0:i1], row_tweaks(base, k, n, i0, i1))
        bad.append(int((values >= np.uint64(p)).sum()))
        acc = np.zeros(i1 - i0, dtype=np.uint64)
        for v in values % np.uint64(p):
            acc = (acc + v) % np.uint64(p)
        z[i0:i1] = acc

    _evaluate_chunks(circuit, tables, input_labels, n, chunk, tweak_base, workers, finish)
    if sum(bad):
        raise ValueError(f"{sum(bad)} garbled output rows opened to values outside [0, p)")
    return z.astype(np.int64)


def _evaluate_chunks(
    circuit: Circuit,
    tables: np.ndarray,
    input_labels: dict[str, np.ndarray],
    n: int,
    chunk: int | None,
    tweak_base: int,
    workers: int | None,
    finish: Callable[[np.ndarray, int, int], None],
) -> None:
    """Evaluate every chunk on the thread pool; ``finish(L, i0, i1)`` takes each chunk's
    wire labels on the thread that computed them."""
    sch = circuit.schedule
    fused = F.kernels()
    kernel = fused[1] if fused else None
    if kernel is not None and not tables.flags.c_contiguous:
        tables = np.ascontiguousarray(tables)  # the four-lane kernel reads whole rows

    def body(aes: FixedKeyAES, i0: int, i1: int) -> None:
        L = chunk_labels(sch, input_labels, i0, i1)
        _evaluate_chunk(kernel, sch, L, aes, tables, i0, n, tweak_base)
        finish(L, i0, i1)

    w = default_workers() if workers is None else workers
    run_chunks(chunks(n, chunk, w), w, body)


def _evaluate_chunk(
    kernel: Callable[..., None] | None, sch: Schedule, L: np.ndarray, aes: FixedKeyAES,
    tables: np.ndarray, i0: int, n_total: int, tweak_base: int,
) -> None:  # fmt: skip
    """Evaluate instances ``i0 .. i0 + m`` of ``n_total`` (``L``: the chunk's active labels,
    inputs loaded) on ``tables[:, i0:i0 + m]``: output labels into ``L``.

    In one compiled call where ``kernel`` (:mod:`._fused`'s ``eval_chunk``) is given, else
    through scratch buffers and ``cryptography``'s AES, one AND-layer piece at a time
    (:func:`~.walk.walk_layers` with :mod:`._kernels`' evaluator gather and combine).
    """
    if kernel is not None:
        kernel(
            L, sch.xor_out, sch.xor_a, sch.xor_b, sch.xor_ptr, sch.and_out, sch.and_a,
            sch.and_b, sch.and_ptr, tables, i0, n_total, i0 + tweak_base, FIXED_ROUND_KEYS,
        )  # fmt: skip
        return
    i1 = i0 + L.shape[1]

    def gather(lo: int, hi: int, X: np.ndarray) -> None:
        K.eval_gather(L, sch.and_a, sch.and_b, lo, hi, X)

    def combine(lo: int, hi: int, X: np.ndarray, P: np.ndarray, R: np.ndarray) -> None:
        K.eval_combine(X, P, R, tables[lo:hi, i0:i1], L, sch.and_out, lo)

    sc = Scratch(EVAL_HALVES, L.shape[1])
    walk_layers(sch, L, sc, aes, n_total, i0 + tweak_base, gather, combine)


def _check(circuit: Circuit, tables: np.ndarray, input_labels: dict[str, np.ndarray]) -> int:
    """The number of instances, after checking tables and labels against the circuit."""
    sch = circuit.schedule
    sizes = {np.asarray(v).shape[1] for v in input_labels.values()}
    if len(sizes) != 1:
        raise ValueError("all input labels must cover the same number of instances")
    n = sizes.pop()
    if tables.shape != (circuit.and_count, n, 2, 2) or tables.dtype != np.uint64:
        raise ValueError(
            f"tables must be uint64 {(circuit.and_count, n, 2, 2)}, got {tables.dtype} "
            f"{tables.shape}"
        )
    for name, slots in sch.input_slots.items():
        if (slots >= 0).any() and name not in input_labels:
            raise KeyError(f"missing labels for input {name!r}")
        if name in input_labels and np.shape(input_labels[name]) != (len(slots), n, 2):
            raise ValueError(f"labels of {name!r} must have shape {(len(slots), n, 2)}")
    return n


def tables_from_bytes(data: bytes, circuit: Circuit, n_instances: int) -> np.ndarray:
    """Inverse of ``tables.tobytes()``: a read-only ``(and_count, n_instances, 2, 2)`` view."""
    want = circuit.table_bytes * n_instances
    if len(data) != want:
        raise ValueError(f"expected {want} bytes of tables, got {len(data)}")
    return np.frombuffer(data, dtype="<u8").reshape(circuit.and_count, n_instances, 2, 2)


def decode(labels: np.ndarray, decode_bits: np.ndarray) -> np.ndarray:
    """Output bits ``lsb(label) ^ decode_bit``, uint8 of shape ``decode_bits.shape``."""
    lsb = (np.asarray(labels)[..., 0] & np.uint64(1)).astype(np.uint8)
    return lsb ^ np.asarray(decode_bits, dtype=np.uint8)

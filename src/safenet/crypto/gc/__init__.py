"""Garbled circuits: layered boolean circuits, half-gates garbling and evaluation, the
protocol's ReLU and max circuits, garbled output rows.

* :mod:`.circuit`: XOR/AND circuits with free NOT and constants, a builder with arithmetic
  helpers, and the layered schedule that runs one AND depth across all instances at once;
* :mod:`.garble` / :mod:`.evaluate`: the garbler's and the evaluator's side of half-gates
  with free-XOR and point-and-permute over fixed-key AES, mirror images of each other;
  garbled material is single-use by construction;
* :mod:`.walk`: what both sides share: the tweak layout, chunks and pieces, the thread pool
  and scratch buffers, and the buffer path's AND-layer walk;
* :mod:`._fused`: the compiled AES-NI kernels (:mod:`safenet.crypto.aesni`) garbling or
  evaluating a whole chunk in one call where the CPU has AES-NI, and making and opening
  output rows; :mod:`._kernels`: the buffer path's numba kernels around ``cryptography``'s
  AES (gather, tweak, combine), the XOR blocks and the free-XOR encoding;
* :mod:`.tables`: garbled output rows (an output bit turned into one of two 64-bit values);
* :mod:`.relu_circuit`: the protocol's ReLU circuit (share addition mod p, sign, exact
  truncation, weighted output bits); :mod:`.maxpool_circuit`: the max over a pooling window
  of shares.

This package also holds :func:`warm_up`, which loads both sides' kernels at once.
"""

import functools

import numpy as np

from safenet.crypto.gc.circuit import (
    FALSE,
    TRUE,
    Circuit,
    CircuitBuilder,
    Schedule,
    bits_to_int,
    int_to_bits,
)
from safenet.crypto.gc.evaluate import decode, evaluate, evaluate_shares, tables_from_bytes
from safenet.crypto.gc.garble import Garbled, encode, garble, label_pairs
from safenet.crypto.gc.relu_circuit import relu_circuit, relu_reference, relu_weights, relu_width
from safenet.crypto.gc.walk import and_tweaks, tweak_span

__all__ = [
    "FALSE",
    "TRUE",
    "Circuit",
    "CircuitBuilder",
    "Garbled",
    "Schedule",
    "and_tweaks",
    "bits_to_int",
    "decode",
    "encode",
    "evaluate",
    "evaluate_shares",
    "garble",
    "int_to_bits",
    "label_pairs",
    "relu_circuit",
    "relu_reference",
    "relu_weights",
    "relu_width",
    "tables_from_bytes",
    "tweak_span",
    "warm_up",
]


@functools.cache
def warm_up() -> None:
    """Load (or compile) the garbling, evaluation, row and encoding kernels now, once per
    process: their first call costs tens of milliseconds from numba's cache (seconds on a
    fresh install), which belongs in the offline phase, not in the first online layer. Runs
    a five-instance garbling with output rows of a two-gate circuit (four lanes and a
    remainder)."""
    bld = CircuitBuilder()
    x = bld.input("x", 2)
    bld.output("y", [bld.and_(bld.xor(x[0], x[1]), x[1])])
    circuit = bld.build()
    v = np.zeros((1, 5), dtype=np.uint64)
    g = garble(circuit, 5, workers=1, rows=(v, v + np.uint64(1)))
    labels = {"x": g.encode("x", np.ones((2, 5), dtype=np.uint8))}
    assert g.rows is not None
    evaluate_shares(circuit, g.take_tables(), labels, g.rows, 7, workers=1)

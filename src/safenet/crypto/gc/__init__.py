"""Garbled circuits: layered boolean circuits, half-gates garbling and evaluation, ReLU, max.

* :mod:`.circuit`: XOR/AND circuits with free NOT and constants, a builder with arithmetic
  helpers, and the layered schedule that runs one AND depth across all instances at once;
* :mod:`.garble` / :mod:`.evaluate`: half-gates with free-XOR and point-and-permute over
  fixed-key AES; garbled material is single-use by construction;
* :mod:`.relu`: the protocol's ReLU circuit (share addition mod p, sign, exact truncation,
  weighted output bits); :mod:`.maxpool`: the max over a pooling window of shares;
* :mod:`.tables`: garbled output rows (an output bit turned into one of two 64-bit values);
* :mod:`._fused`: the AES-NI kernels (:mod:`safenet.crypto.aesni`) garbling and evaluation
  run on where the CPU has it.
"""

from safenet.crypto.gc.circuit import (
    FALSE,
    TRUE,
    Circuit,
    CircuitBuilder,
    Schedule,
    bits_to_int,
    int_to_bits,
)
from safenet.crypto.gc.evaluate import decode, evaluate
from safenet.crypto.gc.garble import (
    Garbled,
    and_tweaks,
    encode,
    garble,
    label_pairs,
    tables_from_bytes,
)
from safenet.crypto.gc.relu_circuit import relu_circuit, relu_reference, relu_weights, relu_width

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
    "garble",
    "int_to_bits",
    "label_pairs",
    "relu_circuit",
    "relu_reference",
    "relu_weights",
    "relu_width",
    "tables_from_bytes",
]

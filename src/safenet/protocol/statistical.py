"""Statistical security of one session: every statistically hiding noise flood.

Two mechanisms hide secrets only statistically, each element by itself within a distance
``eps`` of a secret-free view; for a whole session the distances add up (union bound over
independent draws):

* **linear replies**: c0 of every reply ciphertext of a conv/linear layer is flooded,
  ``N`` coefficients per ciphertext (:mod:`safenet.protocol.linear`);
* **polynomial replies**: likewise for the HE tuples of polynomial channels
  (:mod:`safenet.protocol.poly`).

Garbled layers add no term: their outputs become additive shares through garbled output rows
with uniform masks mod p (:mod:`safenet.protocol.garbled`), which hide perfectly.

The session's budget ``2^-STAT_BITS`` is split over the mechanisms (``SPLIT_BITS`` = 2 bits
each, room for up to four: ``2 * 2^-42 < 2^-40``), and within a mechanism over its elements:
an element needs ``STAT_BITS + SPLIT_BITS + ceil(log2(elements))`` bits
(:func:`element_bits`). Every count comes from the public plan and parameters, so both
parties derive the same floods. The openings of polynomial channels are statistical too but
cannot meet this bound under SEAL's primes; docs/security.md states their figure separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from safenet.plan.ir import Plan
from safenet.plan.ops import Activation
from safenet.protocol.arith import STAT_BITS

__all__ = [
    "SPLIT_BITS",
    "SessionBudget",
    "element_bits",
    "poly_replies",
]

#: bits each mechanism gives up so that their sum stays within 2^-STAT_BITS
SPLIT_BITS = 2


def element_bits(elements: int) -> int:
    """Security bits one of ``elements`` hiding events needs: its mechanism then stays
    within ``2^-(STAT_BITS + SPLIT_BITS)`` over the session."""
    return STAT_BITS + SPLIT_BITS + math.ceil(math.log2(max(1, int(elements))))


def _per_channel(op_shape: tuple[int, ...]) -> int:
    return int(np.prod(op_shape[1:])) if len(op_shape) > 1 else 1


def poly_replies(plan: Plan, slots: int) -> int:
    """Reply ciphertexts of all polynomial layers of one session (``slots`` per ciphertext)."""
    total = 0
    for _, op in plan.activations():
        mask = op.arrays["relu_mask"].astype(bool)
        n_poly = int((~mask).sum()) * _per_channel(op.shape)
        if n_poly:
            total += -(-n_poly // slots) * int(op.attrs_as(Activation).degree)
    return total


@dataclass(frozen=True)
class SessionBudget:
    """The statistical terms of one session and the bits each element gets.

    Attributes:
        poly_degree: BFV ring dimension ``N`` (coefficients per ciphertext).
        linear_replies: reply ciphertexts of all conv/linear layers.
        poly_replies: reply ciphertexts of all polynomial layers.
    """

    poly_degree: int
    linear_replies: int
    poly_replies: int

    @property
    def linear_bits(self) -> int:
        """Bits by which a linear reply's flood must exceed its weight-dependent noise."""
        return element_bits(self.poly_degree * self.linear_replies)

    @property
    def poly_bits(self) -> int:
        """Bits by which a polynomial reply's flood must exceed its noise."""
        return element_bits(self.poly_degree * self.poly_replies)

    def rows(self) -> list[tuple[str, int, int]]:
        """``(mechanism, hidden elements, bits per element)`` per mechanism, for reports."""
        n = self.poly_degree
        return [
            ("linear replies (coefficients)", n * self.linear_replies, self.linear_bits),
            ("polynomial replies (coefficients)", n * self.poly_replies, self.poly_bits),
        ]

    def total_distance(self) -> float:
        """Upper bound on the session's statistical distance from a secret-free view."""
        return sum(k * 2.0**-b for _, k, b in self.rows())

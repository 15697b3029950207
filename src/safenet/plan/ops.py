"""The op kinds of a Plan, one typed class of attributes each, and :class:`Op`, one node.

Each class below is a frozen dataclass of the op's public parameters; its ``kind`` is the
name the plan file stores, and its fields, in order, are the file's ``attrs`` object (a field
whose default is ``None`` is written only when set). What the protocol does with each kind:

==================  ==========  ===========================================================
class               kind        what it computes (protocol)
==================  ==========  ===========================================================
:class:`Input`      input       the client's image at scale ``frac_bits``
:class:`Conv`       conv        2-D convolution, batch norm folded, integer weights (HE)
:class:`Linear`     linear      fully connected layer, integer weight and bias (HE)
:class:`SumPool`    sumpool     sum over k x k windows; average pools fold 1/k^2 elsewhere
:class:`Rescale`    rescale     multiply by an integer (a non-power-of-two pool divisor)
:class:`Add`        add         residual add, each input first multiplied by 2^shift
:class:`Concat`     concat      concatenation along channels, each input shifted likewise
:class:`MaxPool`    maxpool     max over each window (rows/cols: :mod:`.pooling`) (GC)
:class:`Flatten`    flatten     reshape (C, H, W) -> (C*H*W,)
:class:`Truncate`   truncate    round-shift right by ``shift`` bits (local)
:class:`Activation` activation  per channel: ReLU (GC) or a polynomial (HE-made tuples)
==================  ==========  ===========================================================

Sum pools, rescales, adds, concatenations, flattens and truncations are *local* ops
(:data:`LOCAL_OPS`): each party applies them to its own share.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

__all__ = [
    "OP_TYPES",
    "LOCAL_OPS",
    "OpAttrs",
    "Op",
    "Input",
    "Conv",
    "Linear",
    "SumPool",
    "Rescale",
    "Add",
    "Concat",
    "MaxPool",
    "Flatten",
    "Truncate",
    "Activation",
    "attrs_from_json",
]

A = TypeVar("A", bound="OpAttrs")


@dataclass(frozen=True)
class OpAttrs:
    """Base of the typed op attributes; ``kind`` names the op in files and messages."""

    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """The plan file's ``attrs`` object: fields in order, unset optional ones left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls: type[A], attrs: dict[str, Any]) -> A:
        """Inverse of :meth:`to_json`; refuses unknown or missing keys."""
        names = {f.name for f in fields(cls)}
        if unknown := set(attrs) - names:
            raise ValueError(f"{cls.kind} op: unknown attributes {sorted(unknown)}")
        try:
            return cls(**attrs)
        except TypeError as e:
            raise ValueError(f"{cls.kind} op: {e}") from None


@dataclass(frozen=True)
class Input(OpAttrs):
    """The client's input image."""

    kind: ClassVar[str] = "input"


@dataclass(frozen=True)
class Conv(OpAttrs):
    """2-D convolution; ``weight_bits`` is the weights' fractional bits (set by the compiler)."""

    kind: ClassVar[str] = "conv"
    stride: list[int]
    padding: list[int]
    groups: int
    kernel: list[int]
    weight_bits: int | None = None


@dataclass(frozen=True)
class Linear(OpAttrs):
    """Fully connected layer; ``weight_bits`` as for :class:`Conv`."""

    kind: ClassVar[str] = "linear"
    weight_bits: int | None = None


@dataclass(frozen=True)
class SumPool(OpAttrs):
    """Sum over ``kernel`` x ``kernel`` windows with stride ``stride``."""

    kind: ClassVar[str] = "sumpool"
    kernel: int
    stride: int


@dataclass(frozen=True)
class Rescale(OpAttrs):
    """Multiply by the integer ``multiplier``."""

    kind: ClassVar[str] = "rescale"
    multiplier: int


@dataclass(frozen=True)
class Add(OpAttrs):
    """Sum of the inputs, input ``j`` first multiplied by ``2^shifts[j]``."""

    kind: ClassVar[str] = "add"
    shifts: list[int]


@dataclass(frozen=True)
class Concat(OpAttrs):
    """Concatenation along channels, input ``j`` first multiplied by ``2^shifts[j]``."""

    kind: ClassVar[str] = "concat"
    shifts: list[int]


@dataclass(frozen=True)
class MaxPool(OpAttrs):
    """Max over windows: each output row's and column's input positions (:mod:`.pooling`)."""

    kind: ClassVar[str] = "maxpool"
    rows: list[list[int]]
    cols: list[list[int]]


@dataclass(frozen=True)
class Flatten(OpAttrs):
    """Reshape to one dimension."""

    kind: ClassVar[str] = "flatten"


@dataclass(frozen=True)
class Truncate(OpAttrs):
    """Round-shift right by ``shift`` bits."""

    kind: ClassVar[str] = "truncate"
    shift: int


@dataclass(frozen=True)
class Activation(OpAttrs):
    """Channel-wise ReLU or polynomial (semantics: :mod:`safenet.plan.ir`).

    Attributes:
        shift: ``k``, the rounding shift of the input ``v`` to the output scale.
        degree: the polynomials' degree (0 when every channel is ReLU).
        poly_shift: ``q``, the truncation of the polynomial sum.
        poly_in_shift: the truncation of ``v`` into the polynomial input when the field sets
            ``poly_frac_bits`` (else ``shift``; see :meth:`poly_input_shift`).
        clip: a clipped ReLU's bound (ReLU6 and friends) at the output scale.
    """

    kind: ClassVar[str] = "activation"
    shift: int
    degree: int
    poly_shift: int
    poly_in_shift: int | None = None
    clip: int | None = None

    def poly_input_shift(self) -> int:
        """The truncation of ``v`` into the polynomial input ``X_p``."""
        return int(self.shift if self.poly_in_shift is None else self.poly_in_shift)


#: every op kind's attribute class, by the name the plan file stores
OP_TYPES: dict[str, type[OpAttrs]] = {
    t.kind: t
    for t in (
        Input, Conv, Linear, SumPool, Rescale, Add, Concat, MaxPool, Flatten, Truncate, Activation
    )
}  # fmt: skip
#: ops each party applies to its own share
LOCAL_OPS: tuple[type[OpAttrs], ...] = (SumPool, Rescale, Add, Concat, Flatten, Truncate)


def attrs_from_json(kind: str, attrs: dict[str, Any]) -> OpAttrs:
    """The typed attributes of a stored op of ``kind``."""
    if kind not in OP_TYPES:
        raise ValueError(f"unknown op kind {kind!r}")
    return OP_TYPES[kind].from_json(attrs)


@dataclass
class Op:
    """One node of a Plan.

    Attributes:
        attrs: the op's kind and typed parameters (one of the classes above).
        inputs: indices of the ops whose outputs this op reads.
        shape: output shape without the batch dimension.
        scale: fractional bits of the output.
        arrays: integer parameters (weights, bias, masks, coefficients).
        name: the torch.fx node this op came from, for error messages and reports.
    """

    attrs: OpAttrs
    inputs: list[int]
    shape: tuple[int, ...]
    scale: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""

    @property
    def kind(self) -> str:
        """The op kind's name (``"conv"``, ``"activation"``, ...), for messages and reports."""
        return self.attrs.kind

    def attrs_as(self, cls: type[A]) -> A:
        """The attributes, checked to be of ``cls`` (for code that handles one kind)."""
        if not isinstance(self.attrs, cls):
            raise ValueError(f"op {self.name!r} of kind {self.kind!r} is not {cls.kind}")
        return self.attrs

    def poly_input_shift(self) -> int:
        """An activation's truncation of ``v`` into the polynomial input ``X_p``."""
        return self.attrs_as(Activation).poly_input_shift()

    def meta(self) -> dict[str, Any]:
        """The op's entry in the plan file (arrays by name only)."""
        return {
            "kind": self.kind,
            "inputs": self.inputs,
            "shape": list(self.shape),
            "scale": self.scale,
            "attrs": self.attrs.to_json(),
            "name": self.name,
            "arrays": sorted(self.arrays),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Op:
        """Inverse of :meth:`meta`, given the arrays it names."""
        attrs = attrs_from_json(meta["kind"], meta["attrs"])
        return cls(attrs, meta["inputs"], tuple(meta["shape"]), meta["scale"], arrays, meta["name"])

"""Boolean circuits for garbling, built once per layer shape and run over many instances.

Representation. A circuit is an XOR/AND graph with free inverters. Wires are integers and a
*literal* is ``2 * wire + negated``: NOT never becomes a gate, it flips the literal's low bit
(with free-XOR the garbler's zero label of ``~w`` is ``W0 ^ Delta`` and the evaluator's label
is unchanged). Wire 0 is the constant 0, so the literals ``FALSE = 0`` and ``TRUE = 1`` are
constants; the builder folds them away, so constants never reach a gate and cost nothing.
The builder also hash-conses gates (an identical gate is built once), which lets several
comparisons with constants share the common part of their carry chains, and ``build()``
drops every gate that no output depends on.

Schedule. Garbling and evaluation run one *AND layer* at a time: all AND gates of the same
AND depth, for every instance of a chunk, hashed together (:mod:`.walk` walks the layers for
both sides, :mod:`._fused` inside one compiled call). XOR gates are grouped into blocks
between AND layers. Wire labels live in a slot array of shape ``(n_slots, n_instances, 2)``
(uint64 pairs = 128-bit labels); slots are reused once a wire is dead, so memory follows
the live width of the circuit, not its size.

Bit vectors are little-endian Python lists of literals (index 0 = least significant bit).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "AND",
    "FALSE",
    "TRUE",
    "XOR",
    "Circuit",
    "CircuitBuilder",
    "Schedule",
    "bits_to_int",
    "int_to_bits",
]

FALSE = 0
TRUE = 1
XOR = 0
AND = 1
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def int_to_bits(values: np.ndarray | Sequence[int] | int, n: int) -> np.ndarray:
    """Little-endian bits of non-negative integers: shape ``(n, *values.shape)``, uint8."""
    if not 0 <= n <= 64:
        raise ValueError(f"n must be in [0, 64], got {n}")
    v = np.asarray(values)
    if v.dtype == object or v.dtype.kind not in "iub":
        v = np.asarray(v, dtype=np.uint64)
    if v.dtype.kind == "i" and v.size and v.min() < 0:
        raise ValueError("int_to_bits takes non-negative values")
    v = v.astype(np.uint64)
    shifts = np.arange(n, dtype=np.uint64).reshape((n,) + (1,) * v.ndim)
    return ((v[None] >> shifts) & np.uint64(1)).astype(np.uint8)


def bits_to_int(bits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`int_to_bits`: little-endian bits along axis 0 -> uint64 values."""
    b = np.asarray(bits).astype(np.uint64)
    n = b.shape[0]
    if n > 64:
        raise ValueError(f"at most 64 bits fit in uint64, got {n}")
    shifts = np.arange(n, dtype=np.uint64).reshape((n,) + (1,) * (b.ndim - 1))
    return np.bitwise_or.reduce(b << shifts, axis=0) if n else np.zeros(b.shape[1:], np.uint64)


@dataclass(frozen=True)
class Schedule:
    """Execution plan of a circuit: slot indices per XOR block and AND layer.

    Block ``d`` (``d = 0..depth``) holds the XOR gates of AND depth ``d`` and runs before AND
    layer ``d + 1``. XOR gate ``i`` computes ``slot[xor_out[i]] = slot[xor_a[i]] ^
    slot[xor_b[i]]``; block ``d`` is ``xor_ptr[d]:xor_ptr[d + 1]``. AND gates are numbered in
    layer order (this number fixes the hash tweak); layer ``d + 1`` is ``and_ptr[d]:and_ptr[d
    + 1]``, with input negations as uint64 masks (all ones when the input literal is negated).
    """

    n_slots: int
    depth: int
    input_slots: dict[str, np.ndarray]
    xor_out: np.ndarray
    xor_a: np.ndarray
    xor_b: np.ndarray
    xor_ptr: np.ndarray
    and_out: np.ndarray
    and_a: np.ndarray
    and_b: np.ndarray
    and_a_neg: np.ndarray
    and_b_neg: np.ndarray
    and_ptr: np.ndarray
    out_slots: np.ndarray
    out_neg: np.ndarray

    def and_layer(self, d: int) -> tuple[int, int]:
        """Half-open range of AND gate numbers in layer ``d + 1`` (``d = 0..depth-1``)."""
        return int(self.and_ptr[d]), int(self.and_ptr[d + 1])

    def xor_block(self, d: int) -> tuple[int, int]:
        """Half-open range of XOR gate indices in block ``d`` (``d = 0..depth``)."""
        return int(self.xor_ptr[d]), int(self.xor_ptr[d + 1])


class Circuit:
    """An immutable XOR/AND circuit with named input and output groups (see module doc).

    Attributes:
        n_wires: wires including the constant wire 0.
        gate_kind, gate_a, gate_b, gate_out: gates in topological order; ``gate_a/b`` are
            literals, ``gate_out`` the output wire.
        inputs: group name -> wire ids, least significant bit first.
        outputs: group name -> literals, least significant bit first.
        gate_stage: per gate, the index in ``stages`` of the builder stage that made it.
    """

    def __init__(
        self,
        n_wires: int,
        gate_kind: np.ndarray,
        gate_a: np.ndarray,
        gate_b: np.ndarray,
        gate_out: np.ndarray,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        gate_stage: np.ndarray | None = None,
        stages: Sequence[str] = ("",),
    ) -> None:
        self.n_wires = int(n_wires)
        self.gate_kind = np.asarray(gate_kind, dtype=np.uint8)
        self.gate_a = np.asarray(gate_a, dtype=np.int64)
        self.gate_b = np.asarray(gate_b, dtype=np.int64)
        self.gate_out = np.asarray(gate_out, dtype=np.int64)
        self.inputs = {k: np.asarray(v, dtype=np.int64) for k, v in inputs.items()}
        self.outputs = {k: np.asarray(v, dtype=np.int64) for k, v in outputs.items()}
        n = len(self.gate_kind)
        self.gate_stage = (
            np.zeros(n, dtype=np.int64) if gate_stage is None else np.asarray(gate_stage)
        )
        self.stages = tuple(stages)

    @property
    def and_count(self) -> int:
        """AND gates per instance (each costs two ciphertexts, 32 bytes, with half-gates)."""
        return int(np.count_nonzero(self.gate_kind == AND))

    @property
    def xor_count(self) -> int:
        """XOR gates per instance (free)."""
        return int(np.count_nonzero(self.gate_kind == XOR))

    @property
    def n_outputs(self) -> int:
        """Output bits per instance, all groups together."""
        return sum(len(v) for v in self.outputs.values())

    @property
    def output_slices(self) -> dict[str, slice]:
        """Where each output group lies in the concatenated output (declaration order)."""
        out, i = {}, 0
        for name, lits in self.outputs.items():
            out[name] = slice(i, i + len(lits))
            i += len(lits)
        return out

    def split_outputs(self, arr: np.ndarray) -> dict[str, np.ndarray]:
        """Cut a concatenated output array (bits or labels, outputs on axis 0) into groups."""
        return {k: arr[s] for k, s in self.output_slices.items()}

    def and_count_by_stage(self) -> dict[str, int]:
        """Live AND gates per builder stage (see :meth:`CircuitBuilder.stage`)."""
        counts = np.bincount(self.gate_stage[self.gate_kind == AND], minlength=len(self.stages))
        return {s: int(c) for s, c in zip(self.stages, counts, strict=True) if c}

    @property
    def table_bytes(self) -> int:
        """Garbled-table bytes per instance: two 128-bit ciphertexts per AND gate."""
        return 32 * self.and_count

    @property
    def sent_bytes(self) -> int:
        """Bytes the garbler sends per instance: the tables and, per output bit, two 8-byte
        garbled output rows (:mod:`.tables`)."""
        return self.table_bytes + 16 * self.n_outputs

    def evaluate_plain(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate in the clear: ``inputs[name]`` has shape ``(bits, m)``; returns likewise.

        A reference for tests, vectorised over the ``m`` instances (one numpy op per gate).
        """
        m = None
        val: list[np.ndarray | None] = [None] * self.n_wires
        for name, wires in self.inputs.items():
            bits = np.asarray(inputs[name], dtype=bool)
            if bits.shape[0] != len(wires):
                raise ValueError(f"input {name!r}: expected {len(wires)} bits")
            m = bits.shape[1]
            for i, w in enumerate(wires):
                val[w] = bits[i]
        if m is None:
            raise ValueError("circuit has no inputs")
        val[0] = np.zeros(m, dtype=bool)

        def lit(x: int) -> np.ndarray:
            v = val[x >> 1]
            assert v is not None  # gates come in topological order
            return ~v if x & 1 else v

        for k, a, b, o in zip(self.gate_kind, self.gate_a, self.gate_b, self.gate_out, strict=True):
            val[o] = (lit(a) & lit(b)) if k == AND else (lit(a) ^ lit(b))
        return {
            name: np.array([lit(x) for x in lits], dtype=np.uint8).reshape(len(lits), m)
            for name, lits in self.outputs.items()
        }

    @cached_property
    def schedule(self) -> Schedule:
        """The layered execution plan (computed once)."""
        return _make_schedule(self)


def _make_schedule(c: Circuit) -> Schedule:
    """Layer ``c`` by AND depth, order the steps, then give every wire a slot (see
    :class:`Schedule`)."""
    glevel, depth = _and_depths(c)
    steps = _steps(c, glevel, depth)
    return _SlotAssigner(c, _last_reads(c, steps)).run(steps, depth)


def _and_depths(c: Circuit) -> tuple[np.ndarray, int]:
    """Per gate, the AND depth of its output (ANDs on the longest input path), and the
    circuit's AND depth."""
    level = np.zeros(c.n_wires, dtype=np.int64)
    glevel = np.zeros(len(c.gate_kind), dtype=np.int64)
    for i in range(len(c.gate_kind)):
        lv = max(level[c.gate_a[i] >> 1], level[c.gate_b[i] >> 1]) + int(c.gate_kind[i])
        level[c.gate_out[i]] = glevel[i] = lv
    depth = int(glevel[c.gate_kind == AND].max()) if c.and_count else 0
    return glevel, depth


def _steps(c: Circuit, glevel: np.ndarray, depth: int) -> list[tuple[int, list[int]]]:
    """Execution order: XOR block 0, AND layer 1, XOR block 1, ..., AND layer D, XOR block
    D; a step is ``(XOR, [gate])`` or ``(AND, gates of the layer)``, gates in circuit order."""
    xor_blocks: list[list[int]] = [[] for _ in range(depth + 1)]
    and_layers: list[list[int]] = [[] for _ in range(depth)]
    for i in range(len(c.gate_kind)):
        if c.gate_kind[i] == AND:
            and_layers[glevel[i] - 1].append(i)
        else:
            xor_blocks[glevel[i]].append(i)
    steps: list[tuple[int, list[int]]] = []
    for d in range(depth + 1):
        steps.extend((XOR, [g]) for g in xor_blocks[d])
        if d < depth:
            steps.append((AND, and_layers[d]))
    return steps


def _last_reads(c: Circuit, steps: list[tuple[int, list[int]]]) -> np.ndarray:
    """Liveness: per wire, the last step that reads it (-1 if none); outputs live to the end."""
    last = np.full(c.n_wires, -1, dtype=np.int64)
    for t, (_, gates) in enumerate(steps):
        for g in gates:
            last[c.gate_a[g] >> 1] = t
            last[c.gate_b[g] >> 1] = t
    for lits in c.outputs.values():
        last[np.asarray(lits, dtype=np.int64) >> 1] = len(steps) + 1
    return last


class _SlotAssigner:
    """Walks the steps in order, giving each wire a slot when it is written and reusing a
    slot once its wire is dead; collects the :class:`Schedule` arrays on the way."""

    def __init__(self, c: Circuit, last: np.ndarray) -> None:
        self.c = c
        self.last = last
        self.slot = np.full(c.n_wires, -1, dtype=np.int64)
        self.slot[0] = 0  # the constant wire: all-zero labels on both sides
        self.free: list[int] = []
        self.n_slots = 1
        self.xo: list[int] = []
        self.xa: list[int] = []
        self.xb: list[int] = []
        self.xptr = [0]
        self.ao: list[int] = []
        self.aa: list[int] = []
        self.ab: list[int] = []
        self.an: list[np.uint64] = []
        self.bn: list[np.uint64] = []
        self.aptr = [0]

    def alloc(self, w: int) -> None:
        """Give wire ``w`` the most recently freed slot, or a new one."""
        if self.free:
            self.slot[w] = self.free.pop()
        else:
            self.slot[w] = self.n_slots
            self.n_slots += 1

    def run(self, steps: list[tuple[int, list[int]]], depth: int) -> Schedule:
        """Slots for the inputs, then for each step in order; the finished schedule."""
        input_slots = self.input_slots()
        for t, (kind, gates) in enumerate(steps):
            if kind == XOR:
                self.xor_gate(t, gates)
            else:
                self.and_layer(t, gates)
        self.xptr.append(len(self.xo))
        return self.schedule(depth, input_slots)

    def input_slots(self) -> dict[str, np.ndarray]:
        """Slots for the input wires that are read, group by group (unread ones get -1)."""
        out = {}
        for name, wires in self.c.inputs.items():
            for w in wires:
                if self.last[w] >= 0:
                    self.alloc(int(w))
            out[name] = self.slot[wires].copy()
        return out

    def dead(self, t: int, gates: list[int]) -> list[int]:
        """Input wires of ``gates`` last read at step ``t`` (never the constant wire)."""
        c, last = self.c, self.last
        ins = {int(c.gate_a[g] >> 1) for g in gates} | {int(c.gate_b[g] >> 1) for g in gates}
        return [w for w in ins if last[w] == t and w != 0]

    def xor_gate(self, t: int, gates: list[int]) -> None:
        """Step ``t``, one XOR gate: its inputs' slots may be reused for its output."""
        c, slot, last = self.c, self.slot, self.last
        g = gates[0]
        a, b = int(c.gate_a[g] >> 1), int(c.gate_b[g] >> 1)
        dead = [w for w in {a, b} if last[w] == t and w != 0]  # dead() of one gate, inlined
        self.xa.append(slot[a])
        self.xb.append(slot[b])
        self.free.extend(slot[w] for w in dead)  # elementwise kernel: in-place reuse is safe
        self.alloc(int(c.gate_out[g]))
        self.xo.append(slot[c.gate_out[g]])

    def and_layer(self, t: int, gates: list[int]) -> None:
        """Step ``t``, an AND layer, which closes the XOR block before it."""
        c, slot = self.c, self.slot
        dead = self.dead(t, gates)
        for g in gates:
            self.aa.append(slot[c.gate_a[g] >> 1])
            self.ab.append(slot[c.gate_b[g] >> 1])
            self.an.append(_ALL_ONES if c.gate_a[g] & 1 else np.uint64(0))
            self.bn.append(_ALL_ONES if c.gate_b[g] & 1 else np.uint64(0))
            self.alloc(int(c.gate_out[g]))
            self.ao.append(slot[c.gate_out[g]])
        self.free.extend(slot[w] for w in dead)  # freed after: a layer may run in pieces
        self.aptr.append(len(self.ao))
        self.xptr.append(len(self.xo))

    def schedule(self, depth: int, input_slots: dict[str, np.ndarray]) -> Schedule:
        """The collected lists as :class:`Schedule` arrays, with the output slots."""
        out_lits = (
            np.concatenate([np.asarray(v, dtype=np.int64) for v in self.c.outputs.values()])
            if self.c.outputs
            else np.zeros(0, dtype=np.int64)
        )
        i64 = np.int64
        return Schedule(
            n_slots=self.n_slots,
            depth=depth,
            input_slots=input_slots,
            xor_out=np.array(self.xo, dtype=i64),
            xor_a=np.array(self.xa, dtype=i64),
            xor_b=np.array(self.xb, dtype=i64),
            xor_ptr=np.array(self.xptr, dtype=i64),
            and_out=np.array(self.ao, dtype=i64),
            and_a=np.array(self.aa, dtype=i64),
            and_b=np.array(self.ab, dtype=i64),
            and_a_neg=np.array(self.an, dtype=np.uint64),
            and_b_neg=np.array(self.bn, dtype=np.uint64),
            and_ptr=np.array(self.aptr, dtype=i64),
            out_slots=self.slot[out_lits >> 1].astype(i64),
            out_neg=(out_lits & 1).astype(np.uint8),
        )


class CircuitBuilder:
    """Builds a :class:`Circuit` from literals, folding constants and sharing equal gates.

    Scalar ops take and return literals; vector ops take little-endian lists of literals.
    Every helper's AND cost is stated in its docstring for full-width operands; constant bits
    make it cheaper automatically.
    """

    def __init__(self) -> None:
        self._n_wires = 1
        self._kind: list[int] = []
        self._a: list[int] = []
        self._b: list[int] = []
        self._out: list[int] = []
        self._gstage: list[int] = []
        self._cache: dict[tuple[int, int, int], int] = {}
        self._inputs: dict[str, list[int]] = {}
        self._outputs: dict[str, list[int]] = {}
        self._stages: list[str] = [""]
        self._stage = 0

    # -- structure ------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Tag the gates built inside the block (for :meth:`Circuit.and_count_by_stage`)."""
        prev = self._stage
        if name not in self._stages:
            self._stages.append(name)
        self._stage = self._stages.index(name)
        try:
            yield
        finally:
            self._stage = prev

    def input(self, name: str, nbits: int) -> list[int]:
        """A new input group of ``nbits`` fresh wires; returns their literals (LSB first)."""
        if name in self._inputs:
            raise ValueError(f"duplicate input {name!r}")
        wires = list(range(self._n_wires, self._n_wires + nbits))
        self._n_wires += nbits
        self._inputs[name] = wires
        return [2 * w for w in wires]

    def output(self, name: str, lits: Sequence[int]) -> None:
        """Declare an output group (literals, LSB first)."""
        if name in self._outputs:
            raise ValueError(f"duplicate output {name!r}")
        self._outputs[name] = [int(x) for x in lits]

    def _gate(self, kind: int, a: int, b: int) -> int:
        key = (kind, a, b)
        w = self._cache.get(key)
        if w is None:
            w = self._n_wires
            self._n_wires += 1
            self._kind.append(kind)
            self._a.append(a)
            self._b.append(b)
            self._out.append(w)
            self._gstage.append(self._stage)
            self._cache[key] = w
        return w

    def build(self) -> Circuit:
        """Freeze into a :class:`Circuit`, dropping gates no output depends on."""
        live = np.zeros(self._n_wires, dtype=bool)
        for lits in self._outputs.values():
            for x in lits:
                live[x >> 1] = True
        keep = []
        for i in range(len(self._kind) - 1, -1, -1):
            if live[self._out[i]]:
                keep.append(i)
                live[self._a[i] >> 1] = True
                live[self._b[i] >> 1] = True
        keep.reverse()
        # Renumber wires densely: constant, inputs, then gate outputs in order.
        new = np.full(self._n_wires, -1, dtype=np.int64)
        new[0] = 0
        nxt = 1
        for wires in self._inputs.values():
            for w in wires:
                new[w] = nxt
                nxt += 1
        for i in keep:
            new[self._out[i]] = nxt
            nxt += 1

        def remap(x: int) -> int:
            return int(2 * new[x >> 1] + (x & 1))

        return Circuit(
            n_wires=nxt,
            gate_kind=np.array([self._kind[i] for i in keep], dtype=np.uint8),
            gate_a=np.array([remap(self._a[i]) for i in keep], dtype=np.int64),
            gate_b=np.array([remap(self._b[i]) for i in keep], dtype=np.int64),
            gate_out=np.array([new[self._out[i]] for i in keep], dtype=np.int64),
            inputs={k: new[np.array(v, dtype=np.int64)] for k, v in self._inputs.items()},
            outputs={
                k: np.array([remap(x) for x in v], np.int64) for k, v in self._outputs.items()
            },
            gate_stage=np.array([self._gstage[i] for i in keep], dtype=np.int64),
            stages=self._stages,
        )

    # -- scalar gates ---------------------------------------------------------------------

    @staticmethod
    def const(bit: int | bool) -> int:
        """The constant literal for ``bit`` (free)."""
        return TRUE if bit else FALSE

    @staticmethod
    def not_(a: int) -> int:
        """NOT (free: flips the literal)."""
        return a ^ 1

    def xor(self, a: int, b: int) -> int:
        """XOR (free)."""
        neg = (a ^ b) & 1
        wa, wb = a >> 1, b >> 1
        if wa == wb:
            return neg
        if wa == 0:
            return 2 * wb | neg
        if wb == 0:
            return 2 * wa | neg
        if wa > wb:
            wa, wb = wb, wa
        return 2 * self._gate(XOR, 2 * wa, 2 * wb) | neg

    def and_(self, a: int, b: int) -> int:
        """AND (1 AND gate unless folded)."""
        if a == FALSE or b == FALSE or a == b ^ 1:
            return FALSE
        if a in (TRUE, b):
            return b
        if b == TRUE:
            return a
        if a > b:
            a, b = b, a
        return 2 * self._gate(AND, a, b)

    def or_(self, a: int, b: int) -> int:
        """OR via De Morgan (1 AND)."""
        return self.and_(a ^ 1, b ^ 1) ^ 1

    def mux(self, sel: int, if1: int, if0: int) -> int:
        """``if1 if sel else if0`` (1 AND)."""
        return self.xor(if0, self.and_(sel, self.xor(if0, if1)))

    # -- vectors --------------------------------------------------------------------------

    @staticmethod
    def const_vec(value: int, width: int) -> list[int]:
        """Little-endian constant bits (free)."""
        if value < 0 or value >= 1 << width:
            raise ValueError(f"{value} does not fit in {width} bits")
        return [(value >> i) & 1 for i in range(width)]

    @staticmethod
    def pad(x: Sequence[int], width: int) -> list[int]:
        """Zero-extend or truncate ``x`` to ``width`` bits (free)."""
        return list(x[:width]) + [FALSE] * max(0, width - len(x))

    @staticmethod
    def shr(x: Sequence[int], k: int) -> list[int]:
        """Logical right shift by a public amount (free: drops the ``k`` low bits)."""
        return list(x[k:])

    @staticmethod
    def shl(x: Sequence[int], k: int, width: int | None = None) -> list[int]:
        """Left shift by a public amount, optionally truncated to ``width`` bits (free)."""
        y = [FALSE] * k + list(x)
        return y if width is None else CircuitBuilder.pad(y, width)

    def add(
        self, x: Sequence[int], y: Sequence[int], carry_in: int = FALSE, width: int | None = None
    ) -> tuple[list[int], int]:
        """Ripple-carry ``x + y + carry_in`` mod 2^width and the carry out (1 AND per bit).

        ``width`` defaults to the longer operand. The carry uses the one-AND full adder
        ``c' = c ^ ((x ^ c) & (y ^ c))``; with a constant ``y`` bit it folds to ``x & c`` or
        ``x | c``, so adding a constant costs at most one AND per bit above its lowest set bit.
        Unused carries (and their ANDs) are dropped by :meth:`build`.
        """
        w = max(len(x), len(y)) if width is None else width
        xs, ys = self.pad(x, w), self.pad(y, w)
        c, out = carry_in, []
        for i in range(w):
            t = self.xor(xs[i], c)
            out.append(self.xor(t, ys[i]))
            c = self.xor(c, self.and_(t, self.xor(ys[i], c)))
        return out, c

    def add_const(self, x: Sequence[int], c: int, width: int | None = None) -> list[int]:
        """``x + c`` mod 2^width for a public ``c >= 0`` (width defaults to ``len(x)``)."""
        w = len(x) if width is None else width
        return self.add(x, self.const_vec(c % (1 << w), w), width=w)[0]

    def sub(
        self, x: Sequence[int], y: Sequence[int], width: int | None = None
    ) -> tuple[list[int], int]:
        """``x - y`` mod 2^width and the no-borrow flag ``x >= y`` (1 AND per bit).

        Two's complement: ``x + ~y + 1``; the flag is exact when both fit in ``width`` bits.
        """
        w = max(len(x), len(y)) if width is None else width
        return self.add(x, [v ^ 1 for v in self.pad(y, w)], carry_in=TRUE, width=w)

    def sub_const(self, x: Sequence[int], c: int, width: int | None = None) -> list[int]:
        """``x - c`` mod 2^width for a public ``c >= 0`` (width defaults to ``len(x)``)."""
        w = len(x) if width is None else width
        return self.add_const(x, (-c) % (1 << w), width=w)

    def ge_const(self, x: Sequence[int], c: int, low: int = TRUE) -> int:
        """``x >= c`` for a public ``c`` (1 AND per bit above the lowest set bit of ``c``).

        LSB-first chain ``g_{i+1} = x_i & g_i`` where ``c_i = 1``, else ``x_i | g_i``, with
        ``g_i = [x mod 2^i >= c mod 2^i]``: comparisons with constants that agree in their
        low bits share that part of the chain. ``low`` seeds the chain: pass
        ``[L >= c_L]`` to compare ``x * 2^t + L`` with ``c * 2^t + c_L`` (default: ``c_L = 0``).
        """
        if c <= 0:
            return TRUE if c < 0 or low == TRUE else self.or_(low, self.any_(x))
        if c >= 1 << len(x):
            return FALSE
        g = low
        for i, xi in enumerate(x):
            g = self.and_(xi, g) if (c >> i) & 1 else self.or_(xi, g)
        return g

    def lt_const(self, x: Sequence[int], c: int) -> int:
        """``x < c`` for a public ``c`` (as :meth:`ge_const`)."""
        return self.ge_const(x, c) ^ 1

    def gt_const(self, x: Sequence[int], c: int) -> int:
        """``x > c`` for a public ``c`` (as :meth:`ge_const`)."""
        return self.ge_const(x, c + 1)

    def le_const(self, x: Sequence[int], c: int) -> int:
        """``x <= c`` for a public ``c`` (as :meth:`ge_const`)."""
        return self.ge_const(x, c + 1) ^ 1

    def ge(self, x: Sequence[int], y: Sequence[int]) -> int:
        """``x >= y`` for unsigned vectors (1 AND per bit)."""
        return self.sub(x, y)[1]

    def lt(self, x: Sequence[int], y: Sequence[int]) -> int:
        """``x < y`` for unsigned vectors (1 AND per bit)."""
        return self.ge(x, y) ^ 1

    def any_(self, x: Sequence[int]) -> int:
        """OR of all bits, i.e. ``x != 0`` (len - 1 ANDs)."""
        g = FALSE
        for xi in x:
            g = self.or_(xi, g)
        return g

    def eq_const(self, x: Sequence[int], c: int) -> int:
        """``x == c`` for a public ``c`` (len - 1 ANDs)."""
        if c < 0 or c >= 1 << len(x):
            return FALSE
        g = TRUE
        for i, xi in enumerate(x):
            g = self.and_(g, xi ^ 1 ^ ((c >> i) & 1))
        return g

    def mux_vec(self, sel: int, if1: Sequence[int], if0: Sequence[int]) -> list[int]:
        """Bitwise ``if1 if sel else if0`` (1 AND per bit where the two differ)."""
        w = max(len(if1), len(if0))
        a, b = self.pad(if1, w), self.pad(if0, w)
        return [self.mux(sel, a[i], b[i]) for i in range(w)]

    def and_vec(self, bit: int, x: Sequence[int]) -> list[int]:
        """``x if bit else 0`` (1 AND per non-constant bit)."""
        return [self.and_(bit, xi) for xi in x]

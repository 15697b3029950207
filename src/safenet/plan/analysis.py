"""Static range analysis: for which inputs is a Plan provably exact?

A Plan is exact on an input when no op output (and no polynomial sum before its
truncation) leaves (-p/2, p/2): then arithmetic mod p equals integer arithmetic and the
protocol computes what the float model's quantised twin computes. :func:`static_bounds`
propagates per-channel intervals through the ops (interval arithmetic: weights split into
positive and negative parts, ReLU clamps, polynomials bounded by sum |C_j| |X|^j), so its
bounds hold for *every* input within ``input_bound``. :func:`exact_input_bound` finds the
largest such bound. Deep networks multiply worst cases layer by layer, so the static bound
is conservative; :class:`~safenet.plan.reference.RangeStats` measures the real headroom on
data. Each op kind's interval rule is one function, dispatched by :data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from safenet.plan.ir import Plan
from safenet.plan.ops import (
    Activation,
    Add,
    Concat,
    Conv,
    Flatten,
    Input,
    Linear,
    MaxPool,
    Op,
    OpAttrs,
    Rescale,
    SumPool,
    Truncate,
)

_MARGIN = 1.0 + 1e-9  # float64 rounding in the bounds themselves


def _expand(lo: np.ndarray, hi: np.ndarray, per: int) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(lo, per), np.repeat(hi, per)


Interval = tuple[np.ndarray, np.ndarray]  # per channel (or per feature) lower, upper bounds
#: an op's output intervals from its inputs', and the bound it reports when not their max
Rule = Callable[[Any, Op, list[Interval]], tuple[np.ndarray, np.ndarray, float | None]]


def _affine(op: Op, ins: list[Interval]) -> tuple[np.ndarray, np.ndarray, None]:
    lo, hi = ins[0]
    w = op.arrays["weight"].astype(np.float64)
    b = op.arrays["bias"].astype(np.float64)
    if isinstance(op.attrs, Conv):
        if any(op.attrs.padding):
            lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)  # zero padding joins the range
        groups = op.attrs.groups
        out_c, in_per = w.shape[0], w.shape[1]
        wp = np.clip(w, 0, None).sum((2, 3))
        wn = np.clip(w, None, 0).sum((2, 3))
        per_group = out_c // groups
        g = np.arange(out_c) // per_group
        idx = g[:, None] * in_per + np.arange(in_per)[None]
        new_hi = (wp * hi[idx] + wn * lo[idx]).sum(1) + b
        new_lo = (wp * lo[idx] + wn * hi[idx]).sum(1) + b
    else:
        if len(lo) != op.arrays["weight"].shape[1]:
            raise ValueError(f"{op.name}: interval size mismatch")
        wp, wn = np.clip(w, 0, None), np.clip(w, None, 0)
        new_hi = wp @ hi + wn @ lo + b
        new_lo = wp @ lo + wn @ hi + b
    return new_lo, new_hi, None


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    return np.floor((x + (2.0 ** (k - 1) if k > 0 else 0.0)) / 2.0**k)


def _sumpool(a: SumPool, op: Op, ins: list[Interval]) -> tuple[np.ndarray, np.ndarray, None]:
    k2 = a.kernel**2
    return ins[0][0] * k2, ins[0][1] * k2, None


def _rescale(a: Rescale, op: Op, ins: list[Interval]) -> tuple[np.ndarray, np.ndarray, None]:
    lo, hi = ins[0][0] * a.multiplier, ins[0][1] * a.multiplier
    return np.minimum(lo, hi), np.maximum(lo, hi), None


def _add(a: Add, op: Op, ins: list[Interval]) -> tuple[np.ndarray, np.ndarray, None]:
    lo = sum(v[0] * 2.0**s for v, s in zip(ins, a.shifts, strict=True))
    hi = sum(v[1] * 2.0**s for v, s in zip(ins, a.shifts, strict=True))
    return np.asarray(lo), np.asarray(hi), None


def _concat(a: Concat, op: Op, ins: list[Interval]) -> tuple[np.ndarray, np.ndarray, None]:
    pairs = list(zip(ins, a.shifts, strict=True))
    lo = np.concatenate([v[0] * 2.0**s for v, s in pairs])
    hi = np.concatenate([v[1] * 2.0**s for v, s in pairs])
    return lo, hi, None


def _flatten(a: Flatten, op: Op, ins: list[Interval]) -> tuple[np.ndarray, np.ndarray, None]:
    lo, hi = _expand(*ins[0], int(np.prod(op.shape)) // len(ins[0][0]))
    return lo, hi, None


def _truncate(a: Truncate, op: Op, ins: list[Interval]) -> tuple[np.ndarray, np.ndarray, None]:
    return _shift(ins[0][0], a.shift), _shift(ins[0][1], a.shift), None


def _activation(
    a: Activation, op: Op, ins: list[Interval]
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """ReLU channels clamp (and clip); polynomial channels are bounded by sum |C_j| |X|^j,
    whose largest value before the truncation is the op's reported bound."""
    xl, xh = _shift(ins[0][0], a.shift), _shift(ins[0][1], a.shift)
    mask = op.arrays["relu_mask"].astype(bool)
    lo, hi = np.maximum(xl, 0.0), np.maximum(xh, 0.0)
    if a.clip is not None:  # a clipped ReLU never exceeds its bound
        lo, hi = np.minimum(lo, a.clip), np.minimum(hi, a.clip)
    if mask.all():
        return lo, hi, None
    coef = np.abs(op.arrays["coefficients"].astype(np.float64))
    if len(coef) == 1:
        coef = np.repeat(coef, len(mask), 0)
    kp = a.poly_input_shift()
    m = np.maximum(np.abs(_shift(ins[0][0], kp)), np.abs(_shift(ins[0][1], kp)))
    y = sum(coef[:, j] * m**j for j in range(coef.shape[1]))
    bounds_y = float(np.max(np.where(mask, 0.0, y)))
    yo = _shift(y, a.poly_shift)
    lo, hi = np.where(mask, lo, -yo), np.where(mask, hi, yo)
    return lo, hi, max(bounds_y, float(np.abs(np.concatenate([lo, hi])).max()))


#: the interval rule of each op kind (the input's intervals are set by :func:`static_bounds`)
RULES: dict[type[OpAttrs], Rule] = {
    Conv: lambda a, op, ins: _affine(op, ins),
    Linear: lambda a, op, ins: _affine(op, ins),
    SumPool: _sumpool,
    Rescale: _rescale,
    Add: _add,
    Concat: _concat,
    # per channel, the max stays within the input's interval
    MaxPool: lambda a, op, ins: (ins[0][0], ins[0][1], None),
    Flatten: _flatten,
    Truncate: _truncate,
    Activation: _activation,
}


def static_bounds(plan: Plan, input_bound: float) -> list[float]:
    """Worst-case |value| of every op's output over inputs with |x| <= ``input_bound``.

    For activation ops with polynomial channels the bound covers the polynomial sum before
    its truncation, the largest value the protocol reduces there.
    """
    f = plan.field
    b = np.ceil(input_bound * 2.0**f.frac_bits)
    bounds: list[float] = []
    vals: list[Interval] = []
    for op in plan.ops:
        ins = [vals[j] for j in op.inputs]
        if isinstance(op.attrs, Input):
            c = plan.input_shape[0]
            lo, hi, bound = np.full(c, -b), np.full(c, b), None
        elif (rule := RULES.get(type(op.attrs))) is not None:
            lo, hi, bound = rule(op.attrs, op, ins)
        else:
            raise ValueError(f"unknown op kind {op.kind!r}")
        vals.append((lo, hi))
        if bound is None:
            bound = float(max(np.abs(lo).max(), np.abs(hi).max())) * _MARGIN
        bounds.append(bound)
    return bounds


def exact_input_bound(plan: Plan, upper: float = 2.0**20) -> float:
    """Largest B (to 1%) such that the plan is provably exact for every input with |x| <= B.

    Returns 0.0 if even the smallest non-zero input may overflow.
    """
    half = plan.field.half

    def ok(b: float) -> bool:
        with np.errstate(over="ignore", invalid="ignore"):  # inf/nan bounds just mean "no"
            return max(static_bounds(plan, b)) < half

    lo, hi = 0.0, upper
    if ok(hi):
        return hi
    smallest = 2.0**-plan.field.frac_bits
    if not ok(smallest):
        return 0.0
    lo = smallest
    while hi / lo > 1.01:
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo

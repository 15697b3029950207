"""Checking a secure run against the plaintext reference, op by op.

With ``keep_trace=True`` both sessions keep their share of every op's output. Summed, they
are what the protocol computed; :func:`check_trace` replays every op of the plan with the
reference on the very inputs the secure run had and measures the difference against the
bound the protocol states (docs/protocol.md): none for ReLU channels, linear and local ops;
one carry for ``truncate`` ops; for polynomial channels
``ceil(|P(X+1) - P(X)| / 2^q) + 1`` per element, as long as the activation input and the
polynomial sum stay below ``B = trunc_bound(p)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from safenet.field import mod_centered, trunc_bound
from safenet.plan.ir import Plan
from safenet.plan.ops import Activation, Op, Truncate
from safenet.plan.reference import apply_op

__all__ = ["TraceCheck", "check_trace", "poly_error_bound"]


@dataclass
class TraceCheck:
    """What :func:`check_trace` found. ``misses`` counts elements beyond the stated bound
    (0 for a correct run); ``beyond_bound`` the polynomial inputs or sums at or above
    ``B``, where the bound is not promised."""

    ops: int = 0
    poly_elements: int = 0
    misses: int = 0
    beyond_bound: int = 0
    worst_poly_error: int = 0
    failed_ops: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.misses == 0


def poly_error_bound(x: np.ndarray, coef: list[np.ndarray], q: int) -> np.ndarray:
    """Per element, the stated bound ``ceil(|P(X+1) - P(X)| / 2^q) + 1`` of a polynomial
    channel (object arrays: ``x`` the inputs ``X``, ``coef[j]`` broadcastable to them)."""
    step = np.abs(sum(c * ((x + 1) ** j - x**j) for j, c in enumerate(coef)))
    return (step + (1 << q) - 1) // (1 << q) + 1


def _poly_check(
    op: Op, x_in: np.ndarray, got: np.ndarray, ref: np.ndarray, p: int, out: TraceCheck
) -> None:
    mask = op.arrays["relu_mask"].astype(bool)
    if not (got[mask] == ref[mask]).all():
        out.misses += int((got[mask] != ref[mask]).sum())
        out.failed_ops.append(f"{op.name} (ReLU channels)")
    a = op.attrs_as(Activation)
    k, q, d = a.poly_input_shift(), a.poly_shift, a.degree
    v = x_in[~mask].astype(object)
    X = (v + (1 << (k - 1))) >> k
    coef = op.arrays["coefficients"].astype(object)
    coef = np.repeat(coef, len(mask), 0) if len(coef) == 1 else coef
    c = [coef[~mask, j].reshape((-1,) + (1,) * (len(op.shape) - 1)) for j in range(d + 1)]
    bound = poly_error_bound(X, c, q)
    err = np.abs(got[~mask].astype(object) - ref[~mask].astype(object))
    y = sum(c[j] * X**j for j in range(d + 1))
    b = trunc_bound(p)
    out.beyond_bound += int(((np.abs(v) >= b) | (np.abs(y) >= b)).sum())
    misses = int((err > bound).sum())
    out.misses += misses
    if misses:
        out.failed_ops.append(f"{op.name} (polynomial channels: {misses})")
    out.poly_elements += err.size
    out.worst_poly_error = max(out.worst_poly_error, int(err.max()) if err.size else 0)


def check_trace(
    plan: Plan, server_trace: list[np.ndarray], client_trace: list[np.ndarray], x: np.ndarray
) -> TraceCheck:
    """Every op of ``plan``, on the inputs the secure run had, against the reference op.

    ``x`` is the encoded input (:func:`safenet.protocol.engine.encode_input`).
    """
    p = plan.field.p
    vals = [mod_centered(s + c, p) for s, c in zip(server_trace, client_trace, strict=True)]
    out = TraceCheck()
    for i, op in enumerate(plan.ops):
        ins = [torch.from_numpy(vals[j])[None] for j in op.inputs] or [torch.from_numpy(x)[None]]
        ref = apply_op(op, ins, p)[0].numpy()
        got = vals[i]
        out.ops += 1
        if isinstance(op.attrs, Truncate):  # local truncation: the carry may add one
            bad = int((~np.isin(got - ref, (0, 1))).sum())
        elif isinstance(op.attrs, Activation) and not op.arrays["relu_mask"].all():
            _poly_check(op, ins[0][0].numpy(), got, ref, p, out)
            continue
        else:
            bad = int((got != ref).sum())
        if bad:
            out.misses += bad
            out.failed_ops.append(f"{op.name} ({op.kind}: {bad})")
    return out

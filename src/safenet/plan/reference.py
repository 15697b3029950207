"""Plaintext fixed-point execution of a Plan: the oracle for the secure protocol.

Every op output is reduced to the centred range mod p, exactly as the two parties' shares
reconstruct it, so a value that leaves (-p/2, p/2) wraps here just as it would there. Such
wraps are counted in :class:`RangeStats`: a plan is *exact* on an input when none occur.

Convolutions and matrix products run in float64, exact while every partial sum stays below
2^53 (checked per op from max|x| and the weights' row L1 norms); otherwise the input is split
into 20-bit limbs, each product is exact, and limbs recombine mod p with Python integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from safenet.plan.ir import Op, Plan

EXACT_F64 = 2**53
LIMB = 20


@dataclass
class RangeStats:
    """Largest magnitude seen per op (before reduction mod p) and wrap-around counts."""

    max_abs: dict[int, int] = field(default_factory=dict)
    overflows: dict[int, int] = field(default_factory=dict)

    def record(self, i: int, exact: torch.Tensor, half: int) -> None:
        m = int(exact.abs().max()) if exact.numel() else 0
        self.max_abs[i] = max(self.max_abs.get(i, 0), m)
        self.overflows[i] = self.overflows.get(i, 0) + int((exact.abs() > half).sum())

    @property
    def total_overflows(self) -> int:
        return sum(self.overflows.values())


def _centre(v: torch.Tensor, p: int) -> torch.Tensor:
    r = torch.remainder(v, p)
    return torch.where(r > p // 2, r - p, r)


def _big_centre(v: np.ndarray, p: int) -> torch.Tensor:
    """Object array of Python ints -> centred int64 tensor mod p."""
    r = (v % p).astype(np.int64)
    return _centre(torch.from_numpy(r), p)


def _linear_exact(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, op: Op, p: int
) -> tuple[torch.Tensor, bool]:
    """Exact integer linear map; returns (result, is_exact_int64)."""

    def apply(xf: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if op.kind == "conv":
            a = op.attrs
            return F.conv2d(xf, w.double(), bias, a["stride"], a["padding"], 1, a["groups"])
        return F.linear(xf, w.double(), bias)

    wl1 = float(w.abs().reshape(w.shape[0], -1).sum(1).max()) if w.numel() else 0.0
    xmax = float(x.abs().max()) if x.numel() else 0.0
    if xmax * wl1 + (float(b.abs().max()) if b.numel() else 0.0) < EXACT_F64 / 2:
        return torch.round(apply(x.double(), b.double())).to(torch.int64), True
    # Limb path: x = sum_j x_j 2^(LIMB j) with |x_j| < 2^LIMB, each product exact in float64.
    if (2**LIMB) * wl1 >= EXACT_F64 / 2:
        raise OverflowError(f"op {op.name}: weights too large for exact evaluation")
    sign, mag = torch.sign(x), x.abs()
    total: np.ndarray | None = None
    j = 0
    while j == 0 or bool((mag > 0).any()):
        limb = (mag & ((1 << LIMB) - 1)) * sign
        part = torch.round(apply(limb.double(), None)).to(torch.int64).numpy().astype(object)
        part = part * (1 << (LIMB * j))
        total = part if total is None else total + part
        mag = mag >> LIMB
        j += 1
    assert total is not None
    bias = b.numpy().astype(object)
    total = total + bias.reshape((1, -1) + (1,) * (total.ndim - 2))
    return _big_centre(total, p), False


def _round_shift(v: torch.Tensor, k: int) -> torch.Tensor:
    """floor((v + 2^(k-1)) / 2^k): round half up, the truncation the protocol computes."""
    if k <= 0:
        return v << (-k)
    return (v + (1 << (k - 1))) >> k


def _poly(x: torch.Tensor, coef: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j C_j x^j mod p (centred) and its exact value where it fits int64, channel dim 1."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    d = coef.shape[1] - 1
    xmax = int(x.abs().max()) if x.numel() else 0
    cmax = int(coef.abs().max()) if coef.numel() else 0
    bound = sum(cmax * xmax**j for j in range(d + 1))
    if bound < 2**62:
        y = coef[:, d].view(shape).expand_as(x).clone()
        for j in range(d - 1, -1, -1):
            y = y * x + coef[:, j].view(shape)
        return _centre(y, p), y
    xo = x.numpy().astype(object)
    co = coef.numpy().astype(object)
    y = np.broadcast_to(co[:, d].reshape(shape), xo.shape)
    for j in range(d - 1, -1, -1):
        y = y * xo + co[:, j].reshape(shape)
    exact = np.vectorize(lambda v: min(abs(v), 2**62), otypes=[np.int64])(y)
    return _big_centre(y, p), torch.from_numpy(exact)


def _activation(v: torch.Tensor, op: Op, p: int, stats: RangeStats | None, i: int) -> torch.Tensor:
    x = _round_shift(v, op.attrs["shift"])
    mask = torch.from_numpy(op.arrays["relu_mask"].astype(bool))
    keep = mask.view([1, -1] + [1] * (v.dim() - 2))
    out = torch.clamp(x, min=0)
    if not bool(mask.all()):
        coef = torch.from_numpy(op.arrays["coefficients"])
        y, exact = _poly(x, coef, p)
        if stats is not None:
            stats.record(i, torch.where(keep, torch.zeros_like(exact), exact), p // 2)
        out = torch.where(keep, out, _round_shift(y, op.attrs["poly_shift"]))
    return out


def _forward(plan: Plan, x: torch.Tensor, stats: RangeStats | None) -> torch.Tensor:
    p, half = plan.field.p, plan.field.half
    vals: list[torch.Tensor] = []
    for i, op in enumerate(plan.ops):
        ins = [vals[j] for j in op.inputs]
        exact: torch.Tensor | None = None
        if op.kind == "input":
            out = x
        elif op.kind in ("conv", "linear"):
            w = torch.from_numpy(op.arrays["weight"])
            b = torch.from_numpy(op.arrays["bias"])
            out, is_int = _linear_exact(ins[0], w, b, op, p)
            exact = out if is_int else None
            out = _centre(out, p) if is_int else out
        elif op.kind == "sumpool":
            k, s = op.attrs["kernel"], op.attrs["stride"]
            exact = ins[0].unfold(2, k, s).unfold(3, k, s).sum((-1, -2))
            out = _centre(exact, p)
        elif op.kind == "rescale":
            m = int(op.attrs["multiplier"])
            big = int(ins[0].abs().max()) * abs(m) if ins[0].numel() else 0
            exact = ins[0] * m if big < 2**62 else None
            out = (
                _centre(exact, p)
                if exact is not None
                else _big_centre(ins[0].numpy().astype(object) * m, p)
            )
        elif op.kind == "add":
            shifts = op.attrs["shifts"]
            big = sum((int(t.abs().max()) << s) for t, s in zip(ins, shifts, strict=True))
            if big < 2**62:
                exact = sum((t << s for t, s in zip(ins, shifts, strict=True)), torch.zeros(()))
                exact = exact.to(torch.int64)
                out = _centre(exact, p)
            else:
                acc = sum(
                    t.numpy().astype(object) * (1 << s) for t, s in zip(ins, shifts, strict=True)
                )
                out = _big_centre(np.asarray(acc), p)
        elif op.kind == "flatten":
            out = ins[0].reshape(ins[0].shape[0], -1)
        elif op.kind == "truncate":
            out = _round_shift(ins[0], op.attrs["shift"])
        elif op.kind == "activation":
            out = _activation(ins[0], op, p, stats, i)
        else:
            raise ValueError(f"unknown op kind {op.kind!r}")
        if stats is not None and exact is not None:
            stats.record(i, exact, half)
        vals.append(out)
    return vals[-1]


def run(
    plan: Plan,
    x: np.ndarray | torch.Tensor,
    *,
    encoded: bool = False,
    decode: bool = True,
    stats: RangeStats | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Evaluate ``plan`` on a batch (N, *input_shape) or one input (*input_shape).

    Args:
        x: real inputs (encoded here at ``frac_bits``) or, with ``encoded``, integers.
        decode: return reals (output / 2^scale) instead of centred integers.
        stats: filled with per-op magnitudes and wrap-arounds, if given.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    single = tuple(x.shape) == tuple(plan.input_shape)
    if single:
        x = x[None]
    if tuple(x.shape[1:]) != tuple(plan.input_shape):
        raise ValueError(
            f"input shape {tuple(x.shape)} does not match plan input "
            f"{plan.input_shape} (batched or not)"
        )
    if encoded:
        xi = _centre(x.to(torch.int64), plan.field.p)
    else:
        xi = torch.from_numpy(plan.field.encode(x.double().numpy(), plan.field.frac_bits))
    outs = [_forward(plan, xi[s : s + batch_size], stats) for s in range(0, len(xi), batch_size)]
    y = torch.cat(outs).numpy()
    if decode:
        y = y.astype(np.float64) / 2.0**plan.output_scale
    return y[0] if single else y

"""Plaintext fixed-point execution of a Plan: the oracle for the secure protocol.

Every op output is reduced to the centred range mod p, exactly as the two parties' shares
reconstruct it, so a value that leaves (-p/2, p/2) wraps here just as it would there. Such
wraps are counted in :class:`RangeStats`: a plan is *exact* on an input when none occur.

Convolutions and matrix products run in float64, exact while every partial sum stays below
2^53 (checked per op from max|x| and the weights' row L1 norms); otherwise the input is split
into 20-bit limbs, each product is exact, and limbs recombine mod p with Python integers.

Each op kind's plaintext rule is one function, dispatched by :data:`RULES` (keyed by the
op's attribute class); :func:`run` evaluates a whole plan, :func:`apply_op` one op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from safenet.field import Field, trunc_bound
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
from safenet.plan.pooling import window_index

EXACT_F64 = 2**53
LIMB = 20


@dataclass
class RangeStats:
    """Largest magnitude seen per op (before reduction mod p), wrap-around counts, and what
    the secure protocol's truncations would do on these inputs.

    * Polynomial channels truncate their input ``v`` and their sum ``Y`` exactly by opening
      ``u + R`` with ``R`` in ``[B, p - B)`` (``B`` = :func:`safenet.field.trunc_bound`,
      docs/fixed-point.md): exact whenever ``|u| < B``. An input on which some ``|u|``
      reaches ``B`` may fail (a huge error in that element): it counts fully in
      :attr:`failure_rate`. Each opening hides ``u`` up to a statistical distance
      ``|u| / (p - 2B)``; :attr:`leak_bound` is the mean over inputs of their sum (capped at
      1 per input), the chance that an inference's openings tell the other party anything.
    * ``truncate`` ops (a linear layer fed straight by another) truncate shares locally,
      which fails with probability about ``min(|u| / p, 1)`` per element: per input
      ``lambda`` sums that; :attr:`expected_wraps` is its mean.

    :attr:`failure_rate` is the mean over inputs of ``1 - (1 - fail) exp(-lambda)``: the
    share of secure inferences that may leave the stated error bound, an upper bound on the
    share of secure predictions that differ from the reference.
    """

    max_abs: dict[int, int] = field(default_factory=dict)
    overflows: dict[int, int] = field(default_factory=dict)
    wraps: float = 0.0  # sum of lambda over the inputs seen
    failures: float = 0.0  # sum of the per-input failure chances
    leaks: float = 0.0  # sum of the per-input leak bounds
    images: int = 0
    _pending: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def record(self, i: int, exact: torch.Tensor | np.ndarray, half: int) -> None:
        """Note the exact (unreduced) values of op ``i``: int64 tensor or Python-int array."""
        if isinstance(exact, np.ndarray):  # object array of Python ints
            mags = np.abs(exact)
            m = int(mags.max()) if mags.size else 0
            over = int((mags > half).sum())
        else:
            m = int(exact.abs().max()) if exact.numel() else 0
            over = int((exact.abs() > half).sum())
        self.max_abs[i] = max(self.max_abs.get(i, 0), m)
        self.overflows[i] = self.overflows.get(i, 0) + over

    @property
    def total_overflows(self) -> int:
        return sum(self.overflows.values())

    @property
    def expected_wraps(self) -> float:
        """Expected local-truncation failures (``truncate`` ops) per inference."""
        return self.wraps / self.images if self.images else 0.0

    @property
    def failure_rate(self) -> float:
        """Share of inferences that may leave the secure protocol's error bound."""
        return self.failures / self.images if self.images else 0.0

    @property
    def leak_bound(self) -> float:
        """Mean per-inference statistical distance of the polynomial channels' openings."""
        return self.leaks / self.images if self.images else 0.0

    def begin_batch(self, n: int) -> None:
        """Start counting the per-input truncation figures of a batch of ``n`` inputs."""
        self._pending = {k: np.zeros(n) for k in ("lam", "fail", "leak")}

    def end_batch(self) -> None:
        """Add the batch's per-input figures to the totals."""
        if self._pending is None:
            return
        lam, fail, leak = (self._pending[k] for k in ("lam", "fail", "leak"))
        fail = np.minimum(fail, 1.0)  # counts of failing ops: an input fails once
        self.wraps += float(lam.sum())
        self.failures += float((1.0 - (1.0 - fail) * np.exp(-lam)).sum())
        self.leaks += float(np.minimum(leak, 1.0).sum())
        self.images += len(lam)
        self._pending = None

    def _add(self, key: str, per_input: np.ndarray) -> None:
        alone = self._pending is None  # called outside a forward pass: its own batch
        if alone:
            self.begin_batch(len(per_input))
        assert self._pending is not None
        self._pending[key] += per_input
        if alone:
            self.end_batch()

    def record_truncations(self, v: torch.Tensor, y: Exact, p: int) -> None:
        """Add, per input, what the exact truncations of a polynomial channel's input ``v``
        and sum ``y`` (both batched along dim 0) risk and leak."""
        n, b = len(v), trunc_bound(p)
        fail, leak = np.zeros(n), np.zeros(n)
        for u in (v, y):
            mags = np.abs(u).astype(np.float64) if isinstance(u, np.ndarray) else u.abs().double()
            mags = np.asarray(mags).reshape(n, -1)
            fail += (mags >= b).any(axis=1)
            leak += np.minimum(mags / (p - 2 * b), 1.0).sum(axis=1)
        self._add("fail", fail)
        self._add("leak", leak)

    def record_local_truncations(self, v: torch.Tensor, p: int) -> None:
        """Add, per input, the expected wraps of truncating shared ``v`` locally."""
        mags = v.abs().double().numpy().reshape(len(v), -1)
        self._add("lam", np.minimum(mags / p, 1.0).sum(axis=1))


def _centre(v: torch.Tensor, p: int) -> torch.Tensor:
    r = torch.remainder(v, p)
    return torch.where(r > p // 2, r - p, r)


def _big_centre(v: np.ndarray, p: int) -> torch.Tensor:
    """Object array of Python ints -> centred int64 tensor mod p."""
    r = (v % p).astype(np.int64)
    return _centre(torch.from_numpy(r), p)


Exact = torch.Tensor | np.ndarray  # int64 tensor, or object array of Python ints


def _reduce(v: Exact, p: int) -> torch.Tensor:
    """Exact values -> centred int64 residues mod p."""
    return _big_centre(v, p) if isinstance(v, np.ndarray) else _centre(v, p)


def _linear_exact(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, op: Op) -> Exact:
    """The exact integer result of a conv/linear op (unreduced)."""

    def apply(xf: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(op.attrs, Conv):
            return _conv_f64(xf, w.double(), bias, op.attrs)
        return F.linear(xf, w.double(), bias)

    wl1 = float(w.abs().reshape(w.shape[0], -1).sum(1).max()) if w.numel() else 0.0
    xmax = float(x.abs().max()) if x.numel() else 0.0
    if xmax * wl1 + (float(b.abs().max()) if b.numel() else 0.0) < EXACT_F64 / 2:
        return torch.round(apply(x.double(), b.double())).to(torch.int64)
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
    return total + bias.reshape((1, -1) + (1,) * (total.ndim - 2))


def _conv_f64(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, a: Conv) -> torch.Tensor:
    """float64 convolution as im2col + BLAS matmul (torch's float64 conv2d is ~10x slower).

    Exact for integer operands while partial sums stay below 2^53, in any summation order.
    """
    if a.groups != 1:
        return F.conv2d(x, w, bias, a.stride, a.padding, 1, a.groups)
    n, _, h, wd = x.shape
    kh, kw = w.shape[2:]
    (sh, sw), (ph, pw) = a.stride, a.padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))
    out = torch.matmul(w.reshape(w.shape[0], -1), cols)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(n, w.shape[0], oh, ow)


def _sumpool(x: torch.Tensor, k: int, s: int) -> Exact:
    """Exact sums over k x k windows with stride s."""
    if (int(x.abs().max()) if x.numel() else 0) * k * k < 2**62:
        return x.unfold(2, k, s).unfold(3, k, s).sum((-1, -2))
    xo = x.numpy().astype(object)
    oh, ow = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    total: Any = 0  # an object array of Python ints after the first window offset
    for dy in range(k):
        for dx in range(k):
            total = total + xo[:, :, dy : dy + s * (oh - 1) + 1 : s, dx : dx + s * (ow - 1) + 1 : s]
    return total


def _maxpool(x: torch.Tensor, op: Op, a: MaxPool) -> torch.Tensor:
    """Max over each window of :func:`safenet.plan.pooling.window_index` (padding never wins)."""
    idx = torch.from_numpy(window_index(a.rows, a.cols, tuple(x.shape[1:])))
    floor = torch.iinfo(torch.int64).min
    flat = torch.cat([x.reshape(len(x), -1), torch.full((len(x), 1), floor)], dim=1)
    win = flat[:, torch.where(idx >= 0, idx, flat.shape[1] - 1)]
    return win.amax(dim=-1).reshape((len(x), *op.shape))


def _round_shift(v: torch.Tensor, k: int) -> torch.Tensor:
    """floor((v + 2^(k-1)) / 2^k): round half up, the truncation the protocol computes."""
    if k <= 0:
        return v << (-k)
    return (v + (1 << (k - 1))) >> k


def _poly(x: torch.Tensor, coef: torch.Tensor) -> Exact:
    """The exact value of sum_j C_j x^j per element (coefficient rows along dim 1)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    d = coef.shape[1] - 1
    xmax = int(x.abs().max()) if x.numel() else 0
    cmax = int(coef.abs().max()) if coef.numel() else 0
    bound = sum(cmax * xmax**j for j in range(d + 1))
    if bound < 2**62:
        y = coef[:, d].view(shape).expand_as(x).clone()
        for j in range(d - 1, -1, -1):
            y = y * x + coef[:, j].view(shape)
        return y
    xo = x.numpy().astype(object)
    co = coef.numpy().astype(object)
    yo = np.broadcast_to(co[:, d].reshape(shape), xo.shape)
    for j in range(d - 1, -1, -1):
        yo = yo * xo + co[:, j].reshape(shape)
    return yo


@dataclass
class _Ctx:
    """Where one op runs: the prime, the stats to fill (if any) and the op's index there."""

    p: int
    stats: RangeStats | None
    i: int

    def reduce(self, exact: Exact) -> torch.Tensor:
        """Record an op's exact (unreduced) values, then reduce them mod p."""
        if self.stats is not None:
            self.stats.record(self.i, exact, self.p // 2)
        return _reduce(exact, self.p)


def _input(a: Input, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    return ins[0]


def _linear(a: Conv | Linear, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    w = torch.from_numpy(op.arrays["weight"])
    b = torch.from_numpy(op.arrays["bias"])
    return ctx.reduce(_linear_exact(ins[0], w, b, op))


def _sum_pool(a: SumPool, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    return ctx.reduce(_sumpool(ins[0], a.kernel, a.stride))


def _rescale(a: Rescale, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    m = int(a.multiplier)
    big = int(ins[0].abs().max()) * abs(m) if ins[0].numel() else 0
    return ctx.reduce(ins[0] * m if big < 2**62 else ins[0].numpy().astype(object) * m)


def _add(a: Add, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    pairs = list(zip(ins, a.shifts, strict=True))
    big = sum((int(t.abs().max()) << s) for t, s in pairs)
    exact: Exact
    if big < 2**62:
        exact = sum((t << s for t, s in pairs[1:]), pairs[0][0] << pairs[0][1])
    else:
        terms = [t.numpy().astype(object) * (1 << s) for t, s in pairs]
        exact = terms[0]
        for term in terms[1:]:
            exact = exact + term
    return ctx.reduce(exact)


def _concat(a: Concat, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    """Along channels, each input shifted to the common scale."""
    pairs = list(zip(ins, a.shifts, strict=True))
    if max((int(t.abs().max()) << s for t, s in pairs if t.numel()), default=0) < 2**62:
        return ctx.reduce(torch.cat([t << s for t, s in pairs], dim=1))
    return ctx.reduce(np.concatenate([t.numpy().astype(object) * (1 << s) for t, s in pairs], 1))


def _flatten(a: Flatten, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    return ins[0].reshape(ins[0].shape[0], -1)


def _truncate(a: Truncate, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    if ctx.stats is not None:
        ctx.stats.record_local_truncations(ins[0], ctx.p)
    return _round_shift(ins[0], a.shift)


def _activation(a: Activation, op: Op, ins: list[torch.Tensor], ctx: _Ctx) -> torch.Tensor:
    v, p, stats = ins[0], ctx.p, ctx.stats
    x = _round_shift(v, a.shift)
    mask = torch.from_numpy(op.arrays["relu_mask"].astype(bool))
    keep = mask.view([1, -1] + [1] * (v.dim() - 2))
    out = torch.clamp(x, min=0, max=a.clip)  # clip: ReLU6 and friends
    if not bool(mask.all()):
        kp = a.poly_input_shift()
        xp = x if kp == a.shift else _round_shift(v, kp)
        exact = _poly(xp, torch.from_numpy(op.arrays["coefficients"]))
        if stats is not None:  # only the polynomial channels' sums are truncated by the protocol
            poly_only = (
                exact[:, ~mask.numpy()] if isinstance(exact, np.ndarray) else exact[:, ~mask]
            )
            stats.record(ctx.i, poly_only, p // 2)
            stats.record_truncations(v[:, ~mask], poly_only, p)
        y = _reduce(exact, p)
        out = torch.where(keep, out, _round_shift(y, a.poly_shift))
    return out


#: each op kind's plaintext rule: (attrs, op, inputs, context) -> centred int64 output
RULES: dict[type[OpAttrs], Callable[[Any, Op, list[torch.Tensor], _Ctx], torch.Tensor]] = {
    Input: _input,
    Conv: _linear,
    Linear: _linear,
    SumPool: _sum_pool,
    Rescale: _rescale,
    Add: _add,
    Concat: _concat,
    MaxPool: lambda a, op, ins, ctx: _maxpool(ins[0], op, a),
    Flatten: _flatten,
    Truncate: _truncate,
    Activation: _activation,
}


def apply_op(
    op: Op, ins: list[torch.Tensor], p: int, stats: RangeStats | None = None, i: int = 0
) -> torch.Tensor:
    """One op on centred int64 inputs (batched); ``i`` names it in ``stats``.

    Exposed so tests can check a secure run op by op, each on the values it actually got.
    """
    rule = RULES.get(type(op.attrs))
    if rule is None:
        raise ValueError(f"unknown op kind {op.kind!r}")
    return rule(op.attrs, op, ins, _Ctx(p, stats, i))


class _Plan(Protocol):
    """What evaluation reads of a :class:`~safenet.plan.ir.Plan` (no import of it here: the
    Plan's :meth:`~safenet.plan.ir.Plan.reference` calls into this module)."""

    field: Field
    input_shape: tuple[int, ...]
    ops: list[Op]

    @property
    def output_scale(self) -> int: ...


def _forward(plan: _Plan, x: torch.Tensor, stats: RangeStats | None) -> torch.Tensor:
    if stats is not None:
        stats.begin_batch(len(x))
    vals: list[torch.Tensor] = []
    for i, op in enumerate(plan.ops):
        ins = [vals[j] for j in op.inputs] if not isinstance(op.attrs, Input) else [x]
        vals.append(apply_op(op, ins, plan.field.p, stats, i))
    if stats is not None:
        stats.end_batch()
    return vals[-1]


def run(
    plan: _Plan,
    x: np.ndarray | torch.Tensor,
    *,
    encoded: bool = False,
    decode: bool = True,
    stats: RangeStats | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Evaluate ``plan`` on a batch (N, *input_shape) or one input (*input_shape).

    Args:
        x: real inputs (encoded here at ``frac_bits``) or, with ``encoded``, integers.
        decode: return reals (output / 2^scale) instead of centred integers.
        stats: filled with per-op magnitudes, wrap-arounds and expected truncation
            failures, if given.
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

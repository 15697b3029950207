"""Static range analysis: its bounds must hold for every input within the stated range."""

import numpy as np
import pytest
import torch
from torch import nn

from safenet.field import Field, trunc_bound
from safenet.nn.surgery import LayerSpec, calibrate, convert, set_layers
from safenet.nn.zoo import build_model
from safenet.plan import Plan, RangeStats, compile_model
from safenet.plan.analysis import exact_input_bound, static_bounds


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(3),
        nn.Conv2d(3, 2, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3),
    ).eval()  # fmt: skip


def _approx_net():
    torch.manual_seed(1)
    model = build_model("lenet5", in_channels=1, image_size=16, width=3).eval()
    x = torch.randn(16, 1, 16, 16)
    gm = convert(model, x)
    set_layers(gm, LayerSpec(0.5, 3))
    calibrate(gm, [x])
    return gm.eval()


@pytest.mark.parametrize("make, shape", [(_small_net, (1, 6, 6)), (_approx_net, (1, 16, 16))])
def test_static_bounds_cover_what_the_reference_sees(make, shape):
    plan = compile_model(make(), shape)
    bound = 3.0
    rng = np.random.default_rng(0)
    # adversarial-ish inputs: corners of the box and random points inside it
    x = np.concatenate([
        rng.choice([-bound, bound], size=(64, *shape)),
        rng.uniform(-bound, bound, size=(64, *shape)),
    ])  # fmt: skip
    stats = RangeStats()
    plan.reference(x, stats=stats)
    static = static_bounds(plan, bound)
    for i, seen in stats.max_abs.items():
        assert seen <= static[i], f"op {i} ({plan.ops[i].kind}) saw {seen} > bound {static[i]}"
    for i in range(1, len(plan.ops)):  # every op's output, via the plan cut after op i
        prefix = Plan(plan.field, plan.input_shape, plan.ops[: i + 1])
        seen = np.abs(prefix.reference(x, decode=False)).max()
        assert seen <= static[i], f"op {i} ({plan.ops[i].kind}) output {seen} > {static[i]}"


def test_exact_input_bound_is_a_real_guarantee():
    plan = compile_model(_small_net(), (1, 6, 6))
    b = exact_input_bound(plan)
    assert b > 1e5  # a shallow net is provably exact far beyond normalised data (|x| < 3)
    tiny = Field(p=2_097_169, frac_bits=4, weight_bits=4, coef_bits=4)
    plan = compile_model(_small_net(), (1, 6, 6), tiny)
    b = exact_input_bound(plan)
    assert 0 < b < 2.0**20
    assert max(static_bounds(plan, b)) < tiny.half
    assert max(static_bounds(plan, b * 1.02)) >= tiny.half
    x = np.full((1, 1, 6, 6), b * 0.99)
    stats = RangeStats()
    plan.reference(x, stats=stats)
    assert stats.total_overflows == 0


def test_bounds_grow_with_the_input_range():
    plan = compile_model(_approx_net(), (1, 16, 16))
    small, large = static_bounds(plan, 1.0), static_bounds(plan, 4.0)
    assert all(a <= b for a, b in zip(small, large, strict=True))
    assert max(large) > max(small)


def test_failure_and_leak_recomputed_from_the_truncated_magnitudes():
    """Polynomial channels truncate exactly below B = trunc_bound(p): an input fails only if
    some truncated value reaches B; the leak bound sums |u| / (p - 2B) (capped at 1)."""
    plan = compile_model(_approx_net(), (1, 16, 16))
    assert not any(op.kind == "truncate" for op in plan.ops)
    x = np.random.default_rng(2).normal(size=(8, 1, 16, 16))
    x[0] *= 1e9  # one input far out of range: it fails, and its leak caps at 1
    stats = RangeStats()
    plan.reference(x, stats=stats, batch_size=3)
    p, leak, fail = plan.field.p, np.zeros(8), np.zeros(8, dtype=bool)
    b = trunc_bound(p)
    for op in plan.ops:  # recomputed independently: each op's input via a plan prefix
        if op.kind != "activation" or "coefficients" not in op.arrays:
            continue
        src = op.inputs[0]
        prefix = Plan(plan.field, plan.input_shape, plan.ops[: src + 1])
        v = prefix.reference(x, decode=False).astype(object)
        poly = ~op.arrays["relu_mask"].astype(bool)
        v = v[:, poly]
        k = op.attrs.shift if op.attrs.poly_in_shift is None else op.attrs.poly_in_shift
        xs = (v + (1 << (k - 1))) // (1 << k) if k > 0 else v
        c = op.arrays["coefficients"].astype(object)
        c = (np.repeat(c, len(poly), 0) if len(c) == 1 else c)[poly]
        shape = (1, -1) + (1,) * (v.ndim - 2)
        y = sum(c[:, j].reshape(shape) * xs**j for j in range(c.shape[1]))
        for u in (v, y):
            mags = np.abs(u).reshape(8, -1)
            fail |= (mags >= b).any(axis=1)
            leak += np.minimum(mags.astype(np.float64) / (p - 2 * b), 1.0).sum(1)
    assert stats.images == 8
    assert fail.tolist() == [True] + [False] * 7
    assert 0 < leak[1:].max() < 1e-2
    assert stats.failure_rate == pytest.approx(fail.mean(), rel=1e-12)
    assert stats.leak_bound == pytest.approx(np.minimum(leak, 1.0).mean(), rel=1e-9)
    assert stats.expected_wraps == 0.0  # no truncate op, nothing truncated locally
    relu_only = RangeStats()
    compile_model(_small_net(), (1, 6, 6)).reference(x[:, :, :6, :6], stats=relu_only)
    assert relu_only.expected_wraps == 0.0 and relu_only.failure_rate == 0.0
    assert relu_only.leak_bound == 0.0
    assert relu_only.images == 8


def test_truncate_ops_charge_local_wraps():
    """A linear layer fed by a value above its input scale (two convs and a pool, no
    activation between) truncates it locally: each element fails with chance about |v| / p,
    summed per input (lambda)."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(2, 2, 1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()  # fmt: skip
    plan = compile_model(net, (1, 4, 4))
    (t,) = [i for i, op in enumerate(plan.ops) if op.kind == "truncate"]
    x = np.random.default_rng(4).normal(size=(5, 1, 4, 4))
    stats = RangeStats()
    plan.reference(x, stats=stats)
    prefix = Plan(plan.field, plan.input_shape, plan.ops[: plan.ops[t].inputs[0] + 1])
    v = np.abs(prefix.reference(x, decode=False).astype(np.float64)).reshape(5, -1)
    lam = np.minimum(v / plan.field.p, 1.0).sum(1)
    assert stats.expected_wraps == pytest.approx(lam.mean(), rel=1e-9)
    assert stats.failure_rate == pytest.approx((1 - np.exp(-lam)).mean(), rel=1e-9)
    assert stats.leak_bound == 0.0

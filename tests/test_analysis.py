"""Static range analysis: its bounds must hold for every input within the stated range."""

import numpy as np
import pytest
import torch
from torch import nn

from safenet.field import Field
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


def test_expected_wraps_sum_the_truncated_magnitudes_over_p():
    plan = compile_model(_approx_net(), (1, 16, 16))
    x = np.random.default_rng(2).normal(size=(8, 1, 16, 16))
    x[0] *= 1e4  # one input far out of range: its chances cap at 1 per element
    stats = RangeStats()
    plan.reference(x, stats=stats, batch_size=3)
    p, lam = plan.field.p, np.zeros(8)
    for op in plan.ops:  # recomputed independently: each op's input via a plan prefix
        if op.kind != "activation" or "coefficients" not in op.arrays:
            continue
        src = op.inputs[0]
        prefix = Plan(plan.field, plan.input_shape, plan.ops[: src + 1])
        v = prefix.reference(x, decode=False).astype(object)
        poly = ~op.arrays["relu_mask"].astype(bool)
        v = v[:, poly]
        k = op.attrs["shift"]
        xs = (v + (1 << (k - 1))) // (1 << k) if k > 0 else v
        c = op.arrays["coefficients"].astype(object)
        c = (np.repeat(c, len(poly), 0) if len(c) == 1 else c)[poly]
        shape = (1, -1) + (1,) * (v.ndim - 2)
        y = sum(c[:, j].reshape(shape) * xs**j for j in range(c.shape[1]))
        for u in (v, y):
            chance = np.minimum(np.abs(u).astype(np.float64) / p, 1.0)
            lam += chance.reshape(8, -1).sum(1)
    assert stats.images == 8
    assert lam[0] > 1 and 0 < lam[1:].max() < 1e-2
    assert stats.expected_wraps == pytest.approx(lam.mean(), rel=1e-9)
    assert stats.failure_rate == pytest.approx((1 - np.exp(-lam)).mean(), rel=1e-9)
    assert stats.failure_rate < (1 + 7e-2) / 8  # the blown-up input counts once, not lam[0]
    relu_only = RangeStats()
    compile_model(_small_net(), (1, 6, 6)).reference(x[:, :, :6, :6], stats=relu_only)
    assert relu_only.expected_wraps == 0.0 and relu_only.failure_rate == 0.0
    assert relu_only.images == 8

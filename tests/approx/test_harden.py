"""Range hardening: inputs that blow an all-polynomial network up are trained back into
range, and a client refuses the garbage a secure run on such an input returns."""

import copy

import numpy as np
import pytest
import torch

from safenet.approx.float_check import opening_peaks
from safenet.approx.harden import HardenConfig, harden, measure_bounds
from safenet.nn.activation import TRAIN_CLAMP, ChannelActivation
from safenet.nn.surgery import LayerSpec, activations, calibrate, convert, set_layers
from safenet.nn.zoo import build_model
from safenet.plan import compile_model
from safenet.secure import OutputOutOfRange, check_output


def _degree3_lenet():
    """A ReLU LeNet-5 and its all-polynomial degree-3 student, fitted on N(0, 1) inputs."""
    torch.manual_seed(0)
    teacher = build_model("lenet5").eval()
    x = torch.randn(512, 1, 28, 28)
    student = convert(copy.deepcopy(teacher), x[:4])
    set_layers(student, LayerSpec(1.0, 3))
    calibrate(student, [x[:256]])
    return teacher, student.eval(), x


def test_hardening_clamps_an_escaping_input_in_training_and_charges_it():
    act = ChannelActivation(2, degree=3, relu_mask=torch.tensor([False, True]))
    torch.manual_seed(0)
    act.fit(torch.randn(1000, 2))
    bound = float(act.input_bound)
    x = torch.tensor([[1e6, 1e6]])
    with torch.no_grad():
        plain = act.train()(x)  # ordinary training: charged, not clamped
        assert abs(plain[0, 0]) > 1e9
        act.train_clamp = TRAIN_CLAMP  # as range hardening sets it
        served = act.eval()(x)
        assert abs(served[0, 0]) > 1e9 and served[0, 1] == 1e6  # never clamped when served
        trained = act.train()(x)
        clamped = act.polynomial(torch.full((1, 2), TRAIN_CLAMP * bound))[0, 0]
    assert trained[0, 0] == pytest.approx(float(clamped)) and trained[0, 1] == 1e6
    assert float(act.range_excess) == pytest.approx((1e6 / bound - 1) ** 2, rel=1e-5)


def test_range_ratios_are_inputs_over_bounds_and_inf_when_blown_up():
    _, student, x = _degree3_lenet()
    xs = x[:6].clone()
    xs[2] = float("nan")
    _, peaks = opening_peaks(student, xs)
    bounds = torch.tensor([float(a.input_bound) for a in activations(student).values()])
    assert torch.equal(peaks.bounds, bounds)
    expect = (peaks.inputs / bounds).amax(1)
    r = peaks.range_ratios()
    assert r[2] == float("inf")
    keep = [0, 1, 3, 4, 5]
    assert torch.allclose(r[keep], expect[keep])
    with torch.no_grad():
        top = student(xs[keep]).abs().amax(1)
    assert peaks.outputs.shape == (6,) and torch.allclose(peaks.outputs[keep], top)


def test_measure_bounds_fills_only_missing_bounds():
    _, student, x = _degree3_lenet()
    acts = list(activations(student).values())
    before = float(acts[1].input_bound)
    acts[0].input_bound.fill_(0.0)
    assert measure_bounds(student, x[:64]) == 1
    assert float(acts[0].input_bound) > 0 and float(acts[1].input_bound) == before
    assert measure_bounds(student, x[:64]) == 0


def test_harden_trains_the_blow_ups_back_into_range():
    teacher, student, x = _degree3_lenet()
    field = compile_model(student, (1, 28, 28)).field
    xt = x.clone()
    xt[:6] *= 3  # escape their polynomials' range: values far past B, or inf
    y = torch.randint(0, 10, (len(xt),))
    _, peaks = opening_peaks(student, xt)
    failing = int(peaks.failures(field).sum())
    assert failing >= 1
    rep = harden(student, teacher, xt, y, field, HardenConfig(rounds=3, steps=60, hard_pool=16),
                 log=lambda _m: None)  # fmt: skip
    assert rep.failures[0] == failing and rep.ok
    assert rep.max_ratio[-1] < TRAIN_CLAMP
    assert not student.training
    assert all(a.train_clamp is None for a in activations(student).values())  # off again
    _, after = opening_peaks(student, xt)
    assert int(after.failures(field).sum()) == 0
    assert rep.output_bound == pytest.approx(4 * float(after.outputs.max()))


def test_harden_reports_failure_when_it_may_not_train():
    teacher, student, x = _degree3_lenet()
    field = compile_model(student, (1, 28, 28)).field
    xt = x.clone()
    xt[:3] *= 5
    rep = harden(student, teacher, xt, torch.zeros(len(xt), dtype=torch.long), field,
                 HardenConfig(rounds=2, steps=0), log=lambda _m: None)  # fmt: skip
    assert not rep.ok and rep.failures == [3, 3, 3]
    none = harden(student, teacher, xt, torch.zeros(len(xt), dtype=torch.long), field,
                  HardenConfig(rounds=0), log=lambda _m: None)  # fmt: skip
    assert none.failures == [] and not none.ok


def test_a_secure_run_on_a_blow_up_is_refused_by_the_client():
    """The real protocol on an input the network blows up on returns garbage; the plan's
    output bound (from the training images) turns it into an error, a normal input passes."""
    from test_secure import _secure

    _, student, x = _degree3_lenet()
    plan = compile_model(student, (1, 28, 28))
    _, peaks = opening_peaks(student, x[:256])
    plan.info["output_bound"] = 4 * float(peaks.outputs.max())
    assert plan.public().info["output_bound"] == plan.info["output_bound"]
    bad = (x[0] * 5).numpy()
    assert opening_peaks(student, torch.from_numpy(bad)[None])[1].failures(plan.field).all()
    y, _, _ = _secure(plan, bad)
    with pytest.raises(OutputOutOfRange, match="out of range"):
        check_output(plan.public(), y)
    good = x[1].numpy()
    y, _, _ = _secure(plan, good)
    check_output(plan.public(), y)  # a correct result passes
    del plan.info["output_bound"]
    check_output(plan.public(), np.full(10, plan.field.p // 4))  # no bound: not checked

"""The float failure check against the fixed-point reference it stands in for."""

import math

import pytest
import torch

from safenet.approx.float_check import opening_limits, opening_peaks
from safenet.field import Field, trunc_bound
from safenet.nn.surgery import LayerSpec, calibrate, convert, set_layers
from safenet.nn.zoo import build_model
from safenet.plan import compile_model
from safenet.plan.reference import RangeStats


def test_limits_are_the_truncation_bound_at_each_openings_scale():
    f = Field(p=2**48 - 2**44 + 1, frac_bits=8, weight_bits=9, coef_bits=8, poly_frac_bits=6)
    b = trunc_bound(f.p)
    assert opening_limits(f, 3) == (b / 2**8, b / 2 ** (3 * 6 + 8))
    assert opening_limits(f, 2) == (b / 2**8, b / 2 ** (2 * 6 + 8))


@pytest.fixture(scope="module")
def poly_net():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    model = convert(build_model("lenet5"), x)
    set_layers(model, LayerSpec(1.0, 3))
    calibrate(model, [x])
    return model.eval()


def test_flags_the_images_the_reference_fails_on(poly_net):
    x = torch.randn(24, 1, 28, 28)
    x[[3, 11, 17]] *= 1e4  # degree-3 sums far past B on these three
    pred, peaks = opening_peaks(poly_net, x, batch=10)
    plan = compile_model(poly_net, (1, 28, 28))
    flagged = peaks.failures(plan.field)
    assert flagged.nonzero().flatten().tolist() == [3, 11, 17]
    assert torch.equal(pred, poly_net(x).argmax(1))
    stats = RangeStats()
    plan.reference(x.numpy(), stats=stats)
    assert stats.failure_rate == pytest.approx(3 / 24)  # the reference agrees on the count
    assert peaks.degrees == [3] * len(peaks.degrees) and peaks.inputs.shape == (24, 4)


def test_non_finite_values_fail_and_relu_layers_are_not_checked(poly_net):
    x = torch.randn(4, 1, 28, 28)
    x[1] = float("nan")
    _, peaks = opening_peaks(poly_net, x)
    assert peaks.finite.tolist() == [True, False, True, True]
    field = compile_model(poly_net, (1, 28, 28)).field
    assert peaks.failures(field).tolist() == [False, True, False, False]
    relu_net = build_model("lenet5").eval()
    _, none = opening_peaks(relu_net, x)
    assert none.inputs.shape == (4, 0) and none.degrees == []


def test_tail_estimate_extrapolates_an_exponential_tail():
    from safenet.approx.float_check import tail_estimate

    torch.manual_seed(0)
    r = 1.0 + torch.distributions.Exponential(10.0).sample((200_000,))  # P(R >= t) = e^-10(t-1)
    assert tail_estimate(r, 2.5) == pytest.approx(math.exp(-15.0), rel=0.5)  # none seen
    assert tail_estimate(r, 1.05) == pytest.approx(math.exp(-0.5), rel=0.05)  # seen: counted
    blown = torch.cat([r[:999], torch.tensor([float("inf")])])
    assert tail_estimate(blown, 2.0) == pytest.approx(1 / 1000)
    assert tail_estimate(torch.ones(100), 2.0) == 0.0

"""safenet.nn.activation: ReLU on kept channels, a polynomial on the others."""

import json

import numpy as np
import pytest
import torch

from safenet.nn.activation import ChannelActivation, fit_relu_polynomial, range_penalty

MASK = torch.tensor([True, False, True, False, False])


def poly(c, x):
    return sum(float(ck) * x**k for k, ck in enumerate(c))


def act_with(coef, mask=MASK, **kw) -> ChannelActivation:
    a = ChannelActivation(len(mask), degree=len(coef) - 1, relu_mask=mask, **kw)
    with torch.no_grad():
        a.coefficients.copy_(torch.tensor(coef, dtype=torch.float32).expand_as(a.coefficients))
    return a


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("degree", [2, 3])
def test_fit_matches_numpy_least_squares(degree):
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.5, size=2000)
    design = np.stack([x**k for k in range(degree + 1)], axis=1)
    ref, *_ = np.linalg.lstsq(design, np.where(x > 0, x, 0.0), rcond=None)
    coef = fit_relu_polynomial(x, degree)
    assert coef.shape == (degree + 1,)
    np.testing.assert_allclose(coef, ref, rtol=1e-8, atol=1e-10)
    # it is a minimum: nudging any coefficient increases the squared error
    err = ((design @ coef - np.maximum(x, 0)) ** 2).sum()
    for k in range(degree + 1):
        for eps in (-1e-3, 1e-3):
            c = coef.copy()
            c[k] += eps
            assert ((design @ c - np.maximum(x, 0)) ** 2).sum() > err


def test_fit_accepts_tensors_of_any_shape():
    x = torch.randn(20, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(
        fit_relu_polynomial(x, 2), fit_relu_polynomial(x.flatten().numpy(), 2), rtol=1e-6
    )


def test_fit_positive_samples_is_identity():
    x = np.random.default_rng(1).uniform(0.1, 5.0, size=500)
    np.testing.assert_allclose(fit_relu_polynomial(x, 2), [0.0, 1.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(fit_relu_polynomial(x, 3), [0.0, 1.0, 0.0, 0.0], atol=1e-7)


def test_fit_negative_samples_is_zero():
    x = np.random.default_rng(2).uniform(-4.0, -0.1, size=500)
    np.testing.assert_allclose(fit_relu_polynomial(x, 2), [0.0, 0.0, 0.0], atol=1e-10)


def test_fit_symmetric_samples_is_a_real_quadratic():
    x = np.linspace(-1, 1, 2001)
    c = fit_relu_polynomial(x, 2)
    # relu(x) = (x + |x|)/2 on [-1, 1]: linear part 1/2, even part from |x| ~ 3/16 + 15/16 x^2
    np.testing.assert_allclose(c, [3 / 32, 0.5, 15 / 32], atol=1e-3)


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), np.array([0.0, np.nan, 1.0, 2.0])])
def test_fit_rejects_too_few_or_non_finite(bad):
    with pytest.raises(ValueError, match="finite samples"):
        fit_relu_polynomial(bad, 2)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (6, 5), (2, 5, 7)])
def test_all_relu_equals_relu(shape):
    a = ChannelActivation(5)
    assert bool(a.relu_mask.all()) and a.ratio == 0.0
    x = torch.randn(shape)
    assert torch.equal(a(x), torch.relu(x))


def test_default_coefficients_are_delphi_quadratic():
    a = ChannelActivation(3)
    torch.testing.assert_close(a.coefficients, torch.tensor([[0.1992, 0.5002, 0.1997]]))
    assert float(a.blend) == 1.0


@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (8, 5)], ids=["4d", "2d"])
def test_mask_applies_relu_and_polynomial(shape):
    coef = [0.3, -0.7, 0.25]
    a = act_with(coef)
    assert a.ratio == pytest.approx(0.6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 2
    y = a(x)
    assert y.shape == x.shape
    for ch in range(5):
        expected = torch.relu(x[:, ch]) if MASK[ch] else poly(coef, x[:, ch])
        torch.testing.assert_close(y[:, ch], expected)
    # the polynomial channels really differ from ReLU (negative outputs are possible)
    assert not torch.allclose(y[:, 1], torch.relu(x[:, 1]))


def test_mask_given_as_ints_and_copied():
    mask = torch.tensor([1, 0, 1])
    a = ChannelActivation(3, relu_mask=mask)
    assert a.relu_mask.dtype == torch.bool
    assert a.relu_mask.tolist() == [True, False, True]
    mask[0] = 0
    assert a.relu_mask.tolist() == [True, False, True]


def test_blend_zero_is_relu_and_half_is_midpoint():
    coef = [0.1, 0.4, 0.3]
    a = act_with(coef)
    x = torch.randn(6, 5, 2, 2)
    a.blend.fill_(0.0)
    torch.testing.assert_close(a(x), torch.relu(x))
    a.blend.fill_(0.5)
    y = a(x)
    for ch in range(5):
        relu = torch.relu(x[:, ch])
        expected = relu if MASK[ch] else 0.5 * (relu + poly(coef, x[:, ch]))
        torch.testing.assert_close(y[:, ch], expected)
    a.blend.fill_(0.25)
    expected = 0.75 * torch.relu(x[:, 1]) + 0.25 * poly(coef, x[:, 1])
    torch.testing.assert_close(a(x)[:, 1], expected)


def test_per_channel_coefficients():
    mask = torch.tensor([False, True, False])
    a = ChannelActivation(3, relu_mask=mask, per_channel=True)
    assert a.coefficients.shape == (3, 3)
    coefs = [[0.0, 1.0, 0.5], [9.0, 9.0, 9.0], [1.0, -1.0, 0.0]]
    with torch.no_grad():
        a.coefficients.copy_(torch.tensor(coefs))
    for shape in [(4, 3, 2, 2), (4, 3)]:
        x = torch.randn(shape)
        y = a(x)
        torch.testing.assert_close(y[:, 0], poly(coefs[0], x[:, 0]))
        torch.testing.assert_close(y[:, 1], torch.relu(x[:, 1]))
        torch.testing.assert_close(y[:, 2], poly(coefs[2], x[:, 2]))


def test_degree_three():
    coef = [0.05, 0.5, 0.2, -0.03]
    a = act_with(coef)
    assert a.coefficients.shape == (1, 4)
    x = torch.randn(5, 5, 3, 3) * 3
    y = a(x)
    torch.testing.assert_close(y[:, 3], poly(coef, x[:, 3]))
    torch.testing.assert_close(y[:, 0], torch.relu(x[:, 0]))
    # a fresh degree-3 layer starts from the quadratic with a zero cubic term
    fresh = ChannelActivation(2, degree=3, relu_mask=torch.tensor([False, False]))
    assert fresh.coefficients[0, 3] == 0


@pytest.mark.parametrize("degree", [0, 1, 4])
def test_bad_degree(degree):
    with pytest.raises(ValueError, match="degree"):
        ChannelActivation(3, degree=degree)


def test_bad_channel_count_and_mask_shape():
    with pytest.raises(ValueError, match="positive"):
        ChannelActivation(0)
    with pytest.raises(ValueError, match=r"relu_mask must have shape \(3,\)"):
        ChannelActivation(3, relu_mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="relu_mask"):
        ChannelActivation(3, relu_mask=torch.ones(3, 1, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (2, 6), (5,)])
def test_wrong_input_channels(shape):
    a = ChannelActivation(5, relu_mask=MASK)
    with pytest.raises(ValueError, match="expects 5 channels"):
        a(torch.randn(shape))


# --------------------------------------------------------------------------- fit / config / grad


def test_fit_uses_replaced_channels_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 5, 4, 4, generator=g)
    x[:, 0] += 5  # kept channels: very different distribution, must not influence the fit
    x[:, 2] -= 5
    a = ChannelActivation(5, relu_mask=MASK)
    a.fit(x)
    ref = fit_relu_polynomial(x[:, ~MASK], 2)
    torch.testing.assert_close(
        a.coefficients.detach(), torch.tensor(ref, dtype=torch.float32)[None]
    )
    assert a.coefficients.dtype == torch.float32


def test_fit_all_relu_uses_every_channel():
    x = torch.randn(30, 3) * torch.tensor([1.0, 2.0, 0.5]) + 0.2
    a = ChannelActivation(3)
    a.fit(x)
    ref = fit_relu_polynomial(x, 2)
    torch.testing.assert_close(
        a.coefficients.detach(), torch.tensor(ref, dtype=torch.float32)[None]
    )


def test_fit_per_channel():
    x = torch.randn(40, 3, 5, 5)
    x[:, 1] = x[:, 1].abs() + 0.1  # positive only: its own fit is the identity
    a = ChannelActivation(
        3, degree=3, relu_mask=torch.tensor([False, False, True]), per_channel=True
    )
    a.fit(x)
    for ch in range(3):
        ref = fit_relu_polynomial(x[:, ch], 3)
        torch.testing.assert_close(
            a.coefficients[ch].detach(), torch.tensor(ref, dtype=torch.float32)
        )
    torch.testing.assert_close(
        a.coefficients[1].detach(), torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=1e-4, rtol=0
    )


def test_fitted_polynomial_reduces_error():
    x = torch.randn(64, 5, 4, 4)
    a = ChannelActivation(5, relu_mask=MASK)
    before = ((a(x) - torch.relu(x)) ** 2).mean()
    a.fit(x)
    after = ((a(x) - torch.relu(x)) ** 2).mean()
    assert after < before


def test_config_content():
    a = ChannelActivation(5, degree=3, relu_mask=MASK, per_channel=True)
    cfg = a.config()
    assert cfg == {
        "channels": 5,
        "degree": 3,
        "per_channel": True,
        "relu_mask": [1, 0, 1, 0, 0],
    }
    assert json.loads(json.dumps(cfg)) == cfg
    assert "relu=2" in repr(a) and "degree=3" in repr(a)


def test_state_dict_holds_mask_blend_and_coefficients():
    a = act_with([0.1, 0.2, 0.3])
    a.blend.fill_(0.3)
    b = ChannelActivation(5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.relu_mask, MASK)
    assert float(b.blend) == pytest.approx(0.3)
    x = torch.randn(3, 5)
    torch.testing.assert_close(a(x), b(x))


def test_gradients_reach_coefficients():
    coef = [0.1, 0.5, 0.2]
    a = act_with(coef)
    x = torch.randn(4, 5, 3, 3, requires_grad=True)
    a(x).sum().backward()
    grad = a.coefficients.grad
    assert grad is not None and grad.shape == (1, 3)
    xp = x.detach()[:, ~MASK]
    expected = torch.stack([xp.pow(k).sum() for k in range(3)])[None]
    torch.testing.assert_close(grad, expected)
    # input gradient: 1[x > 0] on ReLU channels, p'(x) on polynomial channels
    g = x.grad
    torch.testing.assert_close(g[:, 0], (x.detach()[:, 0] > 0).float())
    torch.testing.assert_close(g[:, 1], 0.5 + 2 * 0.2 * x.detach()[:, 1])


def test_gradients_scale_with_blend_and_per_channel():
    a = ChannelActivation(5, relu_mask=MASK, per_channel=True)
    a.blend.fill_(0.5)
    x = torch.randn(4, 5)
    a(x).sum().backward()
    grad = a.coefficients.grad
    assert torch.all(grad[MASK] == 0)
    expected = 0.5 * torch.stack([x[:, 1].pow(k).sum() for k in range(3)])
    torch.testing.assert_close(grad[1], expected)


def test_range_penalty_counts_only_polynomial_inputs_beyond_the_fitted_range():
    mask = torch.tensor([True, False, False])
    act = ChannelActivation(3, degree=3, relu_mask=mask)
    act.fit(torch.linspace(-2, 2, 300).reshape(100, 3))  # polynomial channels fitted on |x| <= 2
    bound = float(act.input_bound)
    assert 1.9 < bound <= 2.0
    act.train()
    inside = torch.full((4, 3), bound * 0.9)
    inside[:, 0] = 100.0  # a ReLU channel far out: not the polynomial's business
    act(inside)
    assert float(range_penalty(act)) == 0.0
    outside = inside.clone()
    outside[0, 1] = 3 * bound  # one polynomial input at three times its range
    act(outside)
    assert float(range_penalty(act)) == pytest.approx(4.0 / 4)  # (3 - 1)^2, batch mean
    act.eval()
    act(outside)
    assert range_penalty(act) == 0.0  # only in training


def test_checkpoints_from_before_input_bound_still_load():
    act = ChannelActivation(3, degree=2, relu_mask=torch.tensor([True, False, False]))
    state = {k: v for k, v in act.state_dict().items() if k != "input_bound"}
    fresh = ChannelActivation(3, degree=2, relu_mask=torch.tensor([True, False, False]))
    fresh.load_state_dict(state)  # strict: the missing bound defaults to 0 (no penalty)
    assert float(fresh.input_bound) == 0.0

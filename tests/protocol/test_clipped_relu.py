"""Clipped ReLUs (ReLU6 and friends) and depthwise convolutions, as in MobileNetV2: compiled,
run securely (exact against the reference), costed."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import safenet
from safenet.approx.cost import count
from safenet.plan.ir import UnsupportedLayerError
from safenet.secure import run_local


class InvertedResidual(nn.Module):
    """1x1 expand, ReLU6, 3x3 depthwise, ReLU6 (as hardtanh), 1x1 project, residual add."""

    def __init__(self, c: int, e: int) -> None:
        super().__init__()
        h = c * e
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False),
                                nn.BatchNorm2d(h))  # fmt: skip
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(F.hardtanh(self.dw(self.expand(x)), 0.0, 6.0))


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU6())  # fmt: skip
        self.block = InvertedResidual(8, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.block(self.stem(x)), 0, 6)
        return self.head(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = TinyMobileNet().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def test_relu6_hardtanh_and_clamp_compile_to_clipped_activations(net):
    plan = safenet.compile(net, (3, 16, 16))
    acts = [op for op in plan.ops if op.kind == "activation"]
    assert [op.attrs.clip for op in acts] == [6 << plan.field.frac_bits] * 4
    x = np.random.default_rng(0).normal(size=(3, 16, 16)) * 10  # large: many clipped values
    ref = plan.reference(x)
    fl = net.double()(torch.tensor(x)[None]).detach().numpy()[0]
    assert np.abs(ref - fl).max() < 0.02
    # the clip binds on this input (else the test would not test it)
    stem = net.stem[:2].double()(torch.tensor(x)[None])
    assert bool((stem > 6).any())


def test_clipped_relu_network_runs_securely_and_exactly(net):
    plan = safenet.compile(net, (3, 16, 16))
    x = np.random.default_rng(1).normal(size=(3, 16, 16)) * 10
    y, rep = run_local(plan, x)
    assert np.array_equal(y, plan.reference(x))
    c = count(plan)
    assert c.relu == plan.counts()["relu_count"]
    assert rep["gc_bytes_per_relu"] == pytest.approx(32 * c.ands / c.relu, abs=0.11)


def test_other_clamps_are_refused_with_a_reason():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh(-1.0, 1.0))
    with pytest.raises(UnsupportedLayerError, match="lower bound 0"):
        safenet.compile(net, (3, 8, 8))


def test_clipped_relus_become_clipped_channel_activations_and_can_be_approximated(net):
    """convert() finds ReLU6, hardtanh(0, 6) and clamp(0, 6) sites; their polynomial channels
    are fitted to the clipped ReLU; the plan keeps the clip on the ReLU channels and runs
    securely within the stated bound, op by op."""
    from safenet.nn import surgery
    from safenet.protocol.session import encode_input
    from test_secure import _check_op_by_op, _secure

    net = copy.deepcopy(net).float()  # the fixture may have been made double above
    x4 = torch.randn(8, 3, 16, 16) * 3
    gm = surgery.convert(net, x4)
    acts = surgery.activations(gm)
    assert len(acts) == 4 and {a.clip for a in acts.values()} == {6.0}
    assert torch.equal(gm(x4), net.float()(x4))  # all-ReLU: the same function
    surgery.set_layers(gm, surgery.LayerSpec(0.5, 2))
    surgery.calibrate(gm, [x4])
    # the polynomial channels imitate the clipped ReLU, not ReLU
    clipped = safenet.ChannelActivation(4, 2, torch.tensor([True, False, True, False]), clip=6.0)
    xs = torch.linspace(-3, 9, 400).view(1, 1, -1).expand(1, 4, 400)
    clipped.fit(xs)
    to_relu = safenet.ChannelActivation(4, 2, clipped.relu_mask)
    to_relu.fit(xs)
    assert (clipped(xs) - clipped.target(xs)).abs().mean() < 0.5 * (
        to_relu.polynomial(xs) - clipped.target(xs)
    ).abs().mean()
    gm.eval()
    plan = safenet.compile(gm, (3, 16, 16))
    ops = [op for op in plan.ops if op.kind == "activation"]
    assert all(op.attrs.clip == 6 << plan.field.frac_bits for op in ops)
    assert plan.counts()["poly_count"] > 0
    x = np.random.default_rng(3).normal(size=(3, 16, 16))
    ref = plan.reference(x)
    assert np.abs(ref - gm.double()(torch.tensor(x)[None]).detach().numpy()[0]).max() < 0.05
    _, srv, cli = _secure(plan, x, keep_trace=True)
    _check_op_by_op(plan, srv, cli, encode_input(plan, x))


def test_a_clipped_configuration_only_fits_a_clipped_site(net):
    from safenet.nn import surgery

    x4 = torch.randn(2, 3, 16, 16)
    config = surgery.activation_config(surgery.convert(copy.deepcopy(net).float(), x4))
    assert len(config) == 4 and all(c["clip"] == 6.0 for c in config.values())
    surgery.apply_config(TinyMobileNet(), config, x4)  # round trip
    first = next(iter(config))
    with pytest.raises(ValueError, match="clip 6.0, configuration says 3.0"):
        surgery.apply_config(TinyMobileNet(), config | {first: config[first] | {"clip": 3.0}}, x4)

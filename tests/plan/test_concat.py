"""Channel concatenation (SqueezeNet / Inception / DenseNet style): a local op on shares,
inputs aligned to a common scale, exact against the reference and in a secure run."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import safenet
from safenet.plan.ir import UnsupportedLayerError
from safenet.secure import run_local


class Fire(nn.Module):
    """Two ReLU branches and the raw input concatenated, then a conv output (a larger
    scale) concatenated with the input (shifted up to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(3, 4, 1)
        self.e1 = nn.Conv2d(4, 6, 1)
        self.e3 = nn.Conv2d(4, 5, 3, padding=1)
        self.mix = nn.Conv2d(14, 4, 1)
        self.fc = nn.Linear((4 + 3) * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x).relu()
        y = torch.cat([self.e1(s).relu(), self.e3(s).relu(), x], dim=1)
        z = torch.cat((self.mix(y), x), 1)  # conv output at a larger scale beside the input
        return self.fc(z.relu().flatten(1))


@pytest.fixture(scope="module")
def plan():
    torch.manual_seed(0)
    net = Fire().eval()
    return net, safenet.compile(net, (3, 8, 8))


def test_concat_lowers_to_a_local_op_with_scale_shifts(plan):
    net, p = plan
    cats = [op for op in p.ops if op.kind == "concat"]
    assert [op.shape[0] for op in cats] == [14, 7]
    assert cats[0].attrs.shifts == [0, 0, 0] and max(cats[1].attrs.shifts) > 0
    x = np.random.default_rng(0).normal(size=(3, 8, 8))
    ref = p.reference(x)
    assert np.abs(ref - net.double()(torch.tensor(x)[None]).detach().numpy()[0]).max() < 0.05


def test_concat_runs_securely_and_exactly(plan):
    _, p = plan
    x = np.random.default_rng(1).normal(size=(3, 8, 8))
    y, _ = run_local(p, x)
    assert np.array_equal(y, p.reference(x))


def test_concat_along_other_dimensions_is_refused():
    class Wide(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=2)

    with pytest.raises(UnsupportedLayerError, match="along channels"):
        safenet.compile(Wide(), (3, 4, 4))


def test_functional_average_pools_compile_like_their_modules():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = torch.nn.functional.avg_pool2d(self.conv(x).relu(), 2)
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

    torch.manual_seed(0)
    net = Functional().eval()
    plan = safenet.compile(net, (3, 8, 8))
    assert [op.attrs.kernel for op in plan.ops if op.kind == "sumpool"] == [2, 4]
    x = np.random.default_rng(2).normal(size=(3, 8, 8))
    fl = net.double()(torch.tensor(x)[None]).detach().numpy()[0]
    assert np.abs(plan.reference(x) - fl).max() < 0.02


def test_global_mean_pooling_compiles_and_runs_exactly():
    class GlobalMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.conv(x).relu().mean((2, 3)))

    torch.manual_seed(0)
    net = GlobalMean().eval()
    plan = safenet.compile(net, (3, 6, 6))
    x = np.random.default_rng(3).normal(size=(3, 6, 6))
    fl = net.double()(torch.tensor(x)[None]).detach().numpy()[0]
    assert np.abs(plan.reference(x) - fl).max() < 0.02
    y, _ = run_local(plan, x)
    assert np.array_equal(y, plan.reference(x))
    with pytest.raises(UnsupportedLayerError, match="mean over"):
        safenet.compile(_MeanOverChannels(), (3, 4, 4))


class _MeanOverChannels(nn.Module):
    def forward(self, x):
        return x.mean(1)

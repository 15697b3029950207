"""safenet.approx.scoring: which channels keep their ReLU."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import FIXTURES
from safenet.approx.scoring import CRITERIA, ranking_agreement, score_channels
from safenet.data import ImageDataset
from safenet.nn.activation import fit_relu_polynomial
from safenet.nn.surgery import LayerSpec, activations, convert, set_layers
from safenet.nn.zoo import build_model


class OneLayer(nn.Module):
    """fc(relu(x) * gate): a gate of 0 makes a channel irrelevant to the loss."""

    def __init__(self, gate: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 3)
        self.register_buffer("gate", torch.tensor(gate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(x) * self.gate)


def two_channel_batches(n_batches: int = 2, n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Channel 0 strictly positive, channel 1 symmetric around 0."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        pos = torch.rand(n, generator=g) * 2 + 0.1
        sym = torch.randn(n, generator=g)
        out.append((torch.stack([pos, sym], 1), torch.randint(0, 3, (n,), generator=g)))
    return out


def one_layer(gate=(1.0, 1.0)) -> nn.Module:
    torch.manual_seed(0)
    return convert(OneLayer(gate).eval(), torch.zeros(2, 2))


def layer_gap(x: torch.Tensor, degree: int = 2) -> torch.Tensor:
    coef = fit_relu_polynomial(x, degree)
    return sum(float(c) * x**k for k, c in enumerate(coef)) - torch.relu(x)


@pytest.fixture(scope="module")
def lenet_and_batches():
    data_dir = FIXTURES
    ds = ImageDataset("fashion-mnist", "test", data_dir, limit=48)
    torch.manual_seed(0)
    model = convert(build_model("lenet5", width=2).eval(), ds.normalize(ds.images[:2]))
    return model, list(ds.batches(16))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_every_channel(lenet_and_batches, criterion):
    model, batches = lenet_and_batches
    scores = score_channels(model, batches, criterion)
    acts = activations(model)
    assert list(scores) == list(acts)
    for name, s in scores.items():
        assert s.shape == (acts[name].num_channels,)
        assert s.dtype == torch.float32
        assert torch.isfinite(s).all() and (s >= 0).all()
        assert s.max() > 0


@pytest.mark.parametrize("criterion", ["taylor", "approx-error"])
def test_scoring_leaves_model_clean(lenet_and_batches, criterion):
    model, batches = lenet_and_batches
    model.train()
    try:
        score_channels(model, batches[:1], criterion)
        assert model.training
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters())
    assert all(not a._forward_hooks for a in activations(model).values())


def test_unknown_criterion(lenet_and_batches):
    model, batches = lenet_and_batches
    with pytest.raises(ValueError, match="unknown criterion 'magnitude'") as e:
        score_channels(model, batches, "magnitude")
    for c in CRITERIA:
        assert c in str(e.value)


def test_unconverted_model_raises():
    with pytest.raises(ValueError, match="convert it first"):
        score_channels(OneLayer(), two_channel_batches(), "approx-error")


# --------------------------------------------------------------------------- approx-error


def test_approx_error_prefers_symmetric_channel():
    batches = two_channel_batches()
    scores = score_channels(one_layer(), batches, "approx-error")["act"]
    assert scores[1] > 2 * scores[0]
    # exactly E[(p(x) - relu(x))^2] per channel, p fitted over the whole layer
    x = torch.cat([b for b, _ in batches])
    torch.testing.assert_close(scores, (layer_gap(x) ** 2).mean(0))


def test_approx_error_conv_layer_and_degree():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2))
    gm = convert(net.eval(), torch.zeros(2, 1, 6, 6))
    x = torch.randn(10, 1, 6, 6)
    batches = [(x, torch.zeros(10, dtype=torch.long))]
    with torch.no_grad():
        pre = net[0](x)
    s2 = score_channels(gm, batches, "approx-error", degree=2)["1"]
    s3 = score_channels(gm, batches, "approx-error", degree=3)["1"]
    torch.testing.assert_close(s2, (layer_gap(pre, 2) ** 2).mean(dim=(0, 2, 3)))
    torch.testing.assert_close(s3, (layer_gap(pre, 3) ** 2).mean(dim=(0, 2, 3)))
    assert s3.mean() < s2.mean()  # a cubic fits ReLU better over the layer


def test_approx_error_ignores_current_mask():
    batches = two_channel_batches()
    gm = one_layer()
    before = score_channels(gm, batches, "approx-error")["act"]
    set_layers(gm, LayerSpec(0.5))
    torch.testing.assert_close(score_channels(gm, batches, "approx-error")["act"], before)


# --------------------------------------------------------------------------- taylor


def taylor_reference(model: nn.Module, batches) -> torch.Tensor:
    """E_n |dL/dy * (p(x) - relu(x))| with the loss of each batch, p fitted over all batches."""
    x_all = torch.cat([b for b, _ in batches])
    gap = layer_gap(x_all)
    grads = []
    for x, y in batches:
        out = torch.relu(x).requires_grad_(True)
        F.cross_entropy(model.fc(out * model.gate), y).backward()
        grads.append(out.grad)
    return (torch.cat(grads) * gap).abs().mean(0)


def test_taylor_matches_first_order_estimate():
    batches = two_channel_batches()
    gm = one_layer()
    scores = score_channels(gm, batches, "taylor")["act"]
    assert (scores >= 0).all()
    assert scores[1] > scores[0]
    torch.testing.assert_close(scores, taylor_reference(gm, batches))


def test_taylor_zero_for_channel_without_effect():
    batches = two_channel_batches()
    gm = one_layer(gate=(1.0, 0.0))
    scores = score_channels(gm, batches, "taylor")["act"]
    assert scores[0] > 0
    assert scores[1] == 0
    # whereas the label-free criterion still sees the poorly approximated channel
    assert score_channels(gm, batches, "approx-error")["act"][1] > 0


def test_taylor_conv_sums_over_positions_before_abs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3)).eval()
    gm = convert(net, torch.zeros(2, 1, 6, 6))
    x = torch.randn(6, 1, 6, 6)
    y = torch.randint(0, 3, (6,))
    scores = score_channels(gm, [(x, y)], "taylor")["1"]
    with torch.no_grad():
        pre = net[0](x)
    out = torch.relu(pre).requires_grad_(True)
    F.cross_entropy(net[3](net[2](out)), y).backward()
    expected = (out.grad * layer_gap(pre)).sum(dim=(2, 3)).abs().mean(0)
    torch.testing.assert_close(scores, expected)


# --------------------------------------------------------------------------- random / agreement


def test_random_is_seeded(lenet_and_batches):
    model, _ = lenet_and_batches
    a = score_channels(model, [], "random", seed=3)
    b = score_channels(model, [], "random", seed=3)
    c = score_channels(model, [], "random", seed=4)
    assert list(a) == list(activations(model))
    for name in a:
        assert torch.equal(a[name], b[name])
        assert ((a[name] >= 0) & (a[name] < 1)).all()
    assert any(not torch.equal(a[n], c[n]) for n in a)
    # different layers get different draws
    assert not torch.equal(a["1"][:2], a["4"][:2])


@pytest.mark.parametrize(
    "a,b,ratio,expected",
    [
        ([4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0], 0.5, 1.0),
        ([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], 0.5, 0.0),
        ([4.0, 3.0, 2.0, 1.0], [4.0, 1.0, 3.0, 2.0], 0.5, 0.5),
        ([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], 0.0, 1.0),
        ([4.0, 3.0, 2.0, 1.0], [3.0, 4.0, 2.0, 1.0], 0.75, 0.0),
        ([4.0, 3.0, 2.0, 1.0], [4.0, 1.0, 2.0, 3.0], 1.0, 1.0),  # at least one channel kept
        ([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 5.0, 4.0, 3.0, 2.0, 1.0], 0.5, 2 / 3),
    ],
)
def test_ranking_agreement(a, b, ratio, expected):
    got = ranking_agreement(torch.tensor(a), torch.tensor(b), ratio)
    assert got == pytest.approx(expected)
    assert ranking_agreement(torch.tensor(b), torch.tensor(a), ratio) == pytest.approx(expected)


def test_ranking_agreement_of_random_scores_is_about_the_ratio():
    g = torch.Generator().manual_seed(0)
    vals = [
        ranking_agreement(torch.rand(100, generator=g), torch.rand(100, generator=g), 0.5)
        for _ in range(30)
    ]
    assert abs(np.mean(vals) - 0.5) < 0.1

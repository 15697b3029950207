"""safenet.nn.surgery: find ReLU sites, swap in ChannelActivation, set/save/restore/calibrate."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from safenet.nn.activation import fit_relu_polynomial
from safenet.nn.surgery import (
    LayerSpec,
    activation_config,
    activations,
    apply_config,
    calibrate,
    convert,
    keep_mask,
    set_blend,
    set_layers,
)

DELPHI = torch.tensor([0.1992, 0.5002, 0.1997])


class FourSites(nn.Module):
    """One ReLU written each way: nn.ReLU, F.relu, torch.relu and x.relu()."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, width, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)
        self.fc3 = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        x = F.relu(self.conv2(x))
        x = torch.relu(self.fc1(self.pool(x).flatten(1)))
        return self.fc3(self.fc2(x).relu())

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The inputs of the four ReLUs, computed by hand (the reference for calibrate)."""
        p1 = self.conv(x)
        p2 = self.conv2(torch.relu(p1))
        p3 = self.fc1(self.pool(torch.relu(p2)).flatten(1))
        p4 = self.fc2(torch.relu(p3))
        return [p1, p2, p3, p4]


NAMES = ["act", "act_relu", "act_relu_1", "act_relu_2"]
CHANNELS = [4, 6, 5, 3]


@pytest.fixture
def model() -> FourSites:
    torch.manual_seed(0)
    return FourSites().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(1))


def test_convert_finds_all_four_sites(model, x):
    gm = convert(model, x[:2])
    assert isinstance(gm, fx.GraphModule)
    acts = activations(gm)
    assert list(acts) == NAMES
    assert [a.num_channels for a in acts.values()] == CHANNELS
    assert all(bool(a.relu_mask.all()) and not a.per_channel for a in acts.values())
    # no ReLU is left in the graph
    for node in gm.graph.nodes:
        assert node.target not in (F.relu, torch.relu, "relu")
        if node.op == "call_module":
            assert not isinstance(gm.get_submodule(node.target), nn.ReLU)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert [c for c in calls if c in NAMES] == NAMES  # each site calls its own activation
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert isinstance(model.act, nn.ReLU)  # the original model is left alone


def test_converted_model_changes_when_approximated(model, x):
    gm = convert(model, x[:2])
    set_layers(gm, LayerSpec(0.5))
    with torch.no_grad():
        assert not torch.allclose(gm(x), model(x))


def test_convert_per_channel(model, x):
    gm = convert(model, x[:2], per_channel=True)
    for a, c in zip(activations(gm).values(), CHANNELS, strict=True):
        assert a.per_channel and a.coefficients.shape == (c, 3)


def test_convert_keeps_train_mode_and_batchnorm_stats(x):
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU()).train()
    gm = convert(net, x)
    assert gm.training
    bn = gm.get_submodule("1")
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert int(bn.num_batches_tracked) == 0
    assert list(activations(gm)) == ["2"]


def test_convert_twice_leaves_activations(model, x):
    gm = convert(model, x[:2])
    set_layers(gm, LayerSpec(0.5, degree=3))
    masks = {n: a.relu_mask.clone() for n, a in activations(gm).items()}
    again = convert(gm, x[:2])
    acts = activations(again)
    assert list(acts) == NAMES
    for n, a in acts.items():
        assert torch.equal(a.relu_mask, masks[n]) and a.degree == 3


def test_convert_rejects_one_dimensional_site():
    class Flat(nn.Module):
        def forward(self, x):
            return torch.relu(x.sum(0))

    with pytest.raises(ValueError, match="channel count"):
        convert(Flat(), torch.randn(4, 3))


# --------------------------------------------------------------------------- set_layers


@pytest.mark.parametrize(
    "scores,ratio,kept",
    [
        ([0.1, 0.9, 0.5, 0.3], 0.5, [1, 2]),
        ([0.1, 0.9, 0.5, 0.3], 0.25, [1, 2, 3]),
        ([0.1, 0.9, 0.5, 0.3], 0.0, [0, 1, 2, 3]),
        ([0.1, 0.9, 0.5, 0.3], 1.0, []),
        ([1.0, 1.0, 1.0, 0.0, 1.0], 0.4, [0, 1, 2]),  # ties: lowest index first
    ],
)
def test_keep_mask(scores, ratio, kept):
    mask = keep_mask(torch.tensor(scores), ratio)
    assert mask.dtype == torch.bool
    assert mask.nonzero().flatten().tolist() == kept


@pytest.mark.parametrize("c", [3, 4, 5, 6, 7, 10])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.7, 0.9])
def test_keep_mask_count(c, ratio):
    assert int(keep_mask(torch.randn(c), ratio).sum()) == round(c * (1 - ratio))


def test_set_layers_one_spec(model, x):
    gm = convert(model, x[:2])
    with torch.no_grad():
        for a in activations(gm).values():
            a.coefficients.fill_(3.0)
    set_layers(gm, LayerSpec(0.5, degree=3))
    for a, c in zip(activations(gm).values(), CHANNELS, strict=True):
        keep = round(c * 0.5)
        assert a.degree == 3 and a.coefficients.shape == (1, 4)
        # without scores the first channels keep their ReLU
        assert a.relu_mask.tolist() == [True] * keep + [False] * (c - keep)
        # coefficients restart from Delphi's quadratic
        torch.testing.assert_close(a.coefficients[0].detach(), torch.cat([DELPHI, torch.zeros(1)]))
    assert pytest.approx(activations(gm)["act"].ratio) == 0.5


def test_set_layers_per_layer_dict(model, x):
    gm = convert(model, x[:2])
    set_layers(gm, {"act": LayerSpec(0.25), "act_relu_1": LayerSpec(1.0, 3)})
    acts = activations(gm)
    assert acts["act"].relu_mask.tolist() == [True, True, True, False]
    assert acts["act"].degree == 2
    assert not acts["act_relu_1"].relu_mask.any() and acts["act_relu_1"].degree == 3
    for untouched in ("act_relu", "act_relu_2"):
        assert acts[untouched].relu_mask.all() and acts[untouched].degree == 2


def test_set_layers_with_scores_keeps_top_channels(model, x):
    gm = convert(model, x[:2])
    scores = {
        "act": torch.tensor([0.1, 0.9, 0.5, 0.3]),
        "act_relu": torch.tensor([5.0, 1.0, 2.0, 6.0, 3.0, 4.0]),
        "act_relu_1": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]),
        "act_relu_2": torch.tensor([-1.0, -3.0, -2.0]),
    }
    set_layers(gm, LayerSpec(0.5), scores)
    acts = activations(gm)
    assert acts["act"].relu_mask.tolist() == [False, True, True, False]
    assert acts["act_relu"].relu_mask.tolist() == [True, False, False, True, False, True]
    assert acts["act_relu_1"].relu_mask.tolist() == [True, False, True, False, False]
    assert acts["act_relu_2"].relu_mask.tolist() == [True, False, True]


def test_set_layers_unknown_layer(model, x):
    gm = convert(model, x[:2])
    with pytest.raises(KeyError, match="conv9") as e:
        set_layers(gm, {"conv9": LayerSpec(0.5)})
    assert "act_relu_2" in str(e.value)  # lists the known names
    assert activations(gm)["act"].relu_mask.all()


@pytest.mark.parametrize("kw", [{"ratio": -0.1}, {"ratio": 1.5}, {"ratio": 0.5, "degree": 4}])
def test_layer_spec_validation(kw):
    with pytest.raises(ValueError):
        LayerSpec(**kw)


def test_layer_spec_defaults_and_frozen():
    spec = LayerSpec(0.3)
    assert spec.degree == 2
    with pytest.raises(AttributeError):
        spec.ratio = 0.5


def test_set_blend(model, x):
    gm = convert(model, x[:2])
    set_blend(gm, 0.25)
    assert all(float(a.blend) == 0.25 for a in activations(gm).values())


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("per_channel", [False, True])
def test_config_roundtrip_on_fresh_model(model, x, per_channel):
    gm = convert(model, x[:2], per_channel=per_channel)
    set_layers(
        gm,
        {"act": LayerSpec(0.5, 3), "act_relu": LayerSpec(0.2), "act_relu_2": LayerSpec(1.0)},
        {
            "act": torch.tensor([0.0, 3.0, 1.0, 2.0]),
            "act_relu": torch.arange(6.0),
            "act_relu_2": torch.zeros(3),
        },
    )
    cfg = json.loads(json.dumps(activation_config(gm)))
    assert cfg["act"] == {
        "channels": 4,
        "degree": 3,
        "per_channel": per_channel,
        "relu_mask": [0, 1, 0, 1],
    }
    assert cfg["act_relu"]["relu_mask"] == [0, 1, 1, 1, 1, 1]  # round(6 * 0.8) = 5 kept
    assert cfg["act_relu_1"]["relu_mask"] == [1] * 5
    torch.manual_seed(123)
    fresh = apply_config(FourSites(), cfg, x[:2])
    assert activation_config(fresh) == cfg
    for name, a in activations(fresh).items():
        src = activations(gm)[name]
        assert torch.equal(a.relu_mask, src.relu_mask)
        assert a.degree == src.degree and a.per_channel == per_channel
        assert a.coefficients.shape == src.coefficients.shape
    # the restored model computes what the saved one computes, given the same parameters
    fresh.load_state_dict(gm.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), gm(x))


def test_apply_config_mismatch(model, x):
    cfg = activation_config(convert(model, x[:2]))
    missing = {k: v for k, v in cfg.items() if k != "act_relu"}
    with pytest.raises(ValueError, match="does not fit"):
        apply_config(FourSites(), missing, x[:2])
    extra = {**cfg, "act_relu_9": cfg["act"]}
    with pytest.raises(ValueError, match="does not fit"):
        apply_config(FourSites(), extra, x[:2])
    with pytest.raises(ValueError, match="act: 7 channels, configuration says 4"):
        apply_config(FourSites(width=7), cfg, x[:2])


# --------------------------------------------------------------------------- calibrate


def test_calibrate_fits_relu_network_preactivations(model, x):
    gm = convert(model, x[:2])
    set_layers(gm, LayerSpec(0.5))
    set_blend(gm, 0.3)
    gm.train()
    batches = [x[:4], x[4:]]
    samples = calibrate(gm, batches)
    assert gm.training  # mode restored
    with torch.no_grad():
        ref = [torch.cat(p) for p in zip(*(model.preactivations(b) for b in batches), strict=True)]
    acts = activations(gm)
    assert list(samples) == NAMES
    for name, pre in zip(NAMES, ref, strict=True):
        a = acts[name]
        # the samples are the pre-activations of the ReLU network (blend 0 during the pass)
        torch.testing.assert_close(samples[name], pre)
        expected = fit_relu_polynomial(pre.transpose(0, 1)[~a.relu_mask], 2)
        torch.testing.assert_close(
            a.coefficients.detach()[0],
            torch.tensor(expected, dtype=torch.float32),
            rtol=1e-4,
            atol=1e-5,
        )
        assert float(a.blend) == pytest.approx(0.3)  # blend left as it was


def test_calibrate_per_channel_and_sample_cap(model, x):
    gm = convert(model, x[:2], per_channel=True)
    set_layers(gm, LayerSpec(0.5))
    samples = calibrate(gm, [x[:3], x[3:]], max_samples=1)
    with torch.no_grad():
        ref = model.preactivations(x[:3])
    for name, pre in zip(NAMES, ref, strict=True):
        assert len(samples[name]) == 3  # only the first batch once the cap is reached
        a = activations(gm)[name]
        for ch in range(a.num_channels):
            expected = fit_relu_polynomial(pre[:, ch], 2)
            torch.testing.assert_close(
                a.coefficients.detach()[ch],
                torch.tensor(expected, dtype=torch.float32),
                rtol=1e-4,
                atol=1e-5,
            )


def test_calibrate_reduces_approximation_error(model, x):
    gm = convert(model, x[:2])
    set_layers(gm, LayerSpec(0.5))
    with torch.no_grad():
        before = (gm(x) - model(x)).pow(2).mean()
        calibrate(gm, [x])
        after = (gm(x) - model(x)).pow(2).mean()
    assert after < before


def test_calibrate_needs_a_batch(model, x):
    gm = convert(model, x[:2])
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(gm, [])


def test_convert_rejects_a_relu_module_shared_by_two_sites(x):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(x.shape[1], 3, 1)
            self.act = nn.ReLU()

        def forward(self, t):
            return self.act(self.conv(self.act(t)))

    with pytest.raises(ValueError, match="several sites"):
        convert(Shared(), x)


def test_set_layers_names_the_layer_without_scores(model, x):
    gm = convert(model, x)
    first = next(iter(activations(gm)))
    with pytest.raises(KeyError, match=rf"no channel scores for layer '{first}'"):
        set_layers(gm, LayerSpec(0.5), scores={})

"""The built-in models shipped in the package: present, documented, and as good as claimed."""

import pytest

from safenet import checkpoint
from safenet.data import ImageDataset
from safenet.evaluate import evaluate_plan
from safenet.nn.surgery import activations
from safenet.plan import compile_model


@pytest.mark.parametrize("name", ["default", "default-approx"])
def test_builtin_metadata(name):
    ck = checkpoint.load(name)
    assert ck.arch == "resnet20" and ck.dataset == "fashion-mnist"
    assert ck.metrics["evaluated_on"] == 10000
    if name == "default":
        assert ck.activation is None
        assert ck.metrics["accuracy"] >= 0.92
    else:
        assert ck.parent == "default"
        base = checkpoint.load("default").metrics["accuracy"]
        # issue 4: the best SAFENet search result within 0.5 point of the ReLU model
        assert ck.metrics["accuracy"] >= base - 0.005
        assert ck.training["search"]["method"] == "safenet"
        assert ck.metrics["relu_channel_fraction"] <= 0.5


def test_default_approx_keeps_few_relus_and_agrees_in_fixed_point(data_dir):
    base = checkpoint.load("default").build()
    ck = checkpoint.load("default-approx")
    model = ck.build()
    assert len(activations(model)) == 19
    ds = ImageDataset("fashion-mnist", "test", data_dir, 200)
    full = compile_model(base, (1, 28, 28)).counts()
    plan = compile_model(model, (1, 28, 28))
    counts = plan.counts()
    assert counts["relu_count"] + counts["poly_count"] == full["relu_count"]
    assert counts["relu_count"] <= 0.25 * full["relu_count"]
    r = evaluate_plan(model, plan, ds, progress=False)
    assert r["overflows"] == 0
    assert r["agreement"] >= 0.98
    assert r["accuracy"] >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "default-approx"])
def test_builtin_full_test_set(name):
    """The issue's must-show on all 10,000 test images (needs `safenet data fetch`)."""
    from safenet.evaluate import evaluate_model

    r = evaluate_model(name, "fashion-mnist", "test", progress=False)
    assert r["images"] == 10000
    assert r["overflows"] == 0
    assert r["agreement"] >= 0.995
    assert r["accuracy"] == pytest.approx(checkpoint.load(name).metrics["accuracy"], abs=3e-4)
    if name == "default":
        assert r["accuracy"] >= 0.92
    else:
        base = checkpoint.load("default").metrics["accuracy"]
        assert r["accuracy"] >= base - 0.01
        assert r["relu_count"] <= 0.5 * (r["relu_count"] + r["poly_count"])

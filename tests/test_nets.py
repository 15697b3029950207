"""Networks written outside the zoo, as users write them (examples/nets.py: a
torchvision-style ResNet-18 with its max-pool stem, VGG-11 with max pooling, MobileNetV2 with
depthwise convolutions and ReLU6): each compiles, runs securely, exact against the reference
(all-ReLU) or within the stated bound op by op (approximated), and is costed."""

import numpy as np
import pytest
import torch

import safenet
from helpers import REPO
from safenet.approx.cost import count
from safenet.benchmark import randomize
from safenet.nn import surgery
from safenet.nn.modelfile import load_builder
from safenet.protocol.session import encode_input

NETS = REPO / "examples" / "nets.py"

SMALL = {  # small widths and inputs keep the suite fast; bench/nets_bench.py runs full ones
    "resnet18": ({"num_classes": 10, "width": 8}, (3, 32, 32)),
    "vgg11": ({"width": 2, "image_size": 32}, (3, 32, 32)),
    "mobilenet_v2": ({"width_mult": 0.25}, (3, 8, 8)),
}


def _net(name: str, relu_ratio: float = 1.0):
    kwargs, shape = SMALL[name]
    torch.manual_seed(0)
    model = randomize(load_builder(f"{NETS}:{name}")(**kwargs), shape, relu_ratio)
    return model, shape


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_max_pool_networks_run_securely_and_exactly(name):
    from test_secure import _secure

    model, shape = _net(name)
    plan = safenet.compile(model, shape)
    kinds = [op.kind for op in plan.ops]
    assert kinds.count("maxpool") == (1 if name == "resnet18" else 5)
    x = np.random.default_rng(0).normal(size=shape)
    y, _, _ = _secure(plan, x)
    assert np.array_equal(y, plan.reference(x, decode=False))
    ref = plan.reference(x)
    fl = model.double()(torch.tensor(x)[None]).detach().numpy()[0]
    assert np.abs(ref - fl).max() < 0.1
    c = count(plan)
    assert c.maxpool_layers == kinds.count("maxpool") and c.ands > 0


def test_mobilenet_v2_is_approximated_and_runs_securely_op_by_op():
    from test_secure import _check_op_by_op, _secure

    model, shape = _net("mobilenet_v2", relu_ratio=0.5)
    acts = surgery.activations(model)
    assert acts and all(a.clip == 6.0 for a in acts.values())
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in model.modules())
    plan = safenet.compile(model, shape)
    assert plan.counts()["poly_count"] > 0 and plan.counts()["relu_count"] > 0
    x = np.random.default_rng(1).normal(size=shape)
    _, srv, cli = _secure(plan, x, keep_trace=True)
    _check_op_by_op(plan, srv, cli, encode_input(plan, x))

"""safenet.nn.zoo: every architecture builds for MNIST- and CIFAR-shaped inputs."""

import pytest
import torch
from torch import fx, nn

from safenet.nn.zoo import ARCHITECTURES, BasicBlock, ResNet, build_model

SMALL_WIDTH = {"resnet20": 4, "resnet32": 4, "resnet56": 2, "vgg16": 2, "minionn": 8, "lenet5": 3}
RELU_SITES = {
    "resnet20": 19,
    "resnet32": 31,
    "resnet56": 55,
    "vgg16": 13,
    "minionn": 7,
    "lenet5": 4,
}


def test_architecture_list():
    assert set(ARCHITECTURES) == set(SMALL_WIDTH)


@pytest.mark.parametrize("shape", [(1, 28), (3, 32)], ids=["mnist", "cifar"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_builds_and_runs(arch, shape):
    in_channels, size = shape
    torch.manual_seed(0)
    model = build_model(
        arch, in_channels=in_channels, image_size=size, num_classes=7, width=SMALL_WIDTH[arch]
    ).eval()
    x = torch.randn(3, in_channels, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    # with batch statistics (fresh eval-mode BN shrinks deep signals) each image gets its own
    # output: the network actually uses its input
    model.train()
    out = model(x)
    assert out.shape == (3, 7)
    assert not torch.allclose(out[0], out[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_each_activation_site_is_its_own_relu_module(arch):
    model = build_model(arch, in_channels=1, image_size=28, width=SMALL_WIDTH[arch])
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == RELU_SITES[arch]
    # every ReLU call in the traced graph goes to a distinct nn.ReLU module
    gm = fx.symbolic_trace(model)
    targets = [
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU)
    ]
    functional = [
        n
        for n in gm.graph.nodes
        if (n.op == "call_function" and "relu" in getattr(n.target, "__name__", ""))
        or (n.op == "call_method" and "relu" in str(n.target))
    ]
    assert not functional
    assert len(targets) == RELU_SITES[arch]
    assert len(set(targets)) == len(targets)


@pytest.mark.parametrize("depth", [4, 19, 21, 33])
def test_resnet_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        ResNet(depth)


@pytest.mark.parametrize("depth,n", [(8, 1), (14, 2), (20, 3)])
def test_resnet_block_count(depth, n):
    model = ResNet(depth, width=2)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 * n
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == depth - 1  # depth counts the 3x3 convolutions plus the linear layer


def test_unknown_architecture_lists_names():
    with pytest.raises(ValueError, match="unknown architecture 'alexnet'") as e:
        build_model("alexnet")
    for name in ARCHITECTURES:
        assert name in str(e.value)


def test_resnet_projection_shortcut_only_where_shape_changes():
    width, n = 4, 3
    model = build_model("resnet20", in_channels=3, width=width)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 * n
    for i, block in enumerate(blocks):
        changes = i in (n, 2 * n)  # first block of stages 2 and 3: stride 2, width doubles
        if changes:
            assert isinstance(block.shortcut, nn.Sequential)
            conv, bn = block.shortcut
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)
            assert conv.in_channels * 2 == conv.out_channels == block.conv1.out_channels
        else:
            assert isinstance(block.shortcut, nn.Identity)
            assert block.conv1.stride == (1, 1)
            assert block.conv1.in_channels == block.conv1.out_channels
    projections = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert len(projections) == 2


def test_basic_block_identity_shortcut_adds_input():
    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()
    for p in block.conv2.parameters():
        nn.init.zeros_(p)  # residual branch -> bn2 bias (zero), so output = relu(x)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))


def test_basic_block_projection_shapes():
    block = BasicBlock(4, 8, stride=2).eval()
    with torch.no_grad():
        assert block(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)


def test_resnet_stage_widths():
    model = ResNet(20, in_channels=1, num_classes=5, width=3)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 3
    assert model.fc.in_features == 12 and model.fc.out_features == 5


def test_lenet5_rejects_tiny_images():
    with pytest.raises(ValueError, match="at least 12"):
        build_model("lenet5", image_size=8)

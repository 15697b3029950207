"""Model zoo: the CNNs that private-inference papers evaluate, sized for any input.

Every builder takes ``in_channels``, ``image_size``, ``num_classes`` and a ``width``
(base channel count), uses one ``nn.ReLU`` module per activation site (so each site can be
approximated on its own) and only ops that :func:`safenet.compile` lowers to a Plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "build_model", "ResNet", "BasicBlock"]


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + shortcut, then relu.

    The shortcut is the identity when shapes match and otherwise a 1x1 strided convolution
    with batch-norm (He et al. 2016, option B). Option B is chosen over the parameter-free
    option A because it lowers to an ordinary convolution in the secure protocol.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2): three stages of ``n`` basic blocks, widths w, 2w, 4w."""

    def __init__(
        self, depth: int, in_channels: int = 3, num_classes: int = 10, width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        planes_in = width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(planes_in, planes, stride))
                planes_in = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(
        in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 16
    ) -> nn.Module:
        del image_size  # global average pooling makes ResNets size-agnostic
        return ResNet(depth, in_channels, num_classes, width)

    build.__doc__ = f"ResNet-{depth} for CIFAR-sized inputs (He et al. 2016, option B)."
    return build


def vgg16(
    in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 64
) -> nn.Module:
    """VGG-16 with batch-norm and 2x2 average pooling in place of max pooling.

    A pooling stage is skipped once the feature map is 1x1, so small images work; a global
    average pool and one linear layer end the network.
    """
    cfg: list[int | str] = [1, 1, "P", 2, 2, "P", 4, 4, 4, "P", 8, 8, 8, "P", 8, 8, 8, "P"]
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for v in cfg:
        if v == "P":
            if size >= 2:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            continue
        out = int(v) * width
        layers += [nn.Conv2d(c, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def minionn(
    in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 64
) -> nn.Module:
    """The CIFAR-10 network of MiniONN (Liu et al. 2017), also used by Delphi.

    Seven convolutions with ReLU, two 2x2 mean-pooling layers and one linear layer.
    """
    w = width
    s = image_size // 4
    small = max(w // 4, 1)

    def cbr(cin: int, cout: int, k: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *cbr(in_channels, w, 3),
        *cbr(w, w, 3),
        nn.AvgPool2d(2),
        *cbr(w, w, 3),
        *cbr(w, w, 3),
        nn.AvgPool2d(2),
        *cbr(w, w, 3),
        *cbr(w, w, 1),
        *cbr(w, small, 1),
        nn.Flatten(),
        nn.Linear(small * s * s, num_classes),
    )


def lenet5(
    in_channels: int = 1, image_size: int = 28, num_classes: int = 10, width: int = 6
) -> nn.Module:
    """A LeNet-5-style network: two 5x5 conv + average-pool stages, three linear layers."""
    c1, c2 = width, round(width * 16 / 6)
    s = ((image_size // 2) - 4) // 2
    if s < 1:
        raise ValueError(f"lenet5 needs images of at least 12 pixels, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, 1, 2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * s * s, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
    "vgg16": vgg16,
    "minionn": minionn,
    "lenet5": lenet5,
}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, e.g. ``build_model("resnet20", in_channels=1)``."""
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    return builder(**kwargs)

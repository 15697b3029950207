"""Three networks defined outside safenet's zoo, as a user would write them: a
torchvision-style ResNet-18 (7x7 stem and max pool), VGG-11 / VGG-16 with max pooling, and a
MobileNetV2 (inverted residuals, depthwise convolutions, ReLU6).

They are plain PyTorch (no torchvision) and double as the example of a model file for
``safenet import --model-def examples/nets.py:resnet18 --weights w.pt ...``: any function that
returns an ``nn.Module`` works, and its keyword arguments come from ``--kwargs``.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs, a 1x1 downsample where shapes change."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 as torchvision builds it (He et al. 2016): conv 7x7/2, max pool 3x3/2,
    four stages of two basic blocks, global average pool, one linear layer."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> nn.Module:
    """torchvision-style ResNet-18 (``width`` 64 is the original)."""
    return ResNet18(num_classes, in_channels, width)


VGG_CFG = {
    "vgg11": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
    "vgg16": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],
}


def _vgg(cfg: list, num_classes: int, in_channels: int, width: int, image_size: int) -> nn.Module:
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            size //= 2
            continue
        out = int(v) * width
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    head = [nn.Flatten(), nn.Linear(c * size * size, 8 * width), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(8 * width, num_classes)]  # fmt: skip
    return nn.Sequential(*layers, *head)


def vgg11(
    num_classes: int = 10, in_channels: int = 3, width: int = 64, image_size: int = 32
) -> nn.Module:
    """VGG-11 with batch-norm and 2x2 max pooling (Simonyan and Zisserman 2015, config A)."""
    return _vgg(VGG_CFG["vgg11"], num_classes, in_channels, width, image_size)


def vgg16(
    num_classes: int = 10, in_channels: int = 3, width: int = 64, image_size: int = 32
) -> nn.Module:
    """VGG-16 with batch-norm and 2x2 max pooling (config D)."""
    return _vgg(VGG_CFG["vgg16"], num_classes, in_channels, width, image_size)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection;
    a residual add when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(True)]
        layers += [
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


#: (expansion, output channels, repeats, first stride) of MobileNetV2 (Sandler et al. 2018)
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip


def mobilenet_v2(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, stem_stride: int = 1
) -> nn.Module:
    """MobileNetV2; ``stem_stride`` 2 is the ImageNet original, 1 suits 32x32 images."""

    def ch(c: int) -> int:
        return max(8, int(c * width_mult + 4) // 8 * 8)

    cin = ch(32)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, cin, 3, stem_stride, 1, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(inplace=True),
    ]
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            layers.append(InvertedResidual(cin, ch(c), s if i == 0 else 1, t))
            cin = ch(c)
    last = ch(1280) if width_mult > 1.0 else 1280
    layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
               nn.Linear(last, num_classes)]  # fmt: skip
    return nn.Sequential(*layers)

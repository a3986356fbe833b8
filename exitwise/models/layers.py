"""Building blocks shared by MSDNet and RANet (post-activation Conv -> BN -> ReLU everywhere)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

STEMS = ("cifar", "half", "imagenet")


class ConvBasic(nn.Sequential):
    """conv (no bias) -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class ConvBN(nn.Sequential):
    """Optional 1x1 bottleneck to min(c_in, width * c_out) channels, then a 3x3 conv (stride 1/2).

    ``down=True`` is the seed's "down" type (stride 2), otherwise "normal".
    """

    def __init__(self, c_in: int, c_out: int, *, down: bool, bottleneck: bool, width: int) -> None:
        layers: list[nn.Module] = []
        inner = c_in
        if bottleneck:
            inner = min(c_in, width * c_out)
            layers += [
                nn.Conv2d(c_in, inner, 1, bias=False),
                nn.BatchNorm2d(inner),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.Conv2d(inner, c_out, 3, stride=2 if down else 1, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


def stem_conv(stem: str, c_in: int, c_out: int) -> nn.Module:
    """The first convolution: 3x3/1 for 32x32 inputs; 7x7/2 (with bias) + max-pool for ImageNet;
    3x3/2 ("half": half the resolution) between the two (see :mod:`exitwise.models.sizing`)."""
    if stem == "cifar":
        return ConvBasic(c_in, c_out, kernel=3, stride=1)
    if stem == "half":
        return ConvBasic(c_in, c_out, kernel=3, stride=2)
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 7, stride=2, padding=3, bias=True),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")


class ClassifierHead(nn.Module):
    """An exit: two 3x3/2 ConvBasic, 2x2 average pooling, flatten, linear.

    ``hidden`` is 128 in the seed's CIFAR classifier and equal to the input width for ImageNet.
    The feature map must be 5..8 pixels wide so that the pooled map is 1x1 (8x8 for 32x32 inputs,
    7x7 for 224x224 ones), as in the seed.
    """

    def __init__(self, c_in: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBasic(c_in, hidden, kernel=3, stride=2),
            ConvBasic(hidden, hidden, kernel=3, stride=2),
            nn.AvgPool2d(2),
        )
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.linear(torch.flatten(self.features(x), 1))
        return out


def init_weights(module: nn.Module) -> None:
    """He-normal (fan-out) for convolutions, BN to identity, zero linear bias.

    This is the initialisation the seed wrote but never applied to MSDNet (its loop only visited
    containers); here it reaches every leaf.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

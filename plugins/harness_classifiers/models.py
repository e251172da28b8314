"""The baseline classifiers (imported only when a suite uses them)."""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.contracts import Classifier


class MLP(Classifier):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, hidden: list[int], **training):
        super().__init__(input_shape, num_classes, **training)
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(Classifier):
    """3x3 convolutions, each block halving the resolution (down to at least 1x1)."""

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, *, channels: list[int], hidden: int, **training
    ):
        super().__init__(input_shape, num_classes, **training)
        blocks: list[nn.Module] = []
        in_channels, (_, height, width) = input_shape[0], input_shape
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU()]
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

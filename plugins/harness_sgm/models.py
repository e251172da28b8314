"""The SGM paper's MNIST networks (Tables 1 and 2). "All layers used batch normalization": every
hidden layer is linear or convolutional, then batch norm, then ReLU (the paper names no
activation); dropout follows every fully connected hidden layer, as the tables place it. The paper
trains with WAME, which torch lacks; the models train with Adam (the core's Classifier)."""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.contracts import Classifier


class DeepNetwork(Classifier):
    """Table 1: fully connected layers of ``hidden`` units, each with batch norm, ReLU and dropout."""

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, *, hidden: list[int], dropout: float, **training
    ):
        super().__init__(input_shape, num_classes, **training)
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvolutionalNetwork(Classifier):
    """Table 2: ``kernel`` x ``kernel`` convolutions without padding (Keras' default), each with
    batch norm, ReLU and 2x2 max-pooling, then ``hidden`` fully connected units with batch norm,
    ReLU and dropout."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: list[int],
        kernel: int,
        hidden: int,
        dropout: float,
        **training,
    ):
        super().__init__(input_shape, num_classes, **training)
        blocks: list[nn.Module] = []
        in_channels, (_, height, width) = input_shape[0], input_shape
        for out_channels in channels:
            height, width = (height - kernel + 1) // 2, (width - kernel + 1) // 2
            if min(height, width) < 1:
                raise ValueError(f"{len(channels)} convolutions of {kernel}x{kernel} do not fit {input_shape}")
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel), nn.BatchNorm2d(out_channels), nn.ReLU(), nn.MaxPool2d(2)
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

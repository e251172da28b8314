"""The paper's MNIST classifier: a fully connected network with batch norm after every hidden layer."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from harness.contracts import Classifier, TrainingSettings


class BatchNormMLP(Classifier):
    """Linear (no bias) - batch norm - ReLU per hidden layer, then a linear output layer, as the
    reference's ``MLPSup`` (784-1200-600-300-150-10) and ``MLPSemi`` (784-1200-1200-10). The
    reference's batch norms have no affine parameters unless asked (``--affine``), and its MNIST
    scripts (``--debug``) draw the weights from N(0, 1 / fan_in) with zero biases. ``output_norm``
    adds a batch norm on the logits, as the official VAT's MNIST network (``takerum/vat``, whose
    batch norms all learn a scale and shift: ``affine``). Adam with the learning rate decayed by
    ``lr_decay`` after every epoch."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        hidden: list[int],
        affine: bool,
        output_norm: bool,
        lr_decay: float,
        **training,
    ):
        super().__init__(input_shape, num_classes, **training)
        self.lr_decay = lr_decay
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out, bias=False), nn.BatchNorm1d(width_out, affine=affine), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes, bias=not output_norm))  # a norm's shift replaces the bias
        if output_norm:
            layers.append(nn.BatchNorm1d(num_classes, affine=affine))
        self.net = nn.Sequential(*layers)
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def training_settings(self) -> TrainingSettings:
        return replace(super().training_settings(), lr_decay=self.lr_decay, lr_decay_epochs=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

"""The example plugin's components.

``uniform-noise`` is a gradient-free baseline: if a model's robust accuracy under random noise is
not clearly above its accuracy under PGD at the same budget, the gradient attack is not working
(or the gradients are masked).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.contracts import Attack, Classifier


class UniformNoise(Attack):
    """Draws ``samples`` points uniformly in the eps ball around each input (clipped to [0, 1]) and
    keeps the first that is misclassified, else the last one."""

    requires = frozenset()  # only predict: works on any model

    def __init__(self, norm: str, samples: int):
        super().__init__(norm)
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        self.samples = samples

    def generate(self, model, x, y, eps, *, generator):
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.samples):
            candidate = (x + self._uniform_ball(x, eps, generator)).clamp(0, 1)
            take = ~fooled
            best[take] = candidate[take]
            fooled |= model.predict(candidate) != y
        return best

    def _uniform_ball(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        if self.norm == "linf":
            return (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
        # l2: a uniform direction, and a radius with density proportional to r^(d-1)
        direction = torch.randn(x.shape, generator=generator, device=x.device).flatten(1)
        direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        dims = direction.shape[1]
        radius = eps * torch.rand(len(x), 1, generator=generator, device=x.device) ** (1 / dims)
        # clipping to [0, 1] afterwards only shortens the perturbation
        return (direction * radius * (1 - 1e-6)).view_as(x)


class LogisticRegression(Classifier):
    def __init__(self, input_shape, num_classes, **training):
        super().__init__(input_shape, num_classes, **training)
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))

"""Multiplicative perturbations: the hard-concrete mask (Louizos et al.), its L0 term, and the two
ways of producing its log-alpha (a small generator network, or one tensor per training example).

Facts from the reference code (``sndnyang/xvat``, ``Loss/L0Layer.py``) that the paper leaves out:
the mask is (B, 1, H, W), broadcast over channels; the perturbed input is ``eps * x * z`` on MNIST
centred at 0.5 (``x - 0.5``), which in [0, 1] pixels is ``center + eps * (x - center) * z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SAFE = 1e-10
"""Keeps the logs of the uniform noise finite (the reference's constant)."""


@dataclass(frozen=True)
class HardConcrete:
    """The stretched, clipped binary-concrete distribution: ``gamma < 0 < 1 < zeta`` stretch a
    sigmoid of temperature ``beta`` so that the clipped mask is exactly 0 or 1 with positive
    probability."""

    gamma: float = -0.1
    zeta: float = 1.1
    beta: float = 0.66

    def __post_init__(self) -> None:
        if not (self.gamma < 0.0 and self.zeta > 1.0 and self.beta > 0.0):
            raise ValueError(f"hard concrete needs gamma < 0, zeta > 1 and beta > 0, got {self}")

    def sample(self, log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A mask in [0, 1] drawn with the reparameterisation, differentiable in ``log_alpha``."""
        u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
        logistic = torch.log(u + SAFE) - torch.log(1 - u + SAFE)
        return self._stretched(torch.sigmoid((logistic + log_alpha) / self.beta))

    def mode(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The noise-free mask (the reference's evaluation mask)."""
        return self._stretched(torch.sigmoid(log_alpha / self.beta))

    def l0(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The expected fraction of non-zero mask entries, P(z != 0), averaged (Eq. 12's sum / P)."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.gamma / self.zeta)).mean()

    def _stretched(self, s: torch.Tensor) -> torch.Tensor:
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, eps: float, center: float) -> torch.Tensor:
    """``center + eps * (x - center) * mask``; a (B, 1, H, W) mask covers every channel."""
    return center + eps * (x - center) * mask


class MaskGenerator(nn.Module):
    """The inductive generator (the reference's ``CNN1l``): replication padding and one 3x3
    convolution from the image's channels to one log-alpha map, its bias starting at zero."""

    def __init__(self, channels: int):
        super().__init__()
        self.pad = nn.ReplicationPad2d(1)
        self.conv = nn.Conv2d(channels, 1, 3)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ExampleLogAlpha(nn.Module):
    """The transductive form: one log-alpha map per training example, drawn from N(0, 1) as the
    reference does (its std is the ``alpha`` flag, 1), looked up by the examples' indices."""

    def __init__(self, count: int, height: int, width: int, generator: torch.Generator):
        super().__init__()
        self.table = nn.Parameter(torch.randn(count, 1, height, width, generator=generator))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index.to(self.table.device)]

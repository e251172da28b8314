"""Seconds per training epoch, as the defenses of this plugin measured them (one of the paper's claims)."""

from __future__ import annotations

import torch

from harness.contracts import Model, ModelMetric
from harness_xvat.loop import CLOCK


class SecondsPerEpoch(ModelMetric):
    """The mean wall time of the shared loop's epochs while the model trained (the perturbations,
    forward and backward passes and optimiser steps; not the evaluation). It travels with the
    cached model, so a reloaded model reports the time of the run that trained it. Models trained
    by another plugin's defense have no clock: their column is empty."""

    requires = frozenset({CLOCK})

    def evaluate(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(getattr(model, CLOCK)())

"""The paper's measures: the AUDDC of the latent and output attacks (Table 2) and, per trained
autoencoder, the reconstruction loss and the size of its input gradient (Table 1), with the
encoder's own sensitivity beside it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from harness.contracts import CellOutcome, Model, ModelMetric, SweepMetric
from harness_dbp.models import ENCODE, RECONSTRUCT

STATISTICS = ("mean", "median")


def auddc(input_distortion: np.ndarray, output_distortion: np.ndarray) -> float:
    """The area under one distortion-distortion curve, as the reference computes it: the points
    with input distortion in [0, 1], sorted, then (max x, min y) and (1, min y) appended; the
    trapezoid rule, no point added at x = 0. Higher: the attack needs more input distortion."""
    from sklearn.metrics import auc

    keep = (input_distortion >= 0) & (input_distortion <= 1) & np.isfinite(output_distortion)
    x, y = input_distortion[keep], output_distortion[keep]
    if len(x) == 0:
        return float("nan")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    x = np.append(x, [x.max(), 1.0])
    y = np.append(y, [y.min(), y.min()])
    return float(auc(x, y))


class AUDDC(SweepMetric):
    """The AUDDC over the attack's (source, target) pairs whose curve is defined (empty for other
    attacks): their mean, as the reference reports it, or their median. The normalised output
    distortion divides by how much farther the source's reconstruction is from the target than
    the target's own; for a model whose reconstructions are all blurred that gap is small, a pair
    can give a large negative area, and the median is the stabler summary."""

    requires = frozenset({ENCODE, RECONSTRUCT})

    def __init__(self, statistic: str = "mean"):
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic '{statistic}' (known: {', '.join(STATISTICS)})")
        self.statistic = statistic

    def evaluate(self, model: Model, outcomes: Sequence[CellOutcome]) -> float:
        outcome = outcomes[0]
        if "input_distortion" not in outcome.extras:
            return float("nan")  # defined for the autoencoder attacks only
        inputs = outcome.extras["input_distortion"].double().numpy()
        outputs = outcome.extras["output_distortion"].double().numpy()
        attacked = ~np.isnan(inputs).all(axis=1)
        areas = np.array([auddc(i, o) for i, o in zip(inputs[attacked], outputs[attacked])])
        # A pair whose curve is undefined (the model reconstructs source and target equally far
        # from the target) does not count; none defined: no value.
        if not np.isfinite(areas).any():
            return float("nan")
        return float(np.nanmedian(areas) if self.statistic == "median" else np.nanmean(areas))


class ReconstructionLoss(ModelMetric):
    """The Bernoulli negative log-likelihood of the test images per pixel, decoded from the
    encoder means."""

    requires = frozenset({ENCODE, RECONSTRUCT})

    def evaluate(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            _, _, logits = model.run(x, sample=False)  # type: ignore[attr-defined]
            return float(model.reconstruction_loss(logits, x).mean() / logits.shape[1])  # type: ignore[attr-defined]


class ReconstructionGradient(ModelMetric):
    """The mean L2 norm of the reconstruction loss's input gradient through the network (the
    target held fixed), decoded from the encoder means: the quantity DBP penalises, and our reading
    of the paper's Table 1 "magnitude of gradient dx'/dx"."""

    requires = frozenset({ENCODE, RECONSTRUCT})

    def evaluate(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> float:
        *_, gradient = model.reconstruction_gradient(x, sample=False, create_graph=False)  # type: ignore[attr-defined]
        return float(gradient.norm(dim=1).mean())


class EncoderGradient(ModelMetric):
    """The mean Frobenius norm of the encoder mean's Jacobian d(mu)/dx: how far a small input change
    moves the code the GMM head classifies, whatever the decoder does."""

    requires = frozenset({ENCODE})

    def evaluate(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(encoder_jacobian_norms(model, x).mean())


def encoder_jacobian_norms(model: Model, x: torch.Tensor) -> torch.Tensor:
    """||d(mu)/dx||_F per image (B,), one backward pass per latent dimension (each image's mean
    depends on its own input only, so the batch's sum gives every image's row at once)."""
    x = x.detach().clone().requires_grad_(True)
    mean, _ = model.encode(x)  # type: ignore[attr-defined]
    squares = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for dimension in range(mean.shape[1]):
        (row,) = torch.autograd.grad(mean[:, dimension].sum(), x, retain_graph=dimension + 1 < mean.shape[1])
        squares += row.flatten(1).square().sum(dim=1)
    return squares.sqrt()

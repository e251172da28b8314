"""A plugin used by the tests (loaded with ``-p harness_testplugin``), registering components that
exercise the runner's paths: a model without logits, an attack that raises, a metric."""

from __future__ import annotations

import torch

from harness.contracts import Attack, Dataset, Metric, Model, TrainContext
from harness.hookspecs import hookimpl

EVENTS: list[tuple[str, str]] = []


class NearestCentroid(Model):
    """A real classifier with no differentiable logits: gradient attacks do not apply to it."""

    capabilities = frozenset()

    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes)
        self.register_buffer("centroids", torch.zeros(num_classes, *input_shape))

    def fit(self, data: Dataset, ctx: TrainContext) -> None:
        for label in range(self.num_classes):
            self.centroids[label] = data.x_train[data.y_train == label].mean(dim=0)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(x.flatten(1), self.centroids.flatten(1).to(x.device))
        return distances.argmin(dim=1)


class Exploding(Attack):
    def perturb(self, model, x, y, eps):
        raise RuntimeError("kaboom\nsecond line")


class FgsmLineSearch(Attack):
    """Minimal-norm: the smallest Linf step along the gradient sign (on a grid) that flips the label."""

    minimal_norm = True
    runs = 0

    def perturb(self, model, x, y, eps):
        assert eps is None
        FgsmLineSearch.runs += 1
        x_var = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model.logits(x_var), y)
        (direction,) = torch.autograd.grad(loss, x_var)
        best = x.clone()
        found = torch.zeros(len(x), dtype=torch.bool)
        for step in torch.linspace(0.01, 1.0, 100):
            candidate = (x + step * direction.sign()).clamp(0, 1)
            with torch.no_grad():
                flipped = (model.logits(candidate).argmax(1) != y) & ~found
            best[flipped] = candidate[flipped]
            found |= flipped
        return best


class MeanAbsolutePerturbation(Metric):
    def compute(self, model, x, y, x_adv) -> float:
        return (x_adv - x).abs().mean().item()


@hookimpl
def register_models(register):
    register("centroid", NearestCentroid, description="nearest class centroid (no logits)")


@hookimpl
def register_attacks(register):
    register("exploding", Exploding, params={"norm": "linf"}, description="raises")
    register("linesearch", FgsmLineSearch, params={"norm": "linf"}, description="minimal-norm line search")


@hookimpl
def register_metrics(register):
    register("mean_abs_delta", MeanAbsolutePerturbation)


@hookimpl
def cell_started(cell):
    EVENTS.append(("started", cell.cell_id))


@hookimpl
def cell_finished(cell, row):
    EVENTS.append(("finished", row["status"]))

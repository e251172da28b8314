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


class MeanAbsolutePerturbation(Metric):
    def compute(self, model, x, y, x_adv) -> float:
        return (x_adv - x).abs().mean().item()


@hookimpl
def register_models(register):
    register("centroid", NearestCentroid, description="nearest class centroid (no logits)")


@hookimpl
def register_attacks(register):
    register("exploding", Exploding, params={"norm": "linf"}, description="raises")


@hookimpl
def register_metrics(register):
    register("mean_abs_delta", MeanAbsolutePerturbation)


@hookimpl
def cell_started(cell):
    EVENTS.append(("started", cell.cell_id))


@hookimpl
def cell_finished(cell, row):
    EVENTS.append(("finished", row["status"]))

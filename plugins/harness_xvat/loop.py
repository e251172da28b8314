"""What every defense of this plugin adds to the shared loop: a label budget (semi-supervised
training) and an epoch clock (seconds per epoch, one of the paper's claims).

With ``labels = N > 0`` only N training labels are kept: a class-balanced choice fixed by the
seed, so every defense of a seed sees the same labels. An epoch is then one pass over the whole
training pool in ``unlabeled_batch_size`` batches (the unlabelled data of VAT and xVAT, labelled
examples included, as the reference keeps them); each step also draws ``labeled_batch_size`` of
the N labelled examples, cycling through them in a fresh order each round, and the model's own
loss sees only those. Every defense thus takes the same number of optimiser steps whatever data its
regulariser uses. ``epochs`` (passes over the pool) overrides the model's, so that one suite can
train its semi-supervised entries longer than its supervised ones.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import nn

from harness.contracts import Batch, Dataset, Model, TrainContext, TrainingLoopDefense, TrainingState
from harness_xvat.divergence import reestimate_batch_stats

CLOCK = "epoch_clock"
"""The capability of a model trained by a defense of this plugin: ``model.epoch_clock()`` is the
mean seconds per epoch of its training (an :class:`EpochClock` the defense adds)."""


class EpochClock(nn.Module):
    """Holds the mean epoch time in the model's state dict, so that it travels with the cached model."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seconds", torch.zeros((), dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return self.seconds


def balanced_labels(y: torch.Tensor, count: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``count`` examples of ``y``: ``count // num_classes`` per class, the
    remainder one more for classes drawn at random, all drawn with ``seed``."""
    if count < num_classes:
        raise ValueError(f"labels must be at least the number of classes ({num_classes}), got {count}")
    generator = torch.Generator().manual_seed(seed)
    per_class, remainder = divmod(count, num_classes)
    favoured = set(torch.randperm(num_classes, generator=generator)[:remainder].tolist())
    chosen = []
    for label in range(num_classes):
        members = (y == label).nonzero().flatten()
        wanted = per_class + (label in favoured)
        if len(members) < wanted:
            raise ValueError(f"labels={count} needs {wanted} examples of class {label}, the split has {len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
    return torch.cat(chosen).sort().values


class PerturbationDefense(TrainingLoopDefense):
    """The label budget, the epoch count and the epoch clock; a subclass writes :meth:`regularise`.

    ``labeled`` is the batch the model's loss saw (the labelled draw), ``unlabeled`` the pool's
    batch (the same batch when every label is kept).
    """

    def __init__(
        self, *, labels: int, labeled_batch_size: int, unlabeled_batch_size: int, epochs: int | None, batch_stats: str
    ):
        if labels < 0 or labeled_batch_size < 1 or unlabeled_batch_size < 1:
            raise ValueError("labels must be at least 0 (0: keep all) and the batch sizes at least 1")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be at least 1 (or unset: the model's), got {epochs}")
        if batch_stats not in ("pool", "running"):
            raise ValueError(f"batch_stats must be 'pool' or 'running', got '{batch_stats}'")
        self.batch_stats = batch_stats
        self.labels = labels
        self.epochs = epochs
        self.labeled_batch_size = labeled_batch_size
        self.unlabeled_batch_size = unlabeled_batch_size

    def regularise(self, state: TrainingState, labeled: Batch, unlabeled: Batch, loss: torch.Tensor) -> torch.Tensor:
        """The loss to minimise, given the model's own ``loss`` on ``labeled``."""
        return loss

    def prepare(self, model: Model) -> Model:
        model.add_module(CLOCK, EpochClock())
        model.capabilities = model.capabilities | {CLOCK}
        return model

    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        settings = model.training_settings()
        if self.epochs is not None:
            settings = replace(settings, epochs=self.epochs)
        if self.labels:
            settings = replace(settings, batch_size=self.unlabeled_batch_size)
        ctx.fit(model, data, hooks=[self], settings=settings)
        return model

    def training_started(self, state: TrainingState) -> None:
        self.epoch_seconds: list[float] = []
        self.random = torch.Generator(device=state.ctx.device).manual_seed(state.ctx.seed)
        self.labeled_pool = None
        if self.labels:
            self.labeled_pool = balanced_labels(state.y_train, self.labels, state.data.num_classes, state.ctx.seed)
            self.label_order = torch.Generator().manual_seed(state.ctx.seed)
            self.queue = torch.empty(0, dtype=torch.int64)

    def epoch_started(self, state: TrainingState) -> None:
        self._synchronise(state)
        self.epoch_began = time.perf_counter()

    def epoch_finished(self, state: TrainingState) -> None:
        self._synchronise(state)
        self.epoch_seconds.append(time.perf_counter() - self.epoch_began)

    def training_finished(self, state: TrainingState) -> None:
        seconds = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else 0.0
        getattr(state.model, CLOCK).seconds.fill_(seconds)
        if self.batch_stats == "pool":
            reestimate_batch_stats(state.model, state.model.predict, state.x_train, state.settings.batch_size)

    def prepare_batch(self, state: TrainingState, batch: Batch) -> Batch:
        self.unlabeled = batch
        if self.labeled_pool is None:
            return batch
        index = self._next_labeled()
        return Batch(state.x_train[index].to(state.ctx.device), state.y_train[index].to(state.ctx.device), index)

    def extend_loss(self, state: TrainingState, batch: Batch, loss: torch.Tensor) -> torch.Tensor:
        return self.regularise(state, batch, self.unlabeled, loss)

    def _next_labeled(self) -> torch.Tensor:
        """The next labelled batch: a fresh order of the kept labels each time the last runs out."""
        size = min(self.labeled_batch_size, len(self.labeled_pool))
        if len(self.queue) < size:
            order = self.labeled_pool[torch.randperm(len(self.labeled_pool), generator=self.label_order)]
            self.queue = torch.cat([self.queue, order])
        index, self.queue = self.queue[:size], self.queue[size:]
        return index

    @staticmethod
    def _synchronise(state: TrainingState) -> None:
        if state.ctx.device.type == "cuda":
            torch.cuda.synchronize(state.ctx.device)

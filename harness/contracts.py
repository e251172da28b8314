"""The contracts every dataset, model, defense, attack and metric plugin implements.

Capabilities are plain strings. A model declares the ones it has; attacks, defenses and metrics
declare the ones they require, and the runner writes a cell as ``skipped`` when one is missing.
The shipped names are in :data:`CAPABILITIES`; plugins may define their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

LOGITS = "logits"
"""``model.logits(x)``: differentiable class scores (B, num_classes)."""
CAPSULE_PRESENCES = "capsule_presences"
"""``model.capsule_presences(x)``: differentiable object-capsule presences (B, K)."""
LATENT = "latent"
"""``model.encode(x)``: a differentiable latent code (B, D)."""
RECONSTRUCTION = "reconstruction"
"""``model.reconstruct(x)``: a differentiable reconstruction shaped like ``x``."""
CAPABILITIES = {
    LOGITS: "differentiable class logits: model.logits(x)",
    CAPSULE_PRESENCES: "object-capsule presences: model.capsule_presences(x)",
    LATENT: "latent encoding: model.encode(x)",
    RECONSTRUCTION: "reconstruction: model.reconstruct(x)",
}

NORMS = ("linf", "l2", "l1", "l0")


@dataclass(frozen=True)
class Dataset:
    """Train and test images (N, C, H, W) as float32 in [0, 1] with int64 labels in [0, num_classes)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 4 or x.dtype != torch.float32:
                raise ValueError(f"{self.name}: x_{split} must be float32 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.shape != (x.shape[0],) or y.dtype != torch.int64:
                raise ValueError(f"{self.name}: y_{split} must be int64 ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
            if x.numel() and (x.min() < 0 or x.max() > 1):
                raise ValueError(f"{self.name}: x_{split} values must lie in [0, 1]")
            if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"{self.name}: y_{split} labels must lie in [0, {self.num_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (c, h, w)


@dataclass
class TrainContext:
    """What the runner hands to a model's or a defense's training.

    ``progress(iterable, description)`` wraps a loop in a progress bar. ``build_attack(spec)``
    builds an attack from a suite-style table (``{name = "pgd", norm = "linf", ...}``), for
    adversarial training. ``teacher()`` returns the same model trained without defense (cached by
    the runner), for distillation.
    """

    seed: int
    device: torch.device
    progress: Callable[[Iterable[Any], str], Iterable[Any]]
    build_attack: Callable[[Mapping[str, Any]], Attack]
    teacher: Callable[[], Model]


class Model(nn.Module, ABC):
    """A trainable model built from a dataset's shape.

    The factory receives ``input_shape``, ``num_classes`` and the suite's parameters. ``fit`` is
    the model's standard training (cross-entropy for a classifier, an ELBO for a VAE ...).
    Everything ``predict`` needs must live in the state dict (buffers included), because trained
    models are cached as state dicts.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    @abstractmethod
    def fit(self, data: Dataset, ctx: TrainContext) -> None:
        """Train in place with the model's standard objective."""

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (B,) int64 for inputs (B, C, H, W)."""

    def has(self, capability: str) -> bool:
        return capability in self.capabilities


class Classifier(Model):
    """A model whose forward pass gives class logits; ``predict`` is their argmax.

    Its standard training minimises the cross-entropy with Adam.
    """

    capabilities = frozenset({LOGITS})

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float = 0.0,
    ):
        super().__init__(input_shape, num_classes)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay

    def fit(self, data: Dataset, ctx: TrainContext) -> None:
        from harness.training import fit_minibatches

        fit_minibatches(
            self,
            data,
            ctx,
            lambda model, x, y: nn.functional.cross_entropy(model(x), y),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            description=f"train {type(self).__name__}",
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)


class Defense(ABC):
    """A training recipe: turns an untrained model into a trained one.

    ``requires`` names the model capabilities the recipe uses; a model without them gives
    ``skipped`` cells.
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        """Train ``model`` (it arrives untrained) and return the trained model."""


@dataclass(frozen=True)
class AttackResult:
    x_adv: torch.Tensor
    norms: torch.Tensor
    """Per-sample perturbation size in the attack's norm, (B,)."""


class Attack(ABC):
    """An evasion attack under a threat model (``norm`` and a budget ``eps``).

    A budgeted attack runs once per eps. A minimal-norm attack (``minimal_norm = True``) runs once
    with ``eps=None`` and the runner derives the robust accuracy at every eps of the suite from the
    per-sample norms: a sample counts as broken at eps when its norm is at most eps and it is
    misclassified. Attacks must not modify their input and must return images in [0, 1].
    """

    requires: ClassVar[frozenset[str]] = frozenset({LOGITS})
    minimal_norm: ClassVar[bool] = False

    def __init__(self, norm: str = "linf"):
        self.norm = norm

    @abstractmethod
    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> torch.Tensor:
        """Adversarial versions of ``x`` (same shape, dtype and device)."""

    def perturbation_norms(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample size of ``delta`` in this attack's norm; override for a plugin-defined norm."""
        return perturbation_norms(delta, self.norm)

    def run(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> AttackResult:
        """Attack with the model's parameters frozen: only input gradients are computed."""
        with frozen(model):
            x_adv = self.perturb(model, x, y, eps)
        if x_adv.shape != x.shape:
            raise ValueError(f"{type(self).__name__} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
        return AttackResult(x_adv, self.perturbation_norms(x_adv - x))


class Metric(ABC):
    """An extra leaderboard column, computed for every ``ok`` cell whose model has ``requires``.

    ``x_adv`` is the cell's adversarial batch (for a minimal-norm attack, the adversarial examples
    within the cell's eps, the clean inputs elsewhere).
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def compute(self, model: Model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
        """The metric's value for this cell."""


def perturbation_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``norm`` of a batch of perturbations (B, ...)."""
    flat = delta.detach().flatten(1).double()
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    if norm == "l0":
        return (flat != 0).sum(dim=1).double()
    raise ValueError(f"unknown norm '{norm}' (known: {', '.join(NORMS)}); override perturbation_norms")


class StandardTraining(Defense):
    """No defense: the model's own standard training (the ``none`` defense)."""

    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        model.fit(data, ctx)
        return model


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Turn off parameter gradients inside the block and restore them after."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)

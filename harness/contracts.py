"""The contracts every dataset, model, defense, attack and metric plugin implements.

Capabilities are an open set of names: a capability is the name of a model method (``logits``,
``loss``, or a plugin's own, such as ``encode``). A model lists the ones it has;
attacks, defenses and metrics list the ones they call, and the runner writes a cell as
``skipped`` when one is missing. The contract kit fails an attack that calls a capability it did
not declare, whatever its name.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from harness.leaderboard import BUDGET_TOLERANCE, over_budget

LOGITS = "logits"
"""``model.logits(x)``: differentiable class scores (B, num_classes)."""
LOSS = "loss"
"""``model.loss(x, y, state)`` and ``model.training_settings()``: the model's own training
objective, so that a defense can reuse the shared training loop (:class:`TrainingLoopDefense`)."""

NORMS = ("linf", "l2", "l1", "l0")


@dataclass(frozen=True)
class Dataset:
    """Train and test images as torch tensors: (N, C, H, W) float32 in [0, 1], int64 labels in
    [0, num_classes)."""

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


# --- training ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings:
    """How a model trains in the shared loop: what a defense reads, and may change with
    ``dataclasses.replace`` (e.g. more epochs)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "Adam"
    """The name of a ``torch.optim`` class (``Adam``, ``SGD``, ``RMSprop`` ...), or ``"module:Class"``
    for another ``torch.optim.Optimizer``."""
    optimizer_options: Mapping[str, Any] = field(default_factory=dict)
    """Further keyword arguments of the optimiser (``weight_decay``, ``momentum``, ``eps`` ...)."""
    lr_decay: float = 1.0
    """Multiply the learning rate by this every ``lr_decay_steps`` optimiser steps."""
    lr_decay_steps: int = 0
    """0: a constant learning rate."""
    lr_decay_epochs: int = 0
    """Or multiply it by ``lr_decay`` every this many epochs instead (give one of the two)."""
    clip_grad_norm: float = 0.0
    """Rescale the gradients to at most this global L2 norm before each step (0: no clipping)."""
    clip_grad_value: float = 0.0
    """Then clip each gradient entry to [-value, value] (0: no clipping)."""


@dataclass(frozen=True)
class Batch:
    """One minibatch of the shared loop; ``index`` locates its samples in ``state.x_train``.

    ``target`` is what a reconstruction objective should reproduce when it is not ``x`` itself:
    adversarial training of an autoencoder feeds adversarial inputs and keeps the clean ones here.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    target: torch.Tensor | None = None


@dataclass
class TrainingState:
    """The shared loop's state, passed to the model's loss and to every hook.

    ``x_train`` and ``y_train`` are the training split the loop draws its batches from (on the
    CPU). They start as the dataset's own tensors: a hook replaces them (keep some labels, or
    ``state.x_train = state.x_train.clone()`` before moving the inputs in place between epochs),
    never modifies them in place, so the dataset stays as it was for the other cells.
    """

    model: Model
    data: Dataset
    ctx: TrainContext
    settings: TrainingSettings
    optimizer: torch.optim.Optimizer
    x_train: torch.Tensor
    y_train: torch.Tensor
    epoch: int = 0
    step: int = 0
    batch: Batch | None = None
    """The batch of the current step, as ``prepare_batch`` left it (the model's loss may read its
    ``target``)."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """What the model's loss shares with the hooks on the current step (e.g. its encoding, for a
    distillation term in ``extend_loss``); emptied before each step."""


class TrainingHooks:
    """Where a defense joins the shared training loop. Every method does nothing by default.

    Per epoch the loop calls ``epoch_started``; then for each shuffled minibatch
    ``prepare_batch`` (may return another batch, e.g. adversarial inputs), the model's loss,
    ``extend_loss`` (may add a term) and one optimiser step; then ``epoch_finished``.
    """

    def training_started(self, state: TrainingState) -> None:
        """Before the first epoch."""

    def epoch_started(self, state: TrainingState) -> None:
        """Before each epoch (``state.epoch`` counts from 0)."""

    def prepare_batch(self, state: TrainingState, batch: Batch) -> Batch:
        """The batch the model trains on."""
        return batch

    def extend_loss(self, state: TrainingState, batch: Batch, loss: torch.Tensor) -> torch.Tensor:
        """The loss the optimiser minimises, given the model's loss on ``batch``."""
        return loss

    def epoch_finished(self, state: TrainingState) -> None:
        """After each epoch, e.g. to update ``state.x_train``."""

    def training_finished(self, state: TrainingState) -> None:
        """After the last epoch."""

    def state_dict(self) -> dict[str, Any]:
        """What the hook changes as training goes on (tensors, numbers, strings, in dicts and
        lists), saved with the loop's checkpoints so that a resumed training goes on the same.
        What ``training_started`` builds again is not needed."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, after ``training_started``."""


@dataclass
class TrainContext:
    """What the runner hands to a model's or a defense's training.

    ``fit(model, data, hooks=[...], settings=None)`` runs the shared minibatch loop
    (:func:`harness.training.fit`). ``progress(iterable, description)`` wraps a loop in a progress bar. ``build_attack(table)``
    builds an attack from a suite-style table (``{name = "pgd", norm = "linf", eps = 0.3}``) as a
    :class:`TrainingAttack`, for adversarial training. ``teacher()`` returns the same model trained
    without defense (cached by the runner; it leaves the caller's random streams untouched), for
    distillation.
    """

    seed: int
    device: torch.device
    progress: Callable[[Iterable[Any], str], Iterable[Any]]
    build_attack: Callable[[Mapping[str, Any]], TrainingAttack]
    teacher: Callable[[], Model]
    loop: Callable[..., None]
    """The shared loop, ``loop(model, data, ctx, hooks, settings)``; call it through :meth:`fit`."""

    def fit(
        self,
        model: Model,
        data: Dataset,
        hooks: Sequence[TrainingHooks] = (),
        settings: TrainingSettings | None = None,
    ) -> None:
        """Train ``model`` in place with the shared loop: its own loss and settings (or ``settings``),
        shuffled minibatches of the train split, and ``hooks`` called at each step."""
        self.loop(model, data, self, hooks, settings)


# --- models -----------------------------------------------------------------------------------


class Model(nn.Module, ABC):
    """A trainable model built from a dataset's shape.

    The factory receives ``input_shape``, ``num_classes`` and the suite's parameters. Everything
    ``predict`` needs must live in the state dict (buffers included): trained models are cached as
    state dicts and loaded into a fresh instance.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()
    stochastic: ClassVar[bool] = False
    """True if ``predict`` draws random numbers (a VAE samples its latent): the runner averages
    accuracies over the suite's ``draws`` and the contract kit checks reproducibility under a seed
    instead of determinism."""
    pretrained: ClassVar[bool] = False
    """True for a model loaded ready-trained (a checkpoint): its ``fit`` does nothing, and a suite
    that gives it a defense that trains (:attr:`Defense.trains`) is refused before anything runs."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    def fit(self, data: Dataset, ctx: TrainContext) -> None:
        """The model's standard training: the shared loop over :meth:`loss`. Override it for a model
        that trains otherwise (a closed form, k-means)."""
        ctx.fit(self, data)

    def training_settings(self) -> TrainingSettings:
        """Epochs, batch size and optimiser of the model's standard training (capability ``loss``)."""
        raise NotImplementedError(f"{type(self).__name__} has no training_settings(); override fit() or add it")

    def loss(self, x: torch.Tensor, y: torch.Tensor, state: TrainingState) -> torch.Tensor:
        """The training objective on one batch (capability ``loss``); an unsupervised model ignores ``y``."""
        raise NotImplementedError(f"{type(self).__name__} has no loss(); override fit() or add it")

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (B,) int64 for inputs (B, C, H, W)."""

    def fit_head(self, data: Dataset, ctx: TrainContext) -> None:
        """Fit the evaluation head (e.g. k-means on the training split) on the trained backbone.

        Called after training and after loading a cached backbone. Keep what it fits in
        :meth:`head_modules`: the runner caches their state apart from the backbone, so an entry
        that differs only in an evaluation parameter (registered with ``evaluation_params``)
        reuses the trained backbone and fits its head once.
        """

    def head_modules(self) -> list[nn.Module]:
        """The submodules whose state :meth:`fit_head` sets (default: none)."""
        return []

    def has(self, capability: str) -> bool:
        return capability in self.capabilities


class Classifier(Model):
    """A model whose forward pass gives class logits; ``predict`` is their argmax.

    Its standard training minimises the cross-entropy with Adam in the shared loop. The training
    settings are keyword-only: ``Classifier.__init__(input_shape, num_classes, *, epochs,
    batch_size, lr, weight_decay=0.0)``.
    """

    capabilities = frozenset({LOGITS, LOSS})

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

    def training_settings(self) -> TrainingSettings:
        return TrainingSettings(
            self.epochs, self.batch_size, self.lr, "Adam", {"weight_decay": self.weight_decay}
        )

    def loss(self, x: torch.Tensor, y: torch.Tensor, state: TrainingState) -> torch.Tensor:
        return nn.functional.cross_entropy(self.logits(x), y)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)


# --- defenses ---------------------------------------------------------------------------------


class Defense(ABC):
    """A training recipe: turns an untrained model into a trained one.

    ``requires`` names the model capabilities the recipe uses; a model without them gives
    ``skipped`` cells.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    trains: ClassVar[bool] = True
    """False for a defense that leaves the weights to the model's own ``fit`` (``none``) or acts
    only at evaluation (a wrapper around the trained model): the ones a checkpoint accepts."""

    def prepare(self, model: Model) -> Model:
        """The untrained model this defense trains and returns. A defense that adds or wraps
        modules (a student network, a learned input transform) builds them here, so that a cached
        state dict loads into the same structure. Default: ``model`` itself."""
        return model

    @abstractmethod
    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        """Train ``model`` (what :meth:`prepare` returned, untrained) and return it trained."""


class StandardTraining(Defense):
    """No defense: the model's own standard training (the ``none`` defense)."""

    trains = False

    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        model.fit(data, ctx)
        return model


class TrainingLoopDefense(Defense, TrainingHooks):
    """A defense written once for every model with the ``loss`` capability: it joins the model's
    own training loop through the :class:`TrainingHooks` it overrides."""

    requires = frozenset({LOSS})

    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        ctx.fit(model, data, hooks=[self])
        return model


# --- attacks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackOutcome:
    """What an attack returns for a batch.

    ``norms`` is the per-sample perturbation size in the attack's norm: measured by the harness
    (leave it ``None`` when returning an outcome). ``extras`` are per-sample values (B,) such as a
    target class or a damage measure; ``scalars`` are per-run numbers (averaged over batches,
    weighted by batch size, and written as ``metric_<name>`` columns).
    """

    x_adv: torch.Tensor
    norms: torch.Tensor | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    scalars: Mapping[str, float] = field(default_factory=dict)


class Attack(ABC):
    """An evasion attack under a threat model (``norm`` and a budget ``eps``).

    A budgeted attack runs once per eps. A minimal-norm attack (``minimal_norm = True``) runs once
    with ``eps=None`` and the runner derives the robust accuracy at every eps of the suite (``inf``
    included) from the per-sample norms: a sample counts as broken at eps when its norm is at most
    eps and it is misclassified. Attacks must not modify their input and must return images in
    [0, 1]; the runner rejects a batch outside its budget.
    """

    requires: ClassVar[frozenset[str]] = frozenset({LOGITS})
    minimal_norm: ClassVar[bool] = False
    access: ClassVar[str] = "white-box"
    """How the attack reaches the model: ``white-box`` (its gradients), ``black-box`` (its scores
    or labels only) or ``transfer`` (another model's gradients). The ``weaker-white-box`` check
    compares them (see :mod:`harness.review`)."""
    eot: bool = False
    """True if the attack averages a randomized model's gradients over draws (expectation over
    transformation); the ``randomized-without-eot`` check reads it. May be set per instance."""

    def __init__(self, norm: str = "linf"):
        self.norm = norm

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "perturb" in cls.__dict__ and "generate" not in cls.__dict__:
            warnings.warn(
                f"{cls.__qualname__}.perturb(model, x, y, eps) is deprecated: implement "
                "generate(model, x, y, eps, *, generator), which gets its random generator explicitly",
                DeprecationWarning,
                stacklevel=3,
            )

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> AttackOutcome | torch.Tensor:
        """Adversarial versions of ``x`` (same shape, dtype and device), or an :class:`AttackOutcome`.

        Runs with gradients enabled and the model's parameters frozen (only input gradients are
        computed); the model's train/eval mode is restored afterwards. Draw random numbers from
        ``generator`` (on ``x``'s device), seeded by the runner per cell.
        """
        if type(self).perturb is Attack.perturb:
            raise NotImplementedError(f"{type(self).__name__} must implement generate()")
        return self.perturb(model, x, y, eps)

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> torch.Tensor:
        """Deprecated form of :meth:`generate`, which draws from torch's global generators."""
        raise NotImplementedError

    def perturbation_norms(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample size of ``delta`` in this attack's norm; override for a plugin-defined norm."""
        return perturbation_norms(delta, self.norm)

    def run(
        self,
        model: Model,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float | None,
        generator: torch.Generator | None = None,
    ) -> AttackOutcome:
        """:meth:`generate` with the parameters frozen and the modes restored; the outcome's
        ``norms`` measured. Without a ``generator``, one is seeded from torch's global generator."""
        if generator is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            generator = torch.Generator(device=x.device).manual_seed(seed)
        with attacking(model):
            result = self.generate(model, x, y, eps, generator=generator)
        outcome = result if isinstance(result, AttackOutcome) else AttackOutcome(result)
        x_adv = outcome.x_adv
        if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
            shape = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
            raise ValueError(f"{type(self).__name__} returned {shape} for inputs {tuple(x.shape)}")
        x_adv = x_adv.detach()
        return AttackOutcome(x_adv, self.perturbation_norms(x_adv - x), dict(outcome.extras), dict(outcome.scalars))


class NoAttack(Attack):
    """No attack (the ``none`` attack): the clean inputs, for a suite that measures clean accuracy
    alone, such as a learning curve (its robust accuracy is the clean accuracy)."""

    requires: ClassVar[frozenset[str]] = frozenset()

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> torch.Tensor:
        return x.clone()


def perturbation_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``norm`` of a batch of perturbations (B, ...), in float64."""
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


def budget_violation(x_adv: torch.Tensor, norms: torch.Tensor, norm: str, eps: float | None) -> str | None:
    """Why a batch of adversarial inputs breaks its threat model (``None`` if it does not): images
    outside [0, 1], or a perturbation above ``eps`` (``None``: unbounded), up to ``BUDGET_TOLERANCE``."""
    low, high = x_adv.min().item(), x_adv.max().item()
    if low < -BUDGET_TOLERANCE or high > 1 + BUDGET_TOLERANCE:
        return f"returned images outside [0, 1] (values from {low:.6g} to {high:.6g})"
    if eps is not None and len(norms):
        largest = norms.max().item()
        if over_budget(largest, eps):
            return f"exceeded its budget: {norm} perturbation of {largest:.6g} > eps {eps:g}"
    return None


class TrainingAttack:
    """An attack bound to its budget and a random stream, as ``ctx.build_attack`` returns it for
    adversarial training: ``attack(model, x, y)`` gives adversarial inputs within the table's eps,
    checked like a cell's, with the model's parameters and train/eval mode left as they were."""

    def __init__(self, attack: Attack, eps: float | None, generator: torch.Generator, description: str):
        self.attack = attack
        self.eps = eps
        self.generator = generator
        self.description = description

    def __call__(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps is None and not self.attack.minimal_norm:
            raise ValueError(f"{self.description} has no eps: give one in its table")
        outcome = self.attack.run(model, x, y, self.eps, self._generator_for(x.device))
        problem = budget_violation(outcome.x_adv, outcome.norms, self.attack.norm, self.eps)
        if problem:
            raise ValueError(f"{self.description} {problem}")
        return outcome.x_adv

    def _generator_for(self, device: torch.device) -> torch.Generator:
        if self.generator.device != device:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, generator=self.generator))
            self.generator = torch.Generator(device=device).manual_seed(seed)
        return self.generator

    def __getattr__(self, name: str) -> Any:
        # Defenses written against the earlier guide got the Attack itself (``.run(model, x, y, eps)``).
        return getattr(self.attack, name)


# --- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellOutcome:
    """The per-sample outcomes of one cell, on the CPU: what cell and sweep metrics receive.

    ``clean_correct``, ``adv_correct`` and ``robust`` are per-sample fractions of the evaluation
    draws (0 or 1 for a deterministic model): ``robust`` is correct both clean and under attack. ``x_adv`` holds
    the adversarial inputs used at this eps (for a minimal-norm attack, the clean input where the
    attack needed more than eps) and ``norms`` their perturbation sizes in the attack's norm.
    """

    norm: str
    eps: float
    index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor
    clean_correct: torch.Tensor
    adv_correct: torch.Tensor
    robust: torch.Tensor
    adv_label: torch.Tensor
    norms: torch.Tensor
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    scalars: Mapping[str, float] = field(default_factory=dict)


class Metric(ABC):
    """An extra leaderboard column ``metric_<label>``, computed where the model has ``requires``.

    Subclass one of :class:`CellMetric`, :class:`ModelMetric` or :class:`SweepMetric`; their
    ``evaluate`` runs with gradients enabled, the model in evaluation mode on the run's device.
    Register it with ``higher_is_better=`` so that ``harness show --sort`` ranks it the right way.

    A direct subclass that implements ``compute(model, x, y, x_adv)`` (the earlier form) still
    works, as a cell metric, with a deprecation warning.
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "compute" in cls.__dict__ and not issubclass(cls, (CellMetric, ModelMetric, SweepMetric)):
            warnings.warn(
                f"{cls.__qualname__}.compute(model, x, y, x_adv) is deprecated: subclass CellMetric and "
                "implement evaluate(model, outcome), which receives the per-sample outcomes",
                DeprecationWarning,
                stacklevel=3,
            )

    def compute(self, model: Model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
        """Deprecated form of a cell metric."""
        raise NotImplementedError(f"{type(self).__name__} must subclass CellMetric, ModelMetric or SweepMetric")


class CellMetric(Metric):
    """Computed for every ``ok`` cell from its per-sample outcomes."""

    @abstractmethod
    def evaluate(self, model: Model, outcome: CellOutcome) -> float: ...


class ModelMetric(Metric):
    """Computed once per trained model on the suite's test samples (e.g. a reconstruction loss);
    every row of that model carries it."""

    @abstractmethod
    def evaluate(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> float: ...


class SweepMetric(Metric):
    """Computed once per (trained model, attack entry) over all its budgets, in the suite's eps
    order (e.g. an area under a distortion curve); every row of the sweep carries it."""

    @abstractmethod
    def evaluate(self, model: Model, outcomes: Sequence[CellOutcome]) -> float: ...


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def attacking(model: nn.Module) -> Iterator[None]:
    """Inside the block, parameters get no gradients; after it, parameters and every submodule's
    train/eval mode are as they were (ART switches models to eval mode and leaves them there)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training

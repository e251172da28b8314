"""A plugin used by the tests (loaded with ``-p harness_testplugin``), registering components that
exercise the runner's paths: a model without logits, models with BatchNorm/dropout, heads and
sampling, attacks that raise, overstep their budget or report extras, wrapping and
distillation defenses, PGD adversarial training written once, and metrics of every scope.

Class-level counters let the tests see what was trained, fitted or run in this process.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from harness.contracts import (
    LOGITS,
    LOSS,
    Attack,
    AttackOutcome,
    Batch,
    CellMetric,
    Classifier,
    Dataset,
    Defense,
    Model,
    ModelMetric,
    StandardTraining,
    SweepMetric,
    TrainContext,
    TrainingLoopDefense,
    TrainingState,
)
from harness.hookspecs import hookimpl
from harness.registry import ComponentTable

EVENTS: list[tuple[str, str]] = []
CALLS: Counter[str] = Counter()


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


class BatchNormDropoutNet(Classifier):
    """BatchNorm and dropout, so that the train/eval mode matters; records the mode of every
    training step and the batches it trained on."""

    modes: list[bool] = []
    batches: list[torch.Tensor] = []

    def __init__(self, input_shape, num_classes, *, hidden: int = 32, **training):
        super().__init__(input_shape, num_classes, **training)
        size = input_shape[0] * input_shape[1] * input_shape[2]
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(size, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.net(x)

    def loss(self, x, y, state: TrainingState):
        BatchNormDropoutNet.modes.append(all(m.training for m in self.modules()))
        BatchNormDropoutNet.batches.append(x.detach().clone())
        return super().loss(x, y, state)


class HeadedNet(Classifier):
    """A backbone with two evaluation heads: its own linear layer, or the nearest class mean of
    its features fitted on the training split (cached apart from the backbone)."""

    def __init__(self, input_shape, num_classes, *, head: str = "linear", **training):
        super().__init__(input_shape, num_classes, **training)
        size = input_shape[0] * input_shape[1] * input_shape[2]
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(size, 16), nn.ReLU())
        self.linear = nn.Linear(16, num_classes)
        self.head = head
        self.means = nn.Module()
        self.means.register_buffer("value", torch.zeros(num_classes, 16))

    def forward(self, x):
        features = self.features(x)
        if self.head == "linear":
            return self.linear(features)
        return -torch.cdist(features, self.means.value)

    def fit(self, data, ctx):
        CALLS["backbone trained"] += 1
        super().fit(data, ctx)

    def fit_head(self, data, ctx):
        if self.head == "means":
            CALLS["head fitted"] += 1
            with torch.no_grad():
                features = self.features(data.x_train.to(ctx.device))
                for label in range(self.num_classes):
                    self.means.value[label] = features[data.y_train.to(ctx.device) == label].mean(dim=0)

    def head_modules(self):
        return [self.means]


class NoisyNet(Classifier):
    """Samples at prediction time (noise on its logits), like a VAE sampling its latent."""

    stochastic = True

    def __init__(self, input_shape, num_classes, *, noise: float = 1.0, **training):
        super().__init__(input_shape, num_classes, **training)
        self.noise = noise
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[1] * input_shape[2], num_classes))

    def forward(self, x):
        return self.net(x)

    @torch.no_grad()
    def predict(self, x):
        CALLS["noisy predictions"] += 1
        logits = self.logits(x)
        return (logits + self.noise * torch.randn_like(logits)).argmax(dim=1)


class PGDAdversarialTraining(TrainingLoopDefense):
    """Adversarial training written once: every batch is replaced by its PGD adversarial version."""

    requires = frozenset({LOSS, LOGITS})

    def __init__(self, attack):
        self.attack_table = attack

    def training_started(self, state):
        self.attack = state.ctx.build_attack(self.attack_table)

    def prepare_batch(self, state, batch: Batch) -> Batch:
        return Batch(self.attack(state.model, batch.x, batch.y), batch.y, batch.index)


class InputScaling(Model):
    """A learned per-pixel affine transform in front of a model: a defense's added module."""

    def __init__(self, inner: Model):
        super().__init__(inner.input_shape, inner.num_classes)
        self.inner = inner
        self.capabilities = inner.capabilities
        self.scale = nn.Parameter(torch.ones(inner.input_shape))

    def forward(self, x):
        return self.inner.logits((x * self.scale).clamp(0, 1))

    def logits(self, x):
        return self(x)

    def training_settings(self):
        return self.inner.training_settings()

    def loss(self, x, y, state):
        return nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def predict(self, x):
        return self(x).argmax(dim=1)


class WrappingDefense(Defense):
    requires = frozenset({LOSS, LOGITS})

    def prepare(self, model):
        return InputScaling(model)

    def train(self, model, data, ctx):
        CALLS["wrapped trained"] += 1
        ctx.fit(model, data)
        return model


class Distillation(StandardTraining):
    """Trains the student after asking for the teacher: the student must not depend on whether
    the teacher came from the cache."""

    def train(self, model, data, ctx):
        teacher = ctx.teacher()
        assert not teacher.training
        return super().train(model, data, ctx)


class Exploding(Attack):
    def generate(self, model, x, y, eps, *, generator):
        raise RuntimeError("kaboom\nsecond line")


class ExplodingMinimal(Exploding):
    minimal_norm = True

    def generate(self, model, x, y, eps, *, generator):
        CALLS["minimal explosions"] += 1
        return super().generate(model, x, y, eps, generator=generator)


class OverBudget(Attack):
    """Steps twice as far as its budget: the runner must reject it."""

    def generate(self, model, x, y, eps, *, generator):
        x_var = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model.logits(x_var), y), x_var)
        return (x + 2 * eps * grad.sign()).clamp(0, 1)


class FgsmLineSearch(Attack):
    """Minimal-norm: the smallest Linf step along the gradient sign (on a grid) that flips the label."""

    minimal_norm = True
    runs = 0

    def generate(self, model, x, y, eps, *, generator):
        assert eps is None
        FgsmLineSearch.runs += 1
        x_var = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model.logits(x_var), y)
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


class TargetedStep(Attack):
    """One signed step towards a random target class; reports the targets and a per-run scalar."""

    def generate(self, model, x, y, eps, *, generator):
        CALLS["targeted runs"] += 1
        target = (y + torch.randint(1, model.num_classes, y.shape, generator=generator, device=y.device)) % model.num_classes
        x_var = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model.logits(x_var), target), x_var)
        x_adv = (x - eps * grad.sign()).clamp(0, 1)
        return AttackOutcome(x_adv, extras={"target": target}, scalars={"steps": 1.0})


class TargetHitRate(CellMetric):
    """The fraction of samples whose adversarial label is the attack's target (uses its extras)."""

    def evaluate(self, model, outcome):
        return (outcome.adv_label == outcome.extras["target"]).double().mean().item()


class FlipRate(CellMetric):
    def evaluate(self, model, outcome):
        return (outcome.clean_correct - outcome.robust).mean().item()


class WeightNorm(ModelMetric):
    def evaluate(self, model, x, y):
        CALLS["weight norm"] += 1
        return sum(p.detach().norm().item() ** 2 for p in model.parameters()) ** 0.5


class AreaUnderCurve(SweepMetric):
    """The trapezoid area under robust accuracy against eps, over the sweep."""

    def evaluate(self, model, outcomes):
        eps = [o.eps for o in outcomes]
        accuracy = [o.robust.mean().item() for o in outcomes]
        return sum((b - a) * (u + v) / 2 for a, b, u, v in zip(eps, eps[1:], accuracy, accuracy[1:]))


class Failing(CellMetric):
    def evaluate(self, model, outcome):
        raise ValueError("metric is broken")


TRAINING = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "weight_decay": 0.0}


@hookimpl
def register_models(register):
    register("centroid", NearestCentroid, description="nearest class centroid (no logits)")
    # batch size 50: BatchNorm cannot train on a last batch of one sample (1697 % 32 == 1)
    register("bn-dropout", BatchNormDropoutNet, params={"hidden": 32, **TRAINING, "batch_size": 50}, description="BatchNorm and dropout")
    register(
        "headed",
        HeadedNet,
        params={"head": "linear", **TRAINING},
        choices={"head": ("linear", "means")},
        evaluation_params=("head",),
        description="one backbone, two heads",
    )
    register("noisy", NoisyNet, params={"noise": 1.0, **TRAINING}, description="samples its predictions")


@hookimpl
def register_defenses(register):
    register(
        "table-at",
        PGDAdversarialTraining,
        params={"attack": ComponentTable("attack", {"name": "pgd", "norm": "linf", "eps": 0.1, "max_iter": 3})},
        description="PGD adversarial training through the shared loop",
    )
    register("input-scaling", WrappingDefense, description="adds a learned input scaling in front of the model")
    register("distill", Distillation, description="asks for the teacher, then trains normally")


@hookimpl
def register_attacks(register):
    register("exploding", Exploding, params={"norm": "linf"}, description="raises")
    register("exploding-minimal", ExplodingMinimal, params={"norm": "l2"}, description="a minimal-norm attack that raises")
    register("over-budget", OverBudget, params={"norm": "linf"}, description="steps to twice its eps")
    register("linesearch", FgsmLineSearch, params={"norm": "linf"}, description="minimal-norm line search")
    register("targeted", TargetedStep, params={"norm": "linf"}, description="one step towards a random target")


@hookimpl
def register_metrics(register):
    register("flip_rate", FlipRate, higher_is_better=False)
    register("target_hits", TargetHitRate, higher_is_better=False)
    register("weight_norm", WeightNorm)
    register("area", AreaUnderCurve, higher_is_better=True)
    register("failing", Failing)


@hookimpl
def cell_started(cell):
    EVENTS.append(("started", cell.cell_id))


@hookimpl
def cell_finished(cell, row):
    EVENTS.append(("finished", row["status"]))

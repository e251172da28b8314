"""The contract-test kit: checks that plugin authors call from their own tests.

Each check raises ``AssertionError`` naming the broken rule, so a failing check reads as a test
failure. The shipped plugins pass these checks in the project's own tests::

    from harness.testing import check_attack, check_model, reference_classifier, tiny_digits

    def test_my_model():
        data = tiny_digits()
        check_model(lambda: MyModel(data.input_shape, data.num_classes, epochs=2), data)

    def test_my_attack():
        data = tiny_digits()
        model = reference_classifier(data)
        check_attack(MyAttack(norm="linf"), model, data.x_test[:20], data.y_test[:20], eps=0.1)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from harness.contracts import (
    LOGITS,
    LOSS,
    NORMS,
    Attack,
    CellMetric,
    CellOutcome,
    Classifier,
    Dataset,
    Defense,
    Metric,
    Model,
    ModelMetric,
    SweepMetric,
    TrainContext,
    TrainingAttack,
    TrainingSettings,
    TrainingState,
    attacking,
    budget_violation,
    perturbation_norms,
)
from harness.training import fit, make_optimizer, predict_batched, seed_everything

TOLERANCE = 1e-5


def tiny_digits(n_train: int = 200, n_test: int = 50, size: int = 8) -> Dataset:
    """A small, real dataset for contract tests: a stratified subset of sklearn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)
    if size != 8:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.from_numpy(bunch.target).long()
    train, test = train_test_split(range(len(y)), train_size=n_train, test_size=n_test, stratify=bunch.target, random_state=0)
    return Dataset("tiny-digits", x[train], y[train], x[test], y[test], 10)


class _ReferenceMLP(Classifier):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__(input_shape, num_classes, epochs=20, batch_size=32, lr=3e-3)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def reference_builder(data: Dataset) -> Callable[[], Classifier]:
    """Builds untrained small MLPs for ``data``: the ``build`` argument of :func:`check_defense`
    for a defense that works with any classifier."""
    return lambda: _ReferenceMLP(data.input_shape, data.num_classes)


def reference_classifier(data: Dataset, seed: int = 0) -> Classifier:
    """A small MLP trained on ``data``: a model with ``logits`` to check attacks against."""
    seed_everything(seed)
    model = reference_builder(data)()
    model.fit(data, make_context(seed))
    return model.eval()


def make_context(
    seed: int = 0, device: str | torch.device = "cpu", teacher: Callable[[], Model] | None = None
) -> TrainContext:
    """A training context like the runner's; ``build_attack`` uses the installed plugins."""
    device = torch.device(device)

    def build_attack(table: Mapping[str, Any]) -> TrainingAttack:
        from harness.plugins import load_plugins

        attack = load_plugins().build_from_table("attack", table, ignore=["eps"])
        generator = torch.Generator(device=device).manual_seed(seed)
        eps = table.get("eps")
        return TrainingAttack(attack, None if eps is None else float(eps), generator, f"attack '{table.get('name')}'")

    def no_teacher() -> Model:
        raise AssertionError("this context has no teacher; pass make_context(teacher=...)")

    return TrainContext(
        seed=seed,
        device=device,
        progress=lambda it, _: it,
        build_attack=build_attack,
        teacher=teacher or no_teacher,
        loop=fit,
    )


def training_state(
    model: Model, data: Dataset, ctx: TrainContext | None = None, *, epoch: int = 0
) -> TrainingState:
    """The shared loop's state at ``epoch``, with the model's own settings and a fresh optimiser:
    for testing a model's ``loss`` or a defense's hooks on one batch without running the loop."""
    settings = model.training_settings()
    optimizer = make_optimizer(settings, list(model.parameters()))
    state = TrainingState(model, data, ctx or make_context(), settings, optimizer, data.x_train, data.y_train)
    state.epoch = epoch
    return state


def check_dataset(data: Dataset) -> None:
    """Shapes (N, C, H, W), float32 in [0, 1], int64 labels in [0, num_classes), both splits non-empty."""
    assert isinstance(data, Dataset), f"expected a harness Dataset, got {type(data).__name__}"
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        assert x.ndim == 4, f"x_{split} must be (N, C, H, W), got shape {tuple(x.shape)}"
        assert x.dtype == torch.float32, f"x_{split} must be float32, got {x.dtype}"
        assert len(x) > 0, f"the {split} split is empty"
        assert y.shape == (len(x),), f"y_{split} must have shape ({len(x)},), got {tuple(y.shape)}"
        assert y.dtype == torch.int64, f"y_{split} must be int64, got {y.dtype}"
        assert x.min() >= 0 and x.max() <= 1, f"x_{split} must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]"
        assert y.min() >= 0 and y.max() < data.num_classes, f"y_{split} labels must lie in [0, {data.num_classes})"
    assert data.x_train.shape[1:] == data.x_test.shape[1:], "train and test images differ in shape"


def check_model(build: Callable[[], Model], data: Dataset, *, ctx: TrainContext | None = None, train: bool = True) -> Model:
    """Build a model, train it (unless ``train=False``), check it and return it.

    Checks the training objective where ``loss`` is declared, ``predict`` (shape, dtype, label
    range, and determinism in eval mode, or reproducibility under a seed for a stochastic model),
    ``logits`` where declared, the evaluation head, train/eval modes, and that a fresh model
    loading the state dict predicts the same.
    """
    ctx = ctx or make_context()
    seed_everything(ctx.seed)
    model = build()
    assert isinstance(model, Model), f"the model must be a harness Model, got {type(model).__name__}"
    assert tuple(model.input_shape) == data.input_shape, f"model.input_shape {model.input_shape} != {data.input_shape}"
    if model.has(LOSS):
        _check_objective(model, data, ctx)
    if train:
        model.fit(data, ctx)
    model.fit_head(data, ctx)
    check_trained_model(model, data, build)
    return model


def _check_objective(model: Model, data: Dataset, ctx: TrainContext) -> None:
    settings = model.training_settings()
    assert isinstance(settings, TrainingSettings), "training_settings() must return a harness TrainingSettings"
    assert settings.epochs >= 0 and settings.batch_size > 0, f"bad training settings: {settings}"
    model.to(ctx.device).train()
    optimizer = make_optimizer(settings, list(model.parameters()))
    state = TrainingState(model, data, ctx, settings, optimizer, data.x_train, data.y_train)
    loss = model.loss(data.x_train[:8].to(ctx.device), data.y_train[:8].to(ctx.device), state)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0, "loss() must return a scalar tensor"
    assert torch.isfinite(loss), f"loss() returned {loss.item()} on a batch of training data"
    assert loss.requires_grad, "loss() must be differentiable with respect to the parameters"
    optimizer.zero_grad(set_to_none=True)


def check_trained_model(model: Model, data: Dataset, build: Callable[[], Model]) -> None:
    """The model contract on an already trained model (``build`` makes a fresh, untrained one)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = data.x_test[:7].to(device)
    model.train()
    assert model.training, "model.train() must put the model in training mode"
    model.eval()
    assert not model.training, "model.eval() must put the model in evaluation mode"
    labels = _predict(model, x)
    assert isinstance(labels, torch.Tensor), f"predict must return a tensor, got {type(labels).__name__}"
    assert labels.shape == (len(x),), f"predict must return shape ({len(x)},), got {tuple(labels.shape)}"
    assert labels.dtype == torch.int64, f"predict must return int64 labels, got {labels.dtype}"
    assert labels.min() >= 0 and labels.max() < model.num_classes, "predict returned labels outside [0, num_classes)"
    if model.stochastic:
        assert torch.equal(labels, _predict(model, x)), "a stochastic model must predict the same under the same seed"
    else:
        assert torch.equal(labels, model.predict(x)), (
            "predict must be deterministic in evaluation mode (declare stochastic = True if it samples)"
        )
    assert labels.device == x.device, f"predict returned labels on {labels.device} for inputs on {x.device}"
    if model.has(LOGITS):
        x_var = x.clone().requires_grad_(True)
        logits = model.logits(x_var)
        assert logits.shape == (len(x), model.num_classes), f"logits must be (B, num_classes), got {tuple(logits.shape)}"
        assert logits.dtype.is_floating_point, f"logits must be floating point, got {logits.dtype}"
        (grad,) = torch.autograd.grad(logits.sum(), x_var, allow_unused=True)
        assert grad is not None, "logits must be differentiable with respect to the input"
    for capability in model.capabilities:
        assert callable(getattr(model, capability, None)), f"the model declares '{capability}' but has no {capability}()"
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    fresh.to(device).eval()
    assert torch.equal(_predict_all(fresh, data, device), _predict_all(model, data, device)), (
        "a fresh model loading the state dict must predict the same: keep everything predict needs in "
        "parameters or buffers"
    )


def _predict(model: Model, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    if model.stochastic:
        seed_everything(seed)
    return model.predict(x)


def _predict_all(model: Model, data: Dataset, device: torch.device) -> torch.Tensor:
    if model.stochastic:
        seed_everything(0)
    return predict_batched(model, data.x_test, device)


def check_defense(defense: Defense, build: Callable[[], Model], data: Dataset, *, ctx: TrainContext | None = None) -> Model:
    """Train a model with ``defense``; the result must satisfy the model contract and load into
    the structure ``defense.prepare`` builds, as the runner's cache does.

    ``build`` makes a fresh, untrained model (e.g. :func:`reference_builder`); the default
    context's teacher is the same model with its standard training.
    """
    assert isinstance(defense, Defense), f"the defense must be a harness Defense, got {type(defense).__name__}"
    ctx = ctx or make_context(teacher=lambda: check_model(build, data))
    seed_everything(ctx.seed)
    model = build()
    missing = defense.requires - model.capabilities
    assert not missing, f"the model lacks {sorted(missing)}, which the defense requires"
    prepared = defense.prepare(model)
    assert isinstance(prepared, Model), f"defense.prepare must return a harness Model, got {type(prepared).__name__}"
    structure = {k: v.shape for k, v in prepared.state_dict().items()}
    trained = defense.train(prepared, data, ctx)
    assert isinstance(trained, Model), f"defense.train must return a harness Model, got {type(trained).__name__}"
    assert {k: v.shape for k, v in trained.state_dict().items()} == structure, (
        "defense.train must return a model with the structure defense.prepare built; add or wrap modules in prepare()"
    )
    trained.fit_head(data, ctx)
    check_trained_model(trained, data, lambda: defense.prepare(build()))
    return trained


class _CapabilityGuard(Model):
    """The model as an attack that declared ``allowed`` may see it: any other capability fails loudly."""

    def __init__(self, model: Model, allowed: frozenset[str]):
        super().__init__(model.input_shape, model.num_classes)
        self.inner = model
        self.capabilities = model.capabilities & allowed
        self.stochastic = model.stochastic
        self._hidden = model.capabilities - allowed

    def fit(self, data: Dataset, ctx: TrainContext) -> None:
        raise AssertionError("an attack must not train the model")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.predict(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "_hidden", "capabilities", "stochastic") or name.startswith("_"):
            return super().__getattr__(name)
        assert name not in self._hidden, f"the attack calls model.{name}() but does not declare '{name}' in its requires"
        return getattr(self.inner, name)


def check_attack(attack: Attack, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None = None) -> None:
    """Shape, dtype and device kept; input untouched; within eps and [0, 1]; batch sizes 1 and odd;
    reproducible under a seed; only declared capabilities used. Give ``eps`` for budgeted attacks."""
    assert isinstance(attack, Attack), f"the attack must be a harness Attack, got {type(attack).__name__}"
    assert isinstance(attack.norm, str) and attack.norm, "the attack must have a norm"
    if attack.minimal_norm:
        eps = None
    else:
        assert eps is not None and eps > 0, "a budgeted attack is checked at some eps > 0"
    missing = attack.requires - model.capabilities
    assert not missing, f"the model lacks {sorted(missing)}, which the attack requires; check it on another model"
    assert "eps" in inspect.signature(attack.generate).parameters, "generate must take (model, x, y, eps, *, generator)"
    guarded = _CapabilityGuard(model, attack.requires).eval()
    odd = len(x) - 1 if len(x) % 2 == 0 else len(x)
    for batch in sorted({len(x), 1, max(odd, 1)}):
        _check_batch(attack, guarded, x[:batch], y[:batch], eps)
    outputs = []
    for _ in range(2):
        seed_everything(1234)
        outputs.append(attack.run(guarded, x.clone(), y.clone(), eps, _generator(x)).x_adv)
    assert torch.equal(outputs[0], outputs[1]), "the same seed must give the same adversarial examples"


def _generator(x: torch.Tensor) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(1234)


def _check_batch(attack: Attack, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> None:
    before_x, before_y = x.clone(), y.clone()
    model.train()
    with attacking(model):
        outcome = attack.generate(model, x, y, eps, generator=_generator(x))
    assert model.training, "the model's train/eval mode must be restored after the attack"
    model.eval()
    x_adv = getattr(outcome, "x_adv", outcome)
    assert torch.equal(x, before_x) and torch.equal(y, before_y), "the attack modified its input"
    assert isinstance(x_adv, torch.Tensor), f"generate must return a tensor or an AttackOutcome, got {type(x_adv).__name__}"
    assert x_adv.shape == x.shape, f"the attack changed the shape: {tuple(x.shape)} -> {tuple(x_adv.shape)}"
    assert x_adv.dtype == x.dtype, f"the attack changed the dtype: {x.dtype} -> {x_adv.dtype}"
    assert x_adv.device == x.device, f"the attack changed the device: {x.device} -> {x_adv.device}"
    for name, values in getattr(outcome, "extras", {}).items():
        assert values.shape[:1] == (len(x),), f"extra '{name}' must have one value per sample, got {tuple(values.shape)}"
    norms = attack.perturbation_norms(x_adv - x)
    assert norms.shape == (len(x),), f"perturbation_norms must have shape ({len(x)},), got {tuple(norms.shape)}"
    if attack.norm in NORMS:
        actual = perturbation_norms(x_adv - x, attack.norm)
        assert torch.allclose(norms.double(), actual, atol=TOLERANCE), "perturbation_norms disagrees with the norm"
    problem = budget_violation(x_adv, norms, attack.norm, eps)
    assert problem is None, f"the attack {problem}"


def check_metric(metric: Metric, model: Model, outcomes: Sequence[CellOutcome]) -> float:
    """The metric returns a float for the model and cell outcomes of its scope, leaves its inputs
    alone, and gives the same value twice; returns the value. Make outcomes with :func:`outcome_of`."""
    assert isinstance(metric, (CellMetric, ModelMetric, SweepMetric)), (
        f"the metric must subclass CellMetric, ModelMetric or SweepMetric, got {type(metric).__name__}"
    )
    missing = metric.requires - model.capabilities
    assert not missing, f"the model lacks {sorted(missing)}, which the metric requires"
    before = [o.x_adv.clone() for o in outcomes]
    values = []
    for _ in range(2):
        if isinstance(metric, CellMetric):
            value = metric.evaluate(model, outcomes[0])
        elif isinstance(metric, ModelMetric):
            value = metric.evaluate(model, outcomes[0].x, outcomes[0].y)
        else:
            value = metric.evaluate(model, outcomes)
        assert isinstance(value, (float, int)) and not isinstance(value, bool), (
            f"evaluate must return a number, got {type(value).__name__}"
        )
        values.append(float(value))
    assert all(torch.equal(o.x_adv, b) for o, b in zip(outcomes, before)), "the metric modified the outcomes"
    assert values[0] == values[1] or all(math.isnan(v) for v in values), "the metric must give the same value twice"
    return values[0]


def outcome_of(attack: Attack, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> CellOutcome:
    """A cell's outcomes for ``attack`` at ``eps`` on a deterministic ``model``, as the runner
    builds them (a minimal-norm attack's samples beyond eps count as unbroken)."""
    from harness.execute import cell_outcome

    run = attack.run(model, x, y, None if attack.minimal_norm else eps, _generator(x))
    clean = model.predict(x).unsqueeze(0)
    return cell_outcome(attack.norm, eps, x, y, run, attack.minimal_norm, clean, lambda z: model.predict(z).unsqueeze(0))

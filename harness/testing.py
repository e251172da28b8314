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
from collections.abc import Callable

import torch
from torch import nn

from harness.contracts import (
    CAPSULE_PRESENCES,
    LATENT,
    LOGITS,
    NORMS,
    RECONSTRUCTION,
    Attack,
    Classifier,
    Dataset,
    Defense,
    Model,
    TrainContext,
    frozen,
    perturbation_norms,
)
from harness.training import predict_batched, seed_everything

TOLERANCE = 1e-5
CAPABILITY_METHODS = {LOGITS: "logits", CAPSULE_PRESENCES: "capsule_presences", LATENT: "encode", RECONSTRUCTION: "reconstruct"}


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


def reference_classifier(data: Dataset, seed: int = 0) -> Classifier:
    """A small MLP trained on ``data``: a model with ``logits`` to check attacks against."""
    seed_everything(seed)
    model = _ReferenceMLP(data.input_shape, data.num_classes)
    model.fit(data, make_context(seed))
    return model.eval()


def make_context(
    seed: int = 0, device: str | torch.device = "cpu", teacher: Callable[[], Model] | None = None
) -> TrainContext:
    """A training context like the runner's; ``build_attack`` uses the installed plugins."""

    def build_attack(spec):
        from harness.plugins import load_plugins

        return load_plugins().build_from_table("attack", spec, ignore=["eps"])

    def no_teacher() -> Model:
        raise AssertionError("this context has no teacher; pass make_context(teacher=...)")

    return TrainContext(
        seed=seed,
        device=torch.device(device),
        progress=lambda it, _: it,
        build_attack=build_attack,
        teacher=teacher or no_teacher,
    )


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

    Checks ``predict`` (shape, dtype, label range, determinism in eval mode), ``logits`` where
    declared, train/eval modes, and that a fresh model loading the state dict predicts the same.
    """
    ctx = ctx or make_context()
    seed_everything(ctx.seed)
    model = build()
    assert isinstance(model, Model), f"the model must be a harness Model, got {type(model).__name__}"
    assert tuple(model.input_shape) == data.input_shape, f"model.input_shape {model.input_shape} != {data.input_shape}"
    if train:
        model.fit(data, ctx)
    check_trained_model(model, data, build)
    return model


def check_trained_model(model: Model, data: Dataset, build: Callable[[], Model]) -> None:
    """The model contract on an already trained model (``build`` makes a fresh, untrained one)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = data.x_test[:7].to(device)
    model.train()
    assert model.training, "model.train() must put the model in training mode"
    model.eval()
    assert not model.training, "model.eval() must put the model in evaluation mode"
    labels = model.predict(x)
    assert isinstance(labels, torch.Tensor), f"predict must return a tensor, got {type(labels).__name__}"
    assert labels.shape == (len(x),), f"predict must return shape ({len(x)},), got {tuple(labels.shape)}"
    assert labels.dtype == torch.int64, f"predict must return int64 labels, got {labels.dtype}"
    assert labels.min() >= 0 and labels.max() < model.num_classes, "predict returned labels outside [0, num_classes)"
    assert torch.equal(labels, model.predict(x)), "predict must be deterministic in evaluation mode"
    assert labels.device == x.device, f"predict returned labels on {labels.device} for inputs on {x.device}"
    if model.has(LOGITS):
        x_var = x.clone().requires_grad_(True)
        logits = model.logits(x_var)
        assert logits.shape == (len(x), model.num_classes), f"logits must be (B, num_classes), got {tuple(logits.shape)}"
        assert logits.dtype.is_floating_point, f"logits must be floating point, got {logits.dtype}"
        (grad,) = torch.autograd.grad(logits.sum(), x_var, allow_unused=True)
        assert grad is not None, "logits must be differentiable with respect to the input"
    for capability, method in CAPABILITY_METHODS.items():
        if model.has(capability):
            assert callable(getattr(model, method, None)), f"the model declares '{capability}' but has no {method}()"
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    fresh.to(device).eval()
    assert torch.equal(predict_batched(fresh, data.x_test, device), predict_batched(model, data.x_test, device)), (
        "a fresh model loading the state dict must predict the same: keep everything predict needs in "
        "parameters or buffers"
    )


def check_defense(defense: Defense, build: Callable[[], Model], data: Dataset, *, ctx: TrainContext | None = None) -> Model:
    """Train a fresh model with ``defense``; the result must satisfy the model contract.

    The default context's teacher is the same model with its standard training.
    """
    assert isinstance(defense, Defense), f"the defense must be a harness Defense, got {type(defense).__name__}"
    ctx = ctx or make_context(teacher=lambda: check_model(build, data))
    seed_everything(ctx.seed)
    model = build()
    missing = defense.requires - model.capabilities
    assert not missing, f"the model lacks {sorted(missing)}, which the defense requires"
    trained = defense.train(model, data, ctx)
    assert isinstance(trained, Model), f"defense.train must return a harness Model, got {type(trained).__name__}"
    check_trained_model(trained, data, build)
    return trained


class _CapabilityGuard(Model):
    """The model as an attack that declared ``allowed`` may see it: other capabilities fail loudly."""

    def __init__(self, model: Model, allowed: frozenset[str]):
        super().__init__(model.input_shape, model.num_classes)
        self.inner = model
        self.capabilities = model.capabilities & allowed

    def fit(self, data: Dataset, ctx: TrainContext) -> None:
        raise AssertionError("an attack must not train the model")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.predict(x)

    def _call(self, capability: str, *args, **kwargs):
        method = CAPABILITY_METHODS[capability]
        assert capability in self.capabilities, (
            f"the attack calls model.{method}() but does not declare '{capability}' in its requires"
        )
        return getattr(self.inner, method)(*args, **kwargs)

    def logits(self, x):
        return self._call(LOGITS, x)

    def forward(self, x):
        return self._call(LOGITS, x)

    def capsule_presences(self, x):
        return self._call(CAPSULE_PRESENCES, x)

    def encode(self, x):
        return self._call(LATENT, x)

    def reconstruct(self, x):
        return self._call(RECONSTRUCTION, x)


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
    assert "eps" in inspect.signature(attack.perturb).parameters, "perturb must take (model, x, y, eps)"
    guarded = _CapabilityGuard(model, attack.requires).eval()
    odd = len(x) - 1 if len(x) % 2 == 0 else len(x)
    for batch in sorted({len(x), 1, max(odd, 1)}):
        _check_batch(attack, guarded, x[:batch], y[:batch], eps)
    outputs = []
    for _ in range(2):
        seed_everything(1234)
        outputs.append(attack.run(guarded, x.clone(), y.clone(), eps).x_adv)
    assert torch.equal(outputs[0], outputs[1]), "the same seed must give the same adversarial examples"


def _check_batch(attack: Attack, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> None:
    before_x, before_y = x.clone(), y.clone()
    with frozen(model):
        x_adv = attack.perturb(model, x, y, eps)
    assert torch.equal(x, before_x) and torch.equal(y, before_y), "the attack modified its input"
    assert isinstance(x_adv, torch.Tensor), f"perturb must return a tensor, got {type(x_adv).__name__}"
    assert x_adv.shape == x.shape, f"the attack changed the shape: {tuple(x.shape)} -> {tuple(x_adv.shape)}"
    assert x_adv.dtype == x.dtype, f"the attack changed the dtype: {x.dtype} -> {x_adv.dtype}"
    assert x_adv.device == x.device, f"the attack changed the device: {x.device} -> {x_adv.device}"
    assert x_adv.min() >= 0 and x_adv.max() <= 1, (
        f"adversarial inputs must lie in [0, 1], got [{x_adv.min():.4g}, {x_adv.max():.4g}]"
    )
    norms = attack.perturbation_norms(x_adv - x)
    assert norms.shape == (len(x),), f"perturbation_norms must have shape ({len(x)},), got {tuple(norms.shape)}"
    if attack.norm in NORMS:
        actual = perturbation_norms(x_adv - x, attack.norm)
        assert torch.allclose(norms.double(), actual, atol=TOLERANCE), "perturbation_norms disagrees with the norm"
    if eps is not None:
        worst = norms.max().item()
        assert worst <= eps + TOLERANCE, f"perturbation of {attack.norm} norm {worst:.6g} exceeds eps {eps:g}"


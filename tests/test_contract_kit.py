"""The contract-test kit passes the shipped plugins and catches broken components."""

from __future__ import annotations

import os

import pytest
import torch

from harness.contracts import Attack, Classifier, StandardTraining
from harness.plugins import load_plugins
from harness.testing import check_attack, check_dataset, check_defense, check_model, tiny_digits


@pytest.fixture(scope="module")
def data():
    return tiny_digits()


def build(kind, name, data=None, **params):
    component = load_plugins().get(kind, name)
    resolved, problems = component.resolve_params(params)
    assert not problems
    if kind == "model":
        return lambda: component.build(resolved, input_shape=data.input_shape, num_classes=data.num_classes)
    return component.build(resolved)


@pytest.fixture(scope="module")
def model(data):
    return check_model(build("model", "mlp", data, hidden=[32], epochs=3), data)


def test_shipped_datasets_pass(tmp_path):
    from harness_datasets.loaders import load_digits

    check_dataset(tiny_digits())
    check_dataset(load_digits(tmp_path, size=28, test_size=500))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_shipped_models_pass(data, name):
    check_model(build("model", name, data, epochs=1), data)


def test_shipped_defense_passes(data):
    check_defense(build("defense", "none"), build("model", "mlp", data, hidden=[16], epochs=1), data)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_shipped_attacks_pass(model, data, name, norm):
    extra = {"max_iter": 5, "num_random_init": 1} if name == "pgd" else {}
    check_attack(build("attack", name, norm=norm, **extra), model, data.x_test[:12], data.y_test[:12], eps=0.2)


class SignStep(Attack):
    """A correct one-step attack that broken variants below modify."""

    def generate(self, model, x, y, eps, *, generator):
        x_var = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model.logits(x_var), y), x_var)
        return (x + eps * grad.sign()).clamp(0, 1)


class ExceedsEps(SignStep):
    def generate(self, model, x, y, eps, *, generator):
        return super().generate(model, x, y, 2 * eps, generator=generator)


class OutOfRange(SignStep):
    def generate(self, model, x, y, eps, *, generator):
        return x + eps * torch.sign(torch.randn_like(x))


class ModifiesInput(SignStep):
    def generate(self, model, x, y, eps, *, generator):
        x_adv = super().generate(model, x, y, eps, generator=generator)
        x.copy_(x_adv)
        return x_adv


class ChangesShape(SignStep):
    def generate(self, model, x, y, eps, *, generator):
        return super().generate(model, x, y, eps, generator=generator).flatten(1)


class Undeclared(SignStep):
    requires = frozenset()


class Unseeded(SignStep):
    def generate(self, model, x, y, eps, *, generator):
        noise = torch.frombuffer(bytearray(os.urandom(x.numel())), dtype=torch.uint8).float().view_as(x) / 255
        return (x + eps * (2 * noise - 1)).clamp(0, 1)


def test_a_correct_attack_passes(model, data):
    check_attack(SignStep("linf"), model, data.x_test[:10], data.y_test[:10], eps=0.1)


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        (ExceedsEps("linf"), "exceeded its budget: linf perturbation of 0.2 > eps 0.1"),
        (OutOfRange("linf"), "returned images outside [0, 1]"),
        (ModifiesInput("linf"), "modified its input"),
        (ChangesShape("linf"), "changed the shape"),
        (Undeclared("linf"), "calls model.logits() but does not declare 'logits'"),
        (Unseeded("linf"), "the same seed must give the same adversarial examples"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Attack) else "",
)
def test_broken_attacks_are_caught(model, data, attack, message):
    with pytest.raises(AssertionError) as info:
        check_attack(attack, model, data.x_test[:10], data.y_test[:10], eps=0.1)
    assert message in str(info.value)


class ForgetfulModel(Classifier):
    """Keeps a trained value outside the state dict: a cached model would not predict the same."""

    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes, epochs=1, batch_size=32, lr=1e-2)
        self.linear = torch.nn.Linear(input_shape[1] * input_shape[2], num_classes)
        self.shift = torch.zeros(num_classes)

    def fit(self, data, ctx):
        super().fit(data, ctx)
        self.shift = torch.arange(self.num_classes).float() * 10

    def forward(self, x):
        return self.linear(x.flatten(1)) + self.shift


class BadLabels(Classifier):
    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes, epochs=1, batch_size=32, lr=1e-2)
        self.linear = torch.nn.Linear(input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))

    def predict(self, x):
        return super().predict(x).float()


@pytest.mark.parametrize(
    ("model_class", "message"),
    [(ForgetfulModel, "must predict the same"), (BadLabels, "must return int64 labels")],
)
def test_broken_models_are_caught(data, model_class, message):
    with pytest.raises(AssertionError, match=message):
        check_model(lambda: model_class(data.input_shape, data.num_classes), data)


def test_broken_defense_is_caught(data):
    class ReturnsNothing(StandardTraining):
        def train(self, model, data, ctx):
            super().train(model, data, ctx)

    with pytest.raises(AssertionError, match="defense.train must return a harness Model"):
        check_defense(ReturnsNothing(), build("model", "mlp", data, hidden=[8], epochs=1), data)

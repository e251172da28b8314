"""ART-backed attacks: threat-model sanity on a trained classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness_art.attacks import FGSM, PGD, MarginLoss
from harness_classifiers.models import MLP, SmallCNN
from harness_datasets.loaders import load_digits

from harness.contracts import LOGITS, Model, perturbation_norms
from harness.testing import make_context
from harness.training import predict_batched, seed_everything

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_digits(Path("."), size=8, test_size=500)


@pytest.fixture(scope="module")
def trained_mlp(digits):
    seed_everything(0)
    model = MLP(digits.input_shape, 10, hidden=[64], epochs=8, batch_size=64, lr=1e-3)
    model.fit(digits, make_context())
    return model


def accuracy(model, x, y):
    return (predict_batched(model, x, CPU) == y).double().mean().item()


def test_classifier_training_learns_digits(trained_mlp, digits):
    assert accuracy(trained_mlp, digits.x_test, digits.y_test) > 0.9
    assert not trained_mlp.training


def test_cnn_builds_for_any_image_size():
    for shape in ((1, 8, 8), (1, 28, 28), (3, 5, 7), (1, 1, 1)):
        model = SmallCNN(shape, 10, channels=[4, 8], hidden=16, epochs=1, batch_size=8, lr=1e-3)
        assert model.logits(torch.rand(3, *shape)).shape == (3, 10)


@pytest.mark.parametrize(
    "attack",
    [
        FGSM("linf", 0, 64, "cross-entropy"),
        FGSM("l2", 0, 64, "margin"),
        PGD("linf", None, 10, 1, 64, "margin"),
        PGD("l2", None, 10, 0, 64, "cross-entropy"),
    ],
)
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_perturbations_respect_the_threat_model(trained_mlp, digits, attack, eps):
    x, y = digits.x_test[:100], digits.y_test[:100]
    before = x.clone()
    result = attack.run(trained_mlp, x, y, eps)
    assert torch.equal(x, before), "the attack modified its input"
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.all(result.norms <= eps + 1e-5)
    torch.testing.assert_close(result.norms, perturbation_norms(result.x_adv - x, attack.norm))
    if eps == 0:
        assert torch.equal(result.x_adv, x)


def test_pgd_is_stronger_than_fgsm_and_accuracy_falls_with_eps(trained_mlp, digits):
    x, y = digits.x_test, digits.y_test
    clean = accuracy(trained_mlp, x, y)
    previous = clean
    for eps in (0.05, 0.1, 0.2):
        seed_everything(0)
        fgsm = accuracy(trained_mlp, FGSM("linf", 0, 256, "cross-entropy").run(trained_mlp, x, y, eps).x_adv, y)
        pgd = accuracy(trained_mlp, PGD("linf", None, 20, 0, 256, "cross-entropy").run(trained_mlp, x, y, eps).x_adv, y)
        assert pgd <= fgsm <= clean
        assert pgd <= previous
        previous = pgd
    assert previous < 0.5 * clean


def test_pgd_uses_arts_pytorch_implementation(trained_mlp):
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    pgd = PGD("linf", None, 40, 0, 32, "cross-entropy")
    art_attack = pgd.art_attack(pgd.classifier(trained_mlp, CPU), 0.1)
    assert type(art_attack) is ProjectedGradientDescentPyTorch
    assert art_attack.eps_step == pytest.approx(2.5 * 0.1 / 40)


def test_parameters_are_frozen_during_the_attack_and_restored(trained_mlp, digits, monkeypatch):
    seen = []
    original = trained_mlp.logits

    def spy(x):
        seen.append(any(p.requires_grad for p in trained_mlp.parameters()))
        return original(x)

    monkeypatch.setattr(trained_mlp, "logits", spy)
    PGD("linf", None, 3, 0, 64, "cross-entropy").run(trained_mlp, digits.x_test[:10], digits.y_test[:10], 0.1)
    assert seen and not any(seen)
    assert all(p.requires_grad for p in trained_mlp.parameters())


def test_arts_switch_to_eval_mode_is_undone(trained_mlp, digits):
    trained_mlp.train()
    try:
        PGD("linf", None, 3, 0, 64, "cross-entropy").run(trained_mlp, digits.x_test[:10], digits.y_test[:10], 0.1)
        assert all(m.training for m in trained_mlp.modules())
    finally:
        trained_mlp.eval()


def test_same_seed_same_adversarial_examples(trained_mlp, digits):
    x, y = digits.x_test[:50], digits.y_test[:50]
    outputs = []
    for _ in range(2):
        seed_everything(7)
        outputs.append(PGD("linf", None, 5, 1, 64, "cross-entropy").run(trained_mlp, x, y, 0.1).x_adv)
    assert torch.equal(outputs[0], outputs[1])


# --- the margin loss --------------------------------------------------------------------------


def test_margin_loss_is_the_carlini_wagner_margin():
    scores = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    loss = MarginLoss()
    # row 0, true class 0: 3 - 1 = 2; row 1, true class 2: 0 - 4 = -4
    assert loss(scores, torch.tensor([0, 2])).item() == pytest.approx(-1.0)
    # row 0, true class 1 (the largest): 2 - 3 = -1; row 1, true class 1: 4 - (-1) = 5
    assert loss(scores, torch.tensor([1, 1])).item() == pytest.approx(2.0)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()  # what ART hands it
    assert loss(scores, one_hot).item() == pytest.approx(-1.0)


class SharpScores(Model):
    """A trained classifier whose scores are its logits times 10^4: log-densities' margins."""

    capabilities = frozenset({LOGITS})

    def __init__(self, inner: Model):
        super().__init__(inner.input_shape, inner.num_classes)
        self.inner = inner

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return 1e4 * self.inner.logits(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)


def test_the_margin_keeps_a_gradient_where_the_cross_entropy_saturates(trained_mlp, digits):
    """On far-apart scores the cross-entropy's input gradient is exactly zero for most inputs, so
    PGD cannot move them; the margin's is non-zero for every input, and PGD on it breaks the model."""
    model = SharpScores(trained_mlp).eval()
    x, y = digits.x_test[:200], digits.y_test[:200]
    one_hot = torch.nn.functional.one_hot(y, 10).numpy().astype("float32")
    zero = {}
    for loss in ("cross-entropy", "margin"):
        estimator = PGD("linf", None, 10, 0, 64, loss).classifier(model, CPU)
        gradient = torch.from_numpy(estimator.loss_gradient(x.numpy(), one_hot))
        zero[loss] = (gradient.flatten(1).abs().amax(dim=1) == 0).double().mean().item()
    assert zero["cross-entropy"] > 0.5
    assert zero["margin"] == 0
    seed_everything(0)
    robust = {
        loss: accuracy(model, PGD("linf", None, 20, 0, 256, loss).run(model, x, y, 0.2).x_adv, y)
        for loss in ("cross-entropy", "margin")
    }
    assert robust["margin"] < 0.5 * robust["cross-entropy"]


def test_an_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="loss must be one of cross-entropy, margin"):
        PGD("linf", None, 10, 0, 64, "hinge")


def test_art_attacks_are_configured_as_asked(trained_mlp):
    import numpy as np

    fgsm = FGSM("l2", 2, 32, "margin")
    configured = fgsm.art_attack(fgsm.classifier(trained_mlp, CPU), 0.3)
    assert (configured.norm, configured.eps, configured.num_random_init, configured.batch_size) == (2, 0.3, 2, 32)
    pgd = PGD("linf", 0.01, 7, 1, 16, "cross-entropy")
    configured = pgd.art_attack(pgd.classifier(trained_mlp, CPU), 0.1)
    assert configured.norm == np.inf and configured.eps == 0.1 and configured.eps_step == 0.01
    assert (configured.max_iter, configured.num_random_init, configured.batch_size) == (7, 1, 16)


def test_the_estimator_follows_the_model(trained_mlp, digits):
    other = MLP(digits.input_shape, 10, hidden=[8], epochs=1, batch_size=64, lr=1e-3)
    pgd = PGD("linf", None, 5, 0, 64, "cross-entropy")
    first = pgd.classifier(trained_mlp, CPU)
    assert pgd.classifier(trained_mlp, CPU) is first  # built once per model
    assert pgd.classifier(other, CPU).model.model is other


def test_the_attack_ascends_the_loss_of_the_labels_it_is_given(trained_mlp, digits):
    """Given wrong labels, PGD moves the inputs away from those labels, not from the model's own
    predictions: far more correctly classified digits keep their class than under the true labels."""
    x, y = digits.x_test[:200], digits.y_test[:200]
    right = predict_batched(trained_mlp, x, CPU) == y
    x, y = x[right], y[right]
    kept = {}
    for name, labels in (("true", y), ("wrong", (y + 1) % 10)):
        seed_everything(0)
        x_adv = PGD("linf", None, 20, 0, 256, "cross-entropy").run(trained_mlp, x, labels, 0.2).x_adv
        kept[name] = accuracy(trained_mlp, x_adv, y)
    assert kept["wrong"] > kept["true"] + 0.3

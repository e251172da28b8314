"""The measurements behind the adaptive-evaluation checks: zero gradients, a randomized model,
the attack's access, and the verdict `harness show` prints."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import trained_digits_mlp
from harness_classifiers.models import MLP

from harness.contracts import Attack
from harness.execute import TrainedModel, output_varies, zero_gradient_fraction
from harness.transfer import TransferAttack

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    model, data = trained_digits_mlp([32])
    return model, data.x_test[:100], data.y_test[:100]


class Scaled(MLP):
    """Logits multiplied by a large factor: float32's softmax turns one-hot and the gradient vanishes."""

    def logits(self, x):
        return 1e4 * super().logits(x)


class Noisy(MLP):
    """Noise on the logits even in evaluation mode: an undeclared randomized defense."""

    def logits(self, x):
        return super().logits(x) + torch.randn(len(x), self.num_classes)


def test_a_saturated_model_has_zero_gradients_and_a_calibrated_one_does_not(setup):
    model, x, y = setup
    assert zero_gradient_fraction(model, x, y, CPU, 32) == 0.0
    scaled = Scaled(model.input_shape, 10, hidden=[32], epochs=1, batch_size=64, lr=1e-3).eval()
    scaled.load_state_dict(model.state_dict())
    fraction = zero_gradient_fraction(scaled, x, y, CPU, 32)
    correct = (scaled.predict(x) == y).double().mean().item()
    assert 0.5 < fraction <= correct  # the confidently right ones; a wrong one keeps a gradient
    assert all(p.requires_grad for p in scaled.parameters())


class Rounded(MLP):
    """Logits through a step function: no gradient reaches the input at all."""

    def logits(self, x):
        return super().logits(x.round().detach())


def test_logits_without_any_input_gradient_count_as_zero_gradients_everywhere(setup):
    model, x, y = setup
    rounded = Rounded(model.input_shape, 10, hidden=[32], epochs=1, batch_size=64, lr=1e-3).eval()
    assert zero_gradient_fraction(rounded, x, y, CPU, 32) == 1.0


def test_a_model_whose_output_varies_is_seen(setup):
    model, x, _ = setup
    noisy = Noisy(model.input_shape, 10, hidden=[32], epochs=1, batch_size=64, lr=1e-3).eval()
    assert output_varies(noisy, x) and not output_varies(model, x)


def test_randomness_names_what_averages_it(setup):
    model, x, y = setup
    pgd, eot = Attack(), Attack()
    eot.eot = True

    def trained(varies, draws=1):
        return TrainedModel(model, 0.0, x, y, draws, torch.zeros(1, len(y)), output_varies=varies)

    assert trained(False).randomness(pgd) == "deterministic"
    assert trained(True).randomness(pgd) == "unhandled"
    assert trained(True).randomness(eot) == "eot"
    assert trained(True, draws=10).randomness(eot) == "draws+eot"
    assert Attack.access == "white-box" and TransferAttack.access == "transfer"


def test_a_run_records_the_checks_measurements_and_show_prints_the_verdict(cli, write_suite, tmp_path):
    from conftest import TINY_SUITE

    suite = write_suite(TINY_SUITE + '\n[[attacks]]\nname = "transfer"\nsource = "mlp"\nattack = {name = "pgd", max_iter = 5}\neps = [0.1]\n')
    board = tmp_path / "checks.csv"
    code, _, err = cli("run", suite, "--output", board, "--no-progress")
    assert code == 0, err
    frame = pd.read_csv(board)
    assert set(frame["attack_access"]) == {"white-box", "transfer"}
    assert set(frame["randomness"]) == {"deterministic"} and frame["zero_gradient_fraction"].between(0, 1).all()
    code, out, err = cli("show", board)
    assert code == 0, err
    assert "verdict digits/mlp/none: " in out and "  not checked not-converged: " in out

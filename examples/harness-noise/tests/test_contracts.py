"""The example plugin tested with the harness's contract kit, as a third-party author would."""

import pytest
from harness_noise.components import LogisticRegression, UniformNoise

from harness.testing import check_attack, check_model, tiny_digits


@pytest.fixture(scope="module")
def data():
    return tiny_digits()


@pytest.fixture(scope="module")
def model(data):
    return check_model(lambda: LogisticRegression(data.input_shape, data.num_classes, epochs=5, batch_size=32, lr=1e-2), data)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_uniform_noise_satisfies_the_attack_contract(model, data, norm):
    check_attack(UniformNoise(norm, samples=3), model, data.x_test[:15], data.y_test[:15], eps=0.3)

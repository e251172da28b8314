"""Baseline classifiers with standard cross-entropy training: an MLP and a small CNN."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, RegisterFunction

TRAINING = {"epochs": 20, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0}
TRAINING_RANGES = {"epochs": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE}
"""0 epochs would leave the model untrained; a weight decay of 0 is none."""


@hookimpl
def register_models(register: RegisterFunction) -> None:
    register(
        "mlp",
        "harness_classifiers.models:MLP",
        params={"hidden": [256, 256], **TRAINING},
        ranges={"hidden": POSITIVE, **TRAINING_RANGES},
        horizon="epochs",  # a constant learning rate: 10 epochs are the start of 20
        description="fully connected ReLU network, cross-entropy with Adam",
    )
    register(
        "cnn",
        "harness_classifiers.models:SmallCNN",
        params={"channels": [32, 64], "hidden": 128, **TRAINING},
        ranges={"channels": POSITIVE, "hidden": POSITIVE, **TRAINING_RANGES},
        horizon="epochs",
        description="conv-ReLU-maxpool blocks and one hidden dense layer, cross-entropy with Adam",
    )

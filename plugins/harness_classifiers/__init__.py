"""Baseline classifiers with standard cross-entropy training: an MLP and a small CNN."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import RegisterFunction

TRAINING = {"epochs": 20, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0}


@hookimpl
def register_models(register: RegisterFunction) -> None:
    register(
        "mlp",
        "harness_classifiers.models:MLP",
        params={"hidden": [256, 256], **TRAINING},
        description="fully connected ReLU network, cross-entropy with Adam",
    )
    register(
        "cnn",
        "harness_classifiers.models:SmallCNN",
        params={"channels": [32, 64], "hidden": 128, **TRAINING},
        description="conv-ReLU-maxpool blocks and one hidden dense layer, cross-entropy with Adam",
    )

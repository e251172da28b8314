"""Hook implementations of the example plugin. No torch import here: every harness command loads
this module, and the components are imported only when a suite uses them."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE


@hookimpl
def register_attacks(register):
    register(
        "uniform-noise",
        "harness_noise.components:UniformNoise",
        params={"norm": "linf", "samples": 10},
        choices={"norm": ("linf", "l2")},
        ranges={"samples": POSITIVE},
        description="random points drawn uniformly in the eps ball; keeps one that fools the model (a sanity baseline)",
    )


@hookimpl
def register_models(register):
    register(
        "logreg",
        "harness_noise.components:LogisticRegression",
        params={"epochs": 30, "batch_size": 64, "lr": 1e-2, "weight_decay": 0.0},
        ranges={"epochs": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE},
        description="multinomial logistic regression on the pixels",
    )

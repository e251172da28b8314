"""FGSM and PGD from the Adversarial Robustness Toolbox (ART), for the Linf and L2 threat models."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, RegisterFunction

NORMS = ("linf", "l2")
LOSSES = ("cross-entropy", "margin")
"""The loss ART ascends: the margin for scores that are not calibrated logits (log-densities)."""
ART_MODULES = ("art.attacks.evasion", "art.estimators.classification")
RANGES = {"num_random_init": NON_NEGATIVE, "batch_size": POSITIVE}
"""0 random restarts: start from the clean input."""


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
    register(
        "fgsm",
        "harness_art.attacks:FGSM",
        params={"norm": "linf", "num_random_init": 0, "batch_size": 256, "loss": "cross-entropy"},
        choices={"norm": NORMS, "loss": LOSSES},
        ranges=RANGES,
        imports=ART_MODULES,
        description="ART FastGradientMethod: one signed (Linf) or normalised (L2) gradient step of size eps on the "
        "cross-entropy or the margin (loss)",
    )
    register(
        "pgd",
        "harness_art.attacks:PGD",
        params={
            "norm": "linf", "eps_step": None, "max_iter": 40, "num_random_init": 0, "batch_size": 256,
            "loss": "cross-entropy",
        },
        choices={"norm": NORMS, "loss": LOSSES},
        ranges={**RANGES, "eps_step": POSITIVE, "max_iter": POSITIVE},
        imports=ART_MODULES,
        description="ART ProjectedGradientDescentPyTorch on the cross-entropy or the margin (loss); eps_step defaults "
        "to 2.5 * eps / max_iter (Madry et al.)",
    )

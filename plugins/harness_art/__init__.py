"""Evasion attacks from the Adversarial Robustness Toolbox (ART): FGSM and PGD, and the
catalogue of :mod:`harness_art.specs` through one adapter."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, RegisterFunction
from harness_art.specs import CATALOGUE, UNAVAILABLE

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

    for name, spec in CATALOGUE.items():
        register(
            name,
            f"harness_art.catalogue:{name.replace('-', '_')}",
            params={"norm": next(iter(spec.norms)), **spec.params},
            choices={"norm": tuple(spec.norms), **spec.choices},
            ranges={key: POSITIVE for key in CATALOGUE_POSITIVE if key in spec.params},
            imports=(*ART_MODULES, *spec.imports),
            description=spec.description,
        )
    for name, (classes, reason) in UNAVAILABLE.items():
        register(
            name,
            "harness_art.catalogue:CatalogueAttack",
            params={"norm": "linf"},
            unavailable=f"ART's {classes} {reason}",
        )


CATALOGUE_POSITIVE = ("batch_size", "max_iter", "eps_step", "max_eval", "init_eval", "init_size", "eps")

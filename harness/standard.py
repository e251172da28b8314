"""The core's own plugin: models trained outside the harness (``checkpoint``), the ``none``
defense that every model supports, the ``none`` attack (clean inputs), and transfer attacks from a
surrogate model of the same suite.

Registered through the ``harness`` entry-point group like any other plugin.
"""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, CodeRef, ComponentTable, EntryRef, FilePath, RegisterFunction


@hookimpl
def register_models(register: RegisterFunction) -> None:
    register(
        "checkpoint",
        "harness.checkpoint:Checkpoint",
        params={
            "path": FilePath(),
            "factory": CodeRef(),
            "kwargs": {},
            "weights": FilePath(),
            "input_range": [0.0, 1.0],
            "mean": [0.0],
            "std": [1.0],
            "image_shape": [],
            "classes": 0,
        },
        ranges={"std": POSITIVE, "image_shape": NON_NEGATIVE, "classes": NON_NEGATIVE},
        description="a network trained elsewhere, evaluated as it is: a TorchScript file or a torch.export .pt2 program ('path'), or "
        "'factory' ('package.module:build', called with 'kwargs') with an optional state dict ('weights', "
        "loaded with weights_only=True); attacks work on images in [0, 1], which the model converts to the "
        "network's 'input_range' and normalises with 'mean' and 'std' (per channel); 'image_shape' (C, H, W) "
        "and 'classes', when given, are checked against the dataset; paths are relative to the suite",
    )


@hookimpl
def register_defenses(register: RegisterFunction) -> None:
    register("none", "harness.contracts:StandardTraining", description="the model's standard training, no defense")


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
    register(
        "none",
        "harness.contracts:NoAttack",
        params={"norm": "linf"},
        choices={"norm": ("linf", "l2", "l1", "l0")},
        description="no attack: the clean inputs (eps = [0]), for clean accuracy alone, e.g. a learning curve",
    )
    register(
        "transfer",
        "harness.transfer:TransferAttack",
        params={
            "norm": "linf",
            "source": EntryRef("model"),
            "source_defense": EntryRef("defense", "none"),
            "attack": ComponentTable("attack", {"name": "fgsm"}, own_budget=False),
        },
        choices={"norm": ("linf", "l2", "l1", "l0")},
        description="a black-box transfer attack: `attack` run in `norm` at each eps on the suite's model `source` "
        "(trained with `source_defense`), its adversarial examples evaluated on the cell's model",
    )

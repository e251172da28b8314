"""The core's own plugin: the ``none`` defense that every model supports, and transfer attacks
from a surrogate model of the same suite.

Registered through the ``harness`` entry-point group like any other plugin.
"""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import ComponentTable, EntryRef, RegisterFunction


@hookimpl
def register_defenses(register: RegisterFunction) -> None:
    register("none", "harness.contracts:StandardTraining", description="the model's standard training, no defense")


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
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

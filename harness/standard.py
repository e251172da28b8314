"""The core's own plugin: the ``none`` defense that every model supports.

Registered through the ``harness`` entry-point group like any other plugin.
"""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import RegisterFunction


@hookimpl
def register_defenses(register: RegisterFunction) -> None:
    register("none", "harness.contracts:StandardTraining", description="the model's standard training, no defense")

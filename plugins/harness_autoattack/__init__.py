"""AutoAttack (Croce and Hein, ICML 2020) through its authors' implementation, ``pyautoattack``."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import RegisterFunction

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
"""The reference's attack names; ``attacks`` picks among them (in the reference's order)."""


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
    register(
        "autoattack",
        "harness_autoattack.attacks:AutoAttack",
        params={"norm": "linf", "version": "standard", "attacks": []},
        choices={"norm": ("linf", "l2", "l1"), "version": ("standard", "rand", "plus")},
        imports=("pyautoattack",),
        description="AutoAttack by its authors (pyautoattack): standard = APGD-CE, APGD-T (9 target classes), "
        "FAB-T, Square (5,000 queries); rand = APGD-CE and APGD-DLR with 20 EOT iterations; plus = all six with "
        "restarts. attacks: a subset of " + ", ".join(COMPONENTS) + " run with the version's settings. The "
        "per-sample worst case is the result; metric_broken_by_<attack> says which component broke how many. "
        "Each batch of the suite is one batch of the reference",
    )

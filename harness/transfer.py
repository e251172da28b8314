"""Transfer (black-box) attacks: adversarial examples crafted on another model of the same suite,
the surrogate, and evaluated on the cell's model.

A suite names the surrogate by its model label (``source``) and the defense it was trained with
(``source_defense``, by label, default ``none``); the runner trains or loads it with the cell's
dataset and seed, exactly as its own cells would, and binds it to the attack before the sweep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from harness.contracts import Attack, Model


class TransferAttack(Attack):
    """Any attack of the suite's plugins, run on a surrogate at the cell's eps; the target model
    is only asked for its predictions, so a transfer attack needs no capability of it."""

    requires = frozenset()
    access = "transfer"

    def __init__(self, *, norm: str, source: str, source_defense: str, attack: Mapping[str, Any]):
        super().__init__(norm)
        self.source = source
        self.source_defense = source_defense
        self.attack_table = {**attack, "norm": norm}  # the inner attack runs in the entry's threat model
        self.inner: Attack | None = None
        self.surrogate: Model | None = None

    def bind(self, inner: Attack, surrogate: Model) -> None:
        """The attack to run (built from ``attack``) and the trained surrogate to run it on."""
        if inner.minimal_norm:
            name = self.attack_table["name"]
            raise ValueError(f"a transfer attack needs a budgeted attack, not the minimal-norm '{name}'")
        missing = sorted(inner.requires - surrogate.capabilities)
        if missing:
            raise ValueError(f"attack '{self.attack_table['name']}' needs {', '.join(missing)}, which the surrogate "
                             f"'{self.source}' lacks")
        self.inner, self.surrogate = inner, surrogate

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> torch.Tensor:
        if self.inner is None or self.surrogate is None:
            raise RuntimeError("the transfer attack has no surrogate: the runner binds one before the sweep")
        return self.inner.run(self.surrogate, x, y, eps, generator).x_adv

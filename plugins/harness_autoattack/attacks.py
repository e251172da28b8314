"""AutoAttack as its authors define it, run by their code (``pyautoattack``).

The reference runs its components in order, each on the samples that every earlier one failed
to break, and keeps the first adversarial example found. The harness calls the reference's own
``run_standard_evaluation`` once per component on exactly those samples (one batch, in the
original order, with the same seed), so the per-sample results are the reference's on the same
batch (a direct call's over N samples are reproduced when the suite's ``batch_size`` is at least
N: the reference would otherwise cut its batches differently), and it
learns which component broke each sample: the ``broken_by`` extra (an index into ``components``,
-1 where none did or the clean input was already wrong) and one ``broken_by_<attack>`` fraction
per component. Each component seeds torch's global generator itself (the reference's
behaviour); the harness restores the global generators afterwards.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from harness.contracts import Attack, AttackOutcome, Model

REFERENCE_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
# The reference's sanity checks log warnings (a randomized model, zero gradients) that the harness's
# own checks report per cell (see the README, "Adaptive-evaluation checks"); keep them off stderr.
logging.getLogger("auto-attack").addHandler(logging.NullHandler())


class _Logits(nn.Module):
    """``model.logits`` as the forward pass the reference calls."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)


def scalar_name(component: str) -> str:
    """The per-run fraction a component broke, as a metric column's suffix: ``broken_by_apgd_ce``."""
    return "broken_by_" + component.replace("-", "_")


class AutoAttack(Attack):
    def __init__(self, norm: str, version: str, attacks: list[str]):
        super().__init__(norm)
        from harness_autoattack import COMPONENTS

        chosen = [name for name in attacks if name]
        unknown = [name for name in chosen if name not in COMPONENTS]
        if unknown:
            raise ValueError(f"unknown AutoAttack component(s) {', '.join(unknown)} (known: {', '.join(COMPONENTS)})")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"attacks names a component twice: {', '.join(chosen)}")
        self.version = version
        self.attacks = chosen
        self.eot = version == "rand"  # the reference's 20 EOT iterations per gradient

    def reference(self, model: Model, eps: float, seed: int, device: torch.device) -> Any:
        """The reference's ``AutoAttack``, configured as ``version`` (then cut to ``attacks``)."""
        from pyautoattack import AutoAttack as Reference

        reference = Reference(
            _Logits(model), norm=REFERENCE_NORMS[self.norm], eps=eps, seed=seed, device=device, version=self.version
        )
        if self.attacks:  # the version's settings, a subset of its components (in the reference's order)
            reference.attacks_to_run = self.attacks
        # The targeted components attack the 9 most likely other classes; fewer classes have fewer.
        targets = min(reference.apgd_targeted.n_target_classes, model.num_classes - 1)
        reference.apgd_targeted.n_target_classes = reference.fab.n_target_classes = targets
        reference.verbose = False
        return reference

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> AttackOutcome:
        if eps is None:
            raise ValueError("autoattack is a budgeted attack and needs an eps")
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator, device=generator.device))
        reference = self.reference(model, eps, seed, x.device)
        components = list(reference.attacks_to_run)
        x_adv = x.detach().clone()
        broken_by = torch.full((len(x),), -1, dtype=torch.int64)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            with torch.no_grad():
                remaining = (model.logits(x).argmax(dim=1) == y).nonzero().flatten()
            for position, component in enumerate(components):
                if eps == 0 or not len(remaining):
                    break
                reference.attacks_to_run = [component]
                adv, label = reference.run_standard_evaluation(x[remaining], y[remaining], batch_size=len(remaining))
                broken = label != y[remaining]
                x_adv[remaining[broken]] = adv[broken].to(x_adv.dtype)
                broken_by[remaining[broken].cpu()] = position
                remaining = remaining[~broken]
        fractions = {scalar_name(c): float((broken_by == i).double().mean()) for i, c in enumerate(components)}
        return AttackOutcome(x_adv, extras={"broken_by": broken_by}, scalars=fractions)

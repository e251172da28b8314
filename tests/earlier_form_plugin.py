"""An attack and a metric written against the earlier guide (``perturb`` with the global random
generators, ``compute(model, x, y, x_adv)``): they must keep working, with deprecation warnings."""

import torch

from harness.contracts import Attack, Metric
from harness.hookspecs import hookimpl


class SignNoise(Attack):
    requires = frozenset()

    def perturb(self, model, x, y, eps):
        signs = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        return (x + eps * signs).clamp(0, 1)


class MeanAbsolutePerturbation(Metric):
    def compute(self, model, x, y, x_adv) -> float:
        return (x_adv - x).abs().mean().item()


@hookimpl
def register_attacks(register):
    register("old-sign-noise", "earlier_form_plugin:SignNoise", params={"norm": "linf"})


@hookimpl
def register_metrics(register):
    register("old_mean_abs", "earlier_form_plugin:MeanAbsolutePerturbation")

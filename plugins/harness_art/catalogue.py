"""The adapter that runs any attack of :data:`harness_art.specs.CATALOGUE` on a harness model.

ART's attacks see the model through a ``PyTorchClassifier`` whose network casts its input to
float32: several of ART's decision-based attacks (HopSkipJump, Boundary) compute in float64 under
NumPy 2 and would otherwise fail with "Input type (double) and bias type (float) should be the
same". Attacks that need probabilities (SimBA) get the softmax of the logits. Random draws come
from NumPy's global generator, which the runner seeds per cell.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.contracts import Attack, Model
from harness_art.specs import CATALOGUE, Spec


class _Scores(nn.Module):
    """The model's logits (or their softmax) for float32 inputs, whatever dtype ART hands over."""

    def __init__(self, model: Model, probabilities: bool):
        super().__init__()
        self.model = model
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.model.logits(x.to(torch.float32))
        return scores.softmax(dim=1) if self.probabilities else scores


class CatalogueAttack(Attack):
    """One ART evasion attack, configured by its :class:`~harness_art.specs.Spec`."""

    def __init__(self, name: str, *, norm: str, **params: Any):
        super().__init__(norm)
        self.spec: Spec = CATALOGUE[name]
        self.params = params
        self.minimal_norm = self.spec.minimal_norm
        self.access = self.spec.access

    def perturbation_norms(self, delta: torch.Tensor) -> torch.Tensor:
        if self.norm == "spatial":  # the threat model is the transformation grid, not a norm ball
            return torch.zeros(len(delta), dtype=torch.float64)
        return super().perturbation_norms(delta)

    def art_arguments(self, eps: float | None) -> dict[str, Any]:
        """The keyword arguments of the ART class: the suite's parameters (renamed and mapped where
        the harness uses other names), the norm, the budget, untargeted and quiet."""
        spec = self.spec
        arguments = {}
        for key, value in self.params.items():
            argument = spec.renamed.get(key, key)
            arguments[argument] = spec.values.get(key, {}).get(value, value)
        if spec.norm_argument:
            arguments[spec.norm_argument] = spec.norms[self.norm]
        if eps is not None:
            arguments[spec.budget_argument] = eps
        accepted = inspect.signature(art_class(spec).__init__).parameters
        arguments.update({k: v for k, v in (("targeted", False), ("verbose", False)) if k in accepted})
        return arguments

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> torch.Tensor:
        if not self.minimal_norm:
            if eps is None:
                raise ValueError(f"{self.spec.art_class} is a budgeted attack and needs an eps")
            if eps == 0:
                return x.clone()
        attack = art_class(self.spec)(estimator(model, x.device, self.spec.probabilities), **self.art_arguments(
            None if self.minimal_norm else eps
        ))
        # one-hot labels: some attacks (SimBA) take the argmax of the labels they are given
        labels = np.eye(model.num_classes, dtype=np.float32)[y.cpu().numpy()] if self.spec.true_labels else None
        x_adv = attack.generate(x.detach().cpu().numpy().astype(np.float32), y=labels)
        return torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(device=x.device, dtype=x.dtype)


def art_class(spec: Spec) -> type:
    from art.attacks import evasion

    return getattr(evasion, spec.art_class)


def estimator(model: Model, device: torch.device, probabilities: bool) -> Any:
    """ART's view of ``model``: inputs in [0, 1], no preprocessing, the cross-entropy as its loss."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=_Scores(model, probabilities),
        loss=nn.CrossEntropyLoss(),
        input_shape=model.input_shape,
        nb_classes=model.num_classes,
        clip_values=(0.0, 1.0),
        preprocessing=None,
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def __getattr__(name: str) -> Any:
    """``harness_art.catalogue:<name>`` is the factory of the catalogue's attack ``name``
    (underscores for hyphens), as the registry's lazy ``"module:attribute"`` strings need."""
    key = name.replace("_", "-")
    if key in CATALOGUE:
        return functools.partial(CatalogueAttack, key)
    raise AttributeError(name)

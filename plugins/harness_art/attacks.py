"""ART-backed attacks (imported only when a suite uses them).

The model is wrapped in ART's ``PyTorchClassifier`` with every step in torch, so that ART's PGD
runs its PyTorch implementation. Parameters are frozen by :meth:`harness.contracts.Attack.run`,
which keeps ART's ``loss.backward()`` from computing parameter gradients it never uses, and puts
back the train/eval mode that ART changes. ART draws its random initialisations from NumPy's
global generator, which the runner seeds per cell, not from the ``generator`` argument.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.contracts import Attack, Model

ART_NORMS = {"linf": np.inf, "l2": 2}


class _Logits(nn.Module):
    """Exposes ``model.logits`` as the forward pass ART differentiates."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)


class ARTAttack(Attack):
    def __init__(self, norm: str, num_random_init: int, batch_size: int):
        super().__init__(norm)
        self.num_random_init = num_random_init
        self.batch_size = batch_size
        self._wrapped: tuple[Model, Any] | None = None

    def classifier(self, model: Model, device: torch.device) -> Any:
        """ART's view of ``model``, built once per model."""
        if self._wrapped is None or self._wrapped[0] is not model:
            from art.estimators.classification import PyTorchClassifier

            estimator = PyTorchClassifier(
                model=_Logits(model),
                loss=nn.CrossEntropyLoss(),
                input_shape=model.input_shape,
                nb_classes=model.num_classes,
                clip_values=(0.0, 1.0),
                preprocessing=None,  # no identity standardisation op in every gradient step
                device_type="gpu" if device.type == "cuda" else "cpu",
            )
            self._wrapped = (model, estimator)
        return self._wrapped[1]

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> torch.Tensor:
        if eps is None:
            raise ValueError(f"{type(self).__name__} is a budgeted attack and needs an eps")
        if eps == 0:
            return x.clone()
        attack = self.art_attack(self.classifier(model, x.device), eps)
        x_adv = attack.generate(x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
        return torch.from_numpy(x_adv).to(device=x.device, dtype=x.dtype)

    @abstractmethod
    def art_attack(self, estimator: Any, eps: float) -> Any:
        """The configured ART evasion attack."""


class FGSM(ARTAttack):
    def art_attack(self, estimator: Any, eps: float) -> Any:
        from art.attacks.evasion import FastGradientMethod

        return FastGradientMethod(
            estimator,
            norm=ART_NORMS[self.norm],
            eps=eps,
            eps_step=eps,
            num_random_init=self.num_random_init,
            batch_size=self.batch_size,
        )


class PGD(ARTAttack):
    def __init__(self, norm: str, eps_step: float | None, max_iter: int, num_random_init: int, batch_size: int):
        super().__init__(norm, num_random_init, batch_size)
        self.eps_step = eps_step
        self.max_iter = max_iter

    def art_attack(self, estimator: Any, eps: float) -> Any:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        return ProjectedGradientDescentPyTorch(
            estimator,
            norm=ART_NORMS[self.norm],
            eps=eps,
            eps_step=self.eps_step if self.eps_step is not None else 2.5 * eps / self.max_iter,
            max_iter=self.max_iter,
            num_random_init=self.num_random_init,
            batch_size=self.batch_size,
            verbose=False,
        )

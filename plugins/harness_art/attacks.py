"""ART-backed attacks (imported only when a suite uses them).

The model is wrapped in ART's ``PyTorchClassifier`` with every step in torch, so that ART's PGD
runs its PyTorch implementation. Parameters are frozen by :meth:`harness.contracts.Attack.run`,
which keeps ART's ``loss.backward()`` from computing parameter gradients it never uses, and puts
back the train/eval mode that ART changes. ART draws its random initialisations from NumPy's
global generator, which the runner seeds per cell, not from the ``generator`` argument.

The loss ART ascends is the cross-entropy of the model's scores, or the Carlini-Wagner margin
(``loss = "margin"``) for models whose scores are not calibrated logits: on class log-densities
whose margins run to hundreds (the DBP GMM head) float32's softmax is exactly one-hot, and the
cross-entropy's input gradient is exactly zero on many inputs, so PGD never moves them.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.contracts import Attack, Model

ART_NORMS = {"linf": np.inf, "l2": 2}


class MarginLoss(nn.Module):
    """The Carlini-Wagner margin ``max_{j != y} z_j - z_y``, averaged over the batch; positive once
    the input is misclassified. Its gradient is that of two scores, which never saturates. ART hands
    a loss it does not know one-hot labels; class indices are accepted too."""

    def forward(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 2:
            target = target.argmax(dim=1)
        true = scores.gather(1, target.long()[:, None]).squeeze(1)
        is_true = nn.functional.one_hot(target.long(), scores.shape[1]).bool()
        return (scores.masked_fill(is_true, float("-inf")).amax(dim=1) - true).mean()


LOSSES = {"cross-entropy": nn.CrossEntropyLoss, "margin": MarginLoss}


class _Logits(nn.Module):
    """Exposes ``model.logits`` as the forward pass ART differentiates."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)


class ARTAttack(Attack):
    def __init__(self, norm: str, num_random_init: int, batch_size: int, loss: str):
        super().__init__(norm)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got '{loss}'")
        self.loss = loss
        self.num_random_init = num_random_init
        self.batch_size = batch_size
        self._wrapped: tuple[Model, Any] | None = None

    def classifier(self, model: Model, device: torch.device) -> Any:
        """ART's view of ``model``, built once per model."""
        if self._wrapped is None or self._wrapped[0] is not model:
            from art.estimators.classification import PyTorchClassifier

            estimator = PyTorchClassifier(
                model=_Logits(model),
                loss=LOSSES[self.loss](),
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
    def __init__(
        self, norm: str, eps_step: float | None, max_iter: int, num_random_init: int, batch_size: int, loss: str
    ):
        super().__init__(norm, num_random_init, batch_size, loss)
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

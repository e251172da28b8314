"""Plain training, AT, VAT, xAT and xVAT on the shared loop, each with a label budget (see
:mod:`harness_xvat.loop`). The model's own loss is the supervised term; each defense adds its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from harness.contracts import LOGITS, LOSS, Batch, Model, TrainingState
from harness_xvat.divergence import batch_stats_frozen, kl_divergence, virtual_adversarial_direction
from harness_xvat.loop import PerturbationDefense
from harness_xvat.masks import ExampleLogAlpha, HardConcrete, MaskGenerator, apply_mask

MODES = ("inductive", "transductive")
GENERATOR_LR = {"inductive": 1e-6, "transductive": 1e-3}
"""The reference scripts' ``lr_a`` on MNIST for each mode, supervised and semi-supervised alike.
The first commit of ``scripts/run_l0vat_mnist_inductive.sh`` (cc95668, 2020-03-17) had 1e-5 for the
semi-supervised inductive run; the next day's commit (d1086ac) set it to 1e-6, which we follow."""


class PlainTraining(PerturbationDefense):
    """The model's own loss on the labels kept: the paper's MLE baseline."""


class AdversarialTraining(PerturbationDefense):
    """Goodfellow et al.: ``(1 - weight) * loss(x) + weight * loss(x_adv)`` on the labelled batch,
    ``x_adv`` from the inner attack (any registered attack, e.g. FGSM or PGD, Linf or L2) run
    against the current model."""

    def __init__(self, *, attack: Mapping[str, Any], weight: float, **budget: Any):
        super().__init__(**budget)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1], got {weight}")
        self.attack_table = dict(attack)
        self.weight = weight

    def training_started(self, state: TrainingState) -> None:
        super().training_started(state)
        self.attack = state.ctx.build_attack(self.attack_table)

    def regularise(self, state: TrainingState, labeled: Batch, unlabeled: Batch, loss: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(state.model, labeled.x, labeled.y)
        return (1.0 - self.weight) * loss + self.weight * state.model.loss(x_adv, labeled.y, state)


class VirtualAdversarialTraining(PerturbationDefense):
    """Miyato et al.: ``loss + weight * KL(p(.|x) || p(.|x + eps * d))`` on the unlabelled batch,
    ``d`` the virtual adversarial direction by ``iterations`` power iterations, exact (``xi = 0``)
    or by finite difference ``xi``; the clean prediction is held fixed and no forward pass of the
    regulariser moves the batch-norm statistics (as in the official code)."""

    requires = frozenset({LOSS, LOGITS})

    def __init__(self, *, eps: float, xi: float, iterations: int, weight: float, **budget: Any):
        super().__init__(**budget)
        if eps <= 0 or xi < 0 or iterations < 1:
            raise ValueError("eps must be positive, xi at least 0 and iterations at least 1")
        self.eps, self.xi, self.iterations, self.weight = eps, xi, iterations, weight

    def regularise(self, state: TrainingState, labeled: Batch, unlabeled: Batch, loss: torch.Tensor) -> torch.Tensor:
        model: Model = state.model
        x = unlabeled.x
        with batch_stats_frozen(model):
            with torch.no_grad():
                log_p = torch.log_softmax(model.logits(x), dim=1)
            d = virtual_adversarial_direction(model.logits, x, log_p, self.xi, self.iterations, self.random)
            log_q = torch.log_softmax(model.logits(x + self.eps * d), dim=1)
        return loss + self.weight * kl_divergence(log_p, log_q).mean()


class MultiplicativeTraining(PerturbationDefense):
    """The common part of xAT and xVAT: a hard-concrete mask whose log-alpha comes from a small
    generator (inductive) or a per-example table (transductive), trained by gradient ascent on
    ``weight * distance + l0_weight * L0`` in the same step as the classifier descends on the whole
    loss (one backward pass, the mask's gradients negated: the reference's one-stage update).

    The loop owns one backward pass and one optimiser, so the mask's ascent step is taken just
    before the next step's forward (and after the last): the parameters each forward sees are the
    reference's.
    """

    requires = frozenset({LOSS, LOGITS})

    def __init__(
        self,
        *,
        mode: str,
        eps: float,
        weight: float,
        l0_weight: float,
        lr_a: float | None,
        gamma: float,
        zeta: float,
        beta: float,
        center: float,
        **budget: Any,
    ):
        super().__init__(**budget)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        self.mode, self.eps, self.weight, self.l0_weight = mode, eps, weight, l0_weight
        self.lr_a = GENERATOR_LR[mode] if lr_a is None else lr_a
        self.concrete = HardConcrete(gamma, zeta, beta)
        self.center = center

    def training_started(self, state: TrainingState) -> None:
        super().training_started(state)
        _, channels, height, width = state.x_train.shape
        if self.mode == "inductive":
            self.log_alpha: torch.nn.Module = MaskGenerator(channels)
        else:
            init = torch.Generator().manual_seed(state.ctx.seed)
            self.log_alpha = ExampleLogAlpha(len(state.x_train), height, width, init)
        self.log_alpha.to(state.ctx.device)
        self.ascent = torch.optim.Adam(self.log_alpha.parameters(), lr=self.lr_a) if self.lr_a > 0 else None

    def prepare_batch(self, state: TrainingState, batch: Batch) -> Batch:
        self._ascend()
        return super().prepare_batch(state, batch)

    def training_finished(self, state: TrainingState) -> None:
        self._ascend()
        super().training_finished(state)

    def masked(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch under a sampled mask, and the L0 term of its log-alpha."""
        if self.mode == "inductive":
            log_alpha = self.log_alpha(batch.x - self.center)
        else:
            log_alpha = self.log_alpha(batch.index)
        mask = self.concrete.sample(log_alpha, self.random)
        return apply_mask(batch.x, mask, self.eps, self.center), self.concrete.l0(log_alpha)

    def _ascend(self) -> None:
        """Ascent on what the last backward pass left in the mask's gradients."""
        parameters = [p for p in self.log_alpha.parameters() if p.grad is not None]
        if self.ascent is None or not parameters:
            return
        for parameter in parameters:
            parameter.grad.neg_()
        self.ascent.step()
        self.ascent.zero_grad(set_to_none=True)


class MultiplicativeAdversarialTraining(MultiplicativeTraining):
    """xAT: ``(1 - weight) * loss + l0_weight * L0 + weight * distance`` on the labelled batch.

    ``distance = "kl"`` is the reference's default (``kl=1``): KL(p(.|x_hat) || p(.|x)) with the
    clean prediction fixed, label-free; ``"ce"`` is the paper's formula, the cross-entropy of the
    masked input with the labels. The reference's xAT script never builds the generator's
    optimiser, so its mask stays at the random initialisation; ``lr_a = 0`` reproduces that, the
    default trains it as the paper describes.
    """

    def __init__(self, *, distance: str, **options: Any):
        super().__init__(**options)
        if distance not in ("kl", "ce"):
            raise ValueError(f"distance must be 'kl' or 'ce', got '{distance}'")
        self.distance = distance

    def regularise(self, state: TrainingState, labeled: Batch, unlabeled: Batch, loss: torch.Tensor) -> torch.Tensor:
        model: Model = state.model
        x_hat, l0 = self.masked(labeled)
        with batch_stats_frozen(model):
            if self.distance == "ce":
                distance = torch.nn.functional.cross_entropy(model.logits(x_hat), labeled.y)
            else:
                distance = _masked_divergence(model, labeled.x, x_hat)
        return (1.0 - self.weight) * loss + self.l0_weight * l0 + self.weight * distance


class MultiplicativeVirtualAdversarialTraining(MultiplicativeTraining):
    """xVAT: ``loss + l0_weight * L0 + weight * KL(p(.|x_hat) || p(.|x))`` on the unlabelled batch.

    The paper writes D[p(y|x), p(y|x_hat)]; the reference computes ``KLDivLoss(log p_x, p_x_hat)``,
    which is KL(p_x_hat || p_x), with p_x fixed. We follow the code.
    """

    def regularise(self, state: TrainingState, labeled: Batch, unlabeled: Batch, loss: torch.Tensor) -> torch.Tensor:
        model: Model = state.model
        x_hat, l0 = self.masked(unlabeled)
        with batch_stats_frozen(model):
            distance = _masked_divergence(model, unlabeled.x, x_hat)
        return loss + self.l0_weight * l0 + self.weight * distance


def _masked_divergence(model: Model, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """KL(p(.|x_hat) || p(.|x)), the clean prediction held fixed (the reference's ``kl=1``)."""
    with torch.no_grad():
        log_p = torch.log_softmax(model.logits(x), dim=1)
    return kl_divergence(torch.log_softmax(model.logits(x_hat), dim=1), log_p).mean()

"""The paper's defenses of the SCAE (Algorithms 2-5): adversarial training (AT), adversarial
distillation from the undefended SCAE (AD), both in turn (HAT), and adversarial training from the
pretrained SCAE (NTAT), written once on the shared training loop.

Every ``interval + 1``-th batch is replaced by the training generator's adversarial examples
(Algorithm 5: the evasion attack with sign steps against the current model's posterior linear
probe; failures return the clean image). As in the reference code, the capsule noise is off while
a defense trains (``noise = false``), and the learning-rate schedule of the model applies to every
defense (the reference's AT script drops it, which we take for an oversight).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from harness.contracts import LOSS, Batch, Dataset, Model, TrainContext, TrainingLoopDefense, TrainingState
from harness_scae.model import PRESENCES, SCAE, Encoding


def distillation_loss(student: Encoding, teacher: Encoding) -> torch.Tensor:
    """Formula (8)'s distance as the reference computes it: half the summed squared differences of
    the prior presences (B, O) and of the full part-object posteriors (B, M, O)."""
    prior = (student.prior - teacher.prior.detach()).square().sum()
    posterior = (student.posterior - teacher.posterior.detach()).square().sum()
    return 0.5 * (prior + posterior)


class SCAEAdversarialDefense(TrainingLoopDefense):
    """The common loop: which batches are adversarial, and the phases of each defense.

    ``phases`` lists (kind, epochs) in order, kind "distill" (AD's loss) or "train" (AT's loss);
    ``None`` epochs take the model's own.
    """

    requires = frozenset({LOSS, PRESENCES})
    phases: tuple[tuple[str, int | None], ...] = ()
    from_teacher = False

    def __init__(self, attack: Mapping[str, Any], interval: int, weight: float, noise: bool):
        if interval < 0:
            raise ValueError(f"interval must be at least 0, got {interval}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1], got {weight}")
        self.attack_table = dict(attack)
        self.interval = interval
        self.weight = weight
        self.noise = noise

    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        if not isinstance(model, SCAE):
            raise TypeError(f"{type(self).__name__} trains an SCAE, got {type(model).__name__}")
        own_epochs = model.training_settings().epochs
        self.schedule = [(kind, own_epochs if epochs is None else epochs) for kind, epochs in self.phases]
        settings = replace(model.training_settings(), epochs=sum(epochs for _, epochs in self.schedule))
        ctx.fit(model, data, hooks=[self], settings=settings)
        return model

    def phase(self, epoch: int) -> str:
        for kind, epochs in self.schedule:
            if epoch < epochs:
                return kind
            epoch -= epochs
        return self.schedule[-1][0]

    def training_started(self, state: TrainingState) -> None:
        model: SCAE = state.model  # type: ignore[assignment]
        self.generator = state.ctx.build_attack(self.attack_table)
        self.batches = 0
        self.teacher: SCAE | None = None
        if self.from_teacher or any(kind == "distill" for kind, _ in self.schedule):
            self.teacher = state.ctx.teacher().to(state.ctx.device).eval()  # type: ignore[assignment]
        if self.from_teacher:
            model.load_state_dict(self.teacher.state_dict())
        model.set_noise(self.noise)

    def training_finished(self, state: TrainingState) -> None:
        model: SCAE = state.model  # type: ignore[assignment]
        model.set_noise(model.config.noise_scale > 0)
        self.teacher = None

    def prepare_batch(self, state: TrainingState, batch: Batch) -> Batch:
        self.batches += 1
        self.clean = batch.x
        if self.batches % (self.interval + 1):
            return batch
        x_adv = self.generator(state.model, batch.x, batch.y)
        if self.phase(state.epoch) == "train":
            # AT: the adversarial input is reconstructed as the clean image (Formula 7).
            return Batch(x_adv, batch.y, batch.index, target=batch.x)
        # AD: the reference's student reconstructs its own (adversarial) input.
        return Batch(x_adv, batch.y, batch.index)

    def extend_loss(self, state: TrainingState, batch: Batch, loss: torch.Tensor) -> torch.Tensor:
        if self.phase(state.epoch) == "train":
            return loss
        with torch.no_grad():
            teacher = self.teacher.encode(self.clean, render=False)  # type: ignore[union-attr]
        distance = distillation_loss(state.outputs["encoding"], teacher)
        return (1.0 - self.weight) * loss + self.weight * distance


class AdversarialTraining(SCAEAdversarialDefense):
    """AT-SCAE (Algorithm 2): from scratch, adversarial batches reconstruct the clean image."""

    def __init__(self, *, attack: Mapping[str, Any], interval: int, epochs: int | None, noise: bool):
        super().__init__(attack, interval, 0.0, noise)
        self.phases = (("train", epochs),)


class AdversarialDistillation(SCAEAdversarialDefense):
    """AD-SCAE (Algorithm 3): a fresh student distils the undefended SCAE (the teacher sees clean
    inputs) on clean and adversarial batches."""

    def __init__(self, *, attack: Mapping[str, Any], interval: int, epochs: int | None, weight: float, noise: bool):
        super().__init__(attack, interval, weight, noise)
        self.phases = (("distill", epochs),)


class HybridAdversarialTraining(SCAEAdversarialDefense):
    """HAT-SCAE (Algorithm 4): adversarial distillation, then adversarial training; the batch
    counter and the learning-rate schedule carry over between the phases. ``None`` epochs: half
    the model's each."""

    def __init__(
        self,
        *,
        attack: Mapping[str, Any],
        interval: int,
        distill_epochs: int | None,
        train_epochs: int | None,
        weight: float,
        noise: bool,
    ):
        super().__init__(attack, interval, weight, noise)
        self.distill_epochs, self.train_epochs = distill_epochs, train_epochs

    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        half = max(model.training_settings().epochs // 2, 1)
        self.phases = (
            ("distill", half if self.distill_epochs is None else self.distill_epochs),
            ("train", half if self.train_epochs is None else self.train_epochs),
        )
        return super().train(model, data, ctx)


class PretrainedAdversarialTraining(SCAEAdversarialDefense):
    """NTAT-SCAE (the ablation of Tables 7-8): adversarial training that starts from the
    undefended SCAE's weights instead of HAT's distillation phase. ``None`` epochs: half the model's."""

    from_teacher = True

    def __init__(self, *, attack: Mapping[str, Any], interval: int, epochs: int | None, noise: bool):
        super().__init__(attack, interval, 0.0, noise)
        self.epochs = epochs

    def train(self, model: Model, data: Dataset, ctx: TrainContext) -> Model:
        half = max(model.training_settings().epochs // 2, 1)
        self.phases = (("train", half if self.epochs is None else self.epochs),)
        return super().train(model, data, ctx)

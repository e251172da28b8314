"""Adversarial training recipes on the shared loop, written once for every model with ``loss``.

The inner maximisation runs with the model in evaluation mode (batch norm on its running
statistics, no dropout), as the TRADES reference code does, and gives the parameters no
gradients; the outer step trains on what it found in training mode. Random starts draw from a
generator seeded by the cell's seed, so a cached model is the one a rerun would train.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.contracts import LOGITS, Batch, Model, TrainingLoopDefense, TrainingState, attacking

Objective = Callable[[torch.Tensor], torch.Tensor]


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """``delta`` moved to the nearest point of the eps ball of ``norm`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / flat).clamp(max=1.0).view(-1, *[1] * (delta.ndim - 1))


def ascent_direction(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit size in ``norm``: the sign (Linf) or the normalised gradient (L2)."""
    if norm == "linf":
        return gradient.sign()
    flat = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
    return gradient / flat.view(-1, *[1] * (gradient.ndim - 1))


def uniform_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A random point of the eps ball around 0: uniform per pixel (Linf, as Madry et al. and Wong et
    al.), or uniform in the L2 ball."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
    radius = eps * torch.rand((len(x),), generator=generator, device=x.device) ** (1 / x[0].numel())
    return direction * radius.view(-1, *[1] * (x.ndim - 1))


def maximise(
    model: Model, objective: Objective, x: torch.Tensor, start: torch.Tensor, norm: str, eps: float, step: float,
    steps: int,
) -> torch.Tensor:
    """Projected gradient ascent of ``objective(x')`` (a scalar) over images x' in [0, 1] within eps
    of ``x``, from ``x + start``; the model in evaluation mode, its parameters and mode left as they were."""
    with attacking(model):
        model.eval()
        x_adv = (x + project(start, norm, eps)).clamp(0, 1).detach()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (gradient,) = torch.autograd.grad(objective(x_adv), x_adv)
            x_adv = x_adv.detach() + step * ascent_direction(gradient, norm)
            x_adv = (x + project(x_adv - x, norm, eps)).clamp(0, 1).detach()
    return x_adv


class _AdversarialTraining(TrainingLoopDefense):
    def __init__(self, norm: str, eps: float):
        self.norm = norm
        self.eps = eps
        self.generator: torch.Generator | None = None

    def training_started(self, state: TrainingState) -> None:
        self.generator = torch.Generator(device=state.ctx.device).manual_seed(state.ctx.seed)

    def model_loss(self, state: TrainingState, batch: Batch) -> Objective:
        """The model's own training loss at other inputs, reconstructing the clean batch."""
        clean = batch if batch.target is not None else Batch(batch.x, batch.y, batch.index, target=batch.x)

        def objective(x_adv: torch.Tensor) -> torch.Tensor:
            state.batch, state.outputs = clean, {}
            return state.model.loss(x_adv, batch.y, state)

        return objective


class PGDAdversarialTraining(_AdversarialTraining):
    """Madry et al.: minimise the loss at the PGD maximiser of the loss within the eps ball."""

    def __init__(self, *, norm: str, eps: float, eps_step: float, max_iter: int, random_start: bool):
        super().__init__(norm, eps)
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.random_start = random_start

    def prepare_batch(self, state: TrainingState, batch: Batch) -> Batch:
        assert self.generator is not None
        start = uniform_start(batch.x, self.norm, self.eps, self.generator) if self.random_start else 0 * batch.x
        x_adv = maximise(
            state.model, self.model_loss(state, batch), batch.x, start, self.norm, self.eps, self.eps_step, self.max_iter
        )
        return Batch(x_adv, batch.y, batch.index, target=batch.x if batch.target is None else batch.target)


class FastAdversarialTraining(PGDAdversarialTraining):
    """Wong et al.: one FGSM step of alpha from a uniform random start, projected to the eps ball."""

    def __init__(self, *, norm: str, eps: float, alpha: float | None):
        super().__init__(norm=norm, eps=eps, eps_step=1.25 * eps if alpha is None else alpha, max_iter=1, random_start=True)


def trades_divergence(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """TRADES' robust term KL(p(x) || p(x')), summed over classes and averaged over the batch (the
    reference's ``KLDivLoss(size_average=False)`` divided by the batch size)."""
    return F.kl_div(
        F.log_softmax(adversarial_logits, dim=1), F.log_softmax(clean_logits, dim=1), reduction="batchmean",
        log_target=True,
    )


class TRADES(_AdversarialTraining):
    """Zhang et al.: the model's loss on the clean batch + beta * KL(p(x) || p(x')), with x' the PGD
    maximiser of that KL (the clean distribution held fixed) from x + 0.001 N(0, 1)."""

    requires = frozenset({*TrainingLoopDefense.requires, LOGITS})

    def __init__(self, *, norm: str, eps: float, eps_step: float, max_iter: int, beta: float):
        super().__init__(norm, eps)
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.beta = beta
        self._adversarial: torch.Tensor | None = None

    def prepare_batch(self, state: TrainingState, batch: Batch) -> Batch:
        assert self.generator is not None
        model = state.model
        with torch.no_grad():
            model.eval()
            clean = model.logits(batch.x)
        start = 0.001 * torch.randn(batch.x.shape, generator=self.generator, device=batch.x.device)
        self._adversarial = maximise(
            model, lambda x_adv: trades_divergence(clean, model.logits(x_adv)), batch.x, start, self.norm, self.eps,
            self.eps_step, self.max_iter,
        )  # fmt: skip
        model.train()
        return batch

    def extend_loss(self, state: TrainingState, batch: Batch, loss: torch.Tensor) -> torch.Tensor:
        assert self._adversarial is not None
        model = state.model
        return loss + self.beta * trades_divergence(model.logits(batch.x), model.logits(self._adversarial))

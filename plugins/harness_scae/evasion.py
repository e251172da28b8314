"""The SCAE evasion attack (Section 4 and Appendix A of the HAT-SCAE paper): a minimal-L2 untargeted attack.

It lowers the presences of the object capsules that are active on the clean image until the
head's classifier (k-means or linear probe on the capsule presences) changes its label, and keeps
the smallest successful perturbation. A per-image binary search tunes the trade-off constant
between the perturbation size and the presence penalty, as in the reference code
(``attack_opt.py::AttackerOPT``), with every image of a batch attacked strictly independently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.contracts import Attack, AttackOutcome, Model
from harness_scae.presets import head_source

OPTIMIZERS = ("adam", "sign")
ATANH_SHRINK = 0.999999
"""Keeps atanh(2x - 1) finite at pixels of exactly 0 or 1, as the reference code does."""
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def active_capsules(presences: torch.Tensor) -> torch.Tensor:
    """(B, O) bool: the capsules whose clean presence exceeds the mean of the image's own O presences.

    The reference's batched code compares with one mean over the whole batch, which makes an image's
    targets depend on the other images in its batch; we use the per-image mean of Formula 4 (and of
    the reference's batch-1 code) so that each image is attacked independently.
    """
    return presences > presences.mean(dim=1, keepdim=True)


def ink_mask(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 box average of each image (same size, zero padding): perturbations only near ink."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=True)


def update_const(
    const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, succeeded: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the per-image binary search on the trade-off constant; returns (const, lower, upper).

    A success in the last outer iteration makes the constant an upper bound, a failure a lower bound.
    The constant grows tenfold while no upper bound is known, and is then the bounds' midpoint.
    """
    upper = torch.where(succeeded, const, upper)
    lower = torch.where(succeeded, lower, const)
    const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    return const, lower, upper


@dataclass(frozen=True)
class EvasionResult:
    """Per image: the adversarial input (the clean one where nothing was found), whether the attack
    broke it, the final trade-off constant, and whether the clean input was classified correctly."""

    x_adv: torch.Tensor
    success: torch.Tensor
    const: torch.Tensor
    clean_correct: torch.Tensor


class _Adam:
    """Adam on a batched tensor: elementwise, so each image's steps depend only on its own gradients."""

    def __init__(self, like: torch.Tensor, lr: float):
        self.lr = lr
        self.first = torch.zeros_like(like)
        self.second = torch.zeros_like(like)
        self.steps = 0

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        beta1, beta2 = ADAM_BETAS
        self.steps += 1
        self.first.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (self.second / (1 - beta2**self.steps)).sqrt_().add_(ADAM_EPS)
        return self.lr / (1 - beta1**self.steps) * self.first / denominator


def _step_rule(optimizer: str, lr: float, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The step subtracted from w given the gradient: Adam (Table 4) or a signed step (Formula 9)."""
    if optimizer == "adam":
        return _Adam(like, lr)
    if optimizer == "sign":
        return lambda grad: lr * grad.sign()
    raise ValueError(f"unknown optimizer '{optimizer}' (known: {', '.join(OPTIMIZERS)})")


def _per_image(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values viewed as (B, 1, ...) to select whole images of ``like``."""
    return flags.view(-1, *[1] * (like.ndim - 1))


def scae_evasion(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    head: str,
    initial_w: Callable[[int], torch.Tensor],
    outer: int,
    inner: int,
    const: float,
    optimizer: str,
    lr: float,
    mask: bool,
) -> EvasionResult:
    """Attack the images ``x`` (labels ``y``) together, each exactly as if it were attacked alone.

    ``initial_w(k)`` gives the starting w (the shape of ``x``) of outer iteration ``k``, so that a
    caller can replay the same noise image by image. Images the head misclassifies on the clean
    input are not attacked.
    """
    source = head_source(head)
    with torch.no_grad():
        clean_presences = model.capsule_presences(x, source)
        clean_correct = model.classify_presences(clean_presences, head) == y
    x_adv = x.detach().clone()
    success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    consts = torch.full((len(x),), float(const), dtype=x.dtype, device=x.device)
    attacked = clean_correct.nonzero().squeeze(1)
    if len(attacked):
        found, broken, final_const = _attack_correct(
            model,
            x[attacked].detach(),
            y[attacked],
            clean_presences[attacked],
            head=head,
            initial_w=lambda k: initial_w(k)[attacked],
            outer=outer,
            inner=inner,
            const=consts[attacked],
            optimizer=optimizer,
            lr=lr,
            mask=mask,
        )
        x_adv[attacked], success[attacked], consts[attacked] = found, broken, final_const
    return EvasionResult(x_adv, success, consts, clean_correct)


def _attack_correct(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_presences: torch.Tensor,
    *,
    head: str,
    initial_w: Callable[[int], torch.Tensor],
    outer: int,
    inner: int,
    const: torch.Tensor,
    optimizer: str,
    lr: float,
    mask: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 on correctly classified images; returns (best x', broken, final const)."""
    source = head_source(head)
    targets = active_capsules(clean_presences).to(x.dtype)
    offset = torch.atanh((2 * x - 1) * ATANH_SHRINK)
    scale = ink_mask(x) if mask else torch.ones_like(x)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, float("inf"))
    best_x = x.clone()
    best_distance = torch.full_like(const, float("inf"))

    def evaluate(w: torch.Tensor, const: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The candidate x', its presences and the per-image loss ½‖x' − x‖² + const·½Σ_S a²."""
        candidate = 0.5 * (torch.tanh(w * scale + offset) + 1)
        presences = model.capsule_presences(candidate, source)
        distance_term = 0.5 * (candidate - x).flatten(1).square().sum(dim=1)
        capsule_term = 0.5 * (presences * targets).square().sum(dim=1)
        return candidate, presences, distance_term + const * capsule_term

    for k in range(outer):
        w = initial_w(k).detach().clone().requires_grad_(True)
        step = _step_rule(optimizer, lr, w)
        running = torch.ones_like(const, dtype=torch.bool)
        succeeded = torch.zeros_like(running)
        with torch.enable_grad():
            candidate, presences, losses = evaluate(w, const)
        for j in range(inner):
            running &= torch.isfinite(losses.detach())  # a NaN loss stops its image for this outer iteration
            if not running.any():
                break
            with torch.enable_grad():
                # The sum keeps each image's gradient its own: its loss only touches its own slice.
                (grad,) = torch.autograd.grad(losses.where(running, 0).sum(), w)
            with torch.no_grad():
                keep = _per_image(running, w)
                w = torch.where(keep, w - step(torch.where(keep, grad, 0)), w).requires_grad_(True)
            # Judge the updated x' now; the same pass (with its graph, but after the last step) gives the next gradient.
            with torch.set_grad_enabled(j < inner - 1):
                candidate, presences, losses = evaluate(w, const)
            with torch.no_grad():
                predicted = model.classify_presences(presences.detach(), head)
                broken = running & torch.isfinite(losses) & (predicted != y)
                distance = (candidate.detach() - x).flatten(1).norm(dim=1)
                better = broken & (distance < best_distance)
                best_x = torch.where(_per_image(better, x), candidate.detach(), best_x)
                best_distance = torch.where(better, distance, best_distance)
                succeeded |= broken
        const, lower, upper = update_const(const, lower, upper, succeeded)
    return best_x, torch.isfinite(best_distance), const


class SCAEEvasion(Attack):
    """The SCAE evasion attack: minimal L2, untargeted, run once with ``eps=None``.

    ``head`` chooses the presences attacked and the classifier that judges success ("" = the model's
    configured head). The reference code runs ``outer`` = 9 outer iterations of ``inner`` = 300 Adam
    steps; the paper's text swaps the two numbers, and we follow the code. ``lr`` is Adam's learning
    rate (Table 4) or, with ``optimizer="sign"``, the step beta of Formula 9 (Appendix A).
    """

    requires = frozenset({"capsule_presences", "classify_presences"})
    minimal_norm = True

    def __init__(
        self,
        norm: str = "l2",
        head: str = "",
        outer: int = 9,
        inner: int = 300,
        const: float = 100.0,
        optimizer: str = "adam",
        lr: float = 1.0,
        mask: bool = True,
        batch_size: int = 100,
    ):
        if norm != "l2":
            raise ValueError(f"the SCAE evasion attack minimises the l2 norm, not '{norm}'")
        if head:
            head_source(head)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{optimizer}' (known: {', '.join(OPTIMIZERS)})")
        if outer < 1 or inner < 1 or batch_size < 1:
            raise ValueError("outer, inner and batch_size must be at least 1")
        super().__init__(norm)
        self.head = head
        self.outer = outer
        self.inner = inner
        self.const = const
        self.optimizer = optimizer
        self.lr = lr
        self.mask = mask
        self.batch_size = batch_size

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> AttackOutcome:
        head = self.head or model.head
        # Presences without the training noise, also when a defense attacks its model mid-training
        # (the harness restores the model's mode afterwards).
        model.eval()
        results = []
        for x_chunk, y_chunk in zip(x.split(self.batch_size), y.split(self.batch_size)):

            def initial_w(_: int, like: torch.Tensor = x_chunk) -> torch.Tensor:
                return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)

            results.append(
                scae_evasion(
                    model,
                    x_chunk,
                    y_chunk,
                    head=head,
                    initial_w=initial_w,
                    outer=self.outer,
                    inner=self.inner,
                    const=self.const,
                    optimizer=self.optimizer,
                    lr=self.lr,
                    mask=self.mask,
                )
            )
        success = torch.cat([r.success for r in results])
        clean_correct = torch.cat([r.clean_correct for r in results])
        # Over the correctly classified images only; 0 for a batch without any (the runner averages
        # this scalar over batches, where a NaN would spoil the whole cell).
        success_rate = success[clean_correct].double().mean().item() if clean_correct.any() else 0.0
        return AttackOutcome(
            torch.cat([r.x_adv for r in results]),
            extras={"success": success.to(x.dtype), "const": torch.cat([r.const for r in results])},
            scalars={"success_rate": success_rate},
        )

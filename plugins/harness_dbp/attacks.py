"""Targeted attacks on autoencoders (Formulas 8-9; Gondim-Ribeiro et al., 2018): from a source
image, find an additive perturbation whose latent code (``latent-attack``) or reconstruction
(``output-attack``) resembles a target image's, over a grid of trade-off constants C.

Every (source, C) pair is optimised at once in one batch, each with its own loss, gradient
clipping and best-so-far perturbation, so the result is the one the reference gets attacking them
one at a time. Per source the outcome records, for every C, the input distortion
||delta|| / ||x_source - x_target|| and the normalised output distortion that the AUDDC metric
integrates; the adversarial input returned is the one closest to its target among those within
the source-target distance.
"""

from __future__ import annotations

import math

import torch

from harness.contracts import Attack, AttackOutcome, Model
from harness_dbp.models import ENCODE, RECONSTRUCT

def choose_pairs(y: torch.Tensor, pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` distinct source positions and, for each, a target position with another label."""
    order = torch.randperm(len(y), generator=generator, device=y.device)
    sources, targets = [], []
    for source in order.tolist():
        others = (y != y[source]).nonzero().squeeze(1)
        if len(others) == 0:
            continue
        pick = int(torch.randint(len(others), (), generator=generator, device=y.device))
        sources.append(source)
        targets.append(int(others[pick]))
        if len(sources) == pairs:
            break
    device = y.device
    return torch.tensor(sources, dtype=torch.long, device=device), torch.tensor(targets, dtype=torch.long, device=device)


def gaussian_kl(mean_1: torch.Tensor, log_var_1: torch.Tensor, mean_2: torch.Tensor, log_var_2: torch.Tensor) -> torch.Tensor:
    """KL(N1 || N2) between diagonal Gaussians, per row."""
    return 0.5 * (
        log_var_2 - log_var_1 + (log_var_1.exp() + (mean_1 - mean_2).square()) / log_var_2.exp() - 1.0
    ).sum(dim=1)


class AutoencoderAttack(Attack):
    """The shared optimisation; subclasses define the distance to the target being minimised."""

    requires = frozenset({ENCODE, RECONSTRUCT})
    minimal_norm = True

    def __init__(
        self,
        norm: str,
        pairs: int,
        iterations: int,
        lr: float,
        c_grid: list[float],
        reconstructions: int,
    ):
        if norm != "l2":
            raise ValueError(f"the autoencoder attacks measure the l2 norm, not '{norm}'")
        if pairs < 1 or iterations < 1 or reconstructions < 1 or not c_grid:
            raise ValueError("pairs, iterations and reconstructions must be at least 1, and c_grid not empty")
        super().__init__(norm)
        self.pairs, self.iterations, self.lr = pairs, iterations, lr
        self.c_grid = [float(c) for c in c_grid]
        self.reconstructions = reconstructions

    def distance(self, model: Model, x_in: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
        """What the attack brings down, per row (R,)."""
        raise NotImplementedError

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> AttackOutcome:
        model.eval()
        sources, targets = choose_pairs(y, self.pairs, generator)
        n_pairs, n_c = len(sources), len(self.c_grid)
        x_source = x[sources].repeat_interleave(n_c, dim=0)
        x_target = x[targets].repeat_interleave(n_c, dim=0)
        constants = torch.tensor(self.c_grid, device=x.device, dtype=x.dtype).repeat(n_pairs)
        delta = self.optimise(model, x_source, x_target, constants, generator)
        x_in = (x_source + delta).clamp(0.0, 1.0)
        input_distortion, output_distortion = self.distortions(model, x[sources], x[targets], x_in, generator)
        input_distortion = input_distortion.view(n_pairs, n_c)
        output_distortion = output_distortion.view(n_pairs, n_c)
        x_adv = x.clone()
        # Among the perturbations within the source-target distance, the one closest to its target.
        closeness = torch.where(input_distortion <= 1.0, output_distortion, torch.inf)
        best = closeness.argmin(dim=1)
        chosen = torch.isfinite(closeness.gather(1, best[:, None]).squeeze(1))
        picked = x_in.view(n_pairs, n_c, *x.shape[1:])[torch.arange(n_pairs, device=x.device), best]
        x_adv[sources[chosen]] = picked[chosen]
        per_sample = x.new_full((len(x), n_c), math.nan)
        inputs, outputs = per_sample.clone(), per_sample.clone()
        inputs[sources], outputs[sources] = input_distortion, output_distortion
        target_index = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        target_index[sources] = targets
        return AttackOutcome(
            x_adv,
            extras={"input_distortion": inputs, "output_distortion": outputs, "target": target_index},
        )

    def optimise(
        self,
        model: Model,
        x_source: torch.Tensor,
        x_target: torch.Tensor,
        constants: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Adam on every row's perturbation at once; each row's gradient is clipped by its own
        norm (3) and then to [-1, 1], and its lowest-loss perturbation is kept (the reference's rules)."""
        delta = (torch.rand(x_source.shape, generator=generator, device=x_source.device, dtype=x_source.dtype) - 0.5) * 2e-8
        delta.requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.lr)
        best_delta, best_loss = delta.detach().clone(), torch.full_like(constants, math.inf)
        for _ in range(self.iterations):
            x_in = (x_source + delta).clamp(0.0, 1.0)
            losses = constants * delta.flatten(1).square().sum(dim=1) + self.distance(model, x_in, x_target)
            with torch.no_grad():
                better = losses < best_loss
                best_loss = torch.where(better, losses, best_loss)
                best_delta[better] = delta[better]
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            with torch.no_grad():
                norms = delta.grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                scale = (3.0 / norms).clamp(max=1.0).view(-1, *[1] * (delta.ndim - 1))
                delta.grad.mul_(scale).clamp_(-1.0, 1.0)
            optimizer.step()
        return best_delta

    @torch.no_grad()
    def distortions(
        self,
        model: Model,
        x_source: torch.Tensor,
        x_target: torch.Tensor,
        x_in: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: ||delta|| / ||x_s - x_t|| and (d(x^(x_in), x_t) - d(x^(x_t), x_t)) /
        (d(x^(x_s), x_t) - d(x^(x_t), x_t)), the distances averaged over stochastic reconstructions."""
        n_c = len(self.c_grid)
        gap = (x_source - x_target).flatten(1).norm(dim=1).repeat_interleave(n_c)
        x_s = x_source.repeat_interleave(n_c, dim=0)
        x_t = x_target.repeat_interleave(n_c, dim=0)
        input_distortion = (x_in - x_s).flatten(1).norm(dim=1) / gap.clamp_min(1e-12)

        def to_target(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            distances = [
                (model.reconstruct(images, sample=True) - targets).flatten(1).norm(dim=1)
                for _ in range(self.reconstructions)
            ]
            return torch.stack(distances).mean(dim=0)

        attacked = to_target(x_in, x_t)
        floor = to_target(x_target, x_target).repeat_interleave(n_c)
        ceiling = to_target(x_source, x_target).repeat_interleave(n_c)
        span = ceiling - floor  # not positive: the model reconstructs the source no farther from the target
        return input_distortion, torch.where(span > 0, (attacked - floor) / span, math.nan)


class LatentAttack(AutoencoderAttack):
    """Formula 9: bring the encoding of the perturbed source close to the target's, measured by
    KL(q(z | x + delta) || q(z | x_target))."""

    def distance(self, model: Model, x_in: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
        mean, log_var = model.encode(x_in)
        with torch.no_grad():
            target_mean, target_log_var = model.encode(x_target)
        return gaussian_kl(mean, log_var, target_mean, target_log_var)


class OutputAttack(AutoencoderAttack):
    """Formula 8: bring the reconstruction of the perturbed source (one sampled latent) close to the
    target image, in squared L2."""

    def distance(self, model: Model, x_in: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
        return (model.reconstruct(x_in, sample=True) - x_target).flatten(1).square().sum(dim=1)

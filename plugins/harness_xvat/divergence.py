"""The divergences and the virtual adversarial direction that VAT and xVAT regularise with, and
the forward passes that leave batch-norm statistics alone (the reference's ``update_batch_stats=False``)
or re-estimate them over the whole pool (the official VAT's evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

Logits = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def batch_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Inside the block a training-mode forward normalises with the batch's own statistics but
    does not fold them into the running ones: perturbed and unlabelled batches must not shift the
    statistics the model is evaluated with."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for module in norms:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in norms:
            module.track_running_stats = True


def reestimate_batch_stats(model: nn.Module, forward: Callable[[torch.Tensor], object], x: torch.Tensor, batch_size: int) -> None:
    """Replace every batch norm's running statistics by their average over ``x`` in batches of
    ``batch_size`` (training-mode forwards, no gradients), each batch weighted by its size: the
    official VAT tests with statistics of the whole training pool, not the running averages that
    the last steps dominate. Leaves the model in training mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
    model.train()
    device = next(model.parameters()).device
    seen = 0
    try:
        with torch.no_grad():
            for chunk in x.split(batch_size):
                seen += len(chunk)
                for module in norms:
                    module.momentum = len(chunk) / seen  # the running value becomes the size-weighted mean
                forward(chunk.to(device))
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per sample, from log-probabilities (B, K)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def normalised(d: torch.Tensor) -> torch.Tensor:
    """Per-sample unit L2 norm, as the official VAT code computes it: divide by the largest
    entry first so that tiny gradients do not underflow."""
    shape = (-1,) + (1,) * (d.dim() - 1)
    d = d / (1e-12 + d.flatten(1).abs().amax(dim=1).view(shape))
    return d / torch.sqrt(1e-6 + d.flatten(1).square().sum(dim=1)).view(shape)


def virtual_adversarial_direction(
    logits: Logits, x: torch.Tensor, log_p: torch.Tensor, xi: float, iterations: int, generator: torch.Generator
) -> torch.Tensor:
    """The unit direction in which KL(p(.|x) || p(.|x + r)) grows fastest: ``iterations`` power
    iterations on the KL's Hessian H at r = 0 from a Gaussian start (Miyato et al.), ``log_p``, the
    clean prediction, held fixed. With ``xi > 0`` an iteration is the paper's finite difference, the
    KL's gradient at r = xi * d (about xi * H d); with ``xi = 0`` it is the exact product H d by
    double backpropagation, the difference's limit (the official code's ``--cost_type=VAT``).

    The official MNIST command takes xi = 1e-6 in Theano's floatX, float64 unless configured, where
    it agrees with the exact product (cosine 1.000). In float32 a step of 1e-6 is below the
    rounding of the logits: on MLPSemi after 1,500 VAT steps the direction's median |cosine| to the
    exact one is 0.43, with a random sign. Only ``d`` gets gradients, never the weights."""
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if xi == 0:
        r = torch.zeros_like(x, requires_grad=True)
        distance = kl_divergence(log_p, torch.log_softmax(logits(x + r), dim=1)).mean()
        (slope,) = torch.autograd.grad(distance, r, create_graph=True)  # zero at r = 0; its derivative is H
        for step in range(iterations):
            (d,) = torch.autograd.grad((slope * normalised(d)).sum(), r, retain_graph=step < iterations - 1)
        return normalised(d)
    for _ in range(iterations):
        d = (xi * normalised(d)).requires_grad_()
        distance = kl_divergence(log_p, torch.log_softmax(logits(x + d), dim=1)).mean()
        (d,) = torch.autograd.grad(distance, d)
    return normalised(d)

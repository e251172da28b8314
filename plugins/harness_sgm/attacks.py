"""The SGM paper's own FGSM protocol, a weaker evaluation than a white-box FGSM, offered so that the
paper's Table 5 can be reproduced as it was measured (the authors' ``nitbix/deep-learning-experiments``,
``papers/InputUpdates_Adversarial``).

Their FGSM takes the gradient in training mode (dropout drawn, batch norm on the batch's own
statistics) of Keras' cross-entropy, whose probabilities are clipped to [1e-7, 1 - 1e-7]: a sample
whose true class has a probability above 1 - 1e-7 gets a zero gradient and no perturbation. They
craft the perturbations once per dataset and reuse them for every model (a transfer from one
model): run this attack through the core's ``transfer`` attack with one source model. One
departure: their adversarial images are not clipped to [0, 1]; the harness's threat model keeps
every image in [0, 1], so ours are clipped.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from harness.contracts import Attack, Model

KERAS_EPSILON = 1e-7
"""Keras' ``epsilon()``: the clip of the probabilities in ``categorical_crossentropy``."""


def keras_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keras' categorical cross-entropy per sample: -log of the softmax probability of the true
    class, clipped to [1e-7, 1 - 1e-7] (the clip cuts the gradient where it applies)."""
    probabilities = F.softmax(logits, dim=1).clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -probabilities.gather(1, y[:, None]).squeeze(1).log()


class PaperFGSM(Attack):
    """One signed gradient step of size eps, the gradient of the clipped cross-entropy taken in
    training mode; the model's batch-norm statistics are left as they were."""

    def __init__(self, norm: str = "linf"):
        if norm != "linf":
            raise ValueError(f"the paper's FGSM is an Linf attack, not '{norm}'")
        super().__init__(norm)

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> torch.Tensor:
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
        model.train()  # dropout drawn from torch's global generator, seeded by the runner per cell
        try:
            inputs = x.detach().clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(keras_cross_entropy(model.logits(inputs), y).sum(), inputs)
        finally:
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(buffers[name])  # a training-mode forward moves the running statistics
        return (x + eps * gradient.sign()).clamp(0.0, 1.0)

"""A white-box multiplicative attack: how many pixels must a mask erase before the model errs?

The paper trains against multiplicative masks but never attacks with them; this measures what
that buys. The perturbed image is ``center + (x - center) * z`` with a binary mask z over pixels
(all channels at once), the threat model the number of erased pixels.
"""

from __future__ import annotations

import torch

from harness.contracts import LOGITS, Attack, Model


class MaskErasure(Attack):
    """Greedy and minimal-norm: from the clean image, erase (set to ``center``) the ``per_step``
    pixels whose erasure raises the cross-entropy most to first order, until the prediction changes
    or ``max_pixels`` are erased. Each sample's norm is its number of erased pixels; the runner
    derives the robust accuracy at every pixel budget from one run. Deterministic."""

    minimal_norm = True
    requires = frozenset({LOGITS})

    def __init__(self, *, norm: str, center: float, max_pixels: int, per_step: int):
        super().__init__(norm)
        if max_pixels < 1 or per_step < 1:
            raise ValueError("max_pixels and per_step must be at least 1")
        self.center, self.max_pixels, self.per_step = center, max_pixels, per_step

    def generate(
        self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None, *, generator: torch.Generator
    ) -> torch.Tensor:
        offset = x - self.center
        keep = torch.ones(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        erasable = offset.abs().amax(dim=1, keepdim=True) > 0  # erasing a pixel already at center changes nothing
        result = x.clone()
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        erased = 0
        while True:
            mask = keep.clone().requires_grad_()
            x_adv = self.center + offset * mask
            logits = model.logits(x_adv)
            fooled = active & (logits.argmax(dim=1) != y)
            result[fooled] = x_adv[fooled].detach()
            active &= ~fooled
            candidates = erasable & (keep > 0)
            movable = active & candidates.flatten(1).any(dim=1)
            if erased >= self.max_pixels or not movable.any():
                break
            (gradient,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y, reduction="sum"), mask)
            gain = (-gradient).masked_fill(~candidates, float("-inf")).flatten(1)[movable]
            step = min(self.per_step, self.max_pixels - erased, gain.shape[1])
            best = gain.topk(step, dim=1)
            rows = movable.nonzero().flatten().unsqueeze(1).expand_as(best.indices)
            finite = torch.isfinite(best.values)
            keep = keep.flatten(1)
            keep[rows[finite], best.indices[finite]] = 0.0
            keep = keep.view_as(mask)
            erased += step
        result[active] = (self.center + offset * keep)[active]
        return result

    def perturbation_norms(self, delta: torch.Tensor) -> torch.Tensor:
        """The number of pixels changed in any channel."""
        return (delta.detach().abs().amax(dim=1) > 0).flatten(1).sum(dim=1).double()

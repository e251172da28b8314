"""A toy stand-in for an SCAE: fixed maps from pixels to capsule presences and from presences to labels.

It has the two capabilities the SCAE evasion attack calls, so the attack can be tested in seconds
and independently of the real model's training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.contracts import Model


class ToyCapsuleModel(Model):
    """Sigmoid presences of ``capsules`` object capsules from a fixed linear map of the image, per
    source; a fixed linear probe ("-linear" heads) or nearest cosine centroid ("-kmeans" heads)."""

    capabilities = frozenset({"capsule_presences", "classify_presences"})

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 8, 8),
        num_classes: int = 10,
        capsules: int = 6,
        seed: int = 0,
        head: str = "posterior-linear",
    ):
        super().__init__(input_shape, num_classes)
        self.head = head
        generator = torch.Generator().manual_seed(seed)
        pixels = math.prod(input_shape)
        for source in ("prior", "posterior"):
            encoder = 4 * torch.randn(capsules, pixels, generator=generator) / pixels**0.5
            self.register_buffer(f"{source}_encoder", encoder)
            self.register_buffer(f"{source}_bias", torch.randn(capsules, generator=generator))
            self.register_buffer(f"{source}_probe", torch.randn(num_classes, capsules, generator=generator))
            self.register_buffer(f"{source}_centroids", torch.rand(num_classes, capsules, generator=generator))

    def capsule_presences(self, x: torch.Tensor, source: str) -> torch.Tensor:
        encoder, bias = getattr(self, f"{source}_encoder"), getattr(self, f"{source}_bias")
        return torch.sigmoid((x.flatten(1) - 0.25) @ encoder.T.to(x.dtype) + bias.to(x.dtype))

    def classify_presences(self, presences: torch.Tensor, head: str | None = None) -> torch.Tensor:
        source, kind = (head or self.head).split("-")
        if kind == "linear":
            return ((presences - 0.5) @ getattr(self, f"{source}_probe").T.to(presences.dtype)).argmax(dim=1)
        centroids = F.normalize(getattr(self, f"{source}_centroids").to(presences.dtype), dim=1)
        return (F.normalize(presences, dim=1) @ centroids.T).argmax(dim=1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_presences(self.capsule_presences(x, self.head.split("-")[0]))


def toy_images(n: int, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0) -> torch.Tensor:
    """Sparse "ink" images in [0, 1]: about half the pixels blank, so the ink mask matters."""
    generator = torch.Generator().manual_seed(seed)
    ink = torch.rand(n, *shape, generator=generator)
    return ink * (torch.rand(n, *shape, generator=generator) > 0.5)


def toy_batch(n: int, model: ToyCapsuleModel, seed: int = 0, wrong: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with the model's own labels, except the first ``wrong`` whose labels are shifted (misclassified)."""
    x = toy_images(n, model.input_shape, seed)
    y = model.predict(x)
    y[:wrong] = (y[:wrong] + 1) % model.num_classes
    return x, y

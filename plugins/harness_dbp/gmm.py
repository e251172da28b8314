"""A Gaussian mixture per class on a latent space (Formulas 13-14), fitted by sklearn's EM and
evaluated in torch, so that gradients flow from the class probabilities to the input."""

from __future__ import annotations

import math

import torch
from torch import nn

COVARIANCES = ("full", "diag")


class ClassGMM(nn.Module):
    """One ``GaussianMixture(components, covariance)`` per class; ``log_densities(z)`` gives each
    class's log density (B, classes). Their softmax is the normalised output of Formula 14."""

    def __init__(self, classes: int, components: int, dims: int, covariance: str):
        super().__init__()
        if covariance not in COVARIANCES:
            raise ValueError(f"unknown covariance type '{covariance}' (known: {', '.join(COVARIANCES)})")
        if components < 1:
            raise ValueError(f"gmm_components must be at least 1, got {components}")
        self.covariance = covariance
        self.register_buffer("log_weights", torch.zeros(classes, components))
        self.register_buffer("means", torch.zeros(classes, components, dims))
        shape = (classes, components, dims, dims) if covariance == "full" else (classes, components, dims)
        # sklearn's precisions_cholesky_: precision = L @ L.T (full) or L**2 (diag)
        self.register_buffer("precision_cholesky", torch.ones(shape))

    def fit(self, z: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        from sklearn.mixture import GaussianMixture

        for label in range(len(self.means)):
            members = z[labels == label].double().numpy()
            if len(members) < self.means.shape[1]:
                raise ValueError(f"class {label} has {len(members)} training samples, fewer than the GMM's components")
            mixture = GaussianMixture(self.means.shape[1], covariance_type=self.covariance, random_state=seed).fit(members)
            self.log_weights[label] = torch.from_numpy(mixture.weights_).log()
            self.means[label] = torch.from_numpy(mixture.means_)
            self.precision_cholesky[label] = torch.from_numpy(mixture.precisions_cholesky_)

    def component_log_densities(self, z: torch.Tensor) -> torch.Tensor:
        """log(weight_ij N(z | mean_ij, cov_ij)) for every class i and component j (B, classes, components)."""
        centred = z[:, None, None, :] - self.means  # (B, N, K, D)
        if self.covariance == "full":
            projected = torch.einsum("bnkd,nkde->bnke", centred, self.precision_cholesky)
            log_det = self.precision_cholesky.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        else:
            projected = centred * self.precision_cholesky
            log_det = self.precision_cholesky.log().sum(dim=-1)
        dims = z.shape[1]
        return self.log_weights + log_det - 0.5 * (dims * math.log(2 * math.pi) + projected.square().sum(dim=-1))

    def log_densities(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.component_log_densities(z), dim=-1)

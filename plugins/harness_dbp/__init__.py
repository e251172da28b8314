"""VAE and DRAW autoencoders with double backpropagation, a GMM classifier on their latent space,
the latent and output attacks of Gondim-Ribeiro et al. and the AUDDC ("Double Backpropagation for
Training Autoencoders against Adversarial Attack")."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, Range, RegisterFunction
from harness_dbp.grid import DRAW_PRESETS, REFERENCE_C_GRID

# The DBP objective (lambda2 = dbp, lambda1 = kl_weight), the GMM head (evaluation parameters:
# the heads share one trained autoencoder) and the reference's training (Adam 1e-4, batch 128).
COMMON = {
    "dbp": 0.0, "dbp_schedule": "half", "kl_weight": 1.0, "gmm_components": 3, "gmm_covariance": "full",
    "epochs": 50, "batch_size": 128, "lr": 1e-4,
}
COMMON_CHOICES = {"dbp_schedule": ("half", "constant"), "gmm_covariance": ("full", "diag")}
COMMON_RANGES = {
    "dbp": NON_NEGATIVE, "kl_weight": NON_NEGATIVE, "gmm_components": POSITIVE,
    "epochs": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE,
}
HEAD = ["gmm_components", "gmm_covariance"]
# The reference's attack: Adam 1e-3 for 3,000 iterations over 51 constants, 20 pairs, distances
# averaged over 128 stochastic reconstructions.
ATTACK = {"norm": "l2", "pairs": 20, "iterations": 3000, "lr": 1e-3, "reconstructions": 128}
ATTACK_RANGES = {
    "pairs": POSITIVE, "iterations": POSITIVE, "lr": POSITIVE, "reconstructions": POSITIVE, "c_grid": NON_NEGATIVE,
}


@hookimpl
def register_models(register: RegisterFunction) -> None:
    register(
        "vae",
        "harness_dbp.models:VAE",
        params={"hidden": [512, 512], "latent": 32, **COMMON},
        choices=COMMON_CHOICES,
        ranges={"hidden": POSITIVE, "latent": POSITIVE, **COMMON_RANGES},
        evaluation_params=HEAD,
        imports=["sklearn.mixture"],
        description="MLP VAE (Bernoulli likelihood) trained with double backpropagation (dbp = lambda2; 0: plain); "
        "classifies with a GMM per class on the encoder means",
    )
    register(
        "draw",
        "harness_dbp.models:DRAW",
        params={"preset": "draw16", "steps": None, "hidden": None, "latent": None, "attention": "", "window": None,
                **COMMON},
        choices={**COMMON_CHOICES, "preset": tuple(DRAW_PRESETS), "attention": ("", "on", "off")},
        # An attention window of N x N filters spaces them by (size - 1) / (N - 1): at least 2.
        ranges={"steps": POSITIVE, "hidden": POSITIVE, "latent": POSITIVE, "window": Range(2), **COMMON_RANGES},
        evaluation_params=HEAD,
        imports=["sklearn.mixture"],
        description="DRAW (LSTM encoder/decoder over T steps, optional attention) trained with double backpropagation; "
        "presets draw1, draw16, draw16-attention, any value overridable; a GMM per class on the concatenated latent means",
    )


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
    for name, factory, what in (
        ("latent-attack", "LatentAttack", "the KL between the perturbed source's and the target's encodings"),
        ("output-attack", "OutputAttack", "the squared distance of the perturbed source's reconstruction to the target"),
    ):
        register(
            name,
            f"harness_dbp.attacks:{factory}",
            params={**ATTACK, "c_grid": list(REFERENCE_C_GRID)},
            choices={"norm": ("l2",)},
            ranges=ATTACK_RANGES,
            description=f"targeted attack on an autoencoder over (source, target) test pairs: minimises C |delta|^2 + {what}, "
            "for every C of c_grid",
        )


@hookimpl
def register_metrics(register: RegisterFunction) -> None:
    register("auddc", "harness_dbp.metrics:AUDDC", params={"statistic": "mean"}, choices={"statistic": ("mean", "median")},
             higher_is_better=True,
             description="area under the distortion-distortion curve of a latent or output attack, the mean (as the "
             "reference) or median over its pairs (higher: more robust)")
    register("reconstruction-loss", "harness_dbp.metrics:ReconstructionLoss", higher_is_better=False,
             description="per-pixel Bernoulli negative log-likelihood of the test images' reconstructions")
    register("reconstruction-gradient", "harness_dbp.metrics:ReconstructionGradient", higher_is_better=False,
             description="mean L2 norm of the reconstruction loss's input gradient through the network, the target "
             "held fixed (what DBP penalises)")
    register("encoder-gradient", "harness_dbp.metrics:EncoderGradient", higher_is_better=False,
             description="mean Frobenius norm of the encoder mean's input Jacobian d(mu)/dx")

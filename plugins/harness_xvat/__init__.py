"""Learning with multiplicative perturbations (Yang and Ji, ICPR 2020): xAT and xVAT with
hard-concrete L0 masks, the AT and VAT baselines, plain training, each supervised or
semi-supervised; the paper's MNIST MLP; seconds per epoch; and a multiplicative attack."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import FRACTION, NON_NEGATIVE, POSITIVE, ComponentTable, Range, RegisterFunction

LABEL_BUDGET = {
    "labels": 0, "labeled_batch_size": 100, "unlabeled_batch_size": 250, "epochs": None, "batch_stats": "pool",
}
"""Semi-supervised training keeps ``labels`` labels (0: all), with the reference's MNIST batch
sizes; ``epochs`` (passes over the training pool) overrides the model's. ``batch_stats``: the
batch-norm statistics the model is tested with, re-estimated over the whole pool after training
(``"pool"``, the official VAT's) or the running averages of training (``"running"``)."""
BATCH_STATS = ("pool", "running")
BUDGET_RANGES = {
    "labels": NON_NEGATIVE, "labeled_batch_size": POSITIVE, "unlabeled_batch_size": POSITIVE, "epochs": POSITIVE,
}
HARD_CONCRETE = {"gamma": -0.1, "zeta": 1.1, "beta": 0.66}
MASK = {"mode": "inductive", "l0_weight": 1.0, "lr_a": None, **HARD_CONCRETE, "center": 0.5, **LABEL_BUDGET}
MASK_RANGES = {
    "eps": POSITIVE, "l0_weight": NON_NEGATIVE, "lr_a": NON_NEGATIVE,  # lr_a 0: the mask is not trained
    # The hard-concrete stretch needs gamma < 0 < 1 < zeta; center is a pixel value.
    "gamma": Range(high=0, high_open=True), "zeta": Range(1, low_open=True), "beta": POSITIVE, "center": FRACTION,
    **BUDGET_RANGES,
}


@hookimpl
def register_models(register: RegisterFunction) -> None:
    register(
        "mlp-bn",
        "harness_xvat.models:BatchNormMLP",
        params={
            "hidden": [1200, 600, 300, 150], "affine": False, "output_norm": False, "epochs": 100, "batch_size": 100,
            "lr": 1e-3, "lr_decay": 0.95, "weight_decay": 0.0,
        },
        ranges={
            "hidden": POSITIVE, "epochs": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE, "lr_decay": POSITIVE,
            "weight_decay": NON_NEGATIVE,
        },
        description="the xVAT paper's MNIST MLP (784-1200-600-300-150-10): linear, batch norm, ReLU; Adam, "
        "learning rate x0.95 per epoch; hidden [1200, 1200] is the reference's semi-supervised MLP; affine and "
        "output_norm (a batch norm on the logits) give the official VAT's network",
    )


@hookimpl
def register_defenses(register: RegisterFunction) -> None:
    register(
        "mle",
        "harness_xvat.defenses:PlainTraining",
        params=dict(LABEL_BUDGET),
        choices={"batch_stats": BATCH_STATS},
        ranges=BUDGET_RANGES,
        description="plain training (the paper's MLE baseline) on the labels kept, with seconds per epoch",
    )
    register(
        "at",
        "harness_xvat.defenses:AdversarialTraining",
        params={"attack": ComponentTable("attack", {"name": "fgsm", "norm": "linf", "eps": 0.1}), "weight": 0.5,
                **LABEL_BUDGET},
        choices={"batch_stats": BATCH_STATS},
        ranges={"weight": FRACTION, **BUDGET_RANGES},
        description="adversarial training (Goodfellow et al.): (1 - weight) * loss + weight * loss on the inner "
        "attack's examples (FGSM or PGD, Linf or L2) of the labelled batch",
    )
    register(
        "vat",
        "harness_xvat.defenses:VirtualAdversarialTraining",
        params={"eps": 2.0, "xi": 0.0, "iterations": 1, "weight": 1.0, **LABEL_BUDGET},
        choices={"batch_stats": BATCH_STATS},
        ranges={"eps": POSITIVE, "xi": NON_NEGATIVE, "iterations": POSITIVE, "weight": NON_NEGATIVE, **BUDGET_RANGES},
        description="virtual adversarial training (Miyato et al.): loss + weight * KL to the input moved eps "
        "along the power-iteration direction (iterations; exact Hessian products, or finite difference xi > 0), on the "
        "unlabelled batch",
    )
    register(
        "xat",
        "harness_xvat.defenses:MultiplicativeAdversarialTraining",
        params={"eps": 1.0, "weight": 0.5, "distance": "kl", **MASK},
        choices={"mode": ("inductive", "transductive"), "distance": ("kl", "ce"), "batch_stats": BATCH_STATS},
        ranges={**MASK_RANGES, "weight": FRACTION},
        description="multiplicative adversarial training: (1 - weight) * loss + weight * distance to the "
        "hard-concrete-masked labelled batch + l0_weight * L0; the mask trained by ascent in the same step",
    )
    register(
        "xvat",
        "harness_xvat.defenses:MultiplicativeVirtualAdversarialTraining",
        params={"eps": 2.0, "weight": 1.0, **MASK},
        choices={"mode": ("inductive", "transductive"), "batch_stats": BATCH_STATS},
        ranges={**MASK_RANGES, "weight": NON_NEGATIVE},
        description="multiplicative virtual adversarial training: loss + weight * KL of the hard-concrete-masked "
        "unlabelled batch + l0_weight * L0; the mask (generator or per-example) trained by ascent in the same step",
    )


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
    register(
        "mask-erasure",
        "harness_xvat.attacks:MaskErasure",
        params={"norm": "l0", "center": 0.0, "max_pixels": 100, "per_step": 1},
        choices={"norm": ("l0",)},
        ranges={"center": FRACTION, "max_pixels": POSITIVE, "per_step": POSITIVE},
        description="greedy minimal multiplicative mask: erases (sets to center) the pixels that raise the loss "
        "most until the prediction changes; its norm is the number of erased pixels",
    )


@hookimpl
def register_metrics(register: RegisterFunction) -> None:
    register(
        "seconds-per-epoch",
        "harness_xvat.metrics:SecondsPerEpoch",
        higher_is_better=False,
        description="mean seconds per training epoch of the models trained by this plugin's defenses",
    )

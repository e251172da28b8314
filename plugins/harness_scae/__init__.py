"""The stacked capsule autoencoder (SCAE), its evasion attack and the AT/AD/HAT/NTAT defenses of
"Hybrid Adversarial Training for the SCAE": a model with four evaluation heads, a minimal-L2
attack on its capsule presences, and four training recipes."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import FRACTION, NON_NEGATIVE, POSITIVE, ComponentTable, RegisterFunction
from harness_scae.presets import ATTENTION_MASKS, CANVAS_FITS, HEADS, NAMED, OVERRIDABLE

# Algorithm 5 as the reference code runs it: sign steps of size 1 against the current model's
# posterior linear probe, 5 outer x 30 inner iterations, the perturbation unbounded (eps inf).
TRAINING_GENERATOR = {
    "name": "scae-evasion", "head": "posterior-linear", "optimizer": "sign", "outer": 5, "inner": 30,
    "eps": float("inf"),
}
COMMON = {"attack": ComponentTable("attack", TRAINING_GENERATOR), "interval": 1, "noise": False}
COMMON_RANGES = {"interval": NON_NEGATIVE}
"""interval 0: every batch adversarial."""
# Every preset value is a size or a count (positive) but those where 0 turns something off: the
# training noise, the learning-rate decay (every 0 steps: none), the loss weights, the set
# transformer's self-attention blocks and the part capsules' special features (0: templates of a
# constant colour; a capsule keeps its pose and presence).
OVERRIDE_RANGES = {
    **{name: POSITIVE for name in OVERRIDABLE if name not in NAMED},
    **{
        name: NON_NEGATIVE
        for name in (
            "noise_scale", "lr_decay_steps", "st_layers", "n_part_features", "max_shift",
            "prior_within", "prior_between", "posterior_within", "posterior_between", "dynamic_l2",
        )
    },
}


@hookimpl
def register_models(register: RegisterFunction) -> None:
    overrides = {name: ("" if name in NAMED else None) for name in OVERRIDABLE}
    register(
        "scae",
        "harness_scae.model:SCAE",
        params={"preset": "paper", "head": "posterior-kmeans", **overrides},
        choices={
            "preset": ("paper", "cpu", "small"), "head": HEADS,
            "attention_mask": ("", *ATTENTION_MASKS), "canvas_fit": ("", *CANVAS_FITS),
        },
        ranges=OVERRIDE_RANGES,
        evaluation_params=["head"],
        horizon="epochs",  # no schedule depends on the length: 40 epochs are the start of 80
        imports=["scipy.optimize", "sklearn.cluster"],
        description="stacked capsule autoencoder (part and object capsules); heads: prior/posterior k-means or "
        "linear probe; presets paper (Tables 1-2), cpu, small; any preset value can be overridden",
    )


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
    register(
        "scae-evasion",
        "harness_scae.evasion:SCAEEvasion",
        params={
            "norm": "l2", "head": "", "outer": 9, "inner": 300, "const": 100.0, "optimizer": "adam", "lr": 1.0,
            "mask": True, "batch_size": 100,
        },
        choices={"norm": ("l2",), "head": ("", *HEADS), "optimizer": ("adam", "sign")},
        # const 0 would stay 0: the binary search multiplies it by 10 until an attack succeeds.
        ranges={name: POSITIVE for name in ("outer", "inner", "const", "lr", "batch_size")},
        description="minimal-L2 evasion attack on the object-capsule presences of the capsules active on the clean "
        "image (Algorithm 1): tanh space, ink mask, per-image binary search of the constant",
    )


@hookimpl
def register_defenses(register: RegisterFunction) -> None:
    register(
        "at-scae",
        "harness_scae.defenses:AdversarialTraining",
        params={**COMMON, "epochs": None},
        ranges={**COMMON_RANGES, "epochs": POSITIVE},
        description="adversarial training (Algorithm 2): adversarial batches reconstruct the clean image",
    )
    register(
        "ad-scae",
        "harness_scae.defenses:AdversarialDistillation",
        params={**COMMON, "epochs": None, "weight": 0.5},
        ranges={**COMMON_RANGES, "epochs": POSITIVE, "weight": FRACTION},
        description="adversarial distillation from the undefended SCAE (Algorithm 3, Formula 8)",
    )
    register(
        "hat-scae",
        "harness_scae.defenses:HybridAdversarialTraining",
        params={**COMMON, "distill_epochs": None, "train_epochs": None, "weight": 0.5},
        # 0 epochs of one phase leave the other: AT (distill_epochs 0) or AD (train_epochs 0).
        ranges={**COMMON_RANGES, "distill_epochs": NON_NEGATIVE, "train_epochs": NON_NEGATIVE, "weight": FRACTION},
        description="hybrid adversarial training (Algorithm 4): distillation, then adversarial training",
    )
    register(
        "ntat-scae",
        "harness_scae.defenses:PretrainedAdversarialTraining",
        params={**COMMON, "epochs": None},
        ranges={**COMMON_RANGES, "epochs": POSITIVE},
        description="adversarial training from the pretrained SCAE (the ablation of Tables 7-8)",
    )

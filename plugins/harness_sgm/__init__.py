"""Hardening against adversarial examples with the Smooth Gradient Method (Mosca and Magoulas,
2018): a defense that moves the stored training inputs along their loss gradient between epochs,
and the paper's MNIST networks."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, Range, RegisterFunction

TRAINING = {"dropout": 0.5, "epochs": 10, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.0}
TRAINING_RANGES = {
    "dropout": Range(0, 1, high_open=True),  # 1 would drop every unit
    "epochs": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
}


@hookimpl
def register_models(register: RegisterFunction) -> None:
    register(
        "sgm-dnn",
        "harness_sgm.models:DeepNetwork",
        params={"hidden": [2500, 2000, 1500, 1000, 500], **TRAINING},
        ranges={"hidden": POSITIVE, **TRAINING_RANGES},
        description="the SGM paper's fully connected MNIST network (Table 1): 2500-2000-1500-1000-500, batch "
        "norm on every layer, dropout 0.5; Adam in place of WAME",
    )
    register(
        "sgm-cnn",
        "harness_sgm.models:ConvolutionalNetwork",
        params={"channels": [64, 64], "kernel": 5, "hidden": 1024, **TRAINING},
        ranges={"channels": POSITIVE, "kernel": POSITIVE, "hidden": POSITIVE, **TRAINING_RANGES},
        description="the SGM paper's MNIST CNN (Table 2): two 64-channel 5x5 convolutions with 2x2 max-pooling, "
        "1024 fully connected units, batch norm on every layer, dropout 0.5; Adam in place of WAME",
    )


@hookimpl
def register_defenses(register: RegisterFunction) -> None:
    register(
        "sgm",
        "harness_sgm.defense:SmoothGradientMethod",
        params={"input_lr": 0.2, "sign": False, "clip": False, "start_epoch": 0, "scale": "per-sample"},
        choices={"scale": ("per-sample", "batch-mean")},
        # input_lr 0 moves nothing: the control, trained exactly as without the defense.
        ranges={"input_lr": NON_NEGATIVE, "start_epoch": NON_NEGATIVE},
        description="Smooth Gradient Method (Eq. 21): after each epoch from start_epoch, every stored training "
        "input moves by input_lr times its own loss gradient (sign: its sign, Eq. 20); clip: keep them in [0, 1]; "
        "scale: per-sample (the equation) or batch-mean (the authors' code: input_lr / batch size per sample)",
    )


@hookimpl
def register_attacks(register: RegisterFunction) -> None:
    register(
        "sgm-paper-fgsm",
        "harness_sgm.attacks:PaperFGSM",
        params={"norm": "linf"},
        choices={"norm": ("linf",)},
        description="the SGM paper's weaker FGSM protocol: the gradient in training mode (dropout on) of Keras' "
        "cross-entropy with probabilities clipped to [1e-7, 1 - 1e-7]; reuse one model's perturbations through "
        "the transfer attack, as the paper does; clipped to [0, 1] (the paper's are not)",
    )

"""The SCAE's configurations (no torch here: registration reads the parameter names)."""

from __future__ import annotations

from dataclasses import dataclass, fields

HEADS = ("posterior-kmeans", "prior-kmeans", "posterior-linear", "prior-linear")
"""The evaluation heads: k-means (cosine, Hungarian-matched) or the built-in linear probe, on the
prior or the posterior object-capsule presences."""
SOURCES = ("prior", "posterior")


def head_source(head: str) -> str:
    """The presences a head classifies, ``"prior"`` or ``"posterior"`` (the part before the dash)."""
    if head not in HEADS:
        raise ValueError(f"unknown SCAE head '{head}' (known: {', '.join(HEADS)})")
    return head.partition("-")[0]


def head_uses_kmeans(head: str) -> bool:
    """Whether a head is a k-means classifier (otherwise the built-in linear probe)."""
    head_source(head)
    return head.endswith("kmeans")


ATTENTION_MASKS = ("reference", "soft")
"""How the set transformer's attention weighs parts by presence: ``reference`` subtracts
(1 - presence) * 1e32 from the logits, as the reference does; ``soft`` adds log(presence)."""
CANVAS_FITS = ("resize", "pad")
"""How an input smaller than the canvas is put on it: bilinear ``resize``, or ``pad`` with zeros
around the centred image (the google-research MNIST pipeline)."""


@dataclass(frozen=True)
class Config:
    """Every size and training setting of one SCAE; a preset is one of these."""

    canvas: int
    n_part_caps: int
    n_obj_caps: int
    template_size: int
    noise_scale: float
    cnn_channels: int
    st_layers: int
    st_heads: int
    st_dims: int
    st_output_dims: int
    n_part_features: int = 16
    n_obj_params: int = 32
    caps_hidden: int = 128
    epochs: int = 300
    batch_size: int = 100
    lr: float = 3e-5
    lr_decay: float = 0.96
    lr_decay_steps: int = 10_000
    optimizer: str = "TF1RMSprop"
    """``TF1RMSprop`` (TensorFlow 1's update, :mod:`harness_scae.optim`) or a ``torch.optim`` class name."""
    attention_mask: str = "reference"
    canvas_fit: str = "resize"
    max_shift: int = 0
    """Training only: translate each canvas by a random whole number of pixels in [-max_shift,
    max_shift] per axis, zeros shifted in (the google-research pipeline pads MNIST to 40 and shifts)."""
    # Loss weights of the reference MNIST configuration.
    prior_within: float = 2.0
    prior_between: float = 0.35
    posterior_within: float = 0.7
    posterior_between: float = 0.2
    dynamic_l2: float = 10.0


PRESETS: dict[str, Config] = {
    # Tables 1 and 2 of the paper (the reference's MNIST configuration): TensorFlow 1's RMSProp with
    # momentum 0.9 and eps 1e-2 / batch^2 = 1e-6, decayed by 0.96 every 10,000 steps.
    "paper": Config(
        canvas=40, n_part_caps=24, n_obj_caps=24, template_size=11, noise_scale=4.0, cnn_channels=128,
        st_layers=3, st_heads=1, st_dims=16, st_output_dims=256,
    ),
    # What trains in minutes on two CPU cores: the paper's canvas, capsule counts and templates,
    # narrower networks, Adam at a larger learning rate and no decay.
    "cpu": Config(
        canvas=40, n_part_caps=24, n_obj_caps=24, template_size=11, noise_scale=4.0, cnn_channels=64,
        st_layers=2, st_heads=1, st_dims=16, st_output_dims=64, caps_hidden=64,
        epochs=40, batch_size=100, lr=1e-3, lr_decay=1.0, lr_decay_steps=0, optimizer="Adam",
    ),
    # Seconds on a CPU, for tests: every code path of the others at a tiny size.
    "small": Config(
        canvas=24, n_part_caps=6, n_obj_caps=10, template_size=5, noise_scale=4.0, cnn_channels=8,
        st_layers=1, st_heads=1, st_dims=8, st_output_dims=16, n_part_features=4, n_obj_params=8, caps_hidden=16,
        epochs=2, batch_size=32, lr=1e-3, lr_decay=1.0, lr_decay_steps=0, optimizer="Adam",
    ),
}
OVERRIDABLE = tuple(f.name for f in fields(Config))
"""Every preset value a suite may override."""
NAMED = ("optimizer", "attention_mask", "canvas_fit")
"""The preset values that are names, not numbers."""


def resolve_config(preset: str, overrides: dict[str, float | int | None]) -> Config:
    """The preset's configuration with the suite's overrides (``None`` or ``""``: the preset's value)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown SCAE preset '{preset}' (known: {', '.join(PRESETS)})")
    base = PRESETS[preset]
    values = {name: getattr(base, name) for name in OVERRIDABLE}
    for name, value in overrides.items():
        if value is not None and value != "":
            values[name] = type(values[name])(value)
    return Config(**values)

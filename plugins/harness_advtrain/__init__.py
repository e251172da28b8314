"""Adversarial training for every model with a ``loss``: PGD-AT (Madry et al., 2018), TRADES
(Zhang et al., 2019) and fast FGSM training (Wong et al., 2020), on the shared training loop.

Defaults are each paper's MNIST configuration (Linf 0.3).
"""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, RegisterFunction

NORMS = ("linf", "l2")
RANGES = {"eps": POSITIVE, "eps_step": POSITIVE, "max_iter": POSITIVE}


@hookimpl
def register_defenses(register: RegisterFunction) -> None:
    register(
        "pgd-at",
        "harness_advtrain.defenses:PGDAdversarialTraining",
        params={"norm": "linf", "eps": 0.3, "eps_step": 0.01, "max_iter": 40, "random_start": True},
        choices={"norm": NORMS},
        ranges=RANGES,
        description="PGD adversarial training (Madry et al.): every batch replaced by PGD examples (max_iter steps "
        "of eps_step from a uniform random start in the eps ball) that ascend the model's own loss; the defaults "
        "are Madry's MNIST ones",
    )
    register(
        "trades",
        "harness_advtrain.defenses:TRADES",
        params={"norm": "linf", "eps": 0.3, "eps_step": 0.01, "max_iter": 40, "beta": 1.0},
        choices={"norm": NORMS},
        ranges={**RANGES, "beta": NON_NEGATIVE},
        description="TRADES (Zhang et al.): the model's loss on clean inputs + beta * KL(p(x) || p(x')), x' found by "
        "PGD on that KL from x + 0.001 N(0, 1); the defaults are the authors' MNIST script's",
    )
    register(
        "fast-at",
        "harness_advtrain.defenses:FastAdversarialTraining",
        params={"norm": "linf", "eps": 0.3, "alpha": None},
        choices={"norm": NORMS},
        ranges={"eps": POSITIVE, "alpha": POSITIVE},
        description="fast adversarial training (Wong et al., 'Fast is better than free'): one FGSM step of alpha "
        "(default 1.25 eps) from a uniform random start in the eps ball, projected back, on every batch",
    )

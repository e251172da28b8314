"""The ART evasion attacks the harness runs through one adapter (:mod:`harness_art.catalogue`),
as plain data so that registering them imports neither torch nor ART.

Each :class:`Spec` names the ART class, the parameters a suite may set with ART's own defaults
(``tests/test_art_catalogue.py`` checks them against the installed ART's signatures, so they
cannot drift), how the harness's norm and budget reach ART, and what the attack is: budgeted or
minimal-norm, white-box or black-box. The adapter always runs ART's attack untargeted (the true
labels are given; ``targeted = False`` where ART has the argument) and without progress bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INF = float("inf")
LP_NORMS = {"linf": INF, "l2": 2, "l1": 1}


@dataclass(frozen=True)
class Spec:
    art_class: str
    """The class's name in ``art.attacks.evasion``."""
    params: dict[str, Any]
    """The parameters a suite may set, with ART's defaults (or a documented harness default)."""
    description: str
    norms: dict[str, Any] = field(default_factory=lambda: {"l2": 2})
    """Each harness norm the attack supports and the value of ART's norm argument for it."""
    norm_argument: str | None = None
    """ART's name for the norm argument; ``None``: the attack has one fixed norm."""
    minimal_norm: bool = False
    access: str = "white-box"
    budget_argument: str = "eps"
    """ART's name for the budget of a budgeted attack."""
    probabilities: bool = False
    """ART's attack needs probabilities, not logits: the adapter's model ends in a softmax."""
    true_labels: bool = True
    """False for an attack that treats given labels as targets (JSMA): ART then picks its own."""
    renamed: dict[str, str] = field(default_factory=dict)
    """Harness parameter -> ART argument, where the harness uses the name people use."""
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Harness value -> ART value, per parameter (APGD's ``loss``: ``ce`` -> ``cross_entropy``)."""
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    harness_defaults: dict[str, str] = field(default_factory=dict)
    """Parameters whose default is the harness's, not ART's, and why."""
    imports: tuple[str, ...] = ()
    """Modules the ART class imports beyond ART's declared dependencies."""


CATALOGUE: dict[str, Spec] = {
    "apgd": Spec(
        "AutoProjectedGradientDescent",
        {"eps_step": 0.1, "max_iter": 100, "nb_random_init": 5, "batch_size": 32, "loss": "ce"},
        "ART's Auto-PGD (Croce and Hein): PGD with an adaptive step size, on the cross-entropy (ce) or the "
        "difference of logits ratio (dlr)",
        norms=dict(LP_NORMS), norm_argument="norm",
        renamed={"loss": "loss_type"},
        values={"loss": {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}},
        choices={"loss": ("ce", "dlr")},
        harness_defaults={"loss": "ART's None keeps the estimator's loss; the harness's estimator has the cross-entropy"},
    ),
    "acg": Spec(
        "AutoConjugateGradient",
        {"eps_step": 0.1, "max_iter": 100, "nb_random_init": 5, "batch_size": 32, "loss": "ce"},
        "ART's Auto Conjugate Gradient (Yamamura et al.): APGD's schedule with conjugate-gradient directions",
        norms=dict(LP_NORMS), norm_argument="norm",
        renamed={"loss": "loss_type"},
        values={"loss": {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}},
        choices={"loss": ("ce", "dlr")},
        harness_defaults={"loss": "ART's None keeps the estimator's loss; the harness's estimator has the cross-entropy"},
    ),
    "art-autoattack": Spec(
        "AutoAttack",
        {"eps_step": 0.1, "batch_size": 32},
        "ART's AutoAttack: not the reference protocol (APGD with 5 restarts on two losses, DeepFool in place of "
        "FAB, Square); use `autoattack` for the authors' one. Needs the package multiprocess, which ART imports "
        "without declaring it",
        norms=dict(LP_NORMS), norm_argument="norm", imports=("multiprocess",),
    ),
    "square": Spec(
        "SquareAttack",
        {"max_iter": 100, "p_init": 0.8, "nb_restarts": 1, "batch_size": 128},
        "ART's Square Attack (Andriushchenko et al.): score-based random search over square patches, black-box "
        "(AutoAttack's Square runs 5,000 queries: max_iter = 5000)",
        norms={"linf": INF, "l2": 2}, norm_argument="norm", access="black-box",
    ),
    "cw-l2": Spec(
        "CarliniL2Method",
        {"confidence": 0.0, "learning_rate": 0.01, "binary_search_steps": 10, "max_iter": 10, "initial_const": 0.01,
         "max_halving": 5, "max_doubling": 5, "batch_size": 1},
        "ART's Carlini-Wagner L2 attack: minimal L2 perturbation by Adam on the margin with a binary search on its "
        "constant",
        minimal_norm=True,
    ),
    "cw-linf": Spec(
        "CarliniLInfMethod",
        {"confidence": 0.0, "learning_rate": 0.01, "max_iter": 10, "decrease_factor": 0.9, "initial_const": 1e-05,
         "largest_const": 20.0, "const_factor": 2.0, "batch_size": 1},
        "ART's Carlini-Wagner Linf attack: minimal Linf perturbation",
        norms={"linf": INF}, minimal_norm=True,
    ),
    "cw-l0": Spec(
        "CarliniL0Method",
        {"confidence": 0.0, "learning_rate": 0.01, "binary_search_steps": 10, "max_iter": 10, "initial_const": 0.01,
         "warm_start": True, "max_halving": 5, "max_doubling": 5, "batch_size": 1},
        "ART's Carlini-Wagner L0 attack: the L2 attack repeated while fixing the pixels that matter least",
        norms={"l0": 0}, minimal_norm=True,
    ),
    "deepfool": Spec(
        "DeepFool",
        {"max_iter": 100, "epsilon": 1e-06, "nb_grads": 10, "batch_size": 1},
        "ART's DeepFool (Moosavi-Dezfooli et al.): minimal L2 perturbation by linearising the decision boundaries "
        "(epsilon: the overshoot)",
        minimal_norm=True,
    ),
    "bim": Spec(
        "BasicIterativeMethod",
        {"eps_step": 0.1, "max_iter": 100, "batch_size": 32},
        "ART's basic iterative method (Kurakin et al.): iterated FGSM without a random start, Linf",
        norms={"linf": INF},
    ),
    "mim": Spec(
        "MomentumIterativeMethod",
        {"eps_step": 0.1, "decay": 1.0, "max_iter": 100, "batch_size": 32},
        "ART's momentum iterative method (Dong et al.): iterated FGSM with a momentum of the normalised gradients",
        norms={"linf": INF, "l2": 2}, norm_argument="norm",
    ),
    "ead": Spec(
        "ElasticNet",
        {"confidence": 0.0, "learning_rate": 0.01, "binary_search_steps": 9, "max_iter": 100, "beta": 0.001,
         "initial_const": 0.001, "batch_size": 1, "decision_rule": "EN"},
        "ART's elastic-net attack (Chen et al.): minimal L1 perturbation by ISTA on the Carlini-Wagner objective",
        norms={"l1": 1}, minimal_norm=True, choices={"decision_rule": ("EN", "L1", "L2")},
    ),
    "newtonfool": Spec(
        "NewtonFool",
        {"max_iter": 100, "eta": 0.01, "batch_size": 1},
        "ART's NewtonFool (Jang et al.): Newton steps that lower the true class's probability, minimal L2",
        minimal_norm=True,
    ),
    "jsma": Spec(
        "SaliencyMapMethod",
        {"theta": 0.1, "gamma": 1.0, "batch_size": 1},
        "ART's Jacobian saliency map attack (Papernot et al.): changes the most salient pixels by theta towards a "
        "random other class, at most a fraction gamma of them; minimal L0",
        norms={"l0": 0}, minimal_norm=True, true_labels=False,
    ),
    "hopskipjump": Spec(
        "HopSkipJump",
        {"max_iter": 50, "max_eval": 10000, "init_eval": 100, "init_size": 100, "batch_size": 64},
        "ART's HopSkipJump (Chen et al.): decision-based (labels only) boundary walk, minimal L2 or Linf, black-box",
        norms={"l2": 2, "linf": INF}, norm_argument="norm", minimal_norm=True, access="black-box",
    ),
    "sign-opt": Spec(
        "SignOPTAttack",
        {"epsilon": 0.001, "num_trial": 100, "max_iter": 1000, "query_limit": 20000, "k": 200, "alpha": 0.2,
         "beta": 0.001, "batch_size": 64},
        "ART's Sign-OPT (Cheng et al.): decision-based, sign estimates of the directional derivative of the "
        "distance to the boundary; minimal L2, black-box",
        minimal_norm=True, access="black-box",
    ),
    "virtual-adversarial": Spec(
        "VirtualAdversarialMethod",
        {"max_iter": 10, "finite_diff": 1e-06, "batch_size": 1},
        "ART's virtual adversarial method (Miyato et al.): the L2 direction of largest KL divergence from the "
        "model's own prediction (no labels), by power iteration, scaled to eps; on the model's probabilities",
        budget_argument="eps", probabilities=True, true_labels=False,
    ),
    "boundary": Spec(
        "BoundaryAttack",
        {"delta": 0.01, "epsilon": 0.01, "step_adapt": 0.667, "max_iter": 5000, "num_trial": 25, "sample_size": 20,
         "init_size": 100, "min_epsilon": 0.0, "batch_size": 64},
        "ART's boundary attack (Brendel et al.): decision-based random walk along the boundary, minimal L2, black-box",
        minimal_norm=True, access="black-box",
    ),
    "simba": Spec(
        "SimBA",
        {"attack": "dct", "max_iter": 3000, "order": "random", "epsilon": 0.1, "freq_dim": 4, "stride": 1,
         "batch_size": 1},
        "ART's SimBA (Guo et al.): score-based steps of epsilon along random pixel or DCT directions until the label "
        "changes; minimal L2, black-box, on the model's probabilities",
        minimal_norm=True, access="black-box", probabilities=True,
        choices={"attack": ("dct", "px"), "order": ("random", "diag")},
    ),
    "zoo": Spec(
        "ZooAttack",
        {"confidence": 0.0, "learning_rate": 0.01, "max_iter": 10, "binary_search_steps": 1, "initial_const": 0.001,
         "abort_early": True, "use_resize": False, "use_importance": True, "nb_parallel": 128, "batch_size": 1,
         "variable_h": 0.0001},
        "ART's ZOO (Chen et al.): the Carlini-Wagner objective by zeroth-order coordinate descent on the scores, "
        "minimal L2, black-box",
        minimal_norm=True, access="black-box",
        harness_defaults={"use_resize": "ART's True resizes to 32x32 first, which fails on smaller images"},
    ),
    "wasserstein": Spec(
        "Wasserstein",
        {"eps": 0.3, "regularization": 3000.0, "p": 2, "kernel_size": 5, "eps_step": 0.1, "step_norm": "wasserstein",
         "eps_iter": 10, "eps_factor": 1.1, "max_iter": 400, "conjugate_sinkhorn_max_iter": 400,
         "projected_sinkhorn_max_iter": 400, "batch_size": 1},
        "ART's Wasserstein attack (Wong et al.): steps in the Wasserstein geometry (step_norm), projected to an Lp "
        "ball whose radius starts at eps and grows by eps_factor every eps_iter steps for unbroken samples: a "
        "minimal-norm attack in that Lp norm",
        norms={"linf": "inf", "l2": "2", "l1": "1"}, norm_argument="ball", minimal_norm=True,
        renamed={"step_norm": "norm"},
        choices={"step_norm": ("wasserstein", "inf", "2", "1")},
    ),
    "spatial": Spec(
        "SpatialTransformation",
        {"max_translation": 10.0, "num_translations": 3, "max_rotation": 30.0, "num_rotations": 7},
        "ART's spatial transformation attack (Engstrom et al.): the one grid-searched translation (percent of the "
        "image) and rotation (degrees) that fools most of the batch; its threat model is that grid, not a norm "
        "ball (norm 'spatial', size 0: give eps = [inf])",
        norms={"spatial": None}, minimal_norm=True,
        harness_defaults={
            "max_translation": "ART's 0 transforms nothing", "num_translations": "a grid of -10, 0, 10%",
            "max_rotation": "ART's 0 transforms nothing", "num_rotations": "a grid of -30 to 30 degrees by 10",
        },
    ),
}


UNAVAILABLE: dict[str, tuple[str, str]] = {
    "art-adversarial-texture": ("AdversarialTexturePyTorch", "attacks video object trackers, not image classifiers"),
    "art-asr": ("CarliniWagnerASR, ImperceptibleASR, ImperceptibleASRPyTorch", "attack speech recognisers"),
    "art-dpatch": ("DPatch, RobustDPatch", "attack object detectors"),
    "art-overload": ("OverloadPyTorch, SNAL", "attack YOLO object detectors"),
    "art-decision-tree": ("DecisionTreeAttack", "attacks scikit-learn decision trees"),
    "art-hclu": ("HighConfidenceLowUncertainty", "attacks Gaussian-process classifiers"),
    "art-malware": ("MalwareGDTensorFlow", "attacks TensorFlow malware classifiers"),
    "art-video": ("FrameSaliencyAttack, OverTheAirFlickeringPyTorch", "attack video classifiers"),
    "art-lowprofool": ("LowProFool", "attacks tabular data"),
    "art-tensorflow": ("ProjectedGradientDescentTensorFlowV2, AdversarialPatchTensorFlowV2, "
                       "FeatureAdversariesTensorFlowV2", "need a TensorFlow estimator"),
    "art-feature-adversaries": ("FeatureAdversariesNumpy, FeatureAdversariesPyTorch",
                                "need a guide image per input (a feature-space attack), not labels"),
    "art-adversarial-patch": ("AdversarialPatch, AdversarialPatchNumpy, AdversarialPatchPyTorch",
                              "train one patch for a whole dataset: not a per-input attack in a norm ball"),
    "art-universal-perturbation": ("UniversalPerturbation, TargetedUniversalPerturbation",
                                   "fit one perturbation for a whole dataset: not a per-input attack"),
    "art-graphite": ("GRAPHITEBlackbox, GRAPHITEWhiteboxPyTorch", "need a target image and a mask per input"),
    "art-laser": ("LaserAttack", "needs a laser-beam and image generator pair"),
    "art-composite": ("CompositeAdversarialAttackPyTorch", "needs the package kornia, and colour images"),
    "geoda": ("GeoDA", "calls numpy.mat, which NumPy 2 removed (ART 1.20's code)"),
    "art-brendel-bethge": ("BrendelBethgeAttack", "needs the package numba, and ART does not export it without it"),
}
"""ART evasion attacks that cannot run on a harness model, with the reason; `harness plugins
--params` lists them so that a researcher sees why rather than nothing."""

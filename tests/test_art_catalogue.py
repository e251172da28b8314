"""The ART catalogue: parameters taken from ART's signatures, every attack runs on a harness
model within its threat model, the known traps, and cross-checks with torchattacks."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import trained_digits_mlp
from harness_art.catalogue import CatalogueAttack
from harness_art.specs import CATALOGUE

from harness.contracts import perturbation_norms


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_parameters_and_defaults_are_arts_own(name):
    from art.attacks import evasion

    spec = CATALOGUE[name]
    signature = inspect.signature(getattr(evasion, spec.art_class).__init__).parameters
    for key, default in spec.params.items():
        argument = spec.renamed.get(key, key)
        assert argument in signature, f"{spec.art_class} has no argument {argument!r}"
        if key in spec.harness_defaults:
            continue
        assert signature[argument].default == default, (key, signature[argument].default, default)
    for argument in (spec.norm_argument, None if spec.minimal_norm else spec.budget_argument):
        assert argument is None or argument in signature


@pytest.fixture(scope="module")
def setup():
    model, data = trained_digits_mlp([32])
    correct = model.predict(data.x_test) == data.y_test
    return model, data.x_test[correct][:6], data.y_test[correct][:6]


FAST = {  # small budgets of work, so that each attack runs in a second or two
    "apgd": {"max_iter": 10, "nb_random_init": 1}, "square": {"max_iter": 200}, "cw-l2": {"max_iter": 20, "initial_const": 1.0, "binary_search_steps": 3, "batch_size": 6},
    "cw-linf": {"max_iter": 50, "batch_size": 6, "initial_const": 0.1}, "deepfool": {"max_iter": 20, "batch_size": 6}, "bim": {"eps_step": 0.05, "max_iter": 10},
    "mim": {"eps_step": 0.05, "max_iter": 10}, "ead": {"max_iter": 20, "binary_search_steps": 3, "batch_size": 6, "initial_const": 1.0},
    "newtonfool": {"max_iter": 20, "batch_size": 6}, "jsma": {"batch_size": 6}, "hopskipjump": {"max_iter": 5, "max_eval": 200, "init_eval": 20},
    "boundary": {"max_iter": 50, "num_trial": 10, "sample_size": 5}, "simba": {"max_iter": 300, "epsilon": 0.2},
    "zoo": {"max_iter": 100, "nb_parallel": 64, "initial_const": 1.0, "binary_search_steps": 2}, "wasserstein": {"max_iter": 30, "eps_iter": 3, "eps_factor": 1.5, "batch_size": 6},
    "spatial": {}, "acg": {"max_iter": 10, "nb_random_init": 1}, "art-autoattack": {},
    "cw-l0": {"max_iter": 10, "initial_const": 1.0, "binary_search_steps": 2, "batch_size": 6},
    "sign-opt": {"max_iter": 20, "query_limit": 2000, "num_trial": 20, "k": 20}, "virtual-adversarial": {"max_iter": 2},
}  # fmt: skip
BUDGETS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_attack_runs_on_a_harness_model_within_its_threat_model(setup, name):
    model, x, y = setup
    spec = CATALOGUE[name]
    for module in spec.imports:
        pytest.importorskip(module)
    norm = next(iter(spec.norms))
    attack = CatalogueAttack(name, norm=norm, **{**spec.params, **FAST[name]})
    np.random.seed(0)
    eps = None if spec.minimal_norm else BUDGETS[norm]
    outcome = attack.run(model, x, y, eps, torch.Generator().manual_seed(0))
    assert outcome.x_adv.dtype == torch.float32 and outcome.x_adv.shape == x.shape
    assert outcome.x_adv.min() >= 0 and outcome.x_adv.max() <= 1
    if eps is not None:
        assert outcome.norms.max() <= eps * (1 + 1e-5)
    broken = model.predict(outcome.x_adv) != y
    assert broken.any(), f"{name} broke none of {len(y)} samples"
    assert attack.minimal_norm == spec.minimal_norm and attack.access == spec.access
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_decision_based_attacks_survive_float64_inputs(setup):
    """The NumPy 2 trap: HopSkipJump hands the network float64 arrays; the adapter casts them."""
    from harness_art.catalogue import estimator

    model, x, _ = setup
    scores = estimator(model, torch.device("cpu"), False).predict(x.numpy().astype(np.float64))
    assert scores.shape == (len(x), 10)


def test_simba_gets_probabilities(setup):
    from harness_art.catalogue import estimator

    model, x, _ = setup
    probabilities = estimator(model, torch.device("cpu"), True).predict(x.numpy())
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5) and (probabilities >= 0).all()


def test_arguments_reach_art_renamed_and_untargeted():
    apgd = CatalogueAttack("apgd", norm="l2", **{**CATALOGUE["apgd"].params, "loss": "dlr"})
    arguments = apgd.art_arguments(0.5)
    assert arguments["loss_type"] == "difference_logits_ratio" and arguments["norm"] == 2 and arguments["eps"] == 0.5
    assert arguments["targeted"] is False and arguments["verbose"] is False and "loss" not in arguments
    wasserstein = CatalogueAttack("wasserstein", norm="linf", **CATALOGUE["wasserstein"].params).art_arguments(None)
    assert wasserstein["ball"] == "inf" and wasserstein["norm"] == "wasserstein" and wasserstein["eps"] == 0.3
    spatial = CatalogueAttack("spatial", norm="spatial", **CATALOGUE["spatial"].params)
    assert torch.equal(spatial.perturbation_norms(torch.ones(3, 1, 2, 2)), torch.zeros(3, dtype=torch.float64))


@pytest.fixture(scope="module")
def wider():
    """A 64-unit MLP and 100 test digits, for the cross-checks with torchattacks."""
    model, data = trained_digits_mlp([64])
    return model, data.x_test[:100], data.y_test[:100]


@pytest.mark.parametrize(
    "name, norm, eps, independent",
    [
        ("apgd", "linf", 0.1, lambda ta, m: ta.APGD(m, norm="Linf", eps=0.1, steps=100, n_restarts=1, loss="ce", seed=0)),
        ("mim", "linf", 0.1, lambda ta, m: ta.MIFGSM(m, eps=0.1, alpha=0.01, steps=40, decay=1.0)),
        ("square", "linf", 0.1, lambda ta, m: ta.Square(m, norm="Linf", eps=0.1, n_queries=1000, n_restarts=1, seed=0)),
        ("cw-l2", "l2", None, lambda ta, m: ta.CW(m, c=1.0, kappa=0, steps=100, lr=0.01)),
    ],
)
def test_agrees_with_torchattacks(wider, name, norm, eps, independent):
    """The same robust accuracy as torchattacks' implementation on the same model and samples,
    within 6 points of 100 samples (two random searches, or two optimisers, differ sample by sample)."""
    torchattacks = pytest.importorskip("torchattacks")
    from harness_autoattack.attacks import _Logits

    model, x, y = wider
    params = {
        "apgd": {"nb_random_init": 1, "batch_size": 100}, "mim": {"eps_step": 0.01, "max_iter": 40, "batch_size": 100},
        "square": {"max_iter": 1000}, "deepfool": {"epsilon": 0.02, "batch_size": 100},
        "cw-l2": {"initial_const": 1.0, "binary_search_steps": 1, "max_iter": 100, "batch_size": 100},
    }[name]  # fmt: skip
    np.random.seed(0)
    ours = CatalogueAttack(name, norm=norm, **{**CATALOGUE[name].params, **params}).run(model, x, y, eps)
    theirs = independent(torchattacks, _Logits(model).eval())(x, y)
    if eps is None:  # a minimal-norm attack: compare the accuracy within a common radius
        radius = 1.0
        within = lambda adv: perturbation_norms(adv - x, norm) <= radius  # noqa: E731
        accuracy = lambda adv: ((model.predict(adv) == y) | ~within(adv)).double().mean().item()  # noqa: E731
    else:
        accuracy = lambda adv: (model.predict(adv) == y).double().mean().item()  # noqa: E731
    assert abs(accuracy(ours.x_adv) - accuracy(theirs)) <= 0.06, (accuracy(ours.x_adv), accuracy(theirs))


def test_deepfool_finds_perturbations_of_the_size_torchattacks_finds(wider):
    """torchattacks' DeepFool gives up on about half of these samples (ours breaks 98%), so the
    cross-check is the size of the perturbations on the samples both break: medians within 20%."""
    torchattacks = pytest.importorskip("torchattacks")
    from harness_autoattack.attacks import _Logits

    model, x, y = wider
    params = {**CATALOGUE["deepfool"].params, "epsilon": 0.02, "batch_size": 100}
    ours = CatalogueAttack("deepfool", norm="l2", **params).run(model, x, y, None).x_adv
    theirs = torchattacks.DeepFool(_Logits(model).eval(), steps=100, overshoot=0.02)(x, y)
    both = (model.predict(ours) != y) & (model.predict(theirs) != y)
    assert both.sum() >= 30
    sizes = [perturbation_norms(adv - x, "l2")[both].median().item() for adv in (ours, theirs)]
    assert abs(sizes[0] / sizes[1] - 1) <= 0.2, sizes


def test_arts_autoattack_without_multiprocess_is_listed_unavailable_and_refused(cli, write_suite):
    import importlib.util

    if importlib.util.find_spec("multiprocess") is not None:
        pytest.skip("multiprocess is installed here")
    code, out, _ = cli("plugins", "--params")
    assert "art-autoattack: UNAVAILABLE (needs the package 'multiprocess', which is not installed)" in out
    assert "art-dpatch: UNAVAILABLE (ART's DPatch, RobustDPatch attack object detectors)" in out
    suite = 'name = "s"\nn_samples = 10\n[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\n[[attacks]]\nname = "art-autoattack"\neps = [0.1]\n'
    code, _, err = cli("run", write_suite(suite))
    assert code == 2 and "its dependency 'multiprocess' fails to import" in err and "Traceback" not in err
    suite = suite.replace("art-autoattack", "art-dpatch")
    code, _, err = cli("run", write_suite(suite))
    assert code == 2 and "it is unavailable: ART's DPatch, RobustDPatch attack object detectors" in err

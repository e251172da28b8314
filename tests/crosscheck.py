"""The README's cross-checks of the evaluation attacks, at a larger scale than the tests':

- ``autoattack`` (standard) through the harness against a direct call of the authors' code
  (``pyautoattack``, same samples and seed: per-sample equality) and against torchattacks'
  AutoAttack (robust accuracy), on the digits CNN trained without defense and with ``pgd-at``;
- the ART catalogue's APGD, MIM, Square and C&W against torchattacks (robust accuracy), and
  DeepFool (perturbation sizes on the samples both break).

Run: ``python tests/crosscheck.py`` (about 20 minutes on one CPU thread); it prints one JSON line
per check. Needs torchattacks (``pip install --no-deps torchattacks==3.5.1``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torchattacks
from harness_art.catalogue import CatalogueAttack
from harness_art.specs import CATALOGUE
from harness_autoattack.attacks import AutoAttack, _Logits
from pyautoattack import AutoAttack as Reference

from harness.contracts import perturbation_norms
from harness.plugins import load_plugins
from harness.testing import make_context
from harness.training import seed_everything


def trained_cnn(registry, data, defense):
    seed_everything(0)
    model = registry.build_from_table("model", {"name": "cnn", "epochs": 30}, input_shape=data.input_shape, num_classes=10)
    model = registry.build_from_table("defense", defense).train(model, data, make_context(seed=0)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def accuracy(model, x_adv, y):
    return (model.predict(x_adv) == y).double().mean().item()


def autoattack_checks(model, name, x, y):
    for norm, reference_norm, eps in (("linf", "Linf", 0.1), ("l2", "L2", 1.0)):
        started = time.perf_counter()
        ours = AutoAttack(norm, "standard", []).run(model, x, y, eps, torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - started
        seed = int(torch.randint(0, 2**31 - 1, (), generator=torch.Generator().manual_seed(0)))
        reference = Reference(_Logits(model), norm=reference_norm, eps=eps, seed=seed, version="standard")
        _, label = reference.run_standard_evaluation(x, y, batch_size=len(x))
        other = torchattacks.AutoAttack(_Logits(model), norm=reference_norm, eps=eps, version="standard", n_classes=10, seed=0)
        robust = model.predict(ours.x_adv) == y
        yield {
            "check": "autoattack", "defense": name, "norm": norm, "eps": eps, "n": len(y),
            "harness": robust.double().mean().item(), "reference": (label == y).double().mean().item(),
            "same_per_sample": bool(torch.equal(robust, label == y)), "torchattacks": accuracy(model, other(x, y), y),
            "broken_by": ours.scalars, "harness_seconds": round(seconds, 1),
        }  # fmt: skip


CATALOGUE_CHECKS = {
    "apgd": ("linf", 0.1, {"nb_random_init": 1, "batch_size": 500},
             lambda m: torchattacks.APGD(m, norm="Linf", eps=0.1, steps=100, n_restarts=1, loss="ce", seed=0)),
    "mim": ("linf", 0.1, {"eps_step": 0.01, "max_iter": 40, "batch_size": 500},
            lambda m: torchattacks.MIFGSM(m, eps=0.1, alpha=0.01, steps=40, decay=1.0)),
    "square": ("linf", 0.1, {"max_iter": 1000}, lambda m: torchattacks.Square(m, norm="Linf", eps=0.1, n_queries=1000, seed=0)),
    "cw-l2": ("l2", None, {"initial_const": 1.0, "binary_search_steps": 1, "max_iter": 100, "batch_size": 500},
              lambda m: torchattacks.CW(m, c=1.0, kappa=0, steps=100, lr=0.01)),
}  # fmt: skip


def catalogue_checks(model, name, x, y):
    for attack, (norm, eps, params, independent) in CATALOGUE_CHECKS.items():
        np.random.seed(0)
        ours = CatalogueAttack(attack, norm=norm, **{**CATALOGUE[attack].params, **params}).run(model, x, y, eps).x_adv
        theirs = independent(_Logits(model).eval())(x, y)
        if eps is None:  # minimal norm: accuracy within L2 radius 1
            within = [perturbation_norms(adv - x, "l2") <= 1.0 for adv in (ours, theirs)]
            values = [((model.predict(adv) == y) | ~inside).double().mean().item() for adv, inside in zip((ours, theirs), within)]
        else:
            values = [accuracy(model, ours, y), accuracy(model, theirs, y)]
        yield {"check": attack, "defense": name, "norm": norm, "eps": eps, "n": len(y), "harness": values[0], "torchattacks": values[1]}
    params = {**CATALOGUE["deepfool"].params, "epsilon": 0.02, "batch_size": 500}
    ours = CatalogueAttack("deepfool", norm="l2", **params).run(model, x, y, None).x_adv
    theirs = torchattacks.DeepFool(_Logits(model).eval(), steps=100, overshoot=0.02)(x, y)
    broken = [model.predict(adv) != y for adv in (ours, theirs)]
    both = broken[0] & broken[1]
    sizes = [perturbation_norms(adv - x, "l2")[both].median().item() for adv in (ours, theirs)]
    yield {"check": "deepfool", "defense": name, "n": len(y), "success": [b.double().mean().item() for b in broken],
           "median_l2_where_both_succeed": sizes}  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    registry = load_plugins()
    data = registry.build_from_table("dataset", {"name": "digits"}, data_dir=Path("."))
    x, y = data.x_test, data.y_test
    for defense in ({"name": "none"}, {"name": "pgd-at", "eps": 0.1, "eps_step": 0.01, "max_iter": 20}):
        model = trained_cnn(registry, data, defense)
        for row in (*autoattack_checks(model, defense["name"], x, y), *catalogue_checks(model, defense["name"], x, y)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

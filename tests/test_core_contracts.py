"""The contracts the paper plugins build on, end to end: the pre-run check, enforced budgets,
minimal-norm attacks with an unbounded budget, metric scopes and attack extras, defenses that
reuse a model's training or wrap it, evaluation heads, stochastic models, train/eval modes,
randomness, nested attack tables, stale results, and the earlier plugin forms."""

from __future__ import annotations

import importlib
import json
import math
import sys
import weakref

import pandas as pd
import pytest
import torch

import harness_testplugin
from harness.cache import digest
from harness.contracts import LOGITS
from harness.leaderboard import read_leaderboard
from harness.testing import check_defense, check_metric, check_model, outcome_of, reference_builder, tiny_digits

PLUGIN = 'plugins = ["harness_testplugin"]'


def suite_text(body: str, *, name: str = "core", seeds: str = "[0]", n_samples: int = 60, extra: str = "") -> str:
    return f"""
name = "{name}"
seeds = {seeds}
n_samples = {n_samples}
batch_size = 32
{extra}
{PLUGIN}

[[datasets]]
name = "digits"
test_size = 100
{body}
"""


MLP = '[[models]]\nname = "mlp"\nhidden = [32]\nepochs = 2\n'
FGSM = '[[attacks]]\nname = "fgsm"\neps = [0.1, 0.3]\n'


@pytest.fixture(autouse=True)
def fresh_counters():
    harness_testplugin.CALLS.clear()
    yield


def rows(path):
    return read_leaderboard(path)


# --- 1. the pre-run check ---------------------------------------------------------------------


def test_a_component_that_cannot_be_built_stops_the_run_before_any_training(cli, write_suite, tmp_path):
    (tmp_path / "broken_deps.py").write_text(
        "from harness.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef register_attacks(register):\n"
        "    register('needs-lib', 'harness_testplugin:Exploding', params={'norm': 'linf'}, imports=['no_such_library_xyz'])\n\n"
        "@hookimpl\ndef register_models(register):\n"
        "    register('ghost', 'no_such_module_xyz:Model')\n"
    )
    suite = write_suite(
        suite_text(MLP + '[[models]]\nname = "ghost"\n' + FGSM + '[[attacks]]\nname = "needs-lib"\neps = [0.1]\n')
        .replace(PLUGIN, 'plugins = ["harness_testplugin", "broken_deps"]')
    )
    code, _, err = cli("run", suite, "--cache-dir", tmp_path / "cache")
    assert code == 2
    [line] = err.strip().splitlines()
    assert "2 problems" in line
    assert "model 'ghost' (plugin 'broken_deps', (unpackaged)) cannot be built: its factory 'no_such_module_xyz:Model' fails to import" in line
    assert "attack 'needs-lib'" in line and "its dependency 'no_such_library_xyz' fails to import: ModuleNotFoundError" in line
    assert not (tmp_path / "cache").exists(), "nothing may be trained before the check"
    assert not suite.with_suffix(".csv").exists()


# --- 2. budgets are enforced ------------------------------------------------------------------


def test_an_attack_over_its_budget_gives_an_error_cell(cli, write_suite):
    suite = write_suite(suite_text(MLP + FGSM + '[[attacks]]\nname = "over-budget"\neps = [0.1]\n'))
    code, out, err = cli("run", suite)
    assert code == 1 and "2 ok, 0 skipped, 1 error" in out
    frame = rows(suite.with_suffix(".csv")).set_index(["attack", "eps"])
    assert frame.loc[("over-budget", 0.1), "status"] == "error"
    message = frame.loc[("over-budget", 0.1), "message"]
    assert message.startswith("ValueError: attack 'over-budget' (plugin 'harness_testplugin') exceeded its budget")
    assert "linf perturbation of 0.2" in message and "> eps 0.1" in message
    assert frame.loc[("fgsm", 0.3), "status"] == "ok"


# --- 3. minimal-norm attacks with an unbounded budget ------------------------------------------


def test_a_minimal_norm_attack_takes_an_unbounded_budget(cli, write_suite):
    harness_testplugin.FgsmLineSearch.runs = 0
    suite = write_suite(suite_text(MLP + '[[attacks]]\nname = "linesearch"\neps = [0.0, 0.1, inf]\n'))
    code, out, err = cli("run", suite)
    assert code == 0, err
    assert harness_testplugin.FgsmLineSearch.runs == 2  # once for every eps: two batches of 32
    frame = rows(suite.with_suffix(".csv")).sort_values("eps")
    assert frame["eps"].tolist() == [0.0, 0.1, math.inf]
    accuracy = frame["robust_accuracy"].tolist()
    assert accuracy[0] == frame["clean_accuracy"].iloc[0] and accuracy[0] >= accuracy[1] >= accuracy[2]
    assert accuracy[2] < 0.2  # with no bound, the line search breaks nearly everything
    code, out, _ = cli("show", suite.with_suffix(".csv"), "--eps", "inf")
    assert code == 0 and "inf" in out


def test_an_unbounded_budget_is_refused_for_a_budgeted_attack(cli, write_suite):
    suite = write_suite(suite_text(MLP + '[[attacks]]\nname = "fgsm"\neps = [0.1, inf]\n'))
    code, _, err = cli("run", suite)
    assert code == 2 and "eps = inf is an unbounded budget, allowed only for a minimal-norm attack" in err


# --- 3. metrics of every scope, attack extras, and their randomness ------------------------------


METRICS = "".join(f'[[metrics]]\nname = "{m}"\n' for m in ("flip_rate", "target_hits", "weight_norm", "area", "failing"))
TARGETED = '[[attacks]]\nname = "targeted"\neps = [0.05, 0.1, 0.2]\n'


def test_metrics_of_every_scope_and_attack_extras(cli, write_suite, tmp_path):
    suite = write_suite(suite_text(MLP + FGSM + TARGETED + METRICS, seeds="[0, 1]"))
    code, out, err = cli("run", suite)
    assert code == 0, err
    frame = rows(suite.with_suffix(".csv"))
    assert frame["status"].eq("ok").all()
    # a model metric: once per trained model, on every row of that model
    assert harness_testplugin.CALLS["weight norm"] == 2
    assert frame.groupby("seed")["metric_weight_norm"].nunique().eq(1).all()
    assert frame["metric_weight_norm"].nunique() == 2
    # a sweep metric: once per (model, attack), the trapezoid area of that sweep's rows
    for (_, _), sweep in frame.groupby(["seed", "attack"]):
        sweep = sweep.sort_values("eps")
        eps, accuracy = sweep["eps"].tolist(), sweep["robust_accuracy"].tolist()
        area = sum((b - a) * (u + v) / 2 for a, b, u, v in zip(eps, eps[1:], accuracy, accuracy[1:]))
        assert sweep["metric_area"].tolist() == pytest.approx([area] * len(sweep))
    # a cell metric from the per-sample outcomes, and one from the attack's extras and scalars
    assert (frame["metric_flip_rate"] - (frame["clean_accuracy"] - frame["robust_accuracy"])).abs().max() < 1e-12
    targeted = frame[frame["attack"] == "targeted"]
    assert targeted["metric_target_hits"].between(0, 1).all() and targeted["metric_target_hits"].max() > 0
    assert frame[frame["attack"] == "fgsm"]["metric_target_hits"].isna().all()
    assert targeted["metric_steps"].eq(1.0).all() and frame[frame["attack"] == "fgsm"]["metric_steps"].isna().all()
    # a metric that raises: its column is empty and the row says why, the attack's row stays ok
    assert frame["metric_failing"].isna().all()
    assert frame["message"].str.contains("metric 'failing' failed: ValueError: metric is broken").all()
    # show ranks a lower-is-better metric from the lowest
    code, _, err = cli("show", suite.with_suffix(".csv"), "--sort", "metric_flip_rate")
    assert code == 2 and "per-attack columns such as metrics: add --by attack" in err
    code, out, _ = cli("show", suite.with_suffix(".csv"), "--by", "attack", "--sort", "metric_flip_rate", "--eps", "0.1")
    assert code == 0
    lines = out.splitlines()
    column = lines[0].split().index("metric_flip_rate")
    parsed = [line.split() for line in lines[1:] if line.split() and line.split()[0].isdigit()]
    values = [float(row[column]) for row in parsed if row[column] != "-"]  # "-": the worst case has no metric
    assert len(values) == 2 and values == sorted(values)  # fgsm and targeted; then the worst case


def test_adding_a_metric_neither_reruns_nor_changes_the_attack(cli, write_suite):
    plain = write_suite(suite_text(MLP + TARGETED), name="plain.toml")
    cli("run", plain)
    runs = harness_testplugin.CALLS["targeted runs"]
    assert runs == 6  # three budgets, two batches each
    with_metrics = write_suite(suite_text(MLP + TARGETED + '[[metrics]]\nname = "target_hits"\n'), name="metrics.toml")
    code, out, err = cli("run", with_metrics, "--output", plain.with_suffix(".csv"))
    assert code == 0, err
    assert "(3 computed, 0 already done)" in out, "a new metric makes new rows"
    assert harness_testplugin.CALLS["targeted runs"] == runs, "the attack runs came from the cache"
    before = rows(plain.with_suffix(".csv"))
    assert before["metric_target_hits"].notna().all()
    cli("run", plain, "--output", plain.with_name("again.csv"), "--force")
    again = rows(plain.with_name("again.csv"))
    pd.testing.assert_series_equal(again["robust_accuracy"], before["robust_accuracy"])


def test_check_metric_runs_each_scope(tmp_path):
    data = tiny_digits()
    model = check_model(reference_builder(data), data)
    x, y = data.x_test[:20], data.y_test[:20]
    targeted = harness_testplugin.TargetedStep("linf")
    outcomes = [outcome_of(targeted, model, x, y, eps) for eps in (0.1, 0.2)]
    assert 0 <= check_metric(harness_testplugin.TargetHitRate(), model, outcomes) <= 1
    assert check_metric(harness_testplugin.WeightNorm(), model, outcomes) > 0
    area = check_metric(harness_testplugin.AreaUnderCurve(), model, outcomes)
    assert area == pytest.approx(0.1 * (outcomes[0].robust.mean() + outcomes[1].robust.mean()).item() / 2)
    with pytest.raises(ValueError, match="metric is broken"):
        check_metric(harness_testplugin.Failing(), model, outcomes)


# --- 3. defenses that reuse a model's training, or add modules -----------------------------------


PGD = '[[attacks]]\nname = "pgd"\nmax_iter = 10\neps = [0.1]\n'


def test_one_adversarial_training_defense_trains_shipped_and_third_party_models(cli, write_suite):
    models = MLP + '[[models]]\nname = "cnn"\nchannels = [8]\nhidden = 16\nepochs = 2\n[[models]]\nname = "logreg"\nepochs = 5\n'
    defenses = '[[defenses]]\nname = "none"\n[[defenses]]\nname = "table-at"\nattack = {name = "pgd", eps = 0.1, max_iter = 3}\n'
    suite = write_suite(suite_text(models + defenses + PGD, n_samples=100))
    code, out, err = cli("run", suite)
    assert code == 0, err
    frame = rows(suite.with_suffix(".csv")).set_index(["model", "defense"])
    assert set(frame.index.get_level_values("model")) == {"mlp", "cnn", "logreg"}
    assert frame.loc[("logreg", "table-at"), "model_distribution"] == "harness-noise"
    for model in ("mlp", "cnn", "logreg"):
        assert frame.loc[(model, "table-at"), "status"] == "ok"
        assert frame.loc[(model, "table-at"), "robust_accuracy"] != frame.loc[(model, "none"), "robust_accuracy"]
    assert '"max_iter": 3' in frame.loc[("mlp", "table-at"), "defense_params"] and '"eps": 0.1' in frame.loc[("mlp", "table-at"), "defense_params"]


def test_adversarial_training_runs_in_training_mode_on_adversarial_batches():
    data = tiny_digits()
    harness_testplugin.BatchNormDropoutNet.modes.clear()
    harness_testplugin.BatchNormDropoutNet.batches.clear()
    defense = harness_testplugin.PGDAdversarialTraining({"name": "pgd", "norm": "linf", "eps": 0.1, "max_iter": 3})

    def build():
        return harness_testplugin.BatchNormDropoutNet(data.input_shape, 10, hidden=16, epochs=2, batch_size=50, lr=1e-2)

    trained = check_defense(defense, build, data)
    modes, batches = harness_testplugin.BatchNormDropoutNet.modes, harness_testplugin.BatchNormDropoutNet.batches
    assert len(modes) == 8 and all(modes), "BatchNorm and dropout must train in training mode after each attack"
    clean = {tuple(x.flatten().tolist()) for x in data.x_train}
    for batch in batches:
        assert all(tuple(x.flatten().tolist()) not in clean for x in batch), "the model must train on the adversarial batch"
        assert batch.min() >= 0 and batch.max() <= 1
    assert not trained.training


def test_a_wrapping_defense_is_loaded_from_the_cache(cli, write_suite, tmp_path):
    suite = write_suite(suite_text(MLP + '[[defenses]]\nname = "input-scaling"\n' + FGSM))
    cache = tmp_path / "shared-cache"
    code, _, err = cli("run", suite, "--cache-dir", cache)
    assert code == 0, err
    code, _, err = cli("run", suite, "--cache-dir", cache, "--output", tmp_path / "second.csv")
    assert code == 0 and "unusable" not in err and "retraining" not in err, err
    assert harness_testplugin.CALLS["wrapped trained"] == 1
    first, second = rows(suite.with_suffix(".csv")), rows(tmp_path / "second.csv")
    pd.testing.assert_series_equal(first["robust_accuracy"], second["robust_accuracy"])
    assert first["train_seconds"].equals(second["train_seconds"])


def test_a_defense_returning_another_structure_is_an_error(cli, write_suite, tmp_path):
    (tmp_path / "sloppy_wrapper.py").write_text(
        "from harness.contracts import StandardTraining\n"
        "from harness.hookspecs import hookimpl\n"
        "from harness_testplugin import InputScaling\n\n"
        "class Sloppy(StandardTraining):\n"
        "    def train(self, model, data, ctx):\n"
        "        wrapped = InputScaling(model)\n"
        "        ctx.fit(wrapped, data)\n"
        "        return wrapped\n\n"
        "@hookimpl\ndef register_defenses(register):\n    register('sloppy', Sloppy)\n"
    )
    suite = write_suite(suite_text(MLP + '[[defenses]]\nname = "sloppy"\n' + FGSM).replace(PLUGIN, 'plugins = ["sloppy_wrapper"]'))
    code, _, _ = cli("run", suite)
    assert code == 1
    assert rows(suite.with_suffix(".csv"))["message"].str.contains("build added or wrapped modules in Defense.prepare").all()


# --- 3. evaluation heads, stochastic models -----------------------------------------------------


HEADS = (
    '[[models]]\nname = "headed"\nlabel = "linear-head"\n'
    '[[models]]\nname = "headed"\nlabel = "means-head"\nhead = "means"\n'
)


def test_two_heads_on_one_backbone_trained_once(cli, write_suite, tmp_path):
    suite = write_suite(suite_text(HEADS + FGSM))
    cache = tmp_path / "cache"
    code, _, err = cli("run", suite, "--cache-dir", cache)
    assert code == 0, err
    assert harness_testplugin.CALLS["backbone trained"] == 1 and harness_testplugin.CALLS["head fitted"] == 1
    frame = rows(suite.with_suffix(".csv")).set_index(["model", "eps"])
    assert frame.loc[("linear-head", 0.1), "clean_accuracy"] != frame.loc[("means-head", 0.1), "clean_accuracy"]
    assert frame.loc[("linear-head", 0.1), "train_seconds"] == frame.loc[("means-head", 0.1), "train_seconds"]
    assert len(list((cache / "models").glob("*.pt"))) == 1 and len(list((cache / "heads").glob("*.pt"))) == 2
    code, _, _ = cli("run", suite, "--cache-dir", cache, "--output", tmp_path / "again.csv")
    assert harness_testplugin.CALLS["backbone trained"] == 1 and harness_testplugin.CALLS["head fitted"] == 1
    again = rows(tmp_path / "again.csv")
    pd.testing.assert_series_equal(again["robust_accuracy"], rows(suite.with_suffix(".csv"))["robust_accuracy"])


def test_a_stochastic_model_is_scored_over_draws_reproducibly(cli, write_suite, tmp_path):
    noisy = '[[models]]\nname = "noisy"\nnoise = 3.0\n'
    suite = write_suite(suite_text(noisy + FGSM, extra="draws = 7"))
    code, _, err = cli("run", suite, "--cache-dir", tmp_path / "a")
    assert code == 0, err
    first = rows(suite.with_suffix(".csv"))
    # 7 draws of the clean predictions, then 7 of each cell's adversarial ones (60 samples: one batch)
    assert harness_testplugin.CALLS["noisy predictions"] == 7 + 2 * 7
    n = first["n_samples"].iloc[0]
    for value in (*first["clean_accuracy"], *first["robust_accuracy"]):
        assert math.isclose(value * n * 7, round(value * n * 7)), "an average over 7 draws of n samples"
    assert (first["robust_accuracy"] <= first["clean_accuracy"]).all()
    cli("run", suite, "--cache-dir", tmp_path / "b", "--output", tmp_path / "b.csv")
    pd.testing.assert_series_equal(rows(tmp_path / "b.csv")["robust_accuracy"], first["robust_accuracy"])


def test_the_kit_checks_a_stochastic_model_under_a_seed_and_catches_an_undeclared_one():
    data = tiny_digits()

    def build():
        return harness_testplugin.NoisyNet(data.input_shape, 10, noise=3.0, epochs=1, batch_size=32, lr=1e-2)

    check_model(build, data)

    class Undeclared(harness_testplugin.NoisyNet):
        stochastic = False

    with pytest.raises(AssertionError, match="declare stochastic = True"):
        check_model(lambda: Undeclared(data.input_shape, 10, noise=3.0, epochs=1, batch_size=32, lr=1e-2), data)


# --- 3. randomness ------------------------------------------------------------------------------


def test_the_student_does_not_depend_on_whether_the_teacher_was_cached(cli, write_suite, tmp_path):
    model = '[[models]]\nname = "bn-dropout"\n'
    with_teacher_first = write_suite(
        suite_text(model + '[[defenses]]\nname = "none"\n[[defenses]]\nname = "distill"\n' + FGSM), name="both.toml"
    )
    student_only = write_suite(suite_text(model + '[[defenses]]\nname = "distill"\n' + FGSM), name="student.toml")
    assert cli("run", with_teacher_first, "--cache-dir", tmp_path / "warm")[0] == 0
    assert cli("run", student_only, "--cache-dir", tmp_path / "cold")[0] == 0
    warm = rows(with_teacher_first.with_suffix(".csv"))
    student = warm[warm["defense"] == "distill"].reset_index(drop=True)
    cold = rows(student_only.with_suffix(".csv"))
    pd.testing.assert_series_equal(cold["robust_accuracy"], student["robust_accuracy"])
    pd.testing.assert_series_equal(cold["clean_accuracy"], student["clean_accuracy"])


# --- 3. nested attack tables ------------------------------------------------------------------


def test_a_defense_attack_table_is_validated_with_the_suite(cli, write_suite):
    bad = '[[defenses]]\nname = "table-at"\nattack = {name = "pgd", eps = 0.1, max_iters = 3}\n'
    code, _, err = cli("validate", write_suite(suite_text(MLP + bad + FGSM)))
    assert code == 2
    assert "defenses[0] (table-at): parameter 'attack' (attack): unknown parameter 'max_iters' for attack 'pgd' (did you mean 'max_iter'?)" in err
    no_eps = '[[defenses]]\nname = "table-at"\nattack = {name = "pgd"}\n'
    code, _, err = cli("validate", write_suite(suite_text(MLP + no_eps + FGSM)))
    assert code == 2 and "'eps' must be a non-negative number (the training budget), got None" in err
    typo = '[[defenses]]\nname = "table-at"\nattack = {name = "pgdd", eps = 0.1}\n'
    code, _, err = cli("validate", write_suite(suite_text(MLP + typo + FGSM)))
    assert code == 2 and "unknown attack 'pgdd' (did you mean 'pgd'?)" in err


# --- 3. models are released after their last cell ----------------------------------------------


def test_trained_models_are_released_after_their_group(cli, write_suite, tmp_path, monkeypatch):
    from harness_classifiers import models

    alive: weakref.WeakSet = weakref.WeakSet()
    original = models.MLP.__init__

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        alive.add(self)

    monkeypatch.setattr(models.MLP, "__init__", tracked)
    (tmp_path / "release_probe.py").write_text(
        "import gc\nfrom harness.hookspecs import hookimpl\n\nSEEN = []\nALIVE = None\n\n"
        "@hookimpl\ndef cell_started(cell):\n    gc.collect()\n    SEEN.append(len(ALIVE))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = importlib.import_module("release_probe")
    probe.ALIVE = alive
    suite = write_suite(suite_text(MLP + FGSM, seeds="[0, 1, 2]").replace(PLUGIN, 'plugins = ["release_probe"]'))
    assert cli("run", suite)[0] == 0
    # the first cell of each group starts before its model is built; the others see one model
    assert probe.SEEN == [0, 1, 0, 1, 0, 1]


# --- 5. results follow the source ---------------------------------------------------------------


def test_an_edited_plugin_recomputes_its_cells_and_only_those(cli, write_suite, tmp_path, monkeypatch):
    package = tmp_path / "editable_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from harness.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef register_attacks(register):\n"
        "    register('edited', 'editable_plugin.attack:Edited', params={'norm': 'linf'})\n"
    )
    attack = package / "attack.py"
    attack.write_text(
        "from harness.contracts import Attack\n\n"
        "class Edited(Attack):\n"
        "    requires = frozenset()\n"
        "    def generate(self, model, x, y, eps, *, generator):\n"
        "        return (x + eps).clamp(0, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = write_suite(suite_text(MLP + FGSM + '[[attacks]]\nname = "edited"\neps = [0.1, 0.3]\n').replace(PLUGIN, 'plugins = ["editable_plugin"]'))
    cache = tmp_path / "cache"
    assert cli("run", suite, "--cache-dir", cache)[0] == 0
    before = rows(suite.with_suffix(".csv")).set_index(["attack", "eps"])
    attack.write_text(attack.read_text().replace("(x + eps)", "(x - eps)"))
    from harness.fingerprint import clear_cache

    clear_cache()
    sys.modules.pop("editable_plugin.attack", None)
    code, out, err = cli("run", suite, "--cache-dir", cache)
    assert code == 0, err
    assert "(2 computed, 2 already done)" in out
    after = rows(suite.with_suffix(".csv")).set_index(["attack", "eps"])
    assert (after.loc["fgsm", "cell_id"] == before.loc["fgsm", "cell_id"]).all()
    assert (after.loc["edited", "cell_id"] != before.loc["edited", "cell_id"]).all()
    assert after["train_seconds"].nunique() == 1, "the model was not retrained"
    assert len(list((cache / "models").glob("*.pt"))) == 1


# --- 3. plugins written against the earlier guide ------------------------------------------------


def test_earlier_attack_and_metric_forms_still_work_with_a_deprecation_warning(cli, write_suite):
    sys.modules.pop("earlier_form_plugin", None)
    with pytest.warns(DeprecationWarning) as caught:
        importlib.import_module("earlier_form_plugin")
    messages = " ".join(str(w.message) for w in caught)
    assert "SignNoise.perturb(model, x, y, eps) is deprecated" in messages
    assert "MeanAbsolutePerturbation.compute(model, x, y, x_adv) is deprecated" in messages
    suite = write_suite(
        suite_text(MLP + '[[attacks]]\nname = "old-sign-noise"\neps = [0.1]\n[[metrics]]\nname = "old_mean_abs"\n')
        .replace(PLUGIN, 'plugins = ["earlier_form_plugin"]')
    )
    code, _, err = cli("run", suite)
    assert code == 0, err
    frame = rows(suite.with_suffix(".csv"))
    assert frame["status"].eq("ok").all() and frame["metric_old_mean_abs"].iloc[0] > 0
    assert frame["max_perturbation_linf"].iloc[0] == pytest.approx(0.1, abs=1e-6)


def test_capability_guard_works_for_a_plugin_defined_capability():
    from harness.contracts import Attack, Classifier
    from harness.testing import check_attack

    data = tiny_digits()

    class WithEnergy(Classifier):
        capabilities = frozenset({LOGITS, "energy"})

        def __init__(self):
            super().__init__(data.input_shape, 10, epochs=1, batch_size=32, lr=1e-2)
            self.linear = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x.flatten(1))

        def energy(self, x):
            return -torch.logsumexp(self(x), dim=1)

    class EnergyStep(Attack):
        requires = frozenset()  # forgets to declare "energy"

        def generate(self, model, x, y, eps, *, generator):
            x_var = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model.energy(x_var).sum(), x_var)
            return (x + eps * grad.sign()).clamp(0, 1)

    model = check_model(WithEnergy, data)
    with pytest.raises(AssertionError, match=r"calls model.energy\(\) but does not declare 'energy'"):
        check_attack(EnergyStep("linf"), model, data.x_test[:5], data.y_test[:5], eps=0.1)
    EnergyStep.requires = frozenset({"energy"})
    check_attack(EnergyStep("linf"), model, data.x_test[:5], data.y_test[:5], eps=0.1)


def test_a_cached_model_that_does_not_fit_is_retrained_from_its_seeded_weights(cli, write_suite, tmp_path):
    suite = write_suite(suite_text(MLP + FGSM))
    cache = tmp_path / "cache"
    assert cli("run", suite, "--cache-dir", cache)[0] == 0
    [checkpoint] = (cache / "models").glob("*.pt")
    payload = torch.load(checkpoint, weights_only=True)
    payload["tensors"] = {key: value + 1 for key, value in list(payload["tensors"].items())[:2]}  # half a model
    meta = json.loads(payload["meta"])
    payload["meta"] = json.dumps({**meta, "digest": digest(payload["tensors"])})  # whole, but of another model
    torch.save(payload, checkpoint)
    code, _, err = cli("run", suite, "--cache-dir", cache, "--force", "--output", tmp_path / "again.csv")
    assert code == 0 and "does not fit the model's structure; retraining" in err
    pd.testing.assert_series_equal(rows(tmp_path / "again.csv")["robust_accuracy"], rows(suite.with_suffix(".csv"))["robust_accuracy"])


def test_a_failing_minimal_norm_attack_runs_once_for_its_whole_sweep(cli, write_suite):
    suite = write_suite(suite_text(MLP + '[[attacks]]\nname = "exploding-minimal"\neps = [0.5, 1.0, 2.0]\n'))
    code, out, _ = cli("run", suite)
    assert code == 1 and "0 ok, 0 skipped, 3 error" in out
    assert harness_testplugin.CALLS["minimal explosions"] == 1
    assert rows(suite.with_suffix(".csv"))["message"].eq("RuntimeError: kaboom second line").all()


def test_earlier_training_forms_still_work():
    from harness.contracts import Model, StandardTraining
    from harness.training import fit_minibatches

    data = tiny_digits()

    class EarlierModel(Model):
        capabilities = frozenset({LOGITS})

        def __init__(self):
            super().__init__(data.input_shape, 10)
            self.linear = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x.flatten(1))

        def logits(self, x):
            return self(x)

        def fit(self, data, ctx):
            loss = lambda model, x, y: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
            fit_minibatches(self, data, ctx, loss, epochs=3, batch_size=32, lr=1e-2)

        @torch.no_grad()
        def predict(self, x):
            return self(x).argmax(1)

    class EarlierAdversarialTraining(StandardTraining):
        """Builds its attack with ctx.build_attack and calls .run(model, x, y, eps), as the earlier guide showed."""

        def train(self, model, data, ctx):
            attack = ctx.build_attack({"name": "fgsm", "norm": "linf"})
            result = attack.run(model, data.x_train[:16], data.y_train[:16], 0.1)
            assert (result.x_adv - data.x_train[:16]).abs().max() <= 0.1 + 1e-6
            return super().train(model, data, ctx)

    with pytest.warns(DeprecationWarning, match="fit_minibatches is deprecated"):
        trained = check_defense(EarlierAdversarialTraining(), EarlierModel, data)
    assert (trained.predict(data.x_test) == data.y_test).double().mean() > 0.7


def test_the_one_off_warm_up_leaves_the_random_streams_alone(monkeypatch):
    """Otherwise the first model trained in a process draws other dropout masks than the same model
    trained later (after a resume, or beside another defense)."""
    from harness import training

    monkeypatch.setattr(training, "_warmed_up", False)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    training.warm_up()
    assert training._warmed_up
    assert torch.equal(torch.rand(3), expected)

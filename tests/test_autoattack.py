"""AutoAttack through the harness: the reference's per-sample results, which component broke
each sample, and agreement with an independent implementation (torchattacks)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import trained_digits_mlp
from harness_autoattack.attacks import AutoAttack, _Logits


N = 60


@pytest.fixture(scope="module")
def setup():
    model, data = trained_digits_mlp([64])
    return model, data.x_test[:N], data.y_test[:N]


def run(model, x, y, eps, seed=3, norm="linf", **params):
    attack = AutoAttack(norm, params.pop("version", "standard"), params.pop("attacks", []))
    return attack.run(model, x, y, eps, torch.Generator().manual_seed(seed))


def reference_run(model, x, y, eps, seed=3, norm="Linf", attacks=None):
    """A direct call of the authors' code, seeded as the harness seeds it."""
    from pyautoattack import AutoAttack as Reference

    reference_seed = int(torch.randint(0, 2**31 - 1, (), generator=torch.Generator().manual_seed(seed)))
    reference = Reference(_Logits(model), norm=norm, eps=eps, seed=reference_seed, version="standard")
    if attacks:
        reference.attacks_to_run = attacks
    return reference.run_standard_evaluation(x, y, batch_size=len(x))


@pytest.mark.parametrize("norm, reference_norm, eps", [("linf", "Linf", 0.08), ("l2", "L2", 0.5)])
def test_the_harness_gives_the_references_per_sample_results(setup, norm, reference_norm, eps):
    model, x, y = setup
    outcome = run(model, x, y, eps, norm=norm)
    x_reference, label_reference = reference_run(model, x, y, eps, norm=reference_norm)
    robust = model.predict(outcome.x_adv) == y
    assert torch.equal(robust, label_reference == y)
    assert 0 < robust.sum() < (model.predict(x) == y).sum()  # the case is not trivial
    assert torch.equal(outcome.x_adv, x_reference)
    assert outcome.norms.max() <= eps + 1e-5


def test_each_broken_sample_names_the_first_component_that_broke_it(setup):
    model, x, y = setup
    outcome = run(model, x, y, 0.08)
    broken_by = outcome.extras["broken_by"]
    clean_correct = model.predict(x) == y
    robust = model.predict(outcome.x_adv) == y
    assert torch.equal(broken_by >= 0, clean_correct & ~robust)
    assert list(outcome.scalars) == ["broken_by_apgd_ce", "broken_by_apgd_t", "broken_by_fab_t", "broken_by_square"]
    for position, fraction in enumerate(outcome.scalars.values()):
        assert fraction == pytest.approx((broken_by == position).double().mean().item())
    assert outcome.scalars["broken_by_apgd_ce"] > 0.2
    # APGD-CE alone breaks exactly what the first component of the whole run broke
    first = run(model, x, y, 0.08, attacks=["apgd-ce"])
    assert torch.equal(first.extras["broken_by"] == 0, broken_by == 0)
    assert list(first.scalars) == ["broken_by_apgd_ce"]


def test_a_subset_is_the_references_run_of_that_subset(setup):
    model, x, y = setup
    outcome = run(model, x, y, 0.08, attacks=["square", "apgd-t"])
    _, label_reference = reference_run(model, x, y, 0.08, attacks=["square", "apgd-t"])
    assert torch.equal(model.predict(outcome.x_adv) == y, label_reference == y)
    assert list(outcome.scalars) == ["broken_by_square", "broken_by_apgd_t"]


def test_unknown_or_repeated_components_are_refused():
    with pytest.raises(ValueError, match="unknown AutoAttack component.*apgd-xx.*known: apgd-ce"):
        AutoAttack("linf", "standard", ["apgd-xx"])
    with pytest.raises(ValueError, match="twice"):
        AutoAttack("linf", "standard", ["square", "square"])


def test_the_global_random_streams_are_left_as_they_were(setup):
    model, x, y = setup
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    run(model, x[:10], y[:10], 0.08, attacks=["apgd-ce"])
    assert torch.equal(torch.rand(3), expected)


def test_the_same_seed_gives_the_same_examples_and_another_seed_other_ones(setup):
    model, x, y = setup
    first = run(model, x, y, 0.08, attacks=["apgd-ce"], seed=1).x_adv
    assert torch.equal(first, run(model, x, y, 0.08, attacks=["apgd-ce"], seed=1).x_adv)
    assert not torch.equal(first, run(model, x, y, 0.08, attacks=["apgd-ce"], seed=2).x_adv)


def test_torchattacks_agrees_within_one_point(setup):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = setup
    ours = (model.predict(run(model, x, y, 0.08).x_adv) == y).double().mean().item()
    independent = torchattacks.AutoAttack(_Logits(model), norm="Linf", eps=0.08, version="standard", n_classes=10, seed=0)
    theirs = (model.predict(independent(x, y)) == y).double().mean().item()
    assert abs(ours - theirs) <= 0.01 + 1e-9, (ours, theirs)


def test_a_suite_gets_a_broken_by_column_per_component(cli, write_suite, tmp_path):
    suite = write_suite(
        """
name = "aa"
seeds = [0]
n_samples = 30
batch_size = 30

[[datasets]]
name = "digits"
test_size = 60

[[models]]
name = "mlp"
hidden = [32]
epochs = 3

[[attacks]]
name = "autoattack"
attacks = ["apgd-ce", "square"]
eps = [0.0, 0.1]
"""
    )
    code, _, err = cli("run", suite, "--output", tmp_path / "aa.csv", "--no-progress")
    assert code == 0, err
    board = pd.read_csv(tmp_path / "aa.csv")
    assert list(board["status"]) == ["ok", "ok"]
    assert {"metric_broken_by_apgd_ce", "metric_broken_by_square"} <= set(board.columns)
    at_zero, at_tenth = board.iloc[0], board.iloc[1]
    assert at_zero["robust_accuracy"] == at_zero["clean_accuracy"] and at_zero["metric_broken_by_apgd_ce"] == 0
    broken = at_tenth["metric_broken_by_apgd_ce"] + at_tenth["metric_broken_by_square"]
    assert broken == pytest.approx(at_tenth["clean_accuracy"] - at_tenth["robust_accuracy"])

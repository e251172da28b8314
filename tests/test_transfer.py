"""Transfer (black-box) attacks: any attack, crafted on another model of the suite."""

from __future__ import annotations

import pandas as pd

from harness.leaderboard import read_leaderboard

SUITE = """
name = "transfer"
seeds = [0]
n_samples = 60
batch_size = 60

[[datasets]]
name = "digits"
test_size = 100

[[models]]
name = "mlp"
hidden = [HIDDEN]
epochs = 3

[[models]]
name = "cnn"
channels = [8]
hidden = 16
epochs = 3

[[attacks]]
name = "fgsm"
eps = [0.1, 0.3]

[[attacks]]
name = "transfer"
label = "fgsm-from-mlp"
source = "mlp"
attack = { name = "fgsm" }
eps = [0.1, 0.3]
"""


def test_a_transfer_from_the_model_itself_is_the_white_box_attack(cli, write_suite):
    suite = write_suite(SUITE.replace("HIDDEN", "32"))
    code, _, err = cli("run", suite)
    assert code == 0, err
    rows = read_leaderboard(suite.with_suffix(".csv")).set_index(["model", "attack", "eps"]).sort_index()
    assert (rows["status"] == "ok").all()
    # on the MLP the surrogate is the MLP itself (the same trained model, from the cache)
    white, transfer = rows.loc[("mlp", "fgsm")], rows.loc[("mlp", "fgsm-from-mlp")]
    pd.testing.assert_series_equal(white["robust_accuracy"], transfer["robust_accuracy"])
    # on the CNN the examples come from the MLP: the row differs from the CNN's white-box attack
    assert not rows.loc[("cnn", "fgsm"), "robust_accuracy"].equals(
        rows.loc[("cnn", "fgsm-from-mlp"), "robust_accuracy"]
    )
    assert set(rows.loc[("cnn", "fgsm-from-mlp"), "norm"]) == {"linf"}


def test_the_surrogate_is_part_of_the_identity(cli, write_suite, tmp_path):
    first = write_suite(SUITE.replace("HIDDEN", "32"), name="a.toml")
    second = write_suite(SUITE.replace("HIDDEN", "48"), name="b.toml")
    for suite in (first, second):
        assert cli("run", suite)[0] == 0
    a = read_leaderboard(first.with_suffix(".csv")).set_index(["model", "attack", "eps"]).sort_index()
    b = read_leaderboard(second.with_suffix(".csv")).set_index(["model", "attack", "eps"]).sort_index()
    # the CNN did not change, but its transfer rows were crafted on another MLP
    assert (a.loc[("cnn", "fgsm"), "cell_id"] == b.loc[("cnn", "fgsm"), "cell_id"]).all()
    assert (a.loc[("cnn", "fgsm-from-mlp"), "cell_id"] != b.loc[("cnn", "fgsm-from-mlp"), "cell_id"]).all()


def test_bad_transfer_entries_are_one_line_errors(cli, write_suite):
    unknown = SUITE.replace("HIDDEN", "32").replace('source = "mlp"', 'source = "mpl"')
    code, _, err = cli("validate", write_suite(unknown))
    assert code == 2 and "parameter 'source' names no model of this suite: 'mpl' (did you mean 'mlp'?)" in err
    budget = SUITE.replace("HIDDEN", "32").replace(
        'attack = { name = "fgsm" }', 'attack = { name = "fgsm", eps = 0.1 }'
    )
    code, _, err = cli("validate", write_suite(budget))
    assert code == 2 and "no 'eps' here" in err


def test_a_bound_transfer_attack_passes_the_contract_kit():
    from harness.plugins import load_plugins
    from harness.testing import check_attack, reference_classifier, tiny_digits
    from harness.transfer import TransferAttack

    data = tiny_digits()
    target, surrogate = reference_classifier(data, seed=0), reference_classifier(data, seed=1)
    attack = TransferAttack(norm="linf", source="mlp", source_defense="none", attack={"name": "pgd", "max_iter": 5})
    attack.bind(load_plugins().build_from_table("attack", attack.attack_table), surrogate)
    check_attack(attack, target, data.x_test[:20], data.y_test[:20], eps=0.1)
    assert attack.requires == frozenset()  # the target is only asked for its predictions

"""Suite parsing and validation: every problem reported at once, one line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ValidationError
from harness.plugins import load_plugins
from harness.suite import parse_suite, read_suite_file


def parse(text: str, tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return parse_suite(read_suite_file(path), path, load_plugins())


def problems_of(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse(text, tmp_path)
    return info.value.problems


def test_valid_suite_expands_to_cells(tmp_path):
    from conftest import TINY_SUITE

    suite = parse(TINY_SUITE, tmp_path)
    cells = suite.cells()
    assert len(cells) == 4  # 1 dataset x 1 model x none x (2 attacks x 2 eps) x 1 seed
    assert [c.defense.label for c in cells] == ["none"] * 4
    assert [(c.attack.label, c.eps) for c in cells] == [("fgsm", 0.1), ("fgsm", 0.3), ("pgd", 0.1), ("pgd", 0.3)]
    assert cells[2].attack.params["max_iter"] == 5 and cells[2].attack.params["norm"] == "linf"
    assert len({c.cell_id for c in cells}) == 4
    assert len({c.training_key for c in cells}) == 1


def test_cell_ids_change_with_any_parameter(tmp_path):
    from conftest import TINY_SUITE

    before = parse(TINY_SUITE, tmp_path).cells()
    after = parse(TINY_SUITE.replace("epochs = 2", "epochs = 3"), tmp_path).cells()
    assert {c.cell_id for c in before}.isdisjoint(c.cell_id for c in after)


def test_each_problem_is_reported(tmp_path):
    problems = problems_of(
        """
name = "bad"
seeds = [0, "one"]
n_sample = 10
[[datasets]]
name = "digitz"
[[models]]
name = "mlp"
epochs = "ten"
[[models]]
label = "nameless"
[[attacks]]
name = "pgd"
eps = [0.1]
norm = "l7"
[[attacks]]
name = "fgsm"
""",
        tmp_path,
    )
    text = "\n".join(problems)
    assert "'seeds' must be a non-empty list of non-negative integers" in text
    assert "unknown key 'n_sample' (did you mean 'n_samples'?)" in text
    assert "missing field 'n_samples'" in text
    assert "datasets[0] (digitz): unknown dataset 'digitz' (did you mean 'digits'?)" in text
    assert "models[0] (mlp): parameter 'epochs' of model 'mlp' must be an integer, got 'ten'" in text
    assert "models[1]: missing field 'name'" in text
    assert "attacks[0] (pgd): parameter 'norm' of attack 'pgd' must be one of 'linf', 'l2', got 'l7'" in text
    assert "attacks[1] (fgsm): missing field 'eps'" in text
    assert len(problems) == 8


def test_duplicate_labels_and_bad_eps(tmp_path):
    problems = problems_of(
        """
n_samples = 10
[[datasets]]
name = "digits"
[[models]]
name = "mlp"
[[models]]
name = "mlp"
[[attacks]]
name = "pgd"
eps = [0.1, -0.2]
""",
        tmp_path,
    )
    assert any("label 'mlp' is already used by models[0]" in p for p in problems)
    assert any("'eps' must be a non-empty list of non-negative numbers" in p for p in problems)


def test_values_out_of_range_are_all_reported_at_once(tmp_path):
    problems = problems_of(
        """
n_samples = 10
[[datasets]]
name = "digits"
test_size = 0
[[models]]
name = "mlp"
epochs = -1
lr = inf
hidden = [-5]
[[models]]
name = "cnn"
label = "nan-cnn"
lr = nan
[[defenses]]
name = "at"
weight = 1.5
attack = {name = "pgd", max_iter = 0, eps = 0.1}
[[attacks]]
name = "pgd"
max_iter = 0
eps = [0.1]
""",
        tmp_path,
    )
    assert problems == [
        "datasets[0] (digits): parameter 'test_size' of dataset 'digits' must be > 0, got 0",
        "models[0] (mlp): parameter 'epochs' of model 'mlp' must be > 0, got -1",
        "models[0] (mlp): parameter 'lr' of model 'mlp' must be a finite number, got inf",
        "models[0] (mlp): parameter 'hidden' of model 'mlp' must be a list of integers > 0, got [-5]",
        "models[1] (cnn): parameter 'lr' of model 'cnn' must be a finite number, got nan",
        "defenses[0] (at): parameter 'weight' of defense 'at' must be in [0, 1], got 1.5",
        "defenses[0] (at): parameter 'attack' (attack): parameter 'max_iter' of attack 'pgd' must be > 0, got 0",
        "attacks[0] (pgd): parameter 'max_iter' of attack 'pgd' must be > 0, got 0",
    ]


def test_a_nested_table_is_checked_against_its_ranges(tmp_path):
    suite = """
n_samples = 10
[[datasets]]
name = "digits"
[[models]]
name = "mlp"
[[defenses]]
name = "at"
attack = {name = "pgd", max_iter = MAX_ITER, eps = 0.1}
[[attacks]]
name = "fgsm"
eps = [0.1]
"""
    assert problems_of(suite.replace("MAX_ITER", "-3"), tmp_path) == [
        "defenses[0] (at): parameter 'attack' (attack): parameter 'max_iter' of attack 'pgd' must be > 0, got -3"
    ]
    defense = parse(suite.replace("MAX_ITER", "1"), tmp_path).defenses[0]
    assert defense.params["attack"]["max_iter"] == 1


def test_invalid_toml_is_one_problem(tmp_path):
    problems = problems_of("name = \n", tmp_path)
    assert len(problems) == 1 and problems[0].startswith("invalid TOML")


def test_cli_validate_suite_exit_codes(cli, write_suite):
    code, out, err = cli("validate", write_suite())
    assert code == 0 and "valid suite 'tiny' (4 cells)" in out
    code, out, err = cli("validate", write_suite("n_samples = 'x'\n[[datasets]]\nname='digits'\n"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("harness: error: ") and "Traceback" not in err
    assert "'n_samples' must be a positive integer" in err and "missing section [[models]]" in err
    code, _, err = cli("validate", "does-not-exist.toml")
    assert code == 2 and "no such suite file" in err


def test_cli_run_rejects_malformed_suite_without_traceback(cli, write_suite, tmp_path):
    code, _, err = cli("run", write_suite("[[datasets]\n"), "--output", tmp_path / "x.csv")
    assert code == 2 and "invalid TOML" in err and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()


def test_a_defense_or_attack_may_name_the_models_it_applies_to(tmp_path):
    from conftest import TINY_SUITE

    text = TINY_SUITE + '\n[[models]]\nname = "cnn"\nchannels = [4]\nhidden = 8\nepochs = 1\n'
    text += '\n[[defenses]]\nname = "none"\n\n[[defenses]]\nname = "pgd-at"\nmodels = ["cnn"]\nmax_iter = 2\n'
    suite = parse(text, tmp_path)
    pairs = {(c.model.label, c.defense.label) for c in suite.cells()}
    assert pairs == {("mlp", "none"), ("cnn", "none"), ("cnn", "pgd-at")}
    unrestricted = parse(text.replace('models = ["cnn"]\n', ""), tmp_path)
    assert {c.cell_id for c in suite.cells()} < {c.cell_id for c in unrestricted.cells()}  # fewer cells, none changed
    assert "defenses 'pgd-at': 'models' names no model of this suite: 'cnnn' (did you mean 'cnn'?) (labels: mlp, cnn)" in (
        problems_of(text.replace('models = ["cnn"]', 'models = ["cnnn"]'), tmp_path)
    )
    assert "defenses[1] (pgd-at): 'models' must be a non-empty list of model labels, got 'cnn'" in (
        problems_of(text.replace('models = ["cnn"]', 'models = "cnn"'), tmp_path)
    )
    assert "models[0] (mlp): 'models' (the models an entry applies to) is for defenses and attacks only" in (
        problems_of(text.replace("hidden = [32]", 'hidden = [32]\nmodels = ["x"]'), tmp_path)
    )

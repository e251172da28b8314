"""`harness run --set KEY=VALUE` overrides, their record beside the leaderboard, and `--plan`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib

import pytest

from harness.cli import main
from harness.errors import ValidationError
from harness.overrides import apply_overrides, effective_suite_path

SUITE = """
name = "tiny"
seeds = [0]
n_samples = 30
batch_size = 32

[[datasets]]
name = "digits"
test_size = 40

[[models]]
name = "mlp"
hidden = [16]
epochs = 1

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = [0.1]
"""
"""A suite of one cell: one tiny MLP under one FGSM budget."""
WITH_AT = SUITE.replace('name = "none"', 'name = "at"\nlabel = "fgsm-at"\nattack = { name = "fgsm", norm = "linf", eps = 0.1 }')
"""The same with a defense that has a table parameter (its inner attack)."""


def test_overrides_set_top_level_keys_and_entry_parameters_by_label_without_touching_the_input():
    raw = tomllib.loads(WITH_AT)
    before = json.dumps(raw)
    table = apply_overrides(
        raw,
        ["n_samples=50", "seeds = [0, 1]", "models.mlp.epochs=2", "models.mlp.lr=0.01", "attacks.fgsm.eps=[0.1, 0.2]",
         "attacks.fgsm.norm=l2", "defenses.fgsm-at.attack.eps=0.3", 'description="with --set"'],
    )  # fmt: skip
    assert json.dumps(raw) == before
    assert table["n_samples"] == 50 and table["seeds"] == [0, 1] and table["description"] == "with --set"
    assert table["models"][0] == {"name": "mlp", "hidden": [16], "epochs": 2, "lr": 0.01}  # lr: a new parameter
    assert table["attacks"][0]["eps"] == [0.1, 0.2] and table["attacks"][0]["norm"] == "l2"  # a bare word: a string
    assert table["defenses"][0]["attack"] == {"name": "fgsm", "norm": "linf", "eps": 0.3}


def test_overrides_address_the_default_defense_and_quoted_labels():
    raw = tomllib.loads(SUITE.replace('name = "mlp"', 'name = "mlp"\nlabel = "mlp.v2"'))
    del raw["defenses"]
    table = apply_overrides(raw, ['models."mlp.v2".epochs=3', "defenses.none.label=plain"])
    assert table["models"][0]["epochs"] == 3 and table["defenses"] == [{"name": "none", "label": "plain"}]


def test_every_bad_assignment_is_one_problem():
    with pytest.raises(ValidationError) as info:
        assignments = ["n_samples=5", "epochs", "defenses.fgsm-at.weight.x=1", "models.mlp.x.y=1"]
        apply_overrides(tomllib.loads(WITH_AT), assignments)
    assert info.value.source == "--set"
    assert info.value.problems == [
        "'epochs': missing '=' (give KEY=VALUE, e.g. n_samples=50 or models.mlp.epochs=2)",
        "'defenses.fgsm-at.weight.x=1': 'defenses.fgsm-at.weight' is not a table; it is not set in the suite: "
        "set it whole, defenses.fgsm-at.weight={...}",
        "'models.mlp.x.y=1': 'models.mlp.x' is not a table; it is not set in the suite: "
        "set it whole, models.mlp.x={...}",
    ]


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("n_samples", "--set: 1 problem: 'n_samples': missing '='"),
        ("n_sampels=5", "unknown key 'n_sampels' (did you mean 'n_samples'?)"),
        ("modles.mlp.epochs=2", "unknown section 'modles' (did you mean 'models'?) (sections: datasets, models,"),
        ("models.mpl.epochs=2", "no model labelled 'mpl' in [[models]] (did you mean 'mlp'?) (labels: mlp)"),
        ("models.mlp.epochs=[2", "'[2' is not a TOML value"),
        ("models.mlp.epochs=two", "with --set: 1 problem: models[0] (mlp): parameter 'epochs' of model 'mlp' must be an integer"),
        ("models.mlp.epoch=2", "unknown parameter 'epoch' for model 'mlp' (did you mean 'epochs'?)"),
        ("n_samples=0", "'n_samples' must be a positive integer, got 0"),
    ],
)
def test_a_bad_override_is_one_line_and_exit_2(cli, write_suite, assignment, message):
    code, out, err = cli("run", write_suite(WITH_AT), "--plan", "--set", assignment)
    assert code == 2 and out == ""
    assert err.startswith("harness: error: ") and err.count("\n") == 1 and message in err, err


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A tiny run with overrides: its suite, output and cache, and what `--plan` printed before it."""
    directory = tmp_path_factory.mktemp("overrides")
    suite, output, cache = directory / "tiny.toml", directory / "out.csv", directory / "cache"
    suite.write_text(SUITE)
    common = ["run", str(suite), "--output", str(output), "--cache-dir", str(cache), "--set", "n_samples=20"]
    plan = subprocess.run([sys.executable, "-m", "harness", *common, "--plan"], capture_output=True, text=True)
    assert main(common) == 0
    return suite, output, cache, plan


def test_plan_before_a_run_lists_the_models_to_train(ran):
    _, output, _, plan = ran
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [
        f"tiny: 1 cells, 0 already done in {output}, 1 to compute",
        "models: 1 to train, 0 from the cache",
        "         dataset  model  defense  seed",
        "  train  digits   mlp    none     0",
        "attack runs: 1 to compute, 0 from the cache (counted per eps: a minimal-norm attack computes one run for all "
        "its eps)",
    ]
    assert plan.stderr == "harness: overrides: n_samples=20\n"


def test_a_run_with_overrides_records_its_suite_and_plans_nothing_after(ran, capsys):
    suite, output, cache, _ = ran
    record = json.loads(effective_suite_path(output).read_text())
    assert effective_suite_path(output).name == "out.suite.json"
    assert record == {**tomllib.loads(SUITE), "n_samples": 20}
    capsys.readouterr()
    args = ["run", str(suite), "--output", str(output), "--cache-dir", str(cache), "--set", "n_samples=20", "--plan"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"tiny: 1 cells, 1 already done in {output}, 0 to compute\nmodels: 0 to train, 0 from the cache")
    assert "attack runs: 0 to compute, 0 from the cache" in out and err == "harness: overrides: n_samples=20\n"


def test_plan_imports_no_torch(ran):
    suite, output, cache, _ = ran
    args = ["run", str(suite), "--output", str(output), "--cache-dir", str(cache), "--plan"]
    code = (
        f"import sys\nfrom harness.cli import main\nassert main({args!r}) == 0\n"
        "print('HEAVY', sorted(m for m in ('torch', 'art', 'sklearn') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stderr, result.stderr
    assert "1 cells, 0 already done" in result.stdout and "  load  digits   mlp    none     0" in result.stdout


def test_a_run_without_overrides_removes_the_record(ran, tmp_path, capsys):
    suite, output, cache, _ = ran
    for path in output.parent.glob(f"{output.stem}*"):
        shutil.copy(path, tmp_path)
    copy = tmp_path / output.name
    assert effective_suite_path(copy).exists()
    assert main(["run", str(suite), "--output", str(copy), "--cache-dir", str(cache)]) == 0
    assert not effective_suite_path(copy).exists()
    assert "1 computed" in capsys.readouterr().out  # n_samples 30 is another cell; the model came from the cache

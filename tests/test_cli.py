"""The light commands (plugins, show, compare, validate) and their start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from harness.leaderboard import read_leaderboard, write_leaderboard


@pytest.fixture(scope="module")
def leaderboard(tmp_path_factory):
    """A real leaderboard from a tiny run, shared by the tests of this module."""
    from conftest import TINY_SUITE

    from harness.cli import main

    directory = tmp_path_factory.mktemp("lb")
    suite = directory / "tiny.toml"
    suite.write_text(TINY_SUITE.replace("seeds = [0]", "seeds = [0, 1]"))
    assert main(["run", str(suite), "--cache-dir", str(directory / "cache")]) == 0
    return suite.with_suffix(".csv")


LIGHT_COMMANDS = [
    ["--help"],
    ["plugins", "--params"],
    ["show", "{csv}"],
    ["compare", "{csv}", "{csv}"],
    ["plot", "{csv}"],
    ["site", "{csv}", "--output", "{csv}-site"],
    ["validate", "{csv}"],
    ["validate", str(ROOT / "leaderboards" / "digits.toml")],
]


@pytest.mark.parametrize("command", LIGHT_COMMANDS, ids=lambda c: " ".join(c[:2]).replace("{csv}", "csv"))
def test_light_commands_do_not_import_torch_art_or_scipy(leaderboard, command):
    args = [a.format(csv=leaderboard) for a in command]
    code = (
        "import sys\nfrom harness.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'art', 'sklearn', 'scipy') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stderr, result.stderr  # their start-up time is measured in the benchmarks


def test_plugins_json_lists_distributions_and_components(cli):
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    listing = {p["name"]: p for p in json.loads(out)}
    assert listing["art"]["distribution"] == "robustness-harness"
    from harness_art.specs import CATALOGUE, UNAVAILABLE

    assert listing["art"]["components"] == {"attack": sorted(["fgsm", "pgd", *CATALOGUE, *UNAVAILABLE])}
    assert listing["classifiers"]["hooks"] == ["register_models"]
    code, out, _ = cli("plugins")
    assert code == 0 and "pgd: ART ProjectedGradientDescentPyTorch" in out


def test_plugins_params_lists_types_defaults_and_choices(cli):
    code, out, _ = cli("plugins", "--params")
    assert code == 0
    assert "    pgd: ART" in out and "      max_iter: integer = 40 (> 0)\n" in out
    assert "      norm: string = 'linf' (one of 'linf', 'l2')\n" in out
    assert "      hidden: list of integers = [256, 256] (> 0)\n" in out
    assert "      eps_step: number = None (> 0)\n" in out
    assert "      num_random_init: integer = 0 (>= 0)\n" in out and "      weight: number = 0.5 (in [0, 1])\n" in out
    code, out, _ = cli("plugins", "--params", "--json")
    params = {p["name"]: p for p in json.loads(out)}["art"]["params"]
    assert params["attack"]["pgd"]["max_iter"] == {"type": "integer", "default": 40, "choices": None, "range": "> 0"}
    assert params["attack"]["pgd"]["norm"] == {
        "type": "string", "default": "linf", "choices": ["linf", "l2"], "range": None
    }
    code, out, _ = cli("plugins", "--json")
    assert all("params" not in p for p in json.loads(out))


def test_show_by_attack_ranks_within_each_threat_setting(cli, leaderboard):
    code, out, _ = cli("show", leaderboard, "--by", "attack")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rank", "dataset", "model"]
    rows = [line.split() for line in lines[1:] if line.split()[0].isdigit()]
    assert len(rows) == 6 and all(r[7] == "2" for r in rows)  # two seeds averaged
    assert [r[0] for r in rows] == ["1", "2", "3", "1", "2", "3"]
    assert [r[4] for r in rows if r[0] == "3"] == ["worst-case", "worst-case"]  # never above an attack
    assert "robust_ci: 95% Student-t interval of the mean over seeds, clipped to [0, 1]" in out
    code, out, _ = cli("show", leaderboard, "--by", "attack", "--attack", "pgd", "--per-seed", "--eps", "0.3")
    assert code == 0 and len([ln for ln in out.splitlines() if ln.split()[0].isdigit()]) == 2 and "fgsm" not in out
    code, _, err = cli("show", leaderboard, "--sort", "nope")
    assert code == 2 and "cannot sort by 'nope'" in err


def test_show_ranks_entries_by_the_worst_case_over_attacks(cli, tmp_path):
    from test_plots import cells

    from harness.outcomes import outcomes_path, write_outcomes

    rows, outcomes = zip(*cells())
    path = tmp_path / "board.csv"
    write_outcomes(outcomes, outcomes_path(path))
    write_leaderboard(rows, path)
    code, out, _ = cli("show", path, "--norm", "linf")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "dataset", "norm", "eps", "model", "defense", "seeds", "clean", "worst_case",
                                "ci_low", "ci_high", "fgsm", "pgd", "flags"]  # fmt: skip
    table = {(r[3], r[4]): r for r in (line.split() for line in lines[1:]) if r and r[0].isdigit()}
    # at eps 0.2 the CNN ranks first on the worst case (0.15 against 0), though the MLP's PGD alone keeps 0.25
    assert table[("0.2000", "cnn")][0] == "1" and table[("0.2000", "mlp")][0] == "2"
    assert table[("0.2000", "mlp")][8] == "0.0000" and table[("0.2000", "mlp")][12] == "0.2500"
    assert table[("0.2000", "cnn")][11] == "-"  # no FGSM on the CNN: its only attack is its worst case
    assert "worst_case: robust accuracy when a sample counts as robust only if every attack failed on it" in out
    outcomes_path(path).unlink()
    code, out, _ = cli("show", path, "--norm", "linf", "--eps", "0.2")
    assert code == 0 and "worst_case: 3 rows without per-sample outcomes show the lowest attack's, an upper bound" in out


def test_compare_aligns_entries_and_lists_one_sided_ones(cli, leaderboard, tmp_path):
    frame = read_leaderboard(leaderboard)
    changed = frame.copy()
    best = frame["robust_accuracy"].idxmax()
    assert frame.loc[best, "robust_accuracy"] >= 0.125
    changed.loc[best, "robust_accuracy"] -= 0.125
    changed.loc[best, "robust_accuracy_ci_low"] = 0.0
    changed = changed.drop(index=[3 if best != 3 else 2])
    other = tmp_path / "other.csv"
    write_leaderboard(changed.to_dict("records"), other)
    code, out, _ = cli("compare", leaderboard, other)
    assert code == 0
    assert "robust diff [95% CI]" in out
    assert "only in A (1):" in out and "only in B" not in out
    code, out, _ = cli("compare", leaderboard, other, "--json")
    changed_entry = frame.loc[best, ["model", "attack", "eps"]].tolist()
    [record] = [r for r in json.loads(out) if [r["model"], r["attack"], r["eps"]] == changed_entry]
    paired = record["seeds"]
    assert record["robust_diff"] == pytest.approx(-0.125 / paired)  # one seed of the entry lost 0.125


def test_compare_reads_a_version_2_leaderboard_and_refuses_an_unknown_version(cli, leaderboard, tmp_path):
    from harness.leaderboard import ADDED_IN_3

    frame = read_leaderboard(leaderboard)
    earlier = tmp_path / "earlier.csv"
    frame.drop(columns=ADDED_IN_3).assign(schema_version=2).to_csv(earlier, index=False)
    code, out, err = cli("compare", earlier, leaderboard)
    assert code == 0, err
    old = read_leaderboard(earlier)
    assert list(old.columns) == list(frame.columns) and old["attack_access"].isna().all()
    future = tmp_path / "future.csv"
    frame.assign(schema_version=4).to_csv(future, index=False)
    code, _, err = cli("compare", leaderboard, future)
    assert code == 2 and "unsupported schema_version 4 (this harness reads versions 2 and 3)" in err


def test_corrupt_csv_as_run_output_is_a_clean_error(cli, write_suite, tmp_path):
    output = tmp_path / "broken.csv"
    output.write_text("not,a\nleaderboard,at all\n")
    code, _, err = cli("run", write_suite(), "--output", output)
    assert code == 2 and "missing columns" in err and "Traceback" not in err


def test_compare_notes_rows_whose_settings_differ_and_takes_a_tolerance(cli, leaderboard, tmp_path):
    frame = read_leaderboard(leaderboard)
    changed = frame.copy()
    changed.loc[0, "n_samples"] = 40
    changed.loc[1, "attack_params"] = changed.loc[1, "attack_params"].replace('"batch_size": 256', '"batch_size": 64')
    changed.loc[2, "robust_accuracy"] = max(changed.loc[2, "robust_accuracy"] - 0.02, 0.0)
    changed.loc[2, "robust_accuracy_ci_low"] = 0.0
    other = tmp_path / "other.csv"
    write_leaderboard(changed.to_dict("records"), other)
    code, out, _ = cli("compare", leaderboard, other)
    assert code == 0
    assert "n_samples differ (60 vs 40)" in out and "attack_params differ" in out
    entries = frame.groupby(["model", "attack", "eps"]).ngroups  # two seeds each: a 0.02 change moves the mean by 0.01
    code, out, _ = cli("compare", leaderboard, other, "--tolerance", "0.03")
    assert code == 0 and f"{entries} of {entries} common entries within 0.03" in out
    code, out, _ = cli("compare", leaderboard, other, "--tolerance", "0.005")
    assert code == 1 and f"{entries - 1} of {entries} common entries within 0.005 (largest difference 0.0100)" in out


def test_median_perturbation_is_the_usual_median():
    import torch

    from harness.contracts import CellOutcome
    from harness.execute import scores

    x = torch.zeros(4, 1, 1, 2)
    x_adv = x.clone()
    for i, size in enumerate([0.1, 0.2, 0.4, 0.8]):
        x_adv[i, 0, 0, 0] = size
    ones = torch.ones(4, dtype=torch.float64)
    outcome = CellOutcome("l2", 1.0, torch.arange(4), x, torch.zeros(4, dtype=torch.long), x_adv, ones, ones * 0,
                          ones * 0, torch.ones(4, dtype=torch.long), torch.zeros(4))  # fmt: skip
    row = scores(outcome)
    assert row["median_perturbation_l2"] == pytest.approx(0.3)  # not the lower middle value, 0.2
    assert row["mean_perturbation_l2"] == pytest.approx(0.375)
    assert row["robust_accuracy"] == 0 and row["attack_success_rate"] == 1

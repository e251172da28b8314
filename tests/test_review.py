"""Per-sample outcomes, the reviewer's flags and the worst case over attacks, on hand-made
leaderboards and outcome files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy.stats import binomtest
from test_leaderboard import make_row

from harness.errors import ValidationError
from harness.leaderboard import read_leaderboard, to_frame
from harness.outcomes import check_against, outcomes_path, read_outcomes, write_outcomes
from harness.review import checks, flags, over_seeds, worst_case, worst_over_attacks

FGSM = json.dumps({"norm": "linf"})
PGD = json.dumps({"norm": "linf", "max_iter": 10})


def row(attack="pgd", eps=0.1, robust=0.5, clean=0.9, seed=0, **overrides):
    values = {
        "attack": attack, "eps": eps, "robust_accuracy": robust, "clean_accuracy": clean, "seed": seed,
        "cell_id": f"{attack}-{eps}-{seed}-{overrides.get('model', 'mlp')}", "attack_params": PGD if attack == "pgd" else FGSM,
        "robust_accuracy_ci_low": 0.0, "robust_accuracy_ci_high": 1.0, "max_perturbation_linf": min(eps, 1.0),
    }  # fmt: skip
    return make_row(**{**values, **overrides})


def raised(rows):
    frame = to_frame(rows)
    return dict(zip(zip(frame["attack"], frame["eps"]), flags(frame)))


def test_no_flags_on_a_sound_leaderboard():
    rows = [row("fgsm", 0.1, 0.6), row("pgd", 0.1, 0.5), row("fgsm", 0.3, 0.2), row("pgd", 0.3, 0.1)]
    assert set(raised(rows).values()) == {""}


def test_robust_accuracy_rising_with_eps_is_flagged():
    got = raised([row("pgd", 0.1, 0.5), row("pgd", 0.2, 0.3), row("pgd", 0.3, 0.4)])
    assert got == {("pgd", 0.1): "", ("pgd", 0.2): "", ("pgd", 0.3): "rises-with-eps"}


def test_a_single_step_attack_beating_an_iterative_one_is_flagged():
    got = raised([row("fgsm", 0.1, 0.4, attack_plugin="art"), row("pgd", 0.1, 0.5, attack_plugin="art")])
    assert got[("pgd", 0.1)] == "single-step-stronger" and got[("fgsm", 0.1)] == ""
    # another plugin's attack without max_iter (AutoAttack) is not a single step
    autoattack = dict(attack_plugin="autoattack", attack_params=json.dumps({"norm": "linf", "version": "standard"}))
    got = raised([row("autoattack", 0.1, 0.4, **autoattack), row("pgd", 0.1, 0.5, attack_plugin="art")])
    assert set(got.values()) == {""}


def test_accuracy_above_chance_at_an_unbounded_or_huge_budget_is_flagged():
    got = raised([row("pgd", math.inf, 0.35), row("pgd", 0.5, 0.15), row("fgsm", 0.5, 0.25)])
    # 0.35 at inf after 0.15 at 0.5; every one of them also fails the 99% success an unbounded attack must reach
    assert got[("pgd", math.inf)] == "above-chance; rises-with-eps; unbounded-fails"
    assert got[("pgd", 0.5)] == "unbounded-fails"  # under twice chance (0.2 for ten classes)
    assert got[("fgsm", 0.5)] == "above-chance; unbounded-fails"


def test_robust_above_clean_and_over_budget_are_flagged():
    got = raised([row("pgd", 0.1, 0.95, clean=0.9), row("fgsm", 0.2, 0.3, max_perturbation_linf=0.25)])
    assert got[("pgd", 0.1)] == "robust-above-clean" and got[("fgsm", 0.2)] == "over-budget"
    rejected = row("pgd", 0.3, math.nan, status="error", message="ValueError: attack 'x' (plugin 'y') exceeded its budget: ...")
    assert raised([rejected])[("pgd", 0.3)] == "over-budget"


def outcomes_for(cell_id, robust, clean=None):
    clean = clean or [1] * len(robust)
    return pd.DataFrame({
        "cell_id": cell_id, "sample": range(len(robust)), "clean_correct": clean,
        "adversarial_correct": robust, "robust": [r * c for r, c in zip(robust, clean)],
        "adversarial_label": 0, "perturbation": 0.1,
    })  # fmt: skip


def test_the_worst_case_counts_a_sample_robust_only_if_every_attack_failed(tmp_path):
    clean = [1, 1, 1, 1, 0, 1]
    fgsm, pgd = [1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 1]
    rows = [
        row("fgsm", 0.1, sum(f * c for f, c in zip(fgsm, clean)) / 6, clean=5 / 6, n_samples=6),
        row("pgd", 0.1, sum(p * c for p, c in zip(pgd, clean)) / 6, clean=5 / 6, n_samples=6),
        row("pgd", 0.3, 0.0, clean=5 / 6, n_samples=6),  # only one attack at eps 0.3: no worst case
    ]
    outcomes = pd.concat([outcomes_for("fgsm-0.1-0-mlp", fgsm, clean), outcomes_for("pgd-0.1-0-mlp", pgd, clean),
                          outcomes_for("pgd-0.3-0-mlp", [0] * 6, clean)])  # fmt: skip
    frame = to_frame(rows)
    check_against(outcomes.copy(), frame, "hand-made")
    with pytest.raises(ValidationError, match="1 cells disagree with their leaderboard row or have no outcomes"):
        check_against(outcomes[outcomes["cell_id"] != "pgd-0.3-0-mlp"], frame, "an ok row without its outcomes")
    [worst] = worst_case(frame, outcomes).to_dict("records")
    # by hand: samples 0, 3, 5 survive both attacks; sample 4 is wrong even clean
    assert worst["attack"] == "worst-case" and worst["eps"] == 0.1 and worst["n_samples"] == 6
    assert worst["robust_accuracy"] == pytest.approx(3 / 6)
    assert worst["attack_success_rate"] == pytest.approx(2 / 5)
    interval = binomtest(3, 6).proportion_ci(method="wilson")
    assert (worst["robust_accuracy_ci_low"], worst["robust_accuracy_ci_high"]) == pytest.approx((interval.low, interval.high))
    assert worst["message"] == "union of fgsm, pgd"


def test_the_worst_over_attacks_covers_every_setting_and_says_how():
    clean = [1, 1, 1, 1, 0, 1]
    fgsm, pgd = [1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 1]
    rows = [
        row("fgsm", 0.1, 3 / 6 + 1 / 6, clean=5 / 6, n_samples=6),
        row("pgd", 0.1, 4 / 6, clean=5 / 6, n_samples=6),
        row("pgd", 0.3, 0.0, clean=5 / 6, n_samples=6),
    ]
    outcomes = pd.concat([outcomes_for("fgsm-0.1-0-mlp", fgsm, clean), outcomes_for("pgd-0.1-0-mlp", pgd, clean),
                          outcomes_for("pgd-0.3-0-mlp", [0] * 6, clean)])  # fmt: skip
    frame = to_frame(rows)
    worst, samples = worst_over_attacks(frame, outcomes)
    worst = worst.set_index("eps")
    assert worst.loc[0.1, "robust_accuracy"] == pytest.approx(3 / 6) and worst.loc[0.3, "robust_accuracy"] == 0
    assert worst.loc[0.1, "message"] == "union of fgsm, pgd" and worst.loc[0.3, "message"] == "pgd, the only attack"
    union = samples[samples["cell_id"] == worst.loc[0.1, "cell_id"]]
    assert union["robust"].tolist() == [1, 0, 0, 1, 0, 1] and union["clean_correct"].tolist() == clean
    # without outcomes: the lowest attack, an upper bound on the union
    worst, samples = worst_over_attacks(frame, None)
    lowest = worst.set_index("eps").loc[0.1]
    assert lowest["robust_accuracy"] == pytest.approx(4 / 6) and samples.empty
    assert lowest["message"] == "lowest of fgsm, pgd (no per-sample outcomes: an upper bound)"


def test_intervals_over_seeds_stay_within_zero_and_one():
    rows = to_frame([row("pgd", 0.1, robust, clean=1.0, seed=seed) for seed, robust in enumerate([0.99, 1.0, 1.0])])
    rows["flags"] = ["", "rises-with-eps", ""]
    [summary] = over_seeds(rows, ["model", "attack"]).to_dict("records")
    assert summary["seeds"] == 3 and summary["robust_accuracy"] == pytest.approx(0.99667, abs=1e-5)
    assert summary["robust_ci_high"] == 1.0 and 0.97 < summary["robust_ci_low"] < 0.99  # t interval: up to 1.0110
    assert summary["flags"] == "rises-with-eps"
    error = to_frame([row(status="error", robust=math.nan, clean=math.nan)])  # no value to average: NaN, no error
    assert math.isnan(over_seeds(error, ["model"])["robust_accuracy"].iloc[0])


def test_checks_list_the_failed_passed_and_unchecked():
    frame = to_frame([row("pgd", 0.1, 0.5), row("pgd", 0.2, 0.6)])
    result = checks(frame.assign(flags=flags(frame)))
    assert list(result.failed) == ["rises-with-eps"] and "robust-above-clean" in result.passed
    assert "add a black-box attack" in result.missing["weaker-white-box"]


def test_outcomes_round_trip_and_are_validated(tmp_path):
    path = outcomes_path(tmp_path / "lb.csv")
    assert path.name == "lb.outcomes.csv.gz"
    frame = outcomes_for("abc", [1, 0, 1])
    write_outcomes([frame], path)
    first = path.read_bytes()
    write_outcomes([frame], path)
    assert path.read_bytes() == first, "the same outcomes give the same bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["lb.outcomes.csv.gz"]
    back = read_outcomes(path)
    assert back["robust"].tolist() == [1, 0, 1] and back["cell_id"].tolist() == ["abc"] * 3
    assert pd.read_csv(path)["sample"].tolist() == [0, 1, 2], "pandas reads it as it is"
    for broken, message in [
        (frame.assign(robust=2), "'robust' must lie in [0, 1]"),
        (frame.drop(columns="perturbation"), "columns must be"),
        (pd.concat([frame, frame]), "duplicate (cell_id, sample) rows"),
        (frame.assign(robust=1, adversarial_correct=0), "'robust' exceeds"),
    ]:
        broken.to_csv(path, index=False, compression="gzip")
        with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            read_outcomes(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(ValidationError, match="not a readable gzip CSV"):
        read_outcomes(path)


def test_outcomes_must_agree_with_their_leaderboard():
    frame = to_frame([row("pgd", 0.1, 0.5, clean=1.0, n_samples=4, cell_id="c1")])
    check_against(outcomes_for("c1", [1, 0, 1, 0]), frame, "ok")
    with pytest.raises(ValidationError, match="1 cells disagree with their leaderboard row"):
        check_against(outcomes_for("c1", [1, 1, 1, 0]), frame, "x")
    with pytest.raises(ValidationError, match="1 cells are not ok rows of the leaderboard"):
        check_against(outcomes_for("other", [1, 0, 1, 0]), frame, "x")


def test_a_run_writes_outcomes_that_match_its_leaderboard(cli, write_suite):
    suite = write_suite()
    assert cli("run", suite)[0] == 0
    frame = read_leaderboard(suite.with_suffix(".csv"))
    outcomes = read_outcomes(outcomes_path(suite.with_suffix(".csv")))
    check_against(outcomes, frame, "run")
    assert len(outcomes) == len(frame) * 60 and set(outcomes["cell_id"]) == set(frame["cell_id"])
    assert frame["flags"].fillna("").eq("").all()
    code, out, _ = cli("validate", suite.with_suffix(".csv"))
    assert code == 0 and "with outcomes" in out
    # a corrupt outcomes file stops a resume (like a corrupt leaderboard), with the way out
    outcomes_path(suite.with_suffix(".csv")).write_bytes(b"garbage")
    code, _, err = cli("run", suite)
    assert code == 2 and "not a readable gzip CSV" in err and "--force" in err
    code, _, err = cli("validate", suite.with_suffix(".csv"))
    assert code == 2 and "outcomes" in err


def test_a_black_box_attack_beating_the_white_box_ones_is_flagged_on_the_white_box_rows():
    square = dict(attack_access="black-box", attack_params=json.dumps({"norm": "linf", "queries": 5000}))
    got = raised([row("pgd", 0.1, 0.5), row("square", 0.1, 0.4, **square), row("pgd", 0.3, 0.2),
                  row("square", 0.3, 0.199, **square)])  # fmt: skip
    assert got[("pgd", 0.1)] == "weaker-white-box" and got[("square", 0.1)] == ""
    assert got[("pgd", 0.3)] == ""  # within AutoAttack's margin of 0.002
    transfer = dict(attack_access="transfer", attack_params=json.dumps({"norm": "linf", "source": "cnn"}))
    assert raised([row("pgd", 0.1, 0.5), row("transfer", 0.1, 0.3, **transfer)])[("pgd", 0.1)] == "weaker-white-box"
    # the strongest white-box attack is what a black-box attack must not beat: a weak FGSM alone is no sign
    margin = dict(attack_params=json.dumps({"norm": "linf", "max_iter": 10, "loss": "margin"}), cell_id="margin")
    got = raised([row("fgsm", 0.1, 0.5), row("pgd-margin", 0.1, 0.2, **margin), row("transfer", 0.1, 0.3, **transfer)])
    assert set(got.values()) == {""}
    # a transfer from the row's own model and defense is a white-box attack
    itself = dict(attack_access="transfer", attack_params=json.dumps({"norm": "linf", "source": "mlp"}))
    assert set(raised([row("pgd", 0.1, 0.5), row("transfer", 0.1, 0.3, **itself)]).values()) == {""}


def test_an_unbounded_attack_must_break_almost_everything():
    assert raised([row("pgd", math.inf, 0.01, attack_success_rate=0.985)])[("pgd", math.inf)] == "unbounded-fails"
    assert raised([row("pgd", math.inf, 0.0, attack_success_rate=1.0)])[("pgd", math.inf)] == ""
    assert raised([row("pgd", 0.3, 0.5, attack_success_rate=0.4)])[("pgd", 0.3)] == ""  # a bounded budget may fail


def test_zero_gradients_on_many_samples_flag_the_white_box_rows():
    got = raised([row("pgd", 0.1, 0.5, zero_gradient_fraction=0.24),
                  row("transfer", 0.1, 0.5, zero_gradient_fraction=0.24, attack_access="transfer", attack_params=FGSM)])
    assert got[("pgd", 0.1)] == "zero-gradient" and got[("transfer", 0.1)] == ""
    assert raised([row("pgd", 0.1, 0.5, zero_gradient_fraction=0.01)])[("pgd", 0.1)] == ""  # at the limit, not over


def test_randomness_without_draws_or_eot_is_flagged():
    got = raised([row("pgd", 0.1, 0.5, randomness="unhandled"), row("fgsm", 0.1, 0.6, randomness="eot")])
    assert got == {("pgd", 0.1): "randomized-without-eot", ("fgsm", 0.1): ""}


def test_an_attack_that_gains_from_twice_the_steps_or_more_restarts_is_not_converged():
    longer = dict(attack_params=json.dumps({"norm": "linf", "max_iter": 20}), cell_id="longer")
    restarts = dict(attack_params=json.dumps({"norm": "linf", "max_iter": 10, "num_random_init": 5}), cell_id="restarts")
    got = to_frame([row("pgd", 0.1, 0.5), row("pgd-20", 0.1, 0.48, **longer), row("pgd-restarts", 0.1, 0.495, **restarts)])
    assert dict(zip(got["attack"], flags(got))) == {"pgd": "not-converged", "pgd-20": "", "pgd-restarts": ""}
    # other parameters differ: another attack, not more effort
    other = dict(attack_params=json.dumps({"norm": "linf", "max_iter": 20, "eps_step": 0.5}), cell_id="other")
    assert raised([row("pgd", 0.1, 0.5), row("pgd-big-steps", 0.1, 0.3, **other)])[("pgd", 0.1)] == ""
    # 15 steps are not twice 10
    almost = dict(attack_params=json.dumps({"norm": "linf", "max_iter": 15}), cell_id="almost")
    assert raised([row("pgd", 0.1, 0.5), row("pgd-15", 0.1, 0.3, **almost)])[("pgd", 0.1)] == ""


def test_the_verdict_names_failed_checks_with_numbers_passed_ones_and_what_was_not_checked():
    from harness.review import verdicts

    square = dict(attack_access="black-box", attack_params=json.dumps({"norm": "linf", "queries": 5000}))
    frame = to_frame([
        row("pgd", 0.1, 0.5, zero_gradient_fraction=0.24), row("square", 0.1, 0.3, zero_gradient_fraction=0.24, **square),
        row("pgd", 0.1, 0.1, model="cnn", defense="none"), row("square", 0.1, 0.1, model="cnn", **square),
    ])  # fmt: skip
    lines = verdicts(frame.assign(flags=flags(frame)))
    assert lines[0] == "verdict digits/mlp/none: 2 of 7 checks failed"
    assert lines[1].startswith(
        "  failed weaker-white-box: square leaves 30.0% where the strongest white-box attack, pgd, leaves 50.0% (linf 0.1, "
    )
    assert lines[2].startswith("  failed zero-gradient: 24.0% of the samples -> attack a loss that keeps gradients")
    assert lines[3].startswith("  passed: rises-with-eps, single-step-stronger, robust-above-clean, over-budget")
    assert "  not checked unbounded-fails: add an unbounded minimal-norm attack (eps = inf) or an Linf budget of 0.5" in lines
    assert "  not checked not-converged: add the same attack with twice max_iter or more num_random_init" in lines
    cnn = lines.index("verdict digits/cnn/none: 0 of 7 checks failed")
    assert lines[cnn + 1].startswith("  passed: ")


def test_the_verdict_gives_the_largest_drop_of_an_attack_that_has_not_converged():
    from harness.review import verdicts

    longer = dict(attack_params=json.dumps({"norm": "linf", "max_iter": 20}), cell_id="longer", attack_plugin="art")
    frame = to_frame([row("pgd", 0.1, 0.5, attack_plugin="art"), row("pgd-20", 0.1, 0.45, **longer)])
    lines = verdicts(frame.assign(flags=flags(frame)))
    assert lines[1].startswith("  failed not-converged: pgd at linf 0.1: 5.0% lower with more effort -> raise max_iter")
    assert not any(line.startswith("  not checked not-converged") for line in lines)


def test_no_rows_raise_no_flags():
    """A run stopped before its first cell publishes a leaderboard of no rows (and no column types)."""
    assert flags(to_frame([])).empty

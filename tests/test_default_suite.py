"""The committed default leaderboard comes from the default suite and is sound."""

from __future__ import annotations

from conftest import ROOT

from harness.leaderboard import read_leaderboard
from harness.plugins import load_plugins
from harness.suite import parse_suite, read_suite_file

SUITE = ROOT / "leaderboards" / "digits.toml"
CSV = ROOT / "leaderboards" / "digits.csv"


def test_committed_csv_holds_exactly_the_suites_cells():
    suite = parse_suite(read_suite_file(SUITE), SUITE, load_plugins())
    frame = read_leaderboard(CSV)
    assert frame["cell_id"].tolist() == [cell.cell_id for cell in suite.cells()]
    assert frame["status"].eq("ok").all()
    assert frame["n_samples"].min() >= 300
    assert {"fgsm", "pgd"} == set(frame["attack"]) and {"mlp", "cnn"} == set(frame["model"])
    assert frame["eps"].nunique() >= 3 and frame["norm"].eq("linf").all()


def test_committed_csv_is_consistent():
    frame = read_leaderboard(CSV)
    assert (frame["robust_accuracy"] <= frame["clean_accuracy"]).all()
    assert (frame["max_perturbation_linf"] <= frame["eps"] + 1e-6).all()
    wide = frame.pivot_table(index=["model", "seed", "eps"], columns="attack", values="robust_accuracy")
    assert (wide["pgd"] <= wide["fgsm"]).all(), "PGD must be at least as strong as FGSM at the same budget"
    for _, group in frame.groupby(["model", "attack", "seed"]):
        accuracy = group.sort_values("eps")["robust_accuracy"]
        assert accuracy.is_monotonic_decreasing, "robust accuracy must not rise with eps"


def test_committed_outcomes_agree_and_compare_answers_per_budget(cli):
    import io

    import pandas as pd

    from harness.outcomes import check_against, outcomes_path, read_outcomes

    frame = read_leaderboard(CSV)
    check_against(read_outcomes(outcomes_path(CSV)), frame, "committed outcomes")
    assert frame["flags"].isna().all(), "the default suite raises no reviewer flag"
    code, out, _ = cli("compare", CSV, "--by", "model", "--baseline", "mlp", "--csv")
    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    assert len(table) == 10 and set(table["candidate"]) == {"cnn"}  # every (attack, eps)
    assert set(table["robust_verdict"]) <= {"better", "worse", "no significant difference"}
    assert (table[table["eps"] <= 0.15]["robust_verdict"] == "better").all()

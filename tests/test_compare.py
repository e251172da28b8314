"""Statistics in `harness compare`, on hand-made leaderboards and outcome files: p-values against
scipy's, verdicts with Holm's correction, both ways of aligning entries, and the outputs."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, wilcoxon
from test_leaderboard import make_row

from harness.leaderboard import write_leaderboard
from harness.outcomes import outcomes_path, write_outcomes

N = 40


def board(path, entries):
    """Write a leaderboard and its outcomes: ``entries`` maps (model, eps) to per-seed lists of
    per-sample robust outcomes (every sample correct when clean)."""
    rows, outcomes = [], []
    for (model, eps), per_seed in entries.items():
        for seed, robust in enumerate(per_seed):
            cell_id = f"{path.stem}-{model}-{eps}-{seed}"
            accuracy = float(np.mean(robust))
            rows.append(make_row(model=model, eps=eps, seed=seed, cell_id=cell_id, n_samples=len(robust), clean_accuracy=1.0,
                                 robust_accuracy=accuracy, robust_accuracy_ci_low=0.0, robust_accuracy_ci_high=1.0))  # fmt: skip
            outcomes.append(pd.DataFrame({
                "cell_id": cell_id, "sample": range(len(robust)), "clean_correct": 1.0, "adversarial_correct": robust,
                "robust": robust, "adversarial_label": 0, "perturbation": eps,
            }))  # fmt: skip
    write_leaderboard(rows, path)
    write_outcomes(outcomes, outcomes_path(path))
    return path


def outcomes(rng, p, n=N):
    return (rng.random(n) < p).astype(float).tolist()


def test_two_leaderboards_with_six_seeds_use_wilcoxon_and_match_scipy(cli, tmp_path):
    rng = np.random.default_rng(0)
    base = [outcomes(rng, 0.4) for _ in range(6)]
    cand = [outcomes(rng, 0.7) for _ in range(6)]
    a = board(tmp_path / "a.csv", {("mlp", 0.1): base})
    b = board(tmp_path / "b.csv", {("mlp", 0.1): cand})
    code, out, err = cli("compare", a, b, "--json")
    assert code == 0, err
    [record] = json.loads(out)
    base_acc, cand_acc = [np.mean(r) for r in base], [np.mean(r) for r in cand]
    assert record["robust_wilcoxon_p"] == pytest.approx(wilcoxon(cand_acc, base_acc, method="exact").pvalue)
    b_count = sum(1 for s in range(6) for x, y in zip(base[s], cand[s]) if x == 1 and y == 0)
    c_count = sum(1 for s in range(6) for x, y in zip(base[s], cand[s]) if x == 0 and y == 1)
    assert record["robust_mcnemar_p"] == pytest.approx(binomtest(c_count, b_count + c_count, 0.5).pvalue)
    assert record["robust_test"] == "Wilcoxon (6 seeds)" and record["robust_p"] == record["robust_wilcoxon_p"]
    assert record["robust_diff"] == pytest.approx(np.mean(cand_acc) - np.mean(base_acc))
    assert record["robust_diff_low"] < record["robust_diff"] < record["robust_diff_high"]
    assert record["robust_verdict"] == "better"  # all six seeds improve: p = 1/32 < 0.05
    assert record["clean_verdict"] == "untested" or record["clean_diff"] == 0


def test_within_one_leaderboard_by_model_uses_mcnemar_with_three_seeds(cli, tmp_path):
    rng = np.random.default_rng(1)
    entries = {}
    for eps, (p_mlp, p_cnn) in {0.1: (0.5, 0.8), 0.2: (0.3, 0.32)}.items():
        entries[("mlp", eps)] = [outcomes(rng, p_mlp) for _ in range(3)]
        entries[("cnn", eps)] = [outcomes(rng, p_cnn) for _ in range(3)]
    path = board(tmp_path / "one.csv", entries)
    code, out, err = cli("compare", path, "--by", "model", "--baseline", "mlp", "--csv")
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out)).set_index("eps")
    assert set(table["candidate"]) == {"cnn"} and set(table["baseline"]) == {"mlp"}
    assert table["robust_test"].str.startswith("McNemar").all()
    raw = []
    for eps in (0.1, 0.2):
        base = sum(entries[("mlp", eps)], [])
        cand = sum(entries[("cnn", eps)], [])
        b_count = sum(x == 1 and y == 0 for x, y in zip(base, cand))
        c_count = sum(x == 0 and y == 1 for x, y in zip(base, cand))
        raw.append(binomtest(c_count, b_count + c_count, 0.5).pvalue)
        assert table.loc[eps, "robust_mcnemar_p"] == pytest.approx(raw[-1])
    # Holm over two comparisons: the smaller p doubled, the larger kept (if larger than that)
    smaller, larger = sorted(raw)
    assert sorted(table["robust_p_holm"]) == pytest.approx([min(1, 2 * smaller), min(1, max(2 * smaller, larger))])
    assert table.loc[0.1, "robust_verdict"] == "better"
    assert table.loc[0.2, "robust_verdict"] == "no significant difference"
    assert "Wilcoxon cannot reach 0.05 with 3 seeds" in table.loc[0.1, "note"]
    code, out, _ = cli("compare", path, "--by", "model", "--baseline", "mlp")
    assert code == 0 and "better" in out and "Holm-corrected" in out and "McNemar" in out


def test_without_outcomes_the_comparison_still_gives_intervals(cli, tmp_path):
    rng = np.random.default_rng(2)
    path = board(tmp_path / "one.csv", {("mlp", 0.1): [outcomes(rng, 0.5)], ("cnn", 0.1): [outcomes(rng, 0.9)]})
    outcomes_path(path).unlink()
    code, out, _ = cli("compare", path, "--by", "model", "--baseline", "mlp", "--json")
    [record] = json.loads(out)
    assert code == 0 and record["robust_verdict"] == "untested" and "no paired outcomes" in record["note"]
    assert record["robust_diff_low"] < record["robust_diff"] < record["robust_diff_high"]


def test_compare_usage_errors_are_one_line(cli, tmp_path):
    path = board(tmp_path / "one.csv", {("mlp", 0.1): [[1.0, 0.0]]})
    code, _, err = cli("compare", path)
    assert code == 2 and "--by COLUMN --baseline VALUE" in err
    code, _, err = cli("compare", path, "--by", "model", "--baseline", "mpl")
    assert code == 2 and "did you mean 'mlp'" in err and err.count("\n") == 1


def test_the_table_fits_a_terminal_and_marks_a_verdict_the_interval_does_not_support(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    long = "a-candidate-with-a-very-long-label"
    same = [1.0] * 20 + [0.0] * 20
    better = [1.0] * 30 + [0.0] * 10  # 10 samples gained
    worse = [1.0] * 12 + [0.0] * 28  # 8 samples lost
    path = board(tmp_path / "one.csv", {("mlp", 0.1): [same] * 3, (long, 0.1): [better, better, worse]})
    code, out, _ = cli("compare", path, "--by", "model", "--baseline", "mlp")
    assert code == 0 and max(map(len, out.splitlines())) <= 120
    # McNemar pools 20 gains against 8 losses (p = 0.036); the seeds' differences +0.25, +0.25, -0.2 do not exclude 0
    [line] = [line for line in out.splitlines() if line.endswith("better*")]
    assert " McNemar " in line and long not in out and long[:22] + ".." in line
    assert "*: significant, but the 95% interval crosses zero" in out
    code, out, _ = cli("compare", path, "--by", "model", "--baseline", "mlp", "--wide")
    assert code == 0 and long in out and "McNemar (120 pairs)" in out and "better*" in out

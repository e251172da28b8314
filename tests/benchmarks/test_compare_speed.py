"""`harness compare` on two 60-row leaderboards with outcomes (500 samples a cell), against the
floor of reading and validating both pairs of files, in one pytest-benchmark run.

The goal is "well under 2 s": the benchmark checks a median under 1 s, and reports the ratio to
the floor. Run with ``pytest tests/benchmarks --benchmark-enable``; in the ordinary test run each
function runs once as a smoke test and nothing is timed.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from harness.cli import main, read_with_outcomes
from harness.leaderboard import COLUMNS, SCHEMA_VERSION, write_leaderboard
from harness.outcomes import outcomes_path, write_outcomes

SAMPLES = 500
GOAL_SECONDS = 1.0
MEDIANS: dict[str, float] = {}


def leaderboard(path, seed):
    rng = np.random.default_rng(seed)
    rows, outcomes = [], []
    for model in ("mlp", "cnn"):
        for attack in ("fgsm", "pgd"):
            for eps in (0.05, 0.1, 0.15, 0.2, 0.3):
                for run in range(3):
                    cell_id = f"{model}-{attack}-{eps}-{run}"
                    clean = (rng.random(SAMPLES) < 0.97).astype(float)
                    robust = clean * (rng.random(SAMPLES) < 1 - eps * 2.5)
                    row = {column: "" for column in COLUMNS}
                    row.update(
                        schema_version=SCHEMA_VERSION, suite="bench", dataset="digits", model=model, defense="none",
                        attack=attack, norm="linf", eps=eps, seed=run, n_samples=SAMPLES, clean_accuracy=clean.mean(),
                        robust_accuracy=robust.mean(), robust_accuracy_ci_low=0.0, robust_accuracy_ci_high=1.0,
                        attack_success_rate=0.5, max_perturbation_linf=eps, minimal_norm=False, status="ok", cell_id=cell_id,
                        attack_params='{"max_iter": 40}' if attack == "pgd" else "{}",
                    )  # fmt: skip
                    rows.append(row)
                    outcomes.append(pd.DataFrame({
                        "cell_id": cell_id, "sample": np.arange(SAMPLES), "clean_correct": clean,
                        "adversarial_correct": robust, "robust": robust, "adversarial_label": 0, "perturbation": eps,
                    }))  # fmt: skip
    write_leaderboard(rows, path)
    write_outcomes(outcomes, outcomes_path(path))
    return path


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compare")
    return leaderboard(directory / "a.csv", 0), leaderboard(directory / "b.csv", 1)


def record(benchmark, name):
    if not benchmark.disabled:
        MEDIANS[name] = benchmark.stats.stats.median


def test_reading_both_leaderboards(benchmark, boards):
    benchmark.group = "compare"
    benchmark.pedantic(lambda: [read_with_outcomes(path) for path in boards], rounds=5, warmup_rounds=1)
    record(benchmark, "read")


def test_compare_two_leaderboards(benchmark, boards, capsys):
    benchmark.group = "compare"
    arguments = ["compare", str(boards[0]), str(boards[1]), "--csv"]
    benchmark.pedantic(lambda: main(arguments), rounds=5, warmup_rounds=1)
    capsys.readouterr()
    assert main(arguments) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(table) == 20 and table["robust_test"].str.startswith("McNemar").all()
    record(benchmark, "compare")
    if "read" in MEDIANS and "compare" in MEDIANS:
        ratio = MEDIANS["compare"] / MEDIANS["read"]
        benchmark.extra_info["ratio_to_reading"] = round(ratio, 2)
        print(f"\ncompare: median {MEDIANS['compare']:.3f}s, {ratio:.1f}x reading the files (goal: under {GOAL_SECONDS}s)")
        assert MEDIANS["compare"] < GOAL_SECONDS

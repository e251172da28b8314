"""Keeping a run's cells (issue 20): 5,000 synthetic cells of 1,000 samples each through the
runner's state (a journal entry per cell, the leaderboard and outcomes written at the end), against
the rewrite of both files after every cell that the runner did before, and ``show`` and
``compare`` on the leaderboard it makes. No training: the rows and outcomes are made up.

Goals: the last 500 cells cost at most 1.5 times the first 500, and the whole is at least 10 times
faster than the rewrite. The rewrite is quadratic, so it is timed on the first
:data:`REWRITTEN` cells only and its total for all the cells extrapolated from a straight line
fitted to its cost per cell (each rewrite writes every cell so far). The periodic writes during a
run (every minute, never more than 5% of its time) are left out of the per-cell timings: with
cells that take no time, the first would fall on whichever cells follow the first minute.

Run with ``pytest tests/benchmarks --benchmark-enable`` (several minutes); in the ordinary test
run each function runs once on a few cells as a smoke test and nothing is timed.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import runner
from harness.cli import main
from harness.journal import journal_path
from harness.leaderboard import COLUMNS, SCHEMA_VERSION, to_frame, write_leaderboard
from harness.outcomes import outcomes_path, write_outcomes
from harness.review import flags

CELLS, SAMPLES, BLOCK, REWRITTEN = 5000, 1000, 500, 100
SMOKE = (40, 50, 10, 8)
PROVENANCE = {"params": "{}", "plugin": "bench", "distribution": "bench", "version": "1"}
MEASURED: dict[str, float] = {}


def sizes(benchmark) -> tuple[int, int, int, int]:
    return SMOKE if benchmark.disabled else (CELLS, SAMPLES, BLOCK, REWRITTEN)


def synthetic(cells: int, samples: int) -> list[tuple[dict, pd.DataFrame]]:
    """Rows and outcomes as a digits-like suite gives them: 10 models x 10 attacks x 10 eps x seeds."""
    rng = np.random.default_rng(0)
    made = []
    for index in range(cells):
        model, attack, eps, seed = index % 10, index // 10 % 10, (index // 100 % 10 + 1) / 100, index // 1000
        cell_id = f"{index:016x}"
        clean = (rng.random(samples) < 0.97).astype(float)
        robust = clean * (rng.random(samples) < 1 - eps * 2.5)
        row: dict = {column: None for column in COLUMNS}
        for kind in ("dataset", "model", "defense", "attack"):
            row.update({f"{kind}_{field}": value for field, value in PROVENANCE.items()})
        row.update(
            schema_version=SCHEMA_VERSION, suite="bench", dataset="digits", model=f"m{model}", defense="none",
            attack=f"a{attack}", norm="linf", eps=eps, seed=seed, n_samples=samples, clean_accuracy=clean.mean(),
            robust_accuracy=robust.mean(), robust_accuracy_ci_low=0.0, robust_accuracy_ci_high=1.0,
            attack_success_rate=0.5, max_perturbation_linf=eps, train_seconds=1.5, attack_seconds=0.25,
            minimal_norm=False, attack_access="white-box", randomness="deterministic", status="ok", message="",
            cell_id=cell_id, attack_params='{"max_iter": 40}', device="cpu (bench, 1 thread)",
        )  # fmt: skip
        outcomes = pd.DataFrame({
            "cell_id": cell_id, "sample": np.arange(samples), "clean_correct": clean, "adversarial_correct": robust,
            "robust": robust, "adversarial_label": rng.integers(0, 10, samples),
            "perturbation": (clean - robust) * float(np.float32(eps)),
        })  # fmt: skip
        made.append((row, outcomes))
    return made


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("persist")


def test_the_journal_costs_the_same_per_cell_from_first_to_last(benchmark, folder, monkeypatch):
    cells, samples, block, _ = sizes(benchmark)
    made = synthetic(cells, samples)
    output = folder / "board.csv"
    monkeypatch.setattr(runner, "PUBLISH_SECONDS", math.inf)
    blocks: list[float] = []

    def persist() -> None:
        blocks.clear()
        shutil.rmtree(journal_path(output), ignore_errors=True)
        state = runner.RunState(output, [row["cell_id"] for row, _ in made], runner.Previous(), None)
        for start in range(0, cells, block):
            started = time.perf_counter()
            for row, outcomes in made[start : start + block]:
                state.add(row, outcomes)
            blocks.append(time.perf_counter() - started)
        started = time.perf_counter()
        state.close(publish=True)
        MEASURED["final write"] = time.perf_counter() - started

    benchmark.group = "persist"
    benchmark.pedantic(persist, rounds=1, iterations=1)
    assert len(pd.read_csv(output)) == cells and not journal_path(output).exists()
    ratio = blocks[-1] / blocks[0]
    MEASURED["journal"] = sum(blocks) + MEASURED["final write"]
    benchmark.extra_info.update(first_block=blocks[0], last_block=blocks[-1], ratio=ratio, **MEASURED)
    print(
        f"\njournal: {cells} cells x {samples} samples in {MEASURED['journal']:.1f}s (first {block} cells "
        f"{blocks[0]:.2f}s, last {block} {blocks[-1]:.2f}s: {ratio:.2f}x; final write {MEASURED['final write']:.1f}s)"
    )
    if not benchmark.disabled:
        assert ratio <= 1.5


def test_the_rewrite_after_every_cell_grows_with_the_run(benchmark, folder):
    """What the runner did before the journal, timed on the first cells and extrapolated."""
    cells, samples, _, rewritten = sizes(benchmark)
    made = synthetic(rewritten, samples)
    output = folder / "rewritten.csv"
    costs: list[float] = []

    def persist() -> None:
        costs.clear()
        rows, outcomes = [], []
        for row, frame in made:
            started = time.perf_counter()
            rows.append(row)
            outcomes.append(frame)
            table = to_frame(rows)
            write_outcomes(outcomes, outcomes_path(output))
            write_leaderboard(table.assign(flags=flags(table)).to_dict("records"), output)
            costs.append(time.perf_counter() - started)

    benchmark.group = "persist"
    benchmark.pedantic(persist, rounds=1, iterations=1)
    slope, intercept = np.polyfit(np.arange(1, rewritten + 1), costs, 1)
    total = cells * intercept + slope * cells * (cells + 1) / 2
    MEASURED["rewrite (extrapolated)"] = total
    benchmark.extra_info.update(first_cells=sum(costs), per_cell_slope=slope, extrapolated_total=total)
    print(
        f"\nrewrite: first {rewritten} cells {sum(costs):.1f}s, {slope * 1000:.2f} ms more per cell already written; "
        f"all {cells}: ~{total / 3600:.1f} h (extrapolated)"
    )
    if "journal" in MEASURED:
        speedup = total / MEASURED["journal"]
        benchmark.extra_info["speedup"] = speedup
        print(f"journal: {speedup:.0f}x faster than the rewrite")
        if not benchmark.disabled:
            assert speedup >= 10


@pytest.mark.parametrize("command", ["show", "compare"])
def test_show_and_compare_on_the_journal_leaderboard(benchmark, folder, capsys, command):
    board = folder / "board.csv"
    if not board.exists():
        pytest.skip("the journal benchmark writes the leaderboard")
    other = folder / "other.csv"
    for path in (board, outcomes_path(board)):
        shutil.copyfile(path, other.with_name(path.name.replace("board", "other")))
    arguments = [command, str(board)] if command == "show" else [command, str(board), str(other)]
    benchmark.group = "read"
    code = benchmark.pedantic(lambda: main(arguments), rounds=1, iterations=1)
    capsys.readouterr()
    assert code in (0, 1)
    if not benchmark.disabled:
        print(f"\n{command} on {len(pd.read_csv(board))} cells: {benchmark.stats.stats.median:.1f}s")

"""The start-up of `harness show`, `compare` and `validate` on a 60-row leaderboard with outcomes
(500 samples a cell), each a fresh process, against the floor of a process that imports pandas,
which all of them need: in one pytest-benchmark run.

The README promises that they start "in well under a second"; on a busy machine seconds stretch,
so the budget is a ratio to the floor measured in the same run: at most 3 times it (measured: 1.1
to 2.2; importing ``scipy.stats`` for a normal quantile made `show` 4.5 times it). Run with
``pytest tests/benchmarks --benchmark-enable``; in the ordinary test run each function runs once
as a smoke test and nothing is timed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_compare_speed import leaderboard

RATIO = 3.0
MEDIANS: dict[str, float] = {}
COMMANDS = {
    "show": ["show", "{csv}"],
    "compare": ["compare", "{csv}", "--by", "model", "--baseline", "mlp"],
    "validate": ["validate", "{csv}"],
}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return leaderboard(tmp_path_factory.mktemp("startup") / "board.csv", 0)


def run(code: str, *args: str) -> None:
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True)


def record(benchmark, name: str) -> None:
    if not benchmark.disabled:
        MEDIANS[name] = benchmark.stats.stats.median


def test_importing_pandas(benchmark):
    benchmark.group = "start-up"
    benchmark.pedantic(run, args=("import pandas",), rounds=5, warmup_rounds=1)
    record(benchmark, "floor")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_light_command_starts_close_to_the_floor(benchmark, board, name):
    benchmark.group = "start-up"
    args = [a.format(csv=board) for a in COMMANDS[name]]
    code = "import sys\nfrom harness.cli import main\nsys.exit(main(sys.argv[1:]))"
    benchmark.pedantic(run, args=(code, *args), rounds=5, warmup_rounds=1)
    record(benchmark, name)
    if "floor" in MEDIANS and name in MEDIANS:
        ratio = MEDIANS[name] / MEDIANS["floor"]
        benchmark.extra_info["ratio_to_importing_pandas"] = round(ratio, 2)
        print(f"\n{name}: median {MEDIANS[name]:.3f}s, {ratio:.1f}x importing pandas ({MEDIANS['floor']:.3f}s)")
        assert ratio < RATIO

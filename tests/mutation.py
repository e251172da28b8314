"""Mutation testing of the paper plugins' losses, attacks and metrics and of the core's statistics.

    .venv/bin/python tests/mutation.py                 # every target (about an hour on two cores)
    .venv/bin/python tests/mutation.py harness_xvat    # the targets whose path contains a word

mutmut (the dev extra) changes one operator, constant or argument at a time and runs the tests that
reach the changed function; a mutant that no test notices "survives". mutmut names a mutant's
module after its file's path (only a leading ``src/`` is stripped), so it cannot mutate
``plugins/harness_xvat/divergence.py`` under the name the tests import, ``harness_xvat.divergence``.
This script therefore stages a copy in ``.mutation/`` (ignored by git): the core at the top, the
plugins' packages under ``src/``, the tests, and a ``pyproject.toml`` with the mutmut settings;
runs ``mutmut run`` there; and prints killed and surviving mutants per file. ``cd .mutation &&
../.venv/bin/mutmut browse`` (or ``mutmut show NAME``) then shows each survivor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "harness/statistics.py": ["tests/test_statistics.py"],
    "harness/review.py": ["tests/test_review.py"],
    "src/harness_advtrain/defenses.py": ["tests/test_advtrain.py"],
    "src/harness_art/attacks.py": ["tests/test_attacks.py"],
    "src/harness_dbp/attacks.py": ["tests/test_dbp.py", "tests/test_formulas.py"],
    "src/harness_dbp/gmm.py": ["tests/test_dbp.py"],
    "src/harness_dbp/metrics.py": ["tests/test_dbp.py"],
    "src/harness_sgm/defense.py": ["tests/test_sgm.py"],
    "src/harness_sgm/attacks.py": ["tests/test_sgm.py"],
    "src/harness_xvat/divergence.py": ["tests/test_xvat.py", "tests/test_formulas.py"],
    "src/harness_xvat/masks.py": ["tests/test_xvat.py", "tests/test_formulas.py"],
    "src/harness_xvat/defenses.py": ["tests/test_xvat.py", "tests/test_formulas.py"],
    "src/harness_scae/evasion.py": ["tests/test_scae_evasion.py"],
}
"""The files mutated and the tests run against them: the formulas of each plugin (losses,
divergences, masks, attacks, metrics), not its plumbing."""


def stage(folder: Path, targets: dict[str, list[str]]) -> None:
    """A fresh copy of the project that mutmut can name, with its settings."""
    shutil.rmtree(folder, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".benchmarks")
    shutil.copytree(ROOT / "harness", folder / "harness", ignore=ignore)
    for package in sorted((ROOT / "plugins").glob("harness_*")):
        shutil.copytree(package, folder / "src" / package.name, ignore=ignore)
    shutil.copytree(ROOT / "tests", folder / "tests", ignore=ignore)
    shutil.copytree(ROOT / "leaderboards", folder / "leaderboards", ignore=shutil.ignore_patterns("*.csv", "*.gz", "*-plots"))
    pytest_settings = (ROOT / "pyproject.toml").read_text().split("[tool.pytest.ini_options]", 1)[1].split("\n[", 1)[0]
    pytest_settings = pytest_settings.replace('testpaths = ["tests", "examples/harness-noise/tests"]', 'testpaths = ["tests"]')
    tests = sorted({test for files in targets.values() for test in files})
    (folder / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]" + pytest_settings + "\n"
        "[tool.mutmut]\n"
        f"source_paths = {json.dumps(['harness', 'src'])}\n"
        f"only_mutate = {json.dumps(sorted(targets))}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'also_copy = ["leaderboards"]\n'
        # the end-to-end runs (marked slow) reach every function and take seconds each
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-m", "not slow"]\n'
    )


def report(folder: Path, targets: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Killed and surviving mutants per target file, from mutmut's own results."""
    counts = {path: dict.fromkeys(OUTCOMES, 0) for path in targets}
    for meta in (folder / "mutants").rglob("*.py.meta"):
        path = meta.relative_to(folder / "mutants").as_posix()[: -len(".meta")]
        if path not in counts:
            continue
        for exit_code in json.loads(meta.read_text())["exit_code_by_key"].values():
            counts[path][OUTCOME_BY_EXIT_CODE.get(exit_code, "other")] += 1
    return counts


OUTCOMES = ("killed", "survived", "timeout", "other")
OUTCOME_BY_EXIT_CODE = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout"}
"""mutmut's own reading of a mutant's test exit code (``mutmut.stats``); "other": no test reached
the mutant, not checked, or a crash."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="mutate only the targets whose path contains one of these")
    parser.add_argument("--stage", type=Path, default=ROOT / ".mutation")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args(argv)
    targets = {path: tests for path, tests in TARGETS.items() if not args.words or any(w in path for w in args.words)}
    if not targets:
        parser.error(f"no target matches {', '.join(args.words)} (targets: {', '.join(TARGETS)})")
    stage(args.stage, targets)
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=args.stage, check=False)
    counts = report(args.stage, targets)
    total = {key: sum(c[key] for c in counts.values()) for key in OUTCOMES}
    for path, count in {**counts, "total": total}.items():
        tested = count["killed"] + count["survived"]
        score = f"{100 * count['killed'] / tested:.1f}%" if tested else "-"
        print(f"{path:32} " + "  ".join(f"{key} {count[key]:4}" for key in OUTCOMES) + f"  score {score}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

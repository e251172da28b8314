"""Per-sample outcomes beside a leaderboard: one row per (cell, test sample).

``digits.csv`` has its outcomes in ``digits.outcomes.csv.gz``, a gzip-compressed CSV that pandas
reads as it is (``pd.read_csv(path)``). A compressed CSV is enough at these sizes (tens of
thousands of rows, well under a megabyte) without another dependency. The file is optional for
every reader: a leaderboard without it still shows, compares and validates, with fewer
statistics. The runner writes it atomically before the leaderboard, so every row of the
leaderboard has its outcomes; outcomes of cells the leaderboard does not hold are dropped.

Columns:

- ``cell_id``: the leaderboard row's ``cell_id``;
- ``sample``: the test sample's position in the dataset's test split;
- ``clean_correct``, ``adversarial_correct``, ``robust``: 1 if the model classified the sample
  correctly without attack, under attack, and both; for a stochastic model the fraction of the
  evaluation draws;
- ``adversarial_label``: the label predicted under attack (the first draw);
- ``perturbation``: the perturbation's size in the attack's norm (0 where a minimal-norm attack
  needed more than the cell's eps).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UsageError, ValidationError
from harness.files import write_atomically

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["cell_id", "sample", "clean_correct", "adversarial_correct", "robust", "adversarial_label", "perturbation"]
FRACTIONS = ["clean_correct", "adversarial_correct", "robust"]
SUFFIX = ".outcomes.csv.gz"


def outcomes_path(leaderboard: Path) -> Path:
    """Where the outcomes of ``leaderboard`` live: ``X.csv`` -> ``X.outcomes.csv.gz``."""
    return leaderboard.with_name(leaderboard.stem + SUFFIX)


def empty_outcomes() -> pd.DataFrame:
    """An outcomes table without rows, as :func:`read_outcomes` returns them."""
    import pandas as pd

    return pd.DataFrame({column: pd.Series(dtype="string" if column == "cell_id" else "float64") for column in COLUMNS})


def write_outcomes(frames: Iterable[pd.DataFrame], path: Path) -> None:
    """Write the outcomes atomically (readers see the old file or the new one), byte for byte the
    same for the same outcomes."""
    import pandas as pd

    frames = list(frames)
    frame = pd.concat(frames, ignore_index=True) if frames else empty_outcomes()
    write_atomically(path, gzip.compress(frame[COLUMNS].to_csv(index=False).encode(), mtime=0))  # no name, no time


def read_outcomes(path: Path) -> pd.DataFrame:
    """Read and validate an outcomes file; raise :class:`ValidationError` naming what is wrong."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={"cell_id": "string"}, compression="gzip")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such outcomes file") from None
    except Exception as exc:  # gzip, CSV and decoding errors alike
        raise ValidationError(str(path), [f"not a readable gzip CSV: {' '.join(str(exc).split())}"]) from None
    problems = _problems(frame)
    if problems:
        raise ValidationError(str(path), problems)
    return frame


def _problems(frame: pd.DataFrame) -> list[str]:
    import pandas as pd

    if list(frame.columns) != COLUMNS:
        return [f"columns must be {', '.join(COLUMNS)}, got {', '.join(map(str, frame.columns))}"]
    problems = []
    for column in COLUMNS[1:]:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            problems.append(f"column '{column}' must be numeric on every row")
        frame[column] = values
    if problems:
        return problems
    for column in FRACTIONS:
        if not frame[column].between(0, 1).all():
            problems.append(f"column '{column}' must lie in [0, 1]")
    if (frame["robust"] > frame[["clean_correct", "adversarial_correct"]].min(axis=1) + 1e-9).any():
        problems.append("'robust' exceeds 'clean_correct' or 'adversarial_correct'")
    if (frame["perturbation"] < 0).any() or (frame["sample"] < 0).any():
        problems.append("'sample' and 'perturbation' must not be negative")
    if frame["cell_id"].isna().any():
        problems.append("column 'cell_id' is empty on some rows")
    if frame.duplicated(["cell_id", "sample"]).any():
        problems.append("duplicate (cell_id, sample) rows")
    return problems


def check_against(frame: pd.DataFrame, leaderboard: pd.DataFrame, source: str) -> None:
    """The outcomes must agree with the leaderboard they sit beside: every outcome's cell is an
    ``ok`` row, whose ``n_samples`` and accuracies they reproduce."""
    ok = leaderboard[leaderboard["status"] == "ok"].set_index("cell_id")
    problems = []
    unknown = set(frame["cell_id"]) - set(ok.index)
    if unknown:
        problems.append(f"{len(unknown)} cells are not ok rows of the leaderboard (e.g. {sorted(unknown)[0]})")
    disagree = disagreeing_cells(frame, leaderboard)
    if disagree:
        problems.append(
            f"{len(disagree)} cells disagree with their leaderboard row or have no outcomes (e.g. {disagree[0]})"
        )
    if problems:
        raise ValidationError(source, problems)


def disagreeing_cells(frame: pd.DataFrame, leaderboard: pd.DataFrame) -> list[str]:
    """The ``ok`` rows of ``leaderboard`` that the outcomes in ``frame`` do not back: rows without
    outcomes, and rows whose ``n_samples``, clean or robust accuracy the outcomes do not reproduce
    (an edited row, or edited outcomes). Every ``ok`` row a run writes has its outcomes."""
    ok = leaderboard[leaderboard["status"] == "ok"].set_index("cell_id")
    summary = frame[frame["cell_id"].isin(ok.index)].groupby("cell_id").agg(
        n=("sample", "size"), clean=("clean_correct", "mean"), robust=("robust", "mean")
    )
    summary = summary.reindex(ok.index)  # a row without outcomes: NaN, which disagrees
    disagree = ~(
        (summary["n"] == ok["n_samples"])
        & ((summary["clean"] - ok["clean_accuracy"]).abs() <= 1e-9)
        & ((summary["robust"] - ok["robust_accuracy"]).abs() <= 1e-9)
    )
    return [str(cell_id) for cell_id in ok.index[disagree.to_numpy()]]


def read_with_outcomes(path: Path, warn: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A leaderboard and, when a valid one lies beside it, its outcomes (a broken outcomes file is
    reported to ``warn`` and left out: the leaderboard alone still shows and compares)."""
    from harness.leaderboard import read_leaderboard

    frame = read_leaderboard(path)
    beside = outcomes_path(path)
    if not beside.exists():
        return frame, None
    try:
        outcomes = read_outcomes(beside)
        check_against(outcomes, frame, str(beside))
    except ValidationError as exc:
        warn(f"leaving out the outcomes: {exc}")
        return frame, None
    return frame, outcomes

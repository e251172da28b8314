"""The standardized leaderboard CSV: its schema, and validated reading and atomic writing.

The columns and their meaning are documented in the README ("Leaderboard columns"). Plugins' extra
metrics follow the fixed columns as ``metric_<name>``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UsageError, ValidationError
from harness.files import write_atomically

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)
"""Version 2 lacks the columns :data:`ADDED_IN_3`; reading it adds them, empty."""
KEY = ["dataset", "model", "defense", "attack", "norm", "eps", "seed"]
STATUSES = ("ok", "skipped", "error")
METRIC_PREFIX = "metric_"
COMPONENT_KINDS = ("dataset", "model", "defense", "attack")

RESULT_COLUMNS = [
    "schema_version", "suite", "dataset", "model", "defense", "attack", "norm", "eps", "seed",
    "n_samples", "clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low",
    "robust_accuracy_ci_high", "attack_success_rate", "mean_perturbation_l2",
    "median_perturbation_l2", "max_perturbation_linf", "train_seconds", "attack_seconds",
    "minimal_norm", "attack_access", "zero_gradient_fraction", "randomness", "status", "message", "flags",
    "cell_id",
]  # fmt: skip
ADDED_IN_3 = ["attack_access", "zero_gradient_fraction", "randomness"]
"""What the adaptive-evaluation checks read (see :mod:`harness.review`)."""
ACCESS = ("white-box", "black-box", "transfer")
RANDOMNESS = ("deterministic", "draws", "eot", "draws+eot", "unhandled")
PROVENANCE_COLUMNS = [
    *(f"{kind}_{field}" for kind in COMPONENT_KINDS for field in ("params", "plugin", "distribution", "version")),
    "metrics", "harness_version", "torch_version", "numpy_version", "art_version", "python_version",
    "device", "created_at",
]  # fmt: skip
COLUMNS = RESULT_COLUMNS + PROVENANCE_COLUMNS

INTEGER_COLUMNS = ["schema_version", "seed", "n_samples"]
FLOAT_COLUMNS = [
    "eps", "clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low", "robust_accuracy_ci_high",
    "attack_success_rate", "mean_perturbation_l2", "median_perturbation_l2",
    "max_perturbation_linf", "train_seconds", "attack_seconds", "zero_gradient_fraction",
]  # fmt: skip
FRACTION_COLUMNS = [
    "clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low", "robust_accuracy_ci_high", "attack_success_rate",
    "zero_gradient_fraction",
]  # fmt: skip
REQUIRED_WHEN_OK = ["clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low", "robust_accuracy_ci_high"]
TEXT_COLUMNS = [c for c in COLUMNS if c not in INTEGER_COLUMNS + FLOAT_COLUMNS]
TOLERANCE = 1e-9
BUDGET_TOLERANCE = 1e-5
"""How far a perturbation may exceed its budget (relative to ``max(eps, 1)``), or an image leave
[0, 1], before it counts as over budget: room for float32 rounding, not for a real excess."""


def over_budget(size: float, eps: float) -> bool:
    """Whether a perturbation of ``size`` exceeds the budget ``eps`` beyond float32 rounding."""
    return size > eps + BUDGET_TOLERANCE * max(eps, 1.0)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection")."""
ESCAPE = "'"
"""The prefix that makes a spreadsheet read such a cell as text (OWASP's advice)."""


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a label, name or other cell of a leaderboard, or None.

    The policy: a label or name that a user chooses (suite, entry labels, norms) is rejected when
    a spreadsheet would run it as a formula or when it holds a control character (a carriage
    return splits the row, a NUL byte truncates it); free text the harness writes (messages,
    plugin-supplied names) is escaped instead, by :func:`write_leaderboard`.
    """
    if _has_control(text):
        return "holds a control character (a line break, tab, NUL or the like)"
    if text.startswith(FORMULA_STARTS):
        return f"starts with {text[0]!r}, which a spreadsheet runs as a formula"
    return None


def escaped(text: str) -> str:
    """Free text made safe for a leaderboard cell: control characters become spaces, and a cell
    that a spreadsheet would run as a formula gets OWASP's leading apostrophe. Idempotent."""
    text = "".join(" " if _is_control(c) else c for c in text)
    return ESCAPE + text if text.startswith(FORMULA_STARTS) else text


def _is_control(character: str) -> bool:
    return unicodedata.category(character) == "Cc"


def _has_control(text: str) -> bool:
    return any(map(_is_control, text))


def metric_columns(columns: Iterable[str]) -> list[str]:
    return [c for c in columns if c.startswith(METRIC_PREFIX)]


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with the schema's columns in order, extra metric columns last."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    extra = sorted(set(metric_columns(frame.columns)))
    return frame.reindex(columns=COLUMNS + extra)


def write_leaderboard(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    """Write rows atomically: readers see the old file or the new one, never half of one. Text
    cells are :func:`escaped`, so that what is written is what :func:`read_leaderboard` accepts."""
    frame = to_frame(rows)
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].map(lambda v: escaped(v) if isinstance(v, str) else v)
    write_atomically(path, frame.to_csv(index=False).encode())


def read_leaderboard(path: Path) -> pd.DataFrame:
    """Read and validate a leaderboard; raise :class:`ValidationError` naming every problem."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={c: "string" for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise UsageError(f"{path}: no such leaderboard file") from None
    except pd.errors.EmptyDataError:
        raise ValidationError(str(path), ["the file is empty (expected a header row)"]) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise ValidationError(str(path), [f"not a readable CSV: {' '.join(str(exc).split())}"]) from None
    problems = validate_frame(frame)
    if problems:
        raise ValidationError(str(path), problems)
    return frame


def validate_frame(frame: pd.DataFrame) -> list[str]:
    """One message per problem; converts numeric columns of ``frame`` in place."""
    import pandas as pd

    if not any(c in frame.columns for c in ADDED_IN_3):  # a version 2 leaderboard
        for column in ADDED_IN_3:
            position = COLUMNS.index(column)
            if position <= len(frame.columns) and list(frame.columns[:position]) == COLUMNS[:position]:
                dtype = "string" if column in TEXT_COLUMNS else "float64"
                frame.insert(position, column, pd.Series(None, index=frame.index, dtype=dtype))
    columns = list(frame.columns)
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        return [f"missing columns: {', '.join(missing)}"]
    unknown = [c for c in columns if c not in COLUMNS and not c.startswith(METRIC_PREFIX)]
    if unknown:
        return [f"unknown columns: {', '.join(unknown)} (extra metrics must start with '{METRIC_PREFIX}')"]
    if columns[: len(COLUMNS)] != COLUMNS:
        return ["columns are not in the schema's order (see the README, 'Leaderboard columns')"]

    problems: list[str] = []

    def line(index: Any) -> int:
        return int(index) + 2  # header is line 1

    for column in columns:
        if _has_control(column):
            problems.append(f"column name {column!r} holds a control character")
    for column in TEXT_COLUMNS:
        values = frame[column].dropna().astype(str)
        unsafe = values.map(text_problem).dropna()
        if len(unsafe):
            index = unsafe.index[0]
            problems.append(f"column '{column}' {unsafe.iloc[0]} on lines {', '.join(str(line(i)) for i in unsafe.index[:5])} "
                            f"({values[index][:40]!r})")

    for column in INTEGER_COLUMNS + FLOAT_COLUMNS + metric_columns(columns):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            rows = ", ".join(str(line(i)) for i in frame.index[bad][:5])
            problems.append(f"column '{column}' has non-numeric values (lines {rows})")
        if column in INTEGER_COLUMNS:
            if values.isna().any():
                rows = ", ".join(str(line(i)) for i in frame.index[values.isna()][:5])
                problems.append(f"column '{column}' must be an integer on every row (lines {rows})")
            elif not (values == values.round()).all():
                problems.append(f"column '{column}' must hold integers")
        frame[column] = values
    if problems:
        return problems

    versions = set(frame["schema_version"].dropna().astype(int))
    if versions - set(READABLE_VERSIONS):
        found = ", ".join(str(v) for v in sorted(versions))
        readable = " and ".join(map(str, READABLE_VERSIONS))
        return [f"unsupported schema_version {found} (this harness reads versions {readable})"]

    bad_status = ~frame["status"].isin(STATUSES)
    if bad_status.any():
        rows = ", ".join(str(line(i)) for i in frame.index[bad_status][:5])
        problems.append(f"column 'status' must be one of {', '.join(STATUSES)} (lines {rows})")
    for column in ("suite", "dataset", "model", "defense", "attack", "norm", "cell_id"):
        empty = frame[column].isna() | (frame[column] == "")
        if empty.any():
            problems.append(f"column '{column}' is empty on lines {', '.join(str(line(i)) for i in frame.index[empty][:5])}")

    ok = frame["status"] == "ok"
    for column in REQUIRED_WHEN_OK:
        gap = ok & frame[column].isna()
        if gap.any():
            problems.append(f"column '{column}' is empty on ok lines {', '.join(str(line(i)) for i in frame.index[gap][:5])}")
    for column in FRACTION_COLUMNS:
        out = (frame[column] < -TOLERANCE) | (frame[column] > 1 + TOLERANCE)
        if out.any():
            problems.append(f"column '{column}' must lie in [0, 1] (lines {', '.join(str(line(i)) for i in frame.index[out][:5])})")
    for column, allowed in (("attack_access", ACCESS), ("randomness", RANDOMNESS)):
        bad = frame[column].notna() & ~frame[column].isin(allowed)
        if bad.any():
            problems.append(f"column '{column}' must be one of {', '.join(allowed)} or empty "
                            f"(lines {', '.join(str(line(i)) for i in frame.index[bad][:5])})")
    bad_kind = frame["minimal_norm"].notna() & ~frame["minimal_norm"].isin(["True", "False"])
    if bad_kind.any():
        problems.append(f"column 'minimal_norm' must be True, False or empty (lines {', '.join(str(line(i)) for i in frame.index[bad_kind][:5])})")
    checks = {
        "robust_accuracy lies outside its confidence interval": (
            (frame["robust_accuracy"] < frame["robust_accuracy_ci_low"] - TOLERANCE)
            | (frame["robust_accuracy"] > frame["robust_accuracy_ci_high"] + TOLERANCE)
        ),
        "eps is negative": frame["eps"] < 0,
        "n_samples is not positive": frame["n_samples"] <= 0,
    }
    for message, bad in checks.items():
        if bad.any():
            problems.append(f"{message} on lines {', '.join(str(line(i)) for i in frame.index[bad][:5])}")

    duplicated = frame.duplicated(subset=KEY, keep=False)
    if duplicated.any():
        problems.append(
            f"duplicate entries for ({', '.join(KEY)}) on lines {', '.join(str(line(i)) for i in frame.index[duplicated][:5])}"
        )
    if frame["cell_id"].duplicated().any():
        problems.append("column 'cell_id' has duplicates")
    return problems

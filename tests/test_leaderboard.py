"""The leaderboard schema: round trip, and rejection of malformed files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.errors import ValidationError
from harness.leaderboard import COLUMNS, SCHEMA_VERSION, read_leaderboard, write_leaderboard


def make_row(**overrides):
    row = {column: "" for column in COLUMNS}
    row.update(
        schema_version=SCHEMA_VERSION, suite="s", dataset="digits", model="mlp", defense="none", attack="pgd",
        norm="linf", eps=0.1, seed=0, n_samples=100, clean_accuracy=0.9, robust_accuracy=0.5,
        robust_accuracy_ci_low=0.4, robust_accuracy_ci_high=0.6, attack_success_rate=0.44,
        mean_perturbation_l2=1.5, median_perturbation_l2=1.4, max_perturbation_linf=0.1, train_seconds=1.0,
        attack_seconds=2.0, minimal_norm=False, attack_access="white-box", zero_gradient_fraction=0.0,
        randomness="deterministic", status="ok", message="", cell_id="abc", created_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    row.update(overrides)
    return row


def test_round_trip_keeps_types_and_order(tmp_path):
    rows = [
        make_row(),
        make_row(eps=0.2, cell_id="def", robust_accuracy=0.45, metric_extra=3.5),
        make_row(eps=0.3, cell_id="ghi", status="error", message="ValueError: x", clean_accuracy=math.nan,
                 robust_accuracy=math.nan, robust_accuracy_ci_low=math.nan, robust_accuracy_ci_high=math.nan),
    ]  # fmt: skip
    path = tmp_path / "lb.csv"
    write_leaderboard(rows, path)
    frame = read_leaderboard(path)
    assert list(frame.columns) == COLUMNS + ["metric_extra"]
    assert frame["eps"].tolist() == [0.1, 0.2, 0.3]
    assert frame["seed"].dtype.kind == "i" and frame["robust_accuracy"].dtype.kind == "f"
    assert frame["status"].tolist() == ["ok", "ok", "error"]
    assert frame.loc[1, "metric_extra"] == 3.5 and math.isnan(frame.loc[0, "metric_extra"])
    assert frame.loc[2, "message"] == "ValueError: x"
    # pandas reads it as it is, with numbers as numbers
    plain = pd.read_csv(path)
    assert plain["robust_accuracy"].dtype.kind == "f"


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "lb.csv"
    write_leaderboard([make_row()], path)
    write_leaderboard([make_row(), make_row(eps=0.2, cell_id="x")], path)
    assert [p.name for p in tmp_path.iterdir()] == ["lb.csv"]
    assert len(read_leaderboard(path)) == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["robust_accuracy"]), "missing columns: robust_accuracy"),
        (lambda f: f.assign(extra=1), "unknown columns: extra"),
        (lambda f: f[[*COLUMNS[1:], COLUMNS[0]]], "not in the schema's order"),
        (lambda f: f.assign(robust_accuracy="high"), "column 'robust_accuracy' has non-numeric values (lines 2)"),
        (lambda f: f.assign(status="done"), "column 'status' must be one of ok, skipped, error"),
        (lambda f: f.assign(minimal_norm="maybe"), "column 'minimal_norm' must be True, False or empty"),
        (lambda f: f.assign(clean_accuracy=1.5), "column 'clean_accuracy' must lie in [0, 1]"),
        (lambda f: f.assign(schema_version=99), "unsupported schema_version 99"),
        (lambda f: f.assign(seed=0.5), "column 'seed' must hold integers"),
        (lambda f: pd.concat([f, f.assign(cell_id="other")]), "duplicate entries"),
        (lambda f: f.assign(robust_accuracy=None), "column 'robust_accuracy' is empty on ok lines 2"),
    ],
)
def test_malformed_leaderboards_are_rejected(tmp_path, mutate, message):
    path = tmp_path / "lb.csv"
    mutate(pd.DataFrame([make_row()])).to_csv(path, index=False)
    with pytest.raises(ValidationError) as info:
        read_leaderboard(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "the file is empty"), (b"\x00\xff\xfe garbage \x00", "not a readable CSV"), (b"x,y\n1,2\n", "missing columns"), (b'a,b\n"1,2\n', "not a readable CSV")],
)
def test_corrupt_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "lb.csv"
    path.write_bytes(content)
    with pytest.raises(ValidationError, match=message):
        read_leaderboard(path)


def test_cli_validate_leaderboard(cli, tmp_path):
    path = tmp_path / "lb.csv"
    write_leaderboard([make_row()], path)
    code, out, _ = cli("validate", path)
    assert code == 0 and "valid leaderboard (1 rows: 1 ok, 0 skipped, 0 error)" in out
    path.write_text("schema_version\n1\n")
    code, _, err = cli("validate", path)
    assert code == 2 and err.startswith("harness: error:") and err.count("\n") == 1


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        write_leaderboard([make_row()], tmp_path / "lb.csv")
    finally:
        os.umask(umask)
    assert (tmp_path / "lb.csv").stat().st_mode & 0o777 == 0o644

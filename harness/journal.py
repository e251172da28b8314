"""A run's journal: every finished cell, appended at once, so that writing a cell costs the same
at the 5,000th cell as at the first.

``digits.csv`` has its journal in ``.digits.csv.journal/``: one file per finished cell, named by
its ``cell_id``, holding the row as one line of JSON and then its per-sample outcomes as lines of
the outcomes CSV (see :mod:`harness.outcomes`), without the header. The runner writes the
leaderboard and the outcomes file from its rows, and removes the journal when the run ends; a
killed run leaves it, and the next run reads it with the leaderboard (its entries are newer).

One file per cell rather than an embedded database (SQLite in WAL mode): each entry is written by
:func:`harness.files.write_atomically`, like every other file of the harness, so it is whole or
absent, a full disk is the same one-line error, and there is nothing to recover or vacuum; it
works on a network file system, where SQLite's WAL (shared memory) does not; a later run of the
same cell replaces its entry; and removing the journal is removing a folder.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ValidationError
from harness.files import write_atomically
from harness.outcomes import COLUMNS, empty_outcomes

if TYPE_CHECKING:
    import pandas as pd

SUFFIX = ".journal"
ENTRY = ".cell"


def journal_path(leaderboard: Path) -> Path:
    """Where the journal of ``leaderboard`` lives: ``X.csv`` -> ``.X.csv.journal/``."""
    return leaderboard.with_name(f".{leaderboard.name}{SUFFIX}")


def entry_path(journal: Path, cell_id: str) -> Path:
    return journal / f"{cell_id}{ENTRY}"


def append(journal: Path, row: Mapping[str, Any], samples: pd.DataFrame | None) -> None:
    """Write one finished cell: its row and, for an ``ok`` cell, its outcomes."""
    text = json.dumps(row, default=_plain) + "\n"
    if samples is not None:
        text += samples[COLUMNS].to_csv(index=False, header=False)
    write_atomically(entry_path(journal, row["cell_id"]), text.encode())


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds; anything else as the text a CSV cell gets."""
    return value.item() if hasattr(value, "item") else str(value)


def read_journal(journal: Path, warn: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """The rows of the journal's entries by cell id, and their outcomes (as
    :func:`harness.outcomes.read_outcomes` reads an outcomes file). An entry that is not whole (a
    file a power cut left empty) is reported and left out: its cell is computed again."""
    import pandas as pd

    rows: dict[str, dict[str, Any]] = {}
    outcomes: list[str] = []
    unreadable = []
    for path in sorted(journal.glob(f"*{ENTRY}")):
        try:
            head, _, body = path.read_text().partition("\n")
            row = json.loads(head)
            rows[row["cell_id"]] = row
        except (OSError, ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
            unreadable.append(path.name)
            continue
        outcomes.append(body)
    if unreadable:
        names = ", ".join(unreadable[:3]) + (" ..." if len(unreadable) > 3 else "")
        warn(f"leaving out {len(unreadable)} unreadable entries of {journal} (their cells are computed again): {names}")
    try:
        frame = pd.read_csv(io.StringIO("".join(outcomes)), names=COLUMNS, header=None, dtype={"cell_id": "string"})
    except pd.errors.EmptyDataError:
        return rows, empty_outcomes()
    except (pd.errors.ParserError, ValueError) as exc:
        raise ValidationError(
            str(journal), [f"unreadable outcomes: {' '.join(str(exc).split())}", "remove it or run with --force"]
        ) from None
    return rows, frame


def remove_journal(journal: Path) -> None:
    """Remove the journal once its cells are in the leaderboard (what cannot be removed is read
    again by the next run, harmlessly: its entries are the leaderboard's rows)."""
    shutil.rmtree(journal, ignore_errors=True)

"""Running a suite: plan the cells, skip the completed ones, compute the rest, persist each at once.

The leaderboard CSV is the run's state: every finished cell is written to it (and its per-sample
outcomes beside it, first) atomically before the next one starts, so a killed run loses nothing,
and a re-run computes only the missing cells (``ok`` and ``skipped`` rows are complete; ``error``
rows are retried).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import BusyError, OutputError, ValidationError
from harness.files import check_writable, describe
from harness.leaderboard import SCHEMA_VERSION, read_leaderboard, to_frame, write_leaderboard
from harness.outcomes import disagreeing_cells, empty_outcomes, outcomes_path, read_outcomes, write_outcomes
from harness.overrides import effective_suite_path, record_effective_suite
from harness.registry import Registry
from harness.review import flags
from harness.suite import Cell, Suite, budget_warnings

if TYPE_CHECKING:
    import pandas as pd

COMPLETE = ("ok", "skipped")
LABEL_COLUMNS = ("suite", "dataset", "model", "defense", "attack", "norm")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("HARNESS_CACHE_DIR") or Path(base) / "harness" / "cache")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("HARNESS_DATA_DIR") or Path(base) / "harness" / "data")


@dataclass
class RunOptions:
    output: Path
    cache_dir: Path = field(default_factory=default_cache_dir)
    data_dir: Path = field(default_factory=default_data_dir)
    device: str = "auto"
    force: bool = False
    wait: bool = False
    """Wait for another run that holds the output's lock, instead of failing at once."""
    progress: bool | None = None
    """Show progress bars; None shows them when stderr is a terminal."""
    effective_suite: dict[str, Any] | None = None
    """The suite table after command-line overrides (``--set``), recorded beside the output with
    the rows it makes; None (no overrides) removes a record an earlier run left."""


@dataclass
class RunSummary:
    output: Path
    computed: int
    reused: int
    counts: Counter[str]
    seconds: float


def component_provenance(cell: Cell) -> dict[str, Any]:
    row = {}
    for kind in ("dataset", "model", "defense", "attack"):
        entry = getattr(cell, kind)
        row[f"{kind}_params"] = entry.params_json
        row[f"{kind}_plugin"] = entry.component.plugin
        row[f"{kind}_distribution"] = entry.component.distribution
        row[f"{kind}_version"] = entry.component.version
    return row


def metric_provenance(cell: Cell) -> str:
    """The ``metrics`` column: each metric column's component, release, parameters and direction."""
    return json.dumps(
        {
            entry.label: {
                "name": entry.component.name,
                "plugin": entry.component.plugin,
                "distribution": entry.component.distribution,
                "version": entry.component.version,
                "params": dict(entry.params),
                "higher_is_better": entry.component.higher_is_better,
            }
            for entry in cell.metrics
        },
        sort_keys=True,
    )


def build_row(
    cell: Cell, status: str, message: str, measurements: Mapping[str, Any], environment: Mapping[str, str]
) -> dict[str, Any]:
    """The one place a leaderboard row is made: the cell's identity and provenance, what was
    measured, its status, and the software and time that computed it."""
    return {
        **base_row(cell),
        **measurements,
        "status": status,
        "message": message,
        "metrics": metric_provenance(cell),
        **environment,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def base_row(cell: Cell) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": cell.suite,
        "dataset": cell.dataset.label,
        "model": cell.model.label,
        "defense": cell.defense.label,
        "attack": cell.attack.label,
        "norm": cell.attack.params["norm"],
        "eps": cell.eps,
        "seed": cell.seed,
        "n_samples": cell.n_samples,
        "cell_id": cell.cell_id,
        **component_provenance(cell),
    }


def warn_on_stderr(message: str) -> None:
    """Print a warning without breaking the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(f"harness: warning: {message}", file=sys.stderr)


def check_output(suite: Suite, output: Path) -> None:
    """Refuse, before any work, an output the run could not write or would write over an input:
    a leaderboard is a ``.csv`` (what ``validate`` reads), never the suite file, in a folder that
    takes it, and its outcomes file beside it can be written too."""
    if output.name in ("", ".", ".."):
        raise OutputError(f"the leaderboard '{output}' is not a file name")
    if output.suffix != ".csv":
        raise OutputError(f"the leaderboard '{output}' must be a .csv file")
    for path in (output, outcomes_path(output)):
        if path.resolve() == suite.path.resolve():
            raise OutputError(f"the output {path} is the suite file itself: choose another --output")
    check_writable(output, "leaderboard")
    check_writable(outcomes_path(output), "outcomes file")


def run_suite(
    suite: Suite, registry: Registry, options: RunOptions, warn: Callable[[str], None] = warn_on_stderr
) -> RunSummary:
    """Compute every missing cell of ``suite`` into ``options.output``, holding its lock."""
    check_output(suite, options.output)
    for message in budget_warnings(suite):
        warn(message)
    with output_lock(options.output, wait=options.wait, warn=warn):
        return _run_locked(suite, registry, options, warn)


@dataclass
class Previous:
    """What a leaderboard already holds of a suite's cells."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The complete rows of the suite's cells, by cell id, under the suite's labels."""
    samples: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Their per-sample outcomes, by cell id."""
    stale: int = 0
    """Rows that are not cells of the suite."""
    relabelled: int = 0
    """Kept rows whose labels the suite renamed."""


def read_previous(cells: list[Cell], output: Path, warn: Callable[[str], None]) -> Previous:
    """The complete rows of ``output`` (if it exists) among ``cells``, each reproduced by its
    outcomes: a row they do not back is left out (to be recomputed), with a warning."""
    previous = Previous()
    if not output.exists():
        return previous
    by_id = {cell.cell_id: cell for cell in cells}
    outcomes_file = outcomes_path(output)
    try:
        existing = read_leaderboard(output)
        outcomes = read_outcomes(outcomes_file) if outcomes_file.exists() else empty_outcomes()
    except ValidationError as exc:
        raise ValidationError(exc.source, [*exc.problems, "fix the file or run with --force to overwrite it"]) from None
    rows = previous.rows
    for record in existing.to_dict("records"):
        cell = by_id.get(record["cell_id"])
        if cell is None:
            previous.stale += 1
        elif record["status"] in COMPLETE:
            identity = base_row(cell)
            labels = {column: identity[column] for column in LABEL_COLUMNS}
            previous.relabelled += any(record[column] != value for column, value in labels.items())
            rows[cell.cell_id] = {**record, **labels}  # the suite names its cells; a renamed label follows
    unbacked = [cell_id for cell_id in disagreeing_cells(outcomes, existing) if cell_id in rows]
    if unbacked:
        warn(
            f"recomputing {len(unbacked)} cells of {output} whose row its outcomes do not reproduce "
            f"(an edited file?): {', '.join(by_id[cell_id].describe() for cell_id in unbacked[:5])}"
            + (" ..." if len(unbacked) > 5 else "")
        )
        for cell_id in unbacked:
            del rows[cell_id]
    previous.samples = {cell_id: group for cell_id, group in outcomes.groupby("cell_id") if cell_id in rows}
    return previous


def _run_locked(suite: Suite, registry: Registry, options: RunOptions, warn: Callable[[str], None]) -> RunSummary:
    started = time.perf_counter()
    cells = suite.cells()
    outcomes_file = outcomes_path(options.output)
    previous = Previous() if options.force else read_previous(cells, options.output, warn)
    rows, samples, stale, relabelled = previous.rows, previous.samples, previous.stale, previous.relabelled
    pending = pending_cells(suite, cells, rows)
    reused = len(cells) - len(pending)

    def write(path: Path, writer: Callable[[], None]) -> None:
        """A file that cannot be written stops the run with one line; the files keep what they held."""
        try:
            writer()
        except OSError as exc:
            raise OutputError(
                f"cannot write {path}: {describe(exc)}; it keeps the cells finished before, and the cache "
                "keeps this run's models and attack runs: run the same command again once it can be written"
            ) from None

    def record() -> None:
        suite_file = effective_suite_path(options.output)
        write(suite_file, lambda: record_effective_suite(options.output, options.effective_suite))

    def persist() -> None:
        """The suite's record first, then the outcomes, then the leaderboard: every row written has
        the suite that made it on record and its outcomes."""
        record()
        done = [c.cell_id for c in cells if c.cell_id in rows]
        frame = to_frame(rows[cell_id] for cell_id in done)
        records = frame.assign(flags=flags(frame)).to_dict("records")
        write(outcomes_file, lambda: write_outcomes([samples[c] for c in done if c in samples], outcomes_file))
        write(options.output, lambda: write_leaderboard(records, options.output))

    if stale:
        warn(f"dropping {stale} rows of {options.output} that are not cells of suite '{suite.name}'")
    if pending:
        _compute(suite, registry, options, pending, rows, samples, persist, warn)
    elif stale or relabelled or options.force:
        persist()
    else:
        record()  # the rows stand as they are, but overrides that leave them unchanged may have come or gone
    final = [rows[c.cell_id] for c in cells if c.cell_id in rows]
    registry.notify("suite_finished", warn, suite=suite, rows=final)
    return RunSummary(
        output=options.output,
        computed=len(pending),
        reused=reused,
        counts=Counter(row["status"] for row in final),
        seconds=time.perf_counter() - started,
    )


LOCK_SUFFIX = ".lock"


@contextlib.contextmanager
def output_lock(output: Path, wait: bool, warn: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock of ``output`` (a hidden ``.<name>.lock`` beside it) for the whole run, so
    that two runs never compute and write one leaderboard at once. A second run fails at once,
    naming the holder, or with ``wait`` waits for it. The lock is the operating system's (through
    ``filelock``), so a killed run never leaves it held."""
    from filelock import FileLock, Timeout

    path = output.with_name(f".{output.name}{LOCK_SUFFIX}")
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = _holder(path)
        if not wait:
            raise BusyError(
                f"{output} is being written by another run ({holder}); wait for it, or pass --wait"
            ) from None
        warn(f"waiting for the other run writing {output} ({holder})")
        lock.acquire(timeout=-1)
    except OSError as exc:
        raise OutputError(f"cannot lock {output} ({path}): {describe(exc)}") from None
    try:
        with contextlib.suppress(OSError):  # who holds it is a courtesy to the next run
            path.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}")
        yield
    finally:
        lock.release()


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "holder unknown"
    except OSError:
        return "holder unknown"


def pending_cells(suite: Suite, cells: list[Cell], rows: dict[str, dict[str, Any]]) -> list[Cell]:
    """The cells to compute: those without a complete row. With metrics, a sweep (one model under
    one attack entry, every eps) is computed whole, since a sweep metric needs all of it; the
    attack runs of its finished cells come from the cache."""
    missing = {cell.cell_id for cell in cells if cell.cell_id not in rows}
    if suite.metrics:
        sweeps = {(c.model_key, c.attack.label) for c in cells if c.cell_id in missing}
        missing |= {c.cell_id for c in cells if (c.model_key, c.attack.label) in sweeps}
    return [cell for cell in cells if cell.cell_id in missing]


def _compute(
    suite: Suite,
    registry: Registry,
    options: RunOptions,
    pending: list[Cell],
    rows: dict[str, dict[str, Any]],
    samples: dict[str, pd.DataFrame],
    persist: Callable[[], None],
    warn: Callable[[str], None],
) -> None:
    from tqdm.auto import tqdm

    from harness import execute
    from harness.cache import ArtifactCache
    from harness.preflight import check_buildable

    check_buildable(suite)
    cache = ArtifactCache(options.cache_dir, warn)
    cache.check()  # a cache that cannot be written is said once, and the run goes on without it
    show = sys.stderr.isatty() if options.progress is None else options.progress

    def progress(iterable: Iterable[Any], description: str) -> Iterable[Any]:
        return tqdm(iterable, desc=description, leave=False, disable=not show, file=sys.stderr)

    device = execute.resolve_device(options.device)
    environment = execute.environment_provenance(device)
    workspace = execute.Workspace(
        registry=registry,
        device=device,
        cache=cache,
        data_dir=options.data_dir,
        batch_size=suite.batch_size,
        progress=progress,
        warn=warn,
    )
    registry.notify("suite_started", warn, suite=suite, cells=pending)
    bar = tqdm(total=len(pending), desc=suite.name, unit="cell", disable=not show, file=sys.stderr)

    def started(cell: Cell) -> None:
        bar.set_postfix_str(cell.describe())
        registry.notify("cell_started", warn, cell=cell)

    groups: dict[str, list[Cell]] = {}
    for cell in pending:
        groups.setdefault(cell.model_key, []).append(cell)
    try:
        for group in groups.values():
            for result in execute.compute_group(group, workspace, on_start=started):
                row = build_row(result.cell, result.status, result.message, result.measurements, environment)
                rows[result.cell.cell_id] = row
                if result.samples is None:
                    samples.pop(result.cell.cell_id, None)
                else:
                    samples[result.cell.cell_id] = result.samples
                persist()
                registry.notify("cell_finished", warn, cell=result.cell, row=row)
                bar.update()
    finally:
        bar.close()

"""Running a suite: plan the cells, skip the completed ones, compute the rest, keep each at once.

Every finished cell goes to the run's journal (:mod:`harness.journal`) before the next one
starts, so a killed run loses nothing, at a cost that does not grow with the run. The leaderboard
CSV and its outcomes are written whole from the run's rows at its end (also when interrupted),
and while it goes on about every minute, for readers. A re-run reads the leaderboard and any
journal a killed run left, and computes only the missing cells (``ok`` and ``skipped`` rows are
complete; ``error`` rows are retried).
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

from harness.distributed import RayOptions
from harness.errors import BusyError, OutputError, ValidationError
from harness.files import check_writable, describe
from harness.journal import append, entry_path, journal_path, read_journal, remove_journal
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
    """Progress bars (True), nothing (False), or (None) bars when stderr is a terminal and plain
    lines otherwise (see :class:`Progress`)."""
    threads: int | None = None
    """torch's intra-op threads; None: :func:`default_threads`."""
    checkpoint_minutes: float = 10.0
    """How often a training saves a checkpoint that a killed run resumes from (0: every epoch)."""
    effective_suite: dict[str, Any] | None = None
    """The suite table after command-line overrides (``--set``), recorded beside the output with
    the rows it makes; None (no overrides) removes a record an earlier run left."""
    ray: RayOptions | None = None
    """Compute on Ray (see :mod:`harness.distributed`) instead of in this process."""


@dataclass
class RunSummary:
    output: Path
    computed: int
    reused: int
    counts: Counter[str]
    seconds: float


def default_threads(workers: int = 1) -> int:
    """The threads each of ``workers`` gets by default: ``$OMP_NUM_THREADS`` when it is set (as
    torch itself reads it), else the cores this process may use (its CPU affinity, which a
    container or ``taskset`` narrows) shared among the workers, at least one."""
    setting = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


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
    """What a leaderboard and its journal already hold of a suite's cells."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The complete rows of the suite's cells, by cell id, under the suite's labels."""
    samples: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Their per-sample outcomes, by cell id."""
    stale: set[str] = field(default_factory=set)
    """Cells of rows that are not cells of the suite."""
    relabelled: int = 0
    """Kept rows whose labels the suite renamed."""
    journaled: int = 0
    """Entries of a journal that a killed run left."""


def read_previous(cells: list[Cell], output: Path, warn: Callable[[str], None]) -> Previous:
    """The complete rows of ``output`` (if it exists) and then of its journal (newer) among
    ``cells``, each reproduced by its outcomes: a row they do not back is left out (to be
    recomputed), with a warning."""
    previous = Previous()
    by_id = {cell.cell_id: cell for cell in cells}
    if output.exists():
        outcomes_file = outcomes_path(output)
        try:
            existing = read_leaderboard(output)
            outcomes = read_outcomes(outcomes_file) if outcomes_file.exists() else empty_outcomes()
        except ValidationError as exc:
            raise ValidationError(exc.source, [*exc.problems, "fix the file or run with --force to overwrite it"]) from None
        _keep(previous, by_id, existing.to_dict("records"), existing, outcomes, output, warn)
    journal = journal_path(output)
    rows, outcomes = read_journal(journal, warn)
    if rows:
        _keep(previous, by_id, list(rows.values()), to_frame(rows.values()), outcomes, journal, warn)
        previous.journaled = len(rows)
    return previous


def _keep(
    previous: Previous,
    by_id: Mapping[str, Cell],
    records: list[dict[str, Any]],
    frame: pd.DataFrame,
    outcomes: pd.DataFrame,
    source: Path,
    warn: Callable[[str], None],
) -> None:
    """Add to ``previous`` the complete rows among ``records`` (``frame``, with ``outcomes``)
    that their outcomes back; a record replaces the row of its cell that ``previous`` held."""
    kept: dict[str, dict[str, Any]] = {}
    for record in records:
        cell = by_id.get(record["cell_id"])
        if cell is None:
            previous.stale.add(record["cell_id"])
            continue
        previous.rows.pop(cell.cell_id, None)
        previous.samples.pop(cell.cell_id, None)
        if record["status"] in COMPLETE:
            identity = base_row(cell)
            labels = {column: identity[column] for column in LABEL_COLUMNS}
            previous.relabelled += any(record[column] != value for column, value in labels.items())
            kept[cell.cell_id] = {**record, **labels}  # the suite names its cells; a renamed label follows
    unbacked = [cell_id for cell_id in disagreeing_cells(outcomes, frame) if cell_id in kept]
    if unbacked:
        warn(
            f"recomputing {len(unbacked)} cells of {source} whose row its outcomes do not reproduce "
            f"(an edited file?): {', '.join(by_id[cell_id].describe() for cell_id in unbacked[:5])}"
            + (" ..." if len(unbacked) > 5 else "")
        )
        for cell_id in unbacked:
            del kept[cell_id]
    previous.rows.update(kept)
    previous.samples.update((cell_id, group) for cell_id, group in outcomes.groupby("cell_id") if cell_id in kept)


PUBLISH_SECONDS = 60.0
"""During a run, the shortest time between two writes of the leaderboard and its outcomes."""
PUBLISH_SHARE = 0.05
"""The largest share of a run's time that writing them may take: they grow with the run, so a
write that took t seconds waits at least t / PUBLISH_SHARE seconds for the next."""


def _written(path: Path, writer: Callable[[], None]) -> None:
    """A file that cannot be written stops the run with one line; the files keep what they held."""
    try:
        writer()
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {describe(exc)}; the cells finished before are kept, and the cache keeps "
            "this run's models and attack runs: run the same command again once it can be written"
        ) from None


class RunState:
    """A run's rows and outcomes by cell id. A finished cell goes to the journal at once (a cost
    that does not grow with the run); the leaderboard and its outcomes are written whole from
    memory by :meth:`publish`: at the end of the run, and while it goes on at most every
    :data:`PUBLISH_SECONDS` (and :data:`PUBLISH_SHARE` of the time), so that readers see progress."""

    def __init__(self, output: Path, order: list[str], previous: Previous, effective_suite: dict[str, Any] | None):
        self.output = output
        self.journal = journal_path(output)
        self.order = order
        """Cell ids in the suite's order: the order of the rows."""
        self.rows, self.samples = previous.rows, previous.samples
        self.effective_suite = effective_suite
        self.published = time.monotonic()
        self.publish_seconds = 0.0

    def add(self, row: dict[str, Any], samples: pd.DataFrame | None) -> None:
        cell_id = row["cell_id"]
        _written(entry_path(self.journal, cell_id), lambda: append(self.journal, row, samples))
        self.rows[cell_id] = row
        if samples is None:
            self.samples.pop(cell_id, None)
        else:
            self.samples[cell_id] = samples
        if time.monotonic() - self.published >= max(PUBLISH_SECONDS, self.publish_seconds / PUBLISH_SHARE):
            self.publish()

    def record(self) -> None:
        """Record the suite the rows come from (its overrides), or remove an earlier record."""
        path = effective_suite_path(self.output)
        _written(path, lambda: record_effective_suite(self.output, self.effective_suite))

    def publish(self) -> None:
        """The suite's record first, then the outcomes, then the leaderboard: every row written has
        the suite that made it on record and its outcomes."""
        started = time.monotonic()
        self.record()
        done = [cell_id for cell_id in self.order if cell_id in self.rows]
        frame = to_frame(self.rows[cell_id] for cell_id in done)
        records = frame.assign(flags=flags(frame)).to_dict("records")
        outcomes = outcomes_path(self.output)
        _written(outcomes, lambda: write_outcomes([self.samples[c] for c in done if c in self.samples], outcomes))
        _written(self.output, lambda: write_leaderboard(records, self.output))
        self.published = time.monotonic()
        self.publish_seconds = self.published - started

    def close(self, publish: bool) -> None:
        """End the run: write the files (or, when the rows stand as they were, only the suite's
        record: overrides that leave them unchanged may have come or gone), then drop the journal."""
        if publish:
            self.publish()
        else:
            self.record()
        remove_journal(self.journal)


def _run_locked(suite: Suite, registry: Registry, options: RunOptions, warn: Callable[[str], None]) -> RunSummary:
    started = time.perf_counter()
    cells = suite.cells()
    if options.force:
        remove_journal(journal_path(options.output))  # its cells are computed again too
    previous = Previous() if options.force else read_previous(cells, options.output, warn)
    state = RunState(options.output, [cell.cell_id for cell in cells], previous, options.effective_suite)
    pending = pending_cells(suite, cells, state.rows)
    reused = len(cells) - len(pending)
    if previous.stale:
        warn(f"dropping {len(previous.stale)} rows of {options.output} that are not cells of suite '{suite.name}'")
    try:
        if pending:
            _compute(suite, registry, options, pending, state, warn)
    except KeyboardInterrupt:
        state.close(publish=True)  # every finished cell reaches the files before the run stops
        raise
    state.close(publish=bool(pending or previous.stale or previous.relabelled or previous.journaled or options.force))
    final = [state.rows[c.cell_id] for c in cells if c.cell_id in state.rows]
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


LINE_SECONDS = 30.0
"""Without a terminal, a cell that ends this long after the last progress line prints one."""


class Progress:
    """What a run says on stderr while it computes: a bar on a terminal (tqdm); otherwise (a log
    file, a CI job, where a bar's carriage returns pile up) a plain line for each finished model,
    and for a cell that ends :data:`LINE_SECONDS` after the last line; nothing when turned off."""

    def __init__(self, name: str, total: int, style: str | None):
        from tqdm.auto import tqdm

        self.name, self.total, self.style = name, total, style
        self.done = 0
        self.started = self.said = time.monotonic()
        self.bar = tqdm(total=total, desc=name, unit="cell", disable=style != "bars", file=sys.stderr)

    def start(self, cell: Cell) -> None:
        self.bar.set_postfix_str(cell.describe())

    def finish(self, cell: Cell, last_of_model: bool) -> None:
        self.done += 1
        self.bar.update()
        if self.style == "lines" and (last_of_model or time.monotonic() - self.said >= LINE_SECONDS):
            model = f"{cell.dataset.label}/{cell.model.label}/{cell.defense.label}/seed{cell.seed}"
            self.line(f" ({model} done)" if last_of_model else "")

    def line(self, note: str) -> None:
        """``digits: 12/132 cells, 3m05s elapsed, ~30m left``."""
        self.said = time.monotonic()
        elapsed = self.said - self.started
        left = f", ~{duration(elapsed / self.done * (self.total - self.done))} left" if self.done < self.total else ""
        counts = f"{self.name}: {self.done}/{self.total} cells, {duration(elapsed)} elapsed"
        print(f"{counts}{left}{note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _compute_on_ray(
    suite: Suite,
    registry: Registry,
    options: RunOptions,
    groups: list[list[Cell]],
    record: Callable[..., None],
    warn: Callable[[str], None],
) -> None:
    """The groups computed by Ray tasks, each result recorded by the driver as it arrives, with
    the environment of the node that computed it; a Ray runtime started here is stopped after."""
    from harness import distributed
    from harness.plugins import UNPACKAGED

    assert options.ray is not None
    ray, started_here = distributed.connect(options.ray)
    try:
        settings = distributed.WorkerSettings(
            plugins=tuple(p.name for p in registry.plugins if p.distribution == UNPACKAGED and not p.error),
            search_path=(str(Path.cwd()), str(suite.path.resolve().parent)),
            device=options.device,
            cache_dir=str(options.cache_dir.resolve()),
            data_dir=str(options.data_dir.resolve()),
            batch_size=suite.batch_size,
            threads=options.threads or max(1, int(options.ray.cpus_per_task)),
            checkpoint_seconds=60 * options.checkpoint_minutes,
        )
        distributed.check_nodes(ray, suite, settings)
        distributed.compute(ray, groups, settings, options.ray, record, warn)
    finally:
        if started_here:
            ray.shutdown()


def _compute(
    suite: Suite,
    registry: Registry,
    options: RunOptions,
    pending: list[Cell],
    state: RunState,
    warn: Callable[[str], None],
) -> None:
    from tqdm.auto import tqdm

    from harness import execute
    from harness.cache import ArtifactCache
    from harness.preflight import check_buildable

    check_buildable(suite)
    cache = ArtifactCache(options.cache_dir, warn)
    cache.check()  # a cache that cannot be written is said once, and the run goes on without it
    style = None if options.progress is False else "bars" if options.progress or sys.stderr.isatty() else "lines"

    def progress(iterable: Iterable[Any], description: str) -> Iterable[Any]:
        return tqdm(iterable, desc=description, leave=False, disable=style != "bars", file=sys.stderr)

    with execute.torch_threads(options.threads or default_threads()):
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
            checkpoint_seconds=60 * options.checkpoint_minutes,
        )
        registry.notify("suite_started", warn, suite=suite, cells=pending)
        shown = Progress(suite.name, len(pending), style)

        def started(cell: Cell) -> None:
            shown.start(cell)
            registry.notify("cell_started", warn, cell=cell)

        groups = execute.grouped(pending, key=lambda cell: cell.model_key)
        left = {group[0].model_key: len(group) for group in groups}

        def record(result: execute.CellResult, environment: Mapping[str, str] = environment) -> None:
            row = build_row(result.cell, result.status, result.message, result.measurements, environment)
            state.add(row, result.samples)
            registry.notify("cell_finished", warn, cell=result.cell, row=row)
            left[result.cell.model_key] -= 1
            shown.finish(result.cell, last_of_model=left[result.cell.model_key] == 0)

        try:
            if options.ray is None:
                for group in groups:
                    for result in execute.compute_group(group, workspace, on_start=started):
                        record(result)
            else:
                _compute_on_ray(suite, registry, options, groups, record, warn)
        finally:
            shown.close()

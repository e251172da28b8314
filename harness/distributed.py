"""Computing a suite's cells on Ray: on this machine's cores, or on a cluster.

The work units are the runner's groups (the cells that share one trained model), split in two:
one task trains the group's model (or loads it) into the cache, then one task per attack entry
(a sweep) loads it and attacks, so that many attacks on one expensive model run in parallel.
Tasks share the model cache, which must be storage every node sees; its lock per entry
(:meth:`harness.cache.ArtifactCache.exclusive`) makes sure that no model is trained twice at the
same time, whether two groups share a backbone or a transfer attack needs another group's model.
Without a shared cache each sweep trains its own copy: the rows are the same, only slower.

The driver alone writes the leaderboard and the outcomes, as results arrive (through the caller).
Ray retries a task whose worker or node died; an exception in a cell is an ``error`` row, as in
process, and is never retried. Each task runs torch with the threads of its CPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError, one_line
from harness.registry import Registry
from harness.suite import Cell, Suite

RETRIES = 3
"""How often Ray reruns a task whose worker or node died (never one whose cell raised)."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: ``address`` of a cluster (None: start a local runtime), at most
    ``workers`` tasks at once (None: as many as the CPUs allow), and each task's resources."""

    address: str | None = None
    workers: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0


@dataclass(frozen=True)
class WorkerSettings:
    """What a task needs to build the driver's workspace on its node."""

    plugins: tuple[str, ...]
    search_path: tuple[str, ...]
    device: str
    cache_dir: str
    data_dir: str
    batch_size: int
    threads: int
    checkpoint_seconds: float


def connect(options: RayOptions) -> tuple[Any, bool]:
    """The ``ray`` module, initialised (a local runtime with ``workers`` x ``cpus_per_task`` CPUs,
    or the cluster at ``address``), and whether this call started it; a missing extra or an
    unreachable cluster is one clear error."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'robustness-harness[ray]'") from None
    if ray.is_initialized():
        return ray, False
    if options.address not in (None, "auto", "local"):
        _check_reachable(options.address)
    local = {}
    if options.address is None and options.workers:
        local["num_cpus"] = max(1, int(options.workers * options.cpus_per_task))
    try:
        ray.init(
            address=options.address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local
        )
    except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError, ValueError, depending on how
        where = f"the Ray cluster at {options.address}" if options.address else "a local Ray runtime"
        raise UsageError(f"cannot start or reach {where}: {one_line(exc)}") from None
    return ray, True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail at once on a cluster address nobody answers at (Ray itself keeps retrying for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except ValueError:
        problem = "expected HOST:PORT, ray://HOST:PORT or auto"
    except OSError as exc:
        problem = f"nothing answers there ({exc.strerror or exc})"
    raise UsageError(f"cannot reach the Ray cluster at {address}: {problem}")


def check_nodes(ray: Any, suite: Suite, settings: WorkerSettings) -> None:
    """Refuse, before any work, a cluster where a node lacks a component of the suite or has
    other code for it (another version or source fingerprint): its rows would not be this
    driver's rows."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    wanted = _identities(suite)
    probe = ray.remote(num_cpus=0)(_node_identities)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    futures = {
        node["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(settings, sorted(wanted))
        for node in nodes
    }
    problems = []
    for address, future in futures.items():
        found = ray.get(future)
        for key, identity in sorted(wanted.items()):
            theirs = found.get(key)
            if theirs != identity:
                state = "lacks it" if theirs is None else f"has {theirs[0]} {theirs[1]} (source {theirs[2]})"
                problems.append(
                    f"node {address}: {key[0]} '{key[1]}' is {identity[0]} {identity[1]} (source {identity[2]}) "
                    f"here, the node {state}"
                )
    if problems:
        raise UsageError(
            f"the cluster cannot run this suite as this machine would: {'; '.join(problems[:3])}"
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            + "; install the same plugins on every node"
        )


class TaskQueue:
    """Which task to start next, so that a slot never waits while work could run.

    Trainings come first: they are the long tasks, and each one unblocks its group's sweeps. Two
    trainings that share checkpoints (one ``resume_key``) never run at once: the second would hold
    a slot while it waits on the first's lock. A sweep starts once its group's model is in the
    cache, so it never holds a slot either. What the queue cannot see is a training that needs
    another group's model (a defense's teacher, a transfer attack's surrogate): it waits on that
    model's lock, holding its slot, if the two start together.
    """

    def __init__(self, groups: Sequence[list[Cell]]) -> None:
        self._untrained = list(groups)
        self._training: set[str] = set()
        self._ready: list[list[Cell]] = []

    def __bool__(self) -> bool:
        """Whether any task is still to start."""
        return bool(self._untrained or self._ready)

    def next(self) -> tuple[str, list[Cell]] | None:
        """``("train", group)``, ``("attack", sweep)``, or None while nothing can start."""
        for index, group in enumerate(self._untrained):
            if group[0].resume_key not in self._training:
                self._training.add(group[0].resume_key)
                return "train", self._untrained.pop(index)
        return ("attack", self._ready.pop(0)) if self._ready else None

    def trained(self, group: list[Cell]) -> None:
        """The group's training task ended: its sweeps (one per attack entry) may start."""
        from harness.execute import grouped

        self._training.discard(group[0].resume_key)
        self._ready.extend(grouped(group, key=lambda cell: cell.attack.label))


def compute(
    ray: Any,
    groups: Sequence[list[Cell]],
    settings: WorkerSettings,
    options: RayOptions,
    on_result: Callable[[Any], None],
    warn: Callable[[str], None],
) -> None:
    """Compute ``groups`` on Ray, handing each :class:`~harness.execute.CellResult` to
    ``on_result`` as it arrives (in the driver). At most ``options.workers`` tasks run at once (by
    default, as many as the cluster's CPUs took at the start), in the order of :class:`TaskQueue`. On an
    interruption, the tasks still running are cancelled and the interruption is raised again,
    after the results that arrived."""
    remote = {
        "num_cpus": options.cpus_per_task,
        "num_gpus": options.gpus_per_task,
        "max_retries": RETRIES,
        "retry_exceptions": False,
    }
    train = ray.remote(**remote)(_train_group)
    attack = ray.remote(**remote)(_compute_cells)
    limit = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1) / options.cpus_per_task))
    queue = TaskQueue(groups)
    warn = _once(warn)
    running: dict[Any, tuple[str, list[Cell]]] = {}
    try:
        while queue or running:
            while len(running) < limit and (task := queue.next()) is not None:
                kind, cells = task
                running[train.remote(cells[0], settings) if kind == "train" else attack.remote(cells, settings)] = task
            done, _ = ray.wait(list(running), num_returns=1)
            for future in done:
                kind, cells = running.pop(future)
                if kind == "train":
                    queue.trained(cells)
                    _warn_training(ray, future, warn)
                    continue
                results, environment = _results(ray, future, cells, warn)
                for result in results:
                    if environment is None:
                        on_result(result)
                    else:
                        on_result(result, environment)
    except BaseException:
        for future in running:
            ray.cancel(future, force=True)
        raise


def _once(warn: Callable[[str], None]) -> Callable[[str], None]:
    """``warn`` that passes each message once: every task rebuilds a workspace, so a condition of
    the data (a test split smaller than ``n_samples``) is reported by each task that meets it."""
    seen: set[str] = set()

    def warn_once(message: str) -> None:
        if message not in seen:
            seen.add(message)
            warn(message)

    return warn_once


def _warn_training(ray: Any, future: Any, warn: Callable[[str], None]) -> None:
    """Pass on the warnings of a training task (a checkpoint that would not load, a diverging
    loss); a task that Ray gave up on says nothing here: its sweeps meet the failure again."""
    try:
        warnings = ray.get(future)
    except Exception:
        return
    for message in warnings:
        warn(message)


def _results(
    ray: Any, future: Any, cells: list[Cell], warn: Callable[[str], None]
) -> tuple[list[Any], dict[str, str] | None]:
    """A task's results and the environment that computed them, or ``error`` results for its
    cells when the task itself failed (the node's plugins would not load, or Ray gave up after
    its retries)."""
    from harness.execute import CellResult

    try:
        results, warnings, environment = ray.get(future)
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc
        message = f"the Ray task failed: {one_line(cause)}"
        warn(f"error in {cells[0].describe()} and {len(cells) - 1} more cells: {message}")
        return [CellResult(cell, "error", message) for cell in cells], None
    for message in warnings:
        warn(message)
    return results, environment


# --- what runs on the workers ------------------------------------------------------------------


def _workspace(settings: WorkerSettings, warn: Callable[[str], None]) -> Any:
    """The driver's workspace, rebuilt on the worker's node, reporting warnings to ``warn``."""
    import torch

    from harness.cache import ArtifactCache
    from harness.execute import Workspace, resolve_device
    from harness.plugins import load_plugins

    torch.set_num_threads(settings.threads)
    registry = load_plugins(settings.plugins, [Path(p) for p in settings.search_path])
    cache = ArtifactCache(Path(settings.cache_dir), warn)
    return Workspace(
        registry=registry,
        device=resolve_device(settings.device),
        cache=cache,
        data_dir=Path(settings.data_dir),
        batch_size=settings.batch_size,
        progress=lambda iterable, description: iterable,
        warn=warn,
        checkpoint_seconds=settings.checkpoint_seconds,
    )


def _train_group(cell: Cell, settings: WorkerSettings) -> list[str]:
    """Train (or load) the cell's model and fit its head, into the shared cache, and return the
    warnings that raised; a failure is left for the attack tasks, which meet it again (a skip
    too) and write it as their cells' rows."""
    warnings: list[str] = []
    try:
        _workspace(settings, warnings.append).trained(cell)
    except Exception:
        pass
    return warnings


def _compute_cells(cells: list[Cell], settings: WorkerSettings) -> tuple[list[Any], list[str], dict[str, str]]:
    """One sweep's results, its model loaded from the cache (its training task has ended), the
    warnings it raised and the node's environment for its rows."""
    from harness.execute import compute_group, environment_provenance

    warnings: list[str] = []
    workspace = _workspace(settings, warnings.append)
    results = list(compute_group(cells, workspace, on_start=lambda cell: None))
    return results, warnings, environment_provenance(workspace.device)


def _identities(suite: Suite) -> dict[tuple[str, str], tuple[str, str, str]]:
    """Each component the suite uses that a node loads from its plugins, by (kind, name): its
    distribution, version and source (a factory given as an object travels with the tasks)."""
    entries = [*suite.datasets, *suite.models, *suite.defenses, *suite.attacks, *suite.metrics]
    components = [e.component for e in entries] + [c for e in entries for c in e.uses.values()]
    return {
        (c.kind, c.name): (c.distribution, c.version, c.fingerprint) for c in components if isinstance(c.factory, str)
    }


def _node_identities(
    settings: WorkerSettings, wanted: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str, str]]:
    from harness.plugins import load_plugins

    registry: Registry = load_plugins(settings.plugins, [Path(p) for p in settings.search_path])
    found = {}
    for kind, name in wanted:
        component = registry.components.get(kind, {}).get(name)
        if component is not None:
            found[kind, name] = (component.distribution, component.version, component.fingerprint)
    return found

"""What a run would do (``harness run SUITE --plan``), found without computing or importing torch.

The cells already done are the runner's (:func:`harness.runner.read_previous`), and the work the
others need is read off the cache's entries (:meth:`harness.cache.ArtifactCache.path`): an entry
that exists is counted as loaded, though a damaged one would be recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.cache import ArtifactCache
from harness.runner import pending_cells, read_previous, warn_on_stderr
from harness.suite import Suite


@dataclass(frozen=True)
class TrainingPlan:
    """One trained backbone the pending cells need: a (dataset, model, defense, seed)."""

    dataset: str
    model: str
    defense: str
    seed: int
    cached: bool
    checkpointed: bool = False
    """Not cached, but its training (or a shorter one of the same model) left checkpoints to
    continue from (see :mod:`harness.resume`)."""


@dataclass(frozen=True)
class Plan:
    suite: str
    output: Path
    cells: int
    done: int
    pending: int
    trainings: tuple[TrainingPlan, ...]
    attack_runs: int
    """The attack runs the pending cells need, counted per eps (whether an attack is minimal-norm,
    sharing one run for all its eps, is known only once it is built, which imports torch)."""
    attack_runs_cached: int


def plan_run(
    suite: Suite, output: Path, cache_dir: Path, force: bool = False, warn: Callable[[str], None] = warn_on_stderr
) -> Plan:
    """What ``run_suite`` would compute for ``suite`` into ``output`` with the cache ``cache_dir``."""
    cells = suite.cells()
    cache = ArtifactCache(cache_dir, warn)
    pending = pending_cells(suite, cells, {} if force else read_previous(cells, output, warn).rows)
    trainings = {
        cell.training_key: TrainingPlan(
            cell.dataset.label,
            cell.model.label,
            cell.defense.label,
            cell.seed,
            cached := cache.path("models", cell.training_key).exists(),
            not cached and bool(cache.keys("training", f"{cell.resume_key}-")),
        )
        for cell in pending
    }
    runs = {
        cell.run_key(minimal_norm=False): any(
            cache.path("attacks", cell.run_key(minimal)).exists() for minimal in (False, True)
        )
        for cell in pending
    }
    return Plan(
        suite=suite.name,
        output=output,
        cells=len(cells),
        done=len(cells) - len(pending),
        pending=len(pending),
        trainings=tuple(trainings.values()),
        attack_runs=len(runs),
        attack_runs_cached=sum(runs.values()),
    )


def _action(training: TrainingPlan) -> str:
    return "load" if training.cached else "continue" if training.checkpointed else "train"


def render_plan(plan: Plan) -> str:
    """The plan as a few lines of text, with a table of the models to train or load."""
    trained = sum(not t.cached for t in plan.trainings)
    continued = " ('continue': from a training's checkpoint)" if any(t.checkpointed for t in plan.trainings) else ""
    lines = [
        f"{plan.suite}: {plan.cells} cells, {plan.done} already done in {plan.output}, {plan.pending} to compute",
        f"models: {trained} to train, {len(plan.trainings) - trained} from the cache{continued}",
    ]
    if plan.trainings:
        table = [("", "dataset", "model", "defense", "seed")] + [
            (_action(t), t.dataset, t.model, t.defense, str(t.seed)) for t in plan.trainings
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    computed = plan.attack_runs - plan.attack_runs_cached
    lines.append(
        f"attack runs: {computed} to compute, {plan.attack_runs_cached} from the cache"
        " (counted per eps: a minimal-norm attack computes one run for all its eps)"
    )
    return "\n".join(lines)

"""Computing a group of cells: the cells that share one trained model (backbone and head).

A group's results are a function of its cells' configuration and the on-disk cache alone
(:func:`compute_group`): it loads or trains the model, loads or runs each attack, scores every
cell and yields its measurements; the caller persists the rows. Kept apart from
:mod:`harness.runner` so that planning and resuming a run never import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import platform
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from harness.cache import ArtifactCache
from harness.contracts import (
    LOGITS,
    NORMS,
    Attack,
    AttackOutcome,
    CellMetric,
    CellOutcome,
    Dataset,
    Defense,
    Metric,
    Model,
    ModelMetric,
    SweepMetric,
    TrainContext,
    TrainingAttack,
    attacking,
    budget_violation,
    perturbation_norms,
)
from harness.errors import UsageError, one_line
from harness.leaderboard import BUDGET_TOLERANCE
from harness.preflight import retraining_problem
from harness.registry import Registry
from harness.resume import KIND as RESUME_KIND
from harness.resume import TrainingCheckpoints
from harness.statistics import wilson_interval
from harness.suite import DEFAULT_DEFENSES, Cell, Entry, config_hash
from harness.transfer import TransferAttack
from harness.training import fit, predict_batched, preserved_rng, seed_everything, warm_up

if TYPE_CHECKING:
    import pandas as pd

Progress = Callable[[Iterable[Any], str], Iterable[Any]]
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``), or a
    clear error when it is unknown or absent, for the Python API as for the command line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but torch sees no CUDA device")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA devices")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for, but torch sees no MPS device")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for a run, and set back after it, so that a
    notebook calling the API keeps its own. Inter-op threads are left alone: torch lets a process
    set them once, before any parallel work, which a library called in-process cannot promise,
    and the harness's work (batched tensor operations) runs on intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def describe_device(device: torch.device) -> str:
    """The ``device`` column: the GPU's name, or the CPU's with torch's threads."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model_name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            model_name = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), model_name)
    except OSError:
        pass
    threads = torch.get_num_threads()
    counted = f"{threads} thread{'s' if threads != 1 else ''}"
    return f"{device.type} ({model_name}, {counted})" if model_name else f"{device.type} ({counted})"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def environment_provenance(device: torch.device) -> dict[str, str]:
    return {
        "harness_version": _version("robustness-harness"),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "art_version": _version("adversarial-robustness-toolbox"),
        "python_version": platform.python_version(),
        "device": describe_device(device),
    }


def seed_of(key: str) -> int:
    """A seed that depends only on a configuration key, not on the order of the run."""
    return int(key[:8], 16)


@dataclass
class Skip(Exception):
    """The cell cannot apply here (a missing capability); it is written with status ``skipped``."""

    reason: str


@dataclass(frozen=True)
class CellResult:
    """What computing a cell gave: a status, a one-line message, the measured columns and, for an
    ``ok`` cell, its per-sample outcomes (see :mod:`harness.outcomes`)."""

    cell: Cell
    status: str
    message: str = ""
    measurements: Mapping[str, Any] = field(default_factory=dict)
    samples: pd.DataFrame | None = None


def outcome_frame(cell_id: str, outcome: CellOutcome) -> pd.DataFrame:
    """A cell's per-sample outcomes as rows of the outcomes file."""
    import pandas as pd

    return pd.DataFrame(
        {
            "cell_id": cell_id,
            "sample": outcome.index.numpy(),
            "clean_correct": outcome.clean_correct.numpy(),
            "adversarial_correct": outcome.adv_correct.numpy(),
            "robust": outcome.robust.numpy(),
            "adversarial_label": outcome.adv_label.numpy(),
            "perturbation": outcome.norms.double().numpy(),
        }
    )


@dataclass
class TrainedModel:
    """A trained model with its clean predictions (draws, n) on the cell's test samples."""

    model: Model
    train_seconds: float
    x: torch.Tensor
    y: torch.Tensor
    draws: int
    clean_pred: torch.Tensor
    note: str = ""
    """What every row of the model says in its message (an ``n_samples`` cut to the test split)."""
    zero_gradient_fraction: float = float("nan")
    """See :func:`zero_gradient_fraction`."""
    output_varies: bool = False
    """See :func:`output_varies`."""

    def randomness(self, attack: Attack) -> str:
        """How the cell deals with a model whose output varies: ``deterministic`` (it does not),
        ``draws`` (accuracies averaged over the suite's draws), ``eot`` (the attack averages its
        gradients), both, or ``unhandled``."""
        if not (self.output_varies or self.model.stochastic):
            return "deterministic"
        handled = [name for name, used in (("draws", self.draws > 1), ("eot", attack.eot)) if used]
        return "+".join(handled) or "unhandled"


@dataclass(frozen=True)
class AttackRun:
    """One attack run over the test samples, as cached: per-sample outputs and per-run scalars."""

    x_adv: torch.Tensor
    norms: torch.Tensor
    extras: dict[str, torch.Tensor]
    scalars: dict[str, float]
    seconds: float


@dataclass
class Workspace:
    """What computing a group needs besides its cells: the plugins, the device, the caches.

    It holds no results: datasets are kept in memory (they are inputs), trained models are not.
    """

    registry: Registry
    device: torch.device
    cache: ArtifactCache
    data_dir: Path
    batch_size: int
    progress: Progress
    warn: Callable[[str], None]
    checkpoint_seconds: float = 600.0
    """How often a training saves a checkpoint to resume from (:mod:`harness.resume`)."""
    _datasets: dict[str, Dataset] = field(default_factory=dict)
    _cut_warned: set[str] = field(default_factory=set)

    def dataset(self, entry: Entry) -> Dataset:
        key = config_hash(entry.config)
        if key not in self._datasets:
            data = entry.component.build(entry.params, data_dir=self.data_dir)
            self._datasets[key] = _built(data, Dataset, f"dataset '{entry.label}'")
        return self._datasets[key]

    # --- training ---

    def trained(self, cell: Cell) -> TrainedModel:
        """The cell's model, trained (or loaded) with its head fitted (or loaded), and its clean predictions."""
        data = self.dataset(cell.dataset)
        seed_everything(cell.seed)  # before building: initial weights depend on it
        model = cell.model.component.build(cell.model.params, input_shape=data.input_shape, num_classes=data.num_classes)
        model = _built(model, Model, f"model '{cell.model.label}'")
        defense = _built(cell.defense.component.build(cell.defense.params), Defense, f"defense '{cell.defense.label}'")
        if model.pretrained and defense.trains:
            raise UsageError(retraining_problem(cell.model.label, cell.defense.label))
        missing = sorted(defense.requires - model.capabilities)
        if missing:
            raise Skip(f"defense '{cell.defense.label}' needs {', '.join(missing)}, which model '{cell.model.label}' lacks")
        model = _built(defense.prepare(model), Model, f"defense '{cell.defense.label}' (prepare)")
        checkpoints = TrainingCheckpoints(
            self.cache, cell.resume_key, cell.resume_config, self.checkpoint_seconds,
            keep_final=cell.resume_key != cell.training_key,
        )  # fmt: skip
        ctx = self._context(cell, checkpoints)
        head = _head_keys(model)
        cached = self.cache.path("models", cell.training_key).exists()
        train_seconds = self._load_backbone(cell, model, head)
        if train_seconds is None:
            # One lock for trainings that share checkpoints (a model's longer and shorter trainings).
            with self.cache.exclusive(RESUME_KIND, cell.resume_key):
                if not cached:  # another process may have trained it while this one waited
                    train_seconds = self._load_backbone(cell, model, head)
                if train_seconds is None:
                    model, train_seconds = self._train(cell, model, defense, data, ctx, head, checkpoints)
        model.to(self.device).eval()
        self._fit_head(cell, model, data, ctx, head)
        x, y = data.x_test[: cell.n_samples], data.y_test[: cell.n_samples]
        note = ""
        if len(x) < cell.n_samples:
            note = f"n_samples {cell.n_samples} asked, but the test split holds {len(x)}: all {len(x)} attacked"
            if cell.dataset.label not in self._cut_warned:
                self._cut_warned.add(cell.dataset.label)
                self.warn(f"dataset '{cell.dataset.label}': {note}")
        draws = cell.draws if model.stochastic else 1
        clean = self.predictions(model, x, draws, cell.model_key)
        return TrainedModel(model, train_seconds, x, y, draws, clean, note)

    def _train(
        self, cell: Cell, model: Model, defense: Defense, data: Dataset, ctx: TrainContext, head: set[str],
        checkpoints: TrainingCheckpoints,
    ) -> tuple[Model, float]:
        """Train the backbone with the cell's defense and cache it; returns it and the seconds taken."""
        structure = {k: v.shape for k, v in model.state_dict().items()}
        warm_up()
        started = time.perf_counter()
        model = _built(defense.train(model, data, ctx), Model, f"defense '{cell.defense.label}'")
        train_seconds = time.perf_counter() - started + checkpoints.resumed_seconds
        if {k: v.shape for k, v in model.state_dict().items()} != structure:
            raise ValueError(
                f"defense '{cell.defense.label}' returned a model whose state differs from what prepare() built: "
                "build added or wrapped modules in Defense.prepare so that the cached model can be loaded"
            )
        state = {k: v for k, v in model.state_dict().items() if k not in head}
        self.cache.save("models", cell.training_key, cell.training_config, state, train_seconds=train_seconds)
        checkpoints.finish()
        return model, train_seconds

    def diagnosed(self, trained: TrainedModel) -> TrainedModel:
        """``trained`` with what the adaptive-evaluation checks read of the model itself (its zero
        gradients, whether its output varies), measured once for the model a group evaluates (not
        for teachers and surrogates), without touching the random streams."""
        x = trained.x
        with preserved_rng():
            zero = zero_gradient_fraction(trained.model, x, trained.y, self.device, self.batch_size)
            varies = output_varies(trained.model, x[: self.batch_size].to(self.device))
        return dataclasses.replace(trained, zero_gradient_fraction=zero, output_varies=varies)

    def _load_backbone(self, cell: Cell, model: Model, head: set[str]) -> float | None:
        entry = self.cache.load("models", cell.training_key, cell.training_config)
        if entry is None:
            return None
        if not _fits(entry.tensors, model, keep=lambda key: key not in head):
            # checked before loading: a retrained model must start from its seeded initial weights
            self.warn(f"cached model {self.cache.path('models', cell.training_key)} does not fit the model's structure; retraining")
            return None
        model.load_state_dict(entry.tensors, strict=False)
        return float(entry.meta["train_seconds"])

    def _fit_head(self, cell: Cell, model: Model, data: Dataset, ctx: TrainContext, head: set[str]) -> None:
        if head:
            entry = self.cache.load("heads", cell.model_key, cell.model_config)
            if entry is not None and _fits(entry.tensors, model, keep=lambda key: key in head):
                model.load_state_dict(entry.tensors, strict=False)
                return
        seed_everything(cell.seed)
        model.fit_head(data, ctx)
        model.eval()
        if head:
            state = {k: v for k, v in model.state_dict().items() if k in head}
            self.cache.save("heads", cell.model_key, cell.model_config, state)

    def _context(self, cell: Cell, checkpoints: TrainingCheckpoints) -> TrainContext:
        """The cell's training context; its shared loop saves to and resumes from ``checkpoints``."""

        def build_attack(table: Mapping[str, Any]) -> TrainingAttack:
            attack = self.training_attack(table, cell)
            checkpoints.track(attack.generator)
            return attack

        return TrainContext(
            seed=cell.seed,
            device=self.device,
            progress=self.progress,
            build_attack=build_attack,
            teacher=lambda: self._teacher(cell),
            loop=functools.partial(fit, checkpoints=checkpoints),
        )

    def _teacher(self, cell: Cell) -> Model:
        """The cell's model trained without defense, from the cache when it is there; the
        caller's random streams are the same whether it was trained now or loaded."""
        standard = self.registry.get("defense", DEFAULT_DEFENSES[0]["name"])
        plain = Entry(label=standard.name, component=standard, params=dict(standard.params))
        with preserved_rng():
            return self.trained(dataclasses.replace(cell, defense=plain)).model

    def bind_surrogate(self, attack: TransferAttack, cell: Cell) -> None:
        """Give a transfer attack its inner attack and its surrogate: the suite's ``source`` model
        trained with ``source_defense`` on the cell's dataset and seed (from the cache when there)."""
        refs = cell.attack.refs
        inner = _built(self.registry.build_from_table("attack", attack.attack_table), Attack, "the transfer's attack")
        with preserved_rng():
            surrogate = self.trained(dataclasses.replace(cell, model=refs["source"], defense=refs["source_defense"]))
        attack.bind(inner, surrogate.model)

    def training_attack(self, table: Mapping[str, Any], cell: Cell) -> TrainingAttack:
        """An attack for adversarial training, from a (suite-validated) table with its eps."""
        attack = _built(self.registry.build_from_table("attack", table, ignore=["eps"]), Attack, f"attack '{table.get('name')}'")
        eps = table.get("eps")
        seed = seed_of(config_hash({"training": cell.training_key, "attack": dict(table)}))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return TrainingAttack(attack, None if eps is None else float(eps), generator, f"training attack '{table.get('name')}'")

    @torch.no_grad()
    def predictions(self, model: Model, x: torch.Tensor, draws: int, key: str) -> torch.Tensor:
        """Labels (draws, n); draw d of a stochastic model is seeded the same for every input set,
        so that an unchanged input gets the same prediction clean and under attack."""
        rows = []
        for draw in range(draws):
            if model.stochastic:
                seed_everything(seed_of(key) + draw)
            rows.append(predict_batched(model, x, self.device))
        return torch.stack(rows)

    # --- attacks ---

    def attack_run(self, trained: TrainedModel, attack: Attack, cell: Cell, label: str) -> AttackRun:
        """The attack's run for this cell (all eps at once for a minimal-norm attack), from the
        cache or computed, with every batch checked against the threat model (a cached run as a
        fresh one, by :func:`_checked_norms`: an over-budget entry fails the cell all the same)."""
        minimal = attack.minimal_norm
        key, config = cell.run_key(minimal), cell.run_config(minimal)
        eps = None if minimal else cell.eps
        batches = list(zip(trained.x.split(self.batch_size), trained.y.split(self.batch_size)))
        entry = self.cache.load("attacks", key, config)
        if entry is not None:
            tensors = dict(entry.tensors)
            x_adv, norms = tensors.pop("x_adv"), tensors.pop("norms")
            if x_adv.shape != trained.x.shape:
                raise ValueError(
                    f"attack '{label}' (plugin '{cell.attack.component.plugin}') returned {tuple(x_adv.shape)} "
                    f"for inputs {tuple(trained.x.shape)}"
                )
            checked = []
            for (x, _), adv, measured in zip(batches, x_adv.split(self.batch_size), norms.split(self.batch_size)):
                x, adv, measured = x.to(self.device), adv.to(self.device), measured.to(self.device)
                checked.append(_checked_norms(attack, x, adv, measured, eps, cell, label).cpu())
            norms = torch.cat(checked) if checked else norms
            return AttackRun(x_adv, norms, tensors, dict(entry.meta["scalars"]), float(entry.meta["seconds"]))
        seed = seed_of(key)
        seed_everything(seed)  # for attacks that draw from the global generators (ART)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        outcomes: list[AttackOutcome] = []
        started = time.perf_counter()
        for x, y in self.progress(batches, f"attack {cell.describe()}") if len(batches) > 1 else batches:
            x, y = x.to(self.device), y.to(self.device)
            outcome = attack.run(trained.model, x, y, eps, generator)
            norms = _checked_norms(attack, x, outcome.x_adv, outcome.norms, eps, cell, label)
            outcomes.append(dataclasses.replace(outcome, norms=norms))
        seconds = time.perf_counter() - started
        run = _concatenated(outcomes, seconds)
        self.cache.save(
            "attacks", key, config, {"x_adv": run.x_adv, "norms": run.norms, **run.extras},
            scalars=run.scalars, seconds=seconds,
        )  # fmt: skip
        return run

    def outcome(self, trained: TrainedModel, run: AttackRun, cell: Cell, norm: str, minimal: bool) -> CellOutcome:
        return cell_outcome(
            norm, cell.eps, trained.x, trained.y, run, minimal, trained.clean_pred,
            lambda x_adv: self.predictions(trained.model, x_adv, trained.draws, cell.model_key),
        )  # fmt: skip


def zero_gradient_fraction(
    model: Model, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int
) -> float:
    """The fraction of samples whose input gradient of the cross-entropy of the model's logits is
    zero everywhere or not finite somewhere: there a gradient attack on that loss cannot move (the
    check of ART's ``loss_gradient_check`` and AutoAttack's ``check_zero_gradients``). 1 for logits
    with no gradient at all (a non-differentiable head); NaN for a model without logits."""
    if not model.has(LOGITS) or not len(x):
        return float("nan")
    stuck = 0
    with attacking(model):
        for chunk, labels in zip(x.split(batch_size), y.split(batch_size)):
            chunk = chunk.to(device).requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model.logits(chunk), labels.to(device), reduction="sum")
            if not loss.requires_grad:  # logits that do not depend differentiably on the input
                return 1.0
            (gradient,) = torch.autograd.grad(loss, chunk)
            flat = gradient.flatten(1)
            stuck += int(((flat == 0).all(dim=1) | ~torch.isfinite(flat).all(dim=1)).sum())
    return stuck / len(x)


VARIES = 1e-4
"""AutoAttack's ``check_randomized`` threshold on the L2 distance of two normalised outputs."""


@torch.no_grad()
def output_varies(model: Model, x: torch.Tensor) -> bool:
    """Whether two identical forward passes over ``x`` differ: another predicted label, or logits
    whose normalised L2 distance exceeds :data:`VARIES` (AutoAttack's ``check_randomized``)."""
    if not len(x):
        return False
    if not model.has(LOGITS):
        return not torch.equal(model.predict(x), model.predict(x))
    first, second = model.logits(x), model.logits(x)
    if not torch.equal(first.argmax(dim=1), second.argmax(dim=1)):
        return True
    unit = [t / (t.flatten(1).norm(dim=1, keepdim=True) + 1e-10) for t in (first, second)]
    return bool(((unit[0] - unit[1]).flatten(1).norm(dim=1) > VARIES).any())


def cell_outcome(
    norm: str,
    eps: float,
    x: torch.Tensor,
    y: torch.Tensor,
    run: AttackOutcome | AttackRun,
    minimal: bool,
    clean_pred: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
) -> CellOutcome:
    """A cell's per-sample outcomes from an attack run (for a minimal-norm attack, the inputs within
    ``eps``), with the clean predictions and ``predict`` giving labels (draws, n)."""
    x_adv, norms = run.x_adv, run.norms
    if minimal:
        within = norms <= eps + BUDGET_TOLERANCE * max(eps, 1.0)  # as the budget check: float32 rounding is within
        x_adv = torch.where(within.view(-1, *[1] * (x.ndim - 1)), x_adv, x)
        norms = torch.where(within, norms, torch.zeros_like(norms))
    adv_pred = predict(x_adv)
    clean_ok = clean_pred == y
    return CellOutcome(
        norm=norm,
        eps=eps,
        index=torch.arange(len(y)),
        x=x,
        y=y,
        x_adv=x_adv,
        clean_correct=clean_ok.double().mean(dim=0),
        adv_correct=(adv_pred == y).double().mean(dim=0),
        robust=(clean_ok & (adv_pred == y)).double().mean(dim=0),
        adv_label=adv_pred[0],
        norms=norms,
        extras=dict(run.extras),
        scalars=dict(run.scalars),
    )


def _checked_norms(
    attack: Attack, x: torch.Tensor, x_adv: torch.Tensor, norms: torch.Tensor, eps: float | None, cell: Cell, label: str
) -> torch.Tensor:
    """A batch's per-sample perturbation norms, measured from ``x_adv - x`` for the harness's norms
    (an attack's own ``norms`` are kept for a plugin-defined norm), once the batch is checked
    against the threat model (:func:`budget_violation`). The one check of fresh and cached runs;
    a violation raises :class:`ValueError` naming the attack and its plugin."""
    if attack.norm in NORMS:
        norms = perturbation_norms(x_adv - x, attack.norm)
    problem = budget_violation(x_adv, norms, attack.norm, eps)
    if problem:
        raise ValueError(f"attack '{label}' (plugin '{cell.attack.component.plugin}') {problem}")
    return norms


def _concatenated(outcomes: Sequence[AttackOutcome], seconds: float) -> AttackRun:
    sizes = [len(o.x_adv) for o in outcomes]
    extras = {name: torch.cat([o.extras[name].detach().cpu() for o in outcomes]) for name in outcomes[0].extras}
    scalars = {name: float(np.average([o.scalars[name] for o in outcomes], weights=sizes)) for name in outcomes[0].scalars}
    return AttackRun(
        torch.cat([o.x_adv.cpu() for o in outcomes]),
        torch.cat([o.norms.detach().cpu() for o in outcomes]),
        extras,
        scalars,
        seconds,
    )


def compute_group(cells: Sequence[Cell], workspace: Workspace, on_start: Callable[[Cell], None]) -> Iterator[CellResult]:
    """Results for cells sharing one trained model (``model_key``), in order.

    The model is trained or loaded once and released when the group is done. An attack entry's
    cells (a sweep) are yielded as each is scored, or together when a sweep metric needs them all.
    """
    first = cells[0]
    on_start(first)
    try:
        trained = workspace.diagnosed(workspace.trained(first))
    except Skip as skip:
        yield from (CellResult(cell, "skipped", skip.reason) for cell in cells)
        return
    except Exception as exc:
        message = one_line(exc)
        workspace.warn(f"error in {first.describe()}: {message}")
        yield from (CellResult(cell, "error", message) for cell in cells)
        return
    metrics = _Metrics(workspace, first.metrics, trained)
    for sweep in grouped(cells, key=lambda c: c.attack.label):
        yield from _compute_sweep(sweep, workspace, trained, metrics, on_start, announced=first)


def _compute_sweep(
    cells: list[Cell],
    workspace: Workspace,
    trained: TrainedModel,
    metrics: _Metrics,
    on_start: Callable[[Cell], None],
    announced: Cell,
) -> Iterator[CellResult]:
    entry = cells[0].attack
    try:
        attack = _built(entry.component.build(entry.params), Attack, f"attack '{entry.label}'")
        if isinstance(attack, TransferAttack):
            workspace.bind_surrogate(attack, cells[0])
    except Skip as skip:
        yield from (CellResult(cell, "skipped", skip.reason) for cell in cells)
        return
    except Exception as exc:
        yield from (CellResult(cell, "error", one_line(exc)) for cell in cells)
        return
    missing = sorted(attack.requires - trained.model.capabilities)
    if missing:
        reason = f"attack '{entry.label}' needs {', '.join(missing)}, which model '{cells[0].model.label}' lacks"
        yield from (CellResult(cell, "skipped", reason) for cell in cells)
        return
    held = metrics.has_sweep
    results: list[CellResult] = []
    outcomes: list[CellOutcome] = []
    shared_run: AttackRun | Exception | None = None  # a minimal-norm attack's one run (or its failure) for every eps
    for cell in cells:
        if cell is not announced:
            on_start(cell)
        try:
            if attack.minimal_norm:
                if shared_run is None:
                    try:
                        shared_run = workspace.attack_run(trained, attack, cell, entry.label)
                    except Exception as exc:
                        shared_run = exc
                if isinstance(shared_run, Exception):
                    raise shared_run
                run = shared_run
            else:
                run = workspace.attack_run(trained, attack, cell, entry.label)
            outcome = workspace.outcome(trained, run, cell, attack.norm, attack.minimal_norm)
        except Exception as exc:
            message = one_line(exc)
            workspace.warn(f"error in {cell.describe()}: {message}")
            result = CellResult(cell, "error", message)
        else:
            values, problems = metrics.per_cell(outcome)
            measurements = {
                **scores(outcome),
                "train_seconds": trained.train_seconds,
                "attack_seconds": run.seconds,
                "minimal_norm": attack.minimal_norm,
                "attack_access": attack.access,
                "zero_gradient_fraction": trained.zero_gradient_fraction,
                "randomness": trained.randomness(attack),
                **{f"metric_{name}": value for name, value in run.scalars.items()},
                **values,
            }
            message = "; ".join(filter(None, [trained.note, *problems]))
            result = CellResult(cell, "ok", message, measurements, outcome_frame(cell.cell_id, outcome))
            outcomes.append(outcome)
        if held:
            results.append(result)
        else:
            yield result
    if held:
        values, problems = metrics.per_sweep(outcomes)
        for result in results:
            if result.status == "ok":
                message = "; ".join(filter(None, [result.message, *problems]))
                result = dataclasses.replace(result, message=message, measurements={**result.measurements, **values})
            yield result


class _Metrics:
    """The suite's metrics for one group: built once, model metrics computed once, and a metric
    that fails reported in the row's message (its column empty) instead of failing the cell."""

    def __init__(self, workspace: Workspace, entries: Sequence[Entry], trained: TrainedModel):
        self.workspace = workspace
        self.trained = trained
        self.metrics: list[tuple[Entry, Metric]] = []
        self.failed: dict[str, str] = {}
        for entry in entries:
            try:
                metric = _built(entry.component.build(entry.params), Metric, f"metric '{entry.label}'")
            except Exception as exc:
                self.failed[f"metric_{entry.label}"] = f"metric '{entry.label}' failed: {one_line(exc)}"
                continue
            if not isinstance(metric, (CellMetric, ModelMetric, SweepMetric)):
                metric = _EarlierFormMetric(metric, workspace.device)
            self.metrics.append((entry, metric))
        self.has_sweep = any(isinstance(m, SweepMetric) for _, m in self.metrics)
        self._model_values: tuple[dict[str, float], list[str]] | None = None

    def per_cell(self, outcome: CellOutcome) -> tuple[dict[str, float], list[str]]:
        """Cell and model metrics for one cell's row (sweep metrics wait for :meth:`per_sweep`)."""
        model, device = self.trained.model, self.workspace.device
        if self._model_values is None:
            x, y = self.trained.x.to(device), self.trained.y.to(device)
            self._model_values = self._evaluate(ModelMetric, lambda m: m.evaluate(model, x, y))
        values, problems = self._evaluate(CellMetric, lambda m: m.evaluate(model, outcome))
        model_values, model_problems = self._model_values
        failed = {column: float("nan") for column in self.failed}
        return {**failed, **model_values, **values}, [*self.failed.values(), *model_problems, *problems]

    def per_sweep(self, outcomes: Sequence[CellOutcome]) -> tuple[dict[str, float], list[str]]:
        return self._evaluate(SweepMetric, lambda m: m.evaluate(self.trained.model, outcomes))

    def _evaluate(self, scope: type[Metric], evaluate: Callable[[Any], float]) -> tuple[dict[str, float], list[str]]:
        values: dict[str, float] = {}
        problems: list[str] = []
        for entry, metric in self.metrics:
            if not isinstance(metric, scope):
                continue
            value = float("nan")
            if metric.requires <= self.trained.model.capabilities:
                try:
                    value = float(evaluate(metric))
                except Exception as exc:
                    problem = f"metric '{entry.label}' failed: {one_line(exc)}"
                    self.workspace.warn(problem)
                    problems.append(problem)
            values[f"metric_{entry.label}"] = value
        return values, problems


class _EarlierFormMetric(CellMetric):
    """A metric written against the earlier guide (``compute(model, x, y, x_adv)``) as a cell metric."""

    def __init__(self, metric: Metric, device: torch.device):
        self.metric = metric
        self.device = device
        self.requires = metric.requires

    def evaluate(self, model: Model, outcome: CellOutcome) -> float:
        x, y, x_adv = (t.to(self.device) for t in (outcome.x, outcome.y, outcome.x_adv))
        return self.metric.compute(model, x, y, x_adv)


def scores(outcome: CellOutcome) -> dict[str, Any]:
    """The leaderboard's accuracy and perturbation columns for one cell's outcomes."""
    n = len(outcome.y)
    clean, robust = outcome.clean_correct, outcome.robust
    broken = robust < clean  # misclassified under attack in some draw where it was correct clean
    delta = outcome.x_adv - outcome.x
    l2 = perturbation_norms(delta, "l2")[broken].numpy()
    low, high = wilson_interval(int(round(robust.sum().item())), n)
    return {
        "n_samples": n,
        "clean_accuracy": clean.mean().item(),
        "robust_accuracy": robust.mean().item(),
        "robust_accuracy_ci_low": low,
        "robust_accuracy_ci_high": high,
        "attack_success_rate": ((clean - robust).sum() / clean.sum()).item() if clean.sum() > 0 else float("nan"),
        "mean_perturbation_l2": float(np.mean(l2)) if len(l2) else float("nan"),
        "median_perturbation_l2": float(np.median(l2)) if len(l2) else float("nan"),
        "max_perturbation_linf": perturbation_norms(delta, "linf").max().item() if n else 0.0,
    }


def grouped(items: Iterable[T], key: Callable[[T], Any]) -> list[list[T]]:
    """Items grouped by key, groups in order of first appearance."""
    groups: dict[Any, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def _fits(tensors: Mapping[str, torch.Tensor], model: Model, keep: Callable[[str], bool]) -> bool:
    """Whether cached ``tensors`` are exactly the model's state entries that ``keep`` selects, shapes included."""
    expected = {key: value.shape for key, value in model.state_dict().items() if keep(key)}
    return {key: value.shape for key, value in tensors.items()} == expected


def _head_keys(model: Model) -> set[str]:
    """The state-dict keys of the model's head modules (found by identity, so wrappers work)."""
    ids = {id(t) for module in model.head_modules() for t in (*module.parameters(), *module.buffers())}
    return {key for key, value in model.state_dict(keep_vars=True).items() if id(value) in ids}


def _built(obj: Any, expected: type[T], what: str) -> T:
    """``obj`` if a plugin's factory returned the contract's type, else a clear error."""
    if not isinstance(obj, expected):
        raise TypeError(f"{what} returned {type(obj).__name__}, not a harness {expected.__name__}")
    return obj

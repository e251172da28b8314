"""Computing cells: loading data, training (or loading cached) models, attacking, scoring.

Kept apart from :mod:`harness.runner` so that planning and resuming a run never import torch.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from harness.contracts import Attack, Dataset, Defense, Metric, Model, TrainContext
from harness.errors import UsageError
from harness.registry import Registry
from harness.suite import DEFAULT_DEFENSES, Cell, Entry, config_hash
from harness.training import predict_batched, seed_everything

Progress = Callable[[Iterable[Any], str], Iterable[Any]]
CHECKPOINT_FORMAT = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model_name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            model_name = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), model_name)
    except OSError:
        pass
    return f"cpu ({model_name}, {torch.get_num_threads()} threads)" if model_name else "cpu"


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


def attack_seed(cell: Cell, minimal_norm: bool) -> int:
    """A seed for the cell's attack that depends only on its configuration, not on the order of
    the run (nor, for a minimal-norm attack run once for all eps, on which of its cells remain)."""
    return int((cell.attack_key if minimal_norm else cell.cell_id)[:8], 16)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CheckpointCache:
    """Trained models as state dicts under a content hash of their training configuration."""

    def __init__(self, directory: Path, warn: Callable[[str], None]):
        self.directory = directory
        self.warn = warn

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str, config: Mapping[str, Any], model: Model) -> float | None:
        """Load weights into ``model``; return the recorded training seconds, or None if absent or unusable."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(payload["meta"])
            if meta.get("format") != CHECKPOINT_FORMAT or meta.get("config") != json.loads(json.dumps(config)):
                raise ValueError("it was written for another configuration")
            model.load_state_dict(payload["state_dict"], strict=True)
            return float(meta["train_seconds"])
        except Exception as exc:
            self.warn(f"checkpoint {path} is unusable ({one_line(exc)}); retraining")
            return None

    def save(self, key: str, config: Mapping[str, Any], model: Model, train_seconds: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"format": CHECKPOINT_FORMAT, "config": config, "train_seconds": train_seconds})
        tmp = self.path(key).with_suffix(".tmp")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "meta": meta}, tmp)
        tmp.replace(self.path(key))


@dataclass
class Skip(Exception):
    """The cell cannot apply here (a missing capability); it is written with status ``skipped``."""

    reason: str


@dataclass
class TrainedModel:
    model: Model
    train_seconds: float
    clean_pred: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Executor:
    """Computes cells; caches datasets and trained models for the cells that share them."""

    registry: Registry
    device: torch.device
    cache: CheckpointCache
    data_dir: Path
    batch_size: int
    progress: Progress
    metric_entries: tuple[Entry, ...] = ()
    _datasets: dict[str, Dataset] = field(default_factory=dict)
    _trained: dict[str, TrainedModel] = field(default_factory=dict)
    _failed: dict[str, Exception] = field(default_factory=dict)

    def dataset(self, entry: Entry) -> Dataset:
        key = config_hash(entry.config)
        if key not in self._datasets:
            data = entry.component.build(entry.params, data_dir=self.data_dir)
            self._datasets[key] = _built(data, Dataset, f"dataset '{entry.label}'")
        return self._datasets[key]

    def _train(self, cell: Cell) -> tuple[Model, float]:
        data = self.dataset(cell.dataset)
        seed_everything(cell.seed)  # before building: initial weights depend on it
        model = cell.model.component.build(cell.model.params, input_shape=data.input_shape, num_classes=data.num_classes)
        model = _built(model, Model, f"model '{cell.model.label}'")
        defense = _built(cell.defense.component.build(cell.defense.params), Defense, f"defense '{cell.defense.label}'")
        missing = sorted(defense.requires - model.capabilities)
        if missing:
            raise Skip(f"defense '{cell.defense.label}' needs {', '.join(missing)}, which model '{cell.model.label}' lacks")
        train_seconds = self.cache.load(cell.training_key, cell.training_config, model)
        if train_seconds is None:
            ctx = TrainContext(
                seed=cell.seed,
                device=self.device,
                progress=self.progress,
                build_attack=self.build_attack,
                teacher=lambda: self._teacher(cell),
            )
            started = time.perf_counter()
            model = _built(defense.train(model, data, ctx), Model, f"defense '{cell.defense.label}'")
            train_seconds = time.perf_counter() - started
            self.cache.save(cell.training_key, cell.training_config, model, train_seconds)
        return model.to(self.device).eval(), train_seconds

    def _teacher(self, cell: Cell) -> Model:
        standard = self.registry.get("defense", DEFAULT_DEFENSES[0]["name"])
        plain = Entry(label=standard.name, component=standard, params=dict(standard.params))
        teacher_cell = dataclasses.replace(cell, defense=plain)
        return self.trained(teacher_cell).model

    def trained(self, cell: Cell) -> TrainedModel:
        """The cell's trained model with its clean predictions on the cell's test samples.

        A training that failed is not tried again for the other cells that share it.
        """
        if cell.training_key in self._failed:
            raise self._failed[cell.training_key]
        if cell.training_key not in self._trained:
            try:
                model, seconds = self._train(cell)
            except Exception as exc:
                self._failed[cell.training_key] = exc
                raise
            data = self.dataset(cell.dataset)
            x, y = data.x_test[: cell.n_samples], data.y_test[: cell.n_samples]
            self._trained[cell.training_key] = TrainedModel(model, seconds, predict_batched(model, x, self.device), x, y)
        return self._trained[cell.training_key]

    def build_attack(self, spec: Mapping[str, Any]) -> Attack:
        """An attack from a suite-style table, for defenses that train against one."""
        attack = self.registry.build_from_table("attack", spec, ignore=["eps"])
        return _built(attack, Attack, f"attack '{spec.get('name')}'")

    def attack_cells(
        self, cells: list[Cell], on_start: Callable[[Cell], None]
    ) -> Iterator[tuple[Cell, dict[str, Any]]]:
        """Results for cells that share one trained model and one attack entry (one per eps)."""
        first = cells[0]
        on_start(first)
        trained = self.trained(first)
        model = trained.model
        attack = _built(first.attack.component.build(first.attack.params), Attack, f"attack '{first.attack.label}'")
        missing = sorted(attack.requires - model.capabilities)
        if missing:
            raise Skip(f"attack '{first.attack.label}' needs {', '.join(missing)}, which model '{first.model.label}' lacks")
        metrics = [
            (entry, _built(entry.component.build(entry.params), Metric, f"metric '{entry.label}'"))
            for entry in self.metric_entries
        ]
        if attack.minimal_norm:
            seed_everything(attack_seed(first, minimal_norm=True))
            x_adv, norms, seconds = self._run_attack(attack, trained, None, first.describe())
            for cell in cells:
                if cell is not first:
                    on_start(cell)
                within = norms <= cell.eps + 1e-9
                x_eps = torch.where(within.view(-1, *[1] * (x_adv.ndim - 1)), x_adv, trained.x)
                yield cell, self._score(cell, trained, x_eps, seconds, metrics)
        else:
            for cell in cells:
                if cell is not first:
                    on_start(cell)
                seed_everything(attack_seed(cell, minimal_norm=False))
                x_adv, _, seconds = self._run_attack(attack, trained, cell.eps, cell.describe())
                yield cell, self._score(cell, trained, x_adv, seconds, metrics)

    def _run_attack(
        self, attack: Attack, trained: TrainedModel, eps: float | None, description: str
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        adversarial, norms = [], []
        started = time.perf_counter()
        batches = list(zip(trained.x.split(self.batch_size), trained.y.split(self.batch_size)))
        for x, y in self.progress(batches, f"attack {description}") if len(batches) > 1 else batches:
            x, y = x.to(self.device), y.to(self.device)
            result = attack.run(trained.model, x, y, eps)
            adversarial.append(result.x_adv.detach().cpu())
            norms.append(result.norms.detach().cpu())
        return torch.cat(adversarial), torch.cat(norms), time.perf_counter() - started

    def _score(
        self,
        cell: Cell,
        trained: TrainedModel,
        x_adv: torch.Tensor,
        attack_seconds: float,
        metrics: list[tuple[Entry, Metric]],
    ) -> dict[str, Any]:
        y = trained.y
        clean_correct = trained.clean_pred == y
        robust = clean_correct & (predict_batched(trained.model, x_adv, self.device) == y)
        broken = clean_correct & ~robust
        delta = (x_adv - trained.x).flatten(1).double()
        l2 = delta.norm(dim=1)[broken]
        n = len(y)
        low, high = wilson_interval(int(robust.sum()), n)
        row: dict[str, Any] = {
            "n_samples": n,
            "clean_accuracy": clean_correct.double().mean().item(),
            "robust_accuracy": robust.double().mean().item(),
            "robust_accuracy_ci_low": low,
            "robust_accuracy_ci_high": high,
            "attack_success_rate": broken.sum().item() / clean_correct.sum().item() if clean_correct.any() else float("nan"),
            "mean_perturbation_l2": l2.mean().item() if len(l2) else float("nan"),
            "median_perturbation_l2": l2.median().item() if len(l2) else float("nan"),
            "max_perturbation_linf": delta.abs().max().item() if delta.numel() else 0.0,
            "train_seconds": trained.train_seconds,
            "attack_seconds": attack_seconds,
        }
        for entry, metric in metrics:
            value = float("nan")
            if metric.requires <= trained.model.capabilities:
                value = float(metric.compute(trained.model, trained.x.to(self.device), y.to(self.device), x_adv.to(self.device)))
            row[f"metric_{entry.label}"] = value
        return row


T = TypeVar("T")


def _built(obj: Any, expected: type[T], what: str) -> T:
    """``obj`` if a plugin's factory returned the contract's type, else a clear error."""
    if not isinstance(obj, expected):
        raise TypeError(f"{what} returned {type(obj).__name__}, not a harness {expected.__name__}")
    return obj


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)

"""Benchmark suites: TOML files naming datasets x models x defenses x attacks x eps x seeds.

A suite is validated completely before anything runs; every problem is reported at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError, ValidationError
from harness.registry import Component, Registry, did_you_mean

SECTIONS = {"datasets": "dataset", "models": "model", "defenses": "defense", "attacks": "attack", "metrics": "metric"}
TOP_LEVEL_KEYS = {"name", "description", "seeds", "n_samples", "batch_size", "plugins", *SECTIONS}
ENTRY_KEYS = {"name", "label"}
DEFAULT_DEFENSES = [{"name": "none"}]
DEFAULT_BATCH_SIZE = 256


def config_hash(config: Any) -> str:
    """A short, stable content hash of a JSON-serialisable configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """One configured component of a suite; ``label`` is its name on the leaderboard."""

    label: str
    component: Component
    params: Mapping[str, Any]
    eps: tuple[float, ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        c = self.component
        return {"name": c.name, "distribution": c.distribution, "version": c.version, "params": dict(self.params)}

    @property
    def params_json(self) -> str:
        return json.dumps(dict(self.params), sort_keys=True)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    seeds: tuple[int, ...]
    n_samples: int
    batch_size: int
    datasets: tuple[Entry, ...]
    models: tuple[Entry, ...]
    defenses: tuple[Entry, ...]
    attacks: tuple[Entry, ...]
    metrics: tuple[Entry, ...]

    def cells(self) -> list[Cell]:
        """Every cell, in leaderboard order."""
        return [
            Cell(self.name, dataset, model, defense, attack, eps, seed, self.n_samples, self.metrics)
            for dataset, model, defense, attack, seed in itertools.product(
                self.datasets, self.models, self.defenses, self.attacks, self.seeds
            )
            for eps in attack.eps
        ]


@dataclass(frozen=True)
class Cell:
    """One leaderboard row: a trained (dataset, model, defense, seed) under one attack at one eps."""

    suite: str
    dataset: Entry
    model: Entry
    defense: Entry
    attack: Entry
    eps: float
    seed: int
    n_samples: int
    metrics: tuple[Entry, ...] = ()

    @property
    def training_config(self) -> dict[str, Any]:
        return {"dataset": self.dataset.config, "model": self.model.config, "defense": self.defense.config, "seed": self.seed}

    @property
    def training_key(self) -> str:
        """Names the trained model; cells sharing it share one training."""
        return config_hash(self.training_config)

    @property
    def attack_key(self) -> str:
        """Names one attack run on one trained model; a minimal-norm attack's cells share it."""
        return config_hash({**self.training_config, "attack": self.attack.config, "n_samples": self.n_samples})

    @property
    def cell_id(self) -> str:
        return config_hash(
            {
                **self.training_config,
                "attack": self.attack.config,
                "eps": self.eps,
                "n_samples": self.n_samples,
                "metrics": {m.label: m.config for m in self.metrics},
            }
        )

    def describe(self) -> str:
        return f"{self.dataset.label}/{self.model.label}/{self.defense.label}/{self.attack.label}@{self.eps:g}/seed{self.seed}"


def read_suite_file(path: Path) -> dict[str, Any]:
    """The raw TOML table of a suite file, or a one-line error."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such suite file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(str(path), [f"invalid TOML: {exc}"]) from None


def suite_plugins(raw: Mapping[str, Any]) -> list[str]:
    """The plugin modules a suite asks for (its ``plugins`` list), loaded like ``-p``."""
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        return []
    return plugins


def parse_suite(raw: Mapping[str, Any], path: Path, registry: Registry) -> Suite:
    """Validate ``raw`` against the registry; raise :class:`ValidationError` listing every problem."""
    problems: list[str] = []

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown key '{key}'{did_you_mean(key, TOP_LEVEL_KEYS)}")

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        problems.append(f"'name' must be a non-empty string, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append(f"'description' must be a string, got {description!r}")

    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(_is_int(s) and s >= 0 for s in seeds)):
        problems.append(f"'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    elif len(set(seeds)) != len(seeds):
        problems.append(f"'seeds' has duplicates: {seeds!r}")
    for key, default in (("n_samples", None), ("batch_size", DEFAULT_BATCH_SIZE)):
        value = raw.get(key, default)
        if value is None:
            problems.append(f"missing field '{key}' (the number of test samples to attack)")
        elif not (_is_int(value) and value > 0):
            problems.append(f"'{key}' must be a positive integer, got {value!r}")
    plugins = raw.get("plugins", [])
    if not (isinstance(plugins, list) and all(isinstance(p, str) for p in plugins)):
        problems.append(f"'plugins' must be a list of module names, got {plugins!r}")

    sections = {}
    for section, kind in SECTIONS.items():
        default = DEFAULT_DEFENSES if section == "defenses" else [] if section == "metrics" else None
        sections[section] = _parse_entries(raw.get(section, default), section, kind, registry, problems)

    if problems:
        raise ValidationError(str(path), problems)
    return Suite(
        name=name,
        description=description,
        path=path,
        seeds=tuple(seeds),
        n_samples=raw["n_samples"],
        batch_size=raw.get("batch_size", DEFAULT_BATCH_SIZE),
        **{section: tuple(entries) for section, entries in sections.items()},
    )


def _parse_entries(
    tables: Any, section: str, kind: str, registry: Registry, problems: list[str]
) -> list[Entry]:
    if tables is None:
        problems.append(f"missing section [[{section}]] (at least one {kind})")
        return []
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(f"'{section}' must be an array of tables ([[{section}]]), got {tables!r}")
        return []
    if not tables and kind != "metric":
        problems.append(f"section [[{section}]] is empty (at least one {kind})")
    entries: list[Entry] = []
    labels: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"{section}[{index}]"
        name = table.get("name")
        if not isinstance(name, str):
            problems.append(f"{where}: missing field 'name' (a string naming a registered {kind})")
            continue
        where = f"{where} ({name})"
        label = table.get("label", name)
        if not isinstance(label, str) or not label:
            problems.append(f"{where}: 'label' must be a non-empty string, got {label!r}")
            continue
        if label in labels:
            problems.append(
                f"{where}: label '{label}' is already used by {section}[{labels[label]}]; give one a distinct 'label'"
            )
            continue
        labels[label] = index
        try:
            component = registry.get(kind, name)
        except UsageError as exc:
            problems.append(f"{where}: {exc}")
            continue
        eps: tuple[float, ...] = ()
        if kind == "attack":
            raw_eps = table.get("eps")
            if raw_eps is None:
                problems.append(f"{where}: missing field 'eps' (a list of budgets)")
                continue
            if not (isinstance(raw_eps, list) and raw_eps and all(_is_number(e) and e >= 0 for e in raw_eps)):
                problems.append(f"{where}: 'eps' must be a non-empty list of non-negative numbers, got {raw_eps!r}")
                continue
            if len(set(raw_eps)) != len(raw_eps):
                problems.append(f"{where}: 'eps' has duplicates: {raw_eps!r}")
                continue
            eps = tuple(float(e) for e in raw_eps)
        params_given = {k: v for k, v in table.items() if k not in ENTRY_KEYS and not (kind == "attack" and k == "eps")}
        params, param_problems = component.resolve_params(params_given)
        problems.extend(f"{where}: {p}" for p in param_problems)
        if not param_problems:
            entries.append(Entry(label=label, component=component, params=params, eps=eps))
    return entries


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

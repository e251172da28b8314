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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import UsageError, ValidationError
from harness.leaderboard import text_problem
from harness.registry import (
    CodeRef,
    Component,
    ComponentTable,
    EntryRef,
    FilePath,
    Registry,
    did_you_mean,
    make_importable,
)

SECTIONS = {"datasets": "dataset", "models": "model", "defenses": "defense", "attacks": "attack", "metrics": "metric"}
TOP_LEVEL_KEYS = {"name", "description", "seeds", "n_samples", "batch_size", "draws", "plugins", *SECTIONS}
ENTRY_KEYS = {"name", "label", "models"}
RESTRICTABLE = ("defenses", "attacks")
"""Sections whose entries may name the models they apply to (``models = [...]``)."""
DEFAULT_DEFENSES = [{"name": "none"}]
DEFAULT_BATCH_SIZE = 256
DEFAULT_DRAWS = 10
TRAINING_REVISION = 2
"""Bumped when the core changes how models are trained (the shared loop): part of every training key."""
SCORING_REVISION = 2
"""Bumped when the core changes how a row is computed from a trained model: part of every cell id."""


def config_hash(config: Any) -> str:
    """A short, stable content hash of a JSON-serialisable configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """One configured component of a suite; ``label`` is its name on the leaderboard.

    ``uses`` holds the components named by nested tables among its parameters (a defense's
    attack), whose identity is part of the entry's.
    """

    label: str
    component: Component
    params: Mapping[str, Any]
    eps: tuple[float, ...] = ()
    uses: Mapping[str, Component] = field(default_factory=dict)
    refs: Mapping[str, Entry] = field(default_factory=dict)
    """The suite's entries that parameters name by label (a transfer attack's surrogate model)."""
    models: tuple[str, ...] = ()
    """The model labels a defense or attack entry applies to (empty: every model of the suite), so
    that a suite need not cross a recipe with networks it does not fit."""
    digests: Mapping[str, str] = field(default_factory=dict)
    """What stands for a file or code parameter in the identity: the file's sha256, the code's
    source fingerprint (see :class:`FilePath`, :class:`CodeRef`)."""

    def applies_to(self, model: Entry) -> bool:
        return not self.models or model.label in self.models

    @property
    def config(self) -> dict[str, Any]:
        """The entry's identity: its component (release and source fingerprint) and parameters."""
        return self._identity(dict(self.params))

    @property
    def training_config(self) -> dict[str, Any]:
        """The identity without the evaluation parameters, which do not change training."""
        evaluation = set(self.component.evaluation_params)
        return self._identity({k: v for k, v in self.params.items() if k not in evaluation})

    @property
    def evaluation_params(self) -> dict[str, Any]:
        return {k: self.params[k] for k in self.component.evaluation_params if k in self.params}

    @property
    def horizon_config(self) -> dict[str, Any]:
        """The training identity without the horizon parameter (how long it trains): what a
        shorter and a longer training of the model share."""
        identity = self.training_config
        identity["params"] = {k: v for k, v in identity["params"].items() if k != self.component.horizon}
        return identity

    def _identity(self, params: dict[str, Any]) -> dict[str, Any]:
        params = {key: self.digests.get(key, value) for key, value in params.items()}
        identity = {**component_identity(self.component), "params": params}
        if self.uses:
            identity["uses"] = {key: component_identity(c) for key, c in sorted(self.uses.items())}
        if self.refs:
            identity["refs"] = {key: entry.config for key, entry in sorted(self.refs.items())}
        return identity

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
    draws: int
    datasets: tuple[Entry, ...]
    models: tuple[Entry, ...]
    defenses: tuple[Entry, ...]
    attacks: tuple[Entry, ...]
    metrics: tuple[Entry, ...]

    def cells(self) -> list[Cell]:
        """Every cell, in leaderboard order."""
        return [
            Cell(self.name, dataset, model, defense, attack, eps, seed, self.n_samples, self.draws, self.metrics)
            for dataset, model, defense, attack, seed in itertools.product(
                self.datasets, self.models, self.defenses, self.attacks, self.seeds
            )
            if defense.applies_to(model) and attack.applies_to(model)
            for eps in attack.eps
        ]


@dataclass(frozen=True)
class Cell:
    """One leaderboard row: a trained (dataset, model, defense, seed) under one attack at one eps.

    Its keys name what can be shared and cached: the trained backbone (``training_key``), the
    backbone with its evaluation head (``model_key``), one attack run on that model
    (``run_key``; a minimal-norm attack's cells share one), and the row (``cell_id``).
    """

    suite: str
    dataset: Entry
    model: Entry
    defense: Entry
    attack: Entry
    eps: float
    seed: int
    n_samples: int
    draws: int = DEFAULT_DRAWS
    metrics: tuple[Entry, ...] = ()

    @property
    def training_config(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset.config,
            "model": self.model.training_config,
            "defense": self.defense.config,
            "seed": self.seed,
            "revision": TRAINING_REVISION,
        }

    @property
    def training_key(self) -> str:
        """Names the trained backbone; cells sharing it share one training."""
        return config_hash(self.training_config)

    @property
    def resume_config(self) -> dict[str, Any]:
        """Names the training's checkpoints. Without the model's horizon when it trains without a
        defense (a defense may schedule by the model's epochs): then trainings that differ only in
        length share checkpoints, and a longer one continues from a shorter one's end."""
        if not (self.model.component.horizon and self.defense.component.name == DEFAULT_DEFENSES[0]["name"]):
            return self.training_config
        return {**self.training_config, "model": self.model.horizon_config, "horizon": self.model.component.horizon}

    @property
    def resume_key(self) -> str:
        """Names the training's checkpoints and the lock of the trainings that share them."""
        return config_hash(self.resume_config)

    @property
    def model_config(self) -> dict[str, Any]:
        return {**self.training_config, "evaluation": self.model.evaluation_params}

    @property
    def model_key(self) -> str:
        """Names the trained model with its evaluation head; cells sharing it form one group."""
        return config_hash(self.model_config)

    def run_config(self, minimal_norm: bool) -> dict[str, Any]:
        config = {**self.model_config, "attack": self.attack.config, "n_samples": self.n_samples}
        return config if minimal_norm else {**config, "eps": self.eps}

    def run_key(self, minimal_norm: bool) -> str:
        """Names one attack run on the cell's model: per eps, or once for all eps of a minimal-norm
        attack. Metrics and evaluation draws are not part of it: adding them reuses the run."""
        return config_hash(self.run_config(minimal_norm))

    @property
    def cell_id(self) -> str:
        return config_hash(
            {
                **self.run_config(minimal_norm=False),
                "draws": self.draws,
                "metrics": {m.label: m.config for m in self.metrics},
                "revision": SCORING_REVISION,
            }
        )

    def describe(self) -> str:
        return f"{self.dataset.label}/{self.model.label}/{self.defense.label}/{self.attack.label}@{self.eps:g}/seed{self.seed}"


def component_identity(component: Component) -> dict[str, str]:
    """What identifies a component's code: its release and a fingerprint of its source, so that a
    plugin edited in place (same version) recomputes the results it affects."""
    return {
        "name": component.name,
        "distribution": component.distribution,
        "version": component.version,
        "source": component.fingerprint,
    }


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
    elif problem := text_problem(name):
        given = "'name'" if "name" in raw else f"the suite's name (its file name; set 'name' instead), {name!r},"
        problems.append(f"{given} {problem}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append(f"'description' must be a string, got {description!r}")

    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(_is_int(s) and s >= 0 for s in seeds)):
        problems.append(f"'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    elif len(set(seeds)) != len(seeds):
        problems.append(f"'seeds' has duplicates: {seeds!r}")
    for key, default in (("n_samples", None), ("batch_size", DEFAULT_BATCH_SIZE), ("draws", DEFAULT_DRAWS)):
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

    sections = _resolve_refs(sections, problems)
    sections = _resolve_files(sections, path.resolve().parent, problems)
    if problems:
        raise ValidationError(str(path), problems)
    suite = Suite(
        name=name,
        description=description,
        path=path,
        seeds=tuple(seeds),
        n_samples=raw["n_samples"],
        batch_size=raw.get("batch_size", DEFAULT_BATCH_SIZE),
        draws=raw.get("draws", DEFAULT_DRAWS),
        **{section: tuple(entries) for section, entries in sections.items()},
    )
    problems = _identical_entries(suite)
    if problems:
        raise ValidationError(str(path), problems)
    return suite


def _identical_entries(suite: Suite) -> list[str]:
    """One problem per pair of entries that differ only in their label: their cells would be the
    same cells (one ``cell_id``), so one row would silently stand for both."""
    first: dict[str, Cell] = {}
    problems: dict[str, None] = {}  # ordered, without repeats
    for cell in suite.cells():
        other = first.setdefault(cell.cell_id, cell)
        if other is cell:
            continue
        for section, kind in SECTIONS.items():
            if kind == "metric" or getattr(other, kind).label == getattr(cell, kind).label:
                continue
            at = f" at eps {cell.eps:g}" if kind == "attack" else ""
            problems[
                f"{section} '{getattr(other, kind).label}' and '{getattr(cell, kind).label}' are the same configuration"
                f"{at} (component and parameters): their rows would be the same; remove one or change a parameter"
            ] = None
    return list(problems)


def budget_warnings(suite: Suite) -> list[str]:
    """Budgets that are valid but almost certainly not meant: an Linf eps above 1 on inputs in
    [0, 1] lets an attack replace the whole image."""
    return [
        f"attack '{entry.label}': Linf eps {eps:g} is above 1, the whole range of the inputs: any image can be replaced"
        for entry in suite.attacks
        if entry.params.get("norm") == "linf"
        for eps in entry.eps
        if 1 < eps < math.inf
    ]


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
        if problem := text_problem(label):
            problems.append(f"{where}: label {label!r} {problem}; labels are leaderboard cells")
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
            if not (isinstance(raw_eps, list) and raw_eps and all(_is_budget(e) for e in raw_eps)):
                problems.append(f"{where}: 'eps' must be a non-empty list of non-negative numbers (or inf), got {raw_eps!r}")
                continue
            if len(set(raw_eps)) != len(raw_eps):
                problems.append(f"{where}: 'eps' has duplicates: {raw_eps!r}")
                continue
            eps = tuple(float(e) for e in raw_eps)
        models = table.get("models", [])
        if "models" in table and (section not in RESTRICTABLE or not (
            isinstance(models, list) and models and all(isinstance(m, str) for m in models)
        )):
            if section in RESTRICTABLE:
                problems.append(f"{where}: 'models' must be a non-empty list of model labels, got {models!r}")
            else:
                problems.append(f"{where}: 'models' (the models an entry applies to) is for defenses and attacks only")
            continue
        params_given = {k: v for k, v in table.items() if k not in ENTRY_KEYS and not (kind == "attack" and k == "eps")}
        params, param_problems = component.resolve_params(params_given)
        uses = _resolve_nested(params, component, registry, param_problems)
        if kind == "attack" and isinstance(params.get("norm"), str) and (problem := text_problem(params["norm"])):
            param_problems.append(f"'norm' {params['norm']!r} {problem}; the norm is a leaderboard cell")
        problems.extend(f"{where}: {p}" for p in param_problems)
        if not param_problems:
            entries.append(Entry(label=label, component=component, params=params, eps=eps, uses=uses, models=tuple(models)))
    return entries


def _resolve_nested(
    params: dict[str, Any], component: Component, registry: Registry, problems: list[str]
) -> dict[str, Component]:
    """Validate, in place, the parameters that are tables naming another component (a defense's
    attack) like a suite's own entries: every parameter checked and filled in, an attack's single
    ``eps`` required. Returns the components they name."""
    uses = {}
    for key, default in component.params.items():
        if not isinstance(default, ComponentTable) or key not in params:
            continue
        table = params[key].default if isinstance(params[key], ComponentTable) else params[key]
        where = f"parameter '{key}' ({default.kind})"
        name = table.get("name")
        if not isinstance(name, str):
            problems.append(f"{where}: missing field 'name' (a string naming a registered {default.kind})")
            continue
        try:
            nested = registry.get(default.kind, name)
        except UsageError as exc:
            problems.append(f"{where}: {exc}")
            continue
        given = {k: v for k, v in table.items() if k not in ("name", "eps")}
        resolved, nested_problems = nested.resolve_params(given)
        problems.extend(f"{where}: {p}" for p in nested_problems)
        if default.kind == "attack" and not default.own_budget:
            if "eps" in table:
                problems.append(f"{where}: no 'eps' here: the attack runs at each eps of the entry")
                continue
        elif default.kind == "attack":
            eps = table.get("eps")
            if not _is_budget(eps):
                problems.append(f"{where}: 'eps' must be a non-negative number (the training budget), got {eps!r}")
                continue
            resolved["eps"] = float(eps)
        params[key] = {"name": name, **resolved}
        uses[key] = nested
    return uses


def _resolve_refs(sections: dict[str, list[Entry]], problems: list[str]) -> dict[str, list[Entry]]:
    """Fill in each entry's ``refs``: the entries its :class:`EntryRef` parameters name by label."""
    by_kind = {kind: {e.label: e for e in sections[section]} for section, kind in SECTIONS.items()}
    resolved: dict[str, list[Entry]] = {}
    for section, entries in sections.items():
        resolved[section] = []
        for entry in entries:
            for label in entry.models:
                if label not in by_kind["model"]:
                    problems.append(
                        f"{section} '{entry.label}': 'models' names no model of this suite: {label!r}"
                        f"{did_you_mean(label, by_kind['model'])} (labels: {', '.join(by_kind['model']) or 'none'})"
                    )
            refs, params = {}, dict(entry.params)
            for key, default in entry.component.params.items():
                if not isinstance(default, EntryRef):
                    continue
                label = params[key].default if isinstance(params[key], EntryRef) else params[key]
                params[key] = label
                target = by_kind[default.kind].get(label)
                if target is None:
                    known = ", ".join(by_kind[default.kind]) or "none"
                    problems.append(
                        f"{section} '{entry.label}': parameter '{key}' names no {default.kind} of this suite: "
                        f"{label!r}{did_you_mean(label, by_kind[default.kind])} (labels: {known})"
                    )
                    continue
                refs[key] = target
            resolved[section].append(replace(entry, params=params, refs=refs))
    return resolved


def _resolve_files(sections: dict[str, list[Entry]], folder: Path, problems: list[str]) -> dict[str, list[Entry]]:
    """Resolve each entry's :class:`FilePath` parameters against the suite's ``folder`` (to
    absolute paths of existing files) and find its :class:`CodeRef` callables' source, recording
    the digest that stands for each in the entry's identity."""
    resolved: dict[str, list[Entry]] = {}
    for section, entries in sections.items():
        resolved[section] = []
        for entry in entries:
            params, digests = dict(entry.params), {}
            for key, default in entry.component.params.items():
                if not isinstance(default, (FilePath, CodeRef)):
                    continue
                value = params[key].default if isinstance(params[key], (FilePath, CodeRef)) else params[key]
                params[key] = value
                if not value:
                    continue
                where = f"{section} '{entry.label}': parameter '{key}'"
                try:
                    if isinstance(default, FilePath):
                        params[key], digests[key] = _file_digest(value, folder)
                    else:
                        digests[key] = _code_digest(value, folder)
                except (OSError, ValueError) as exc:
                    problems.append(f"{where}: {exc}")
            resolved[section].append(replace(entry, params=params, digests=digests))
    return resolved


def _file_digest(given: str, folder: Path) -> tuple[str, str]:
    """The absolute path of ``given`` (relative to ``folder``) and the sha256 of its bytes."""
    path = Path(given).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise ValueError(f"no such file: {path}" + ("" if Path(given).is_absolute() else " (paths are relative to the suite's folder)"))
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return str(path), f"sha256:{hasher.hexdigest()}"


def _code_digest(reference: str, folder: Path) -> str:
    """The source fingerprint of ``"package.module:attribute"``, made importable from the
    working directory or ``folder`` as a suite's plugins are."""
    import importlib.util

    from harness.fingerprint import source_fingerprint

    module, colon, attribute = reference.partition(":")
    if not (colon and attribute and all(part.isidentifier() for part in [*module.split("."), *attribute.split(".")])):
        raise ValueError(f"{reference!r} is not 'package.module:attribute'")
    make_importable([module], [Path.cwd(), folder])
    try:
        found = importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ValueError(f"cannot find module '{module}' (installed, in the working directory or beside the suite)")
    return f"source:{source_fingerprint(reference)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_budget(value: Any) -> bool:
    """A non-negative number; ``inf`` is an unbounded budget (for a minimal-norm attack)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) and value >= 0

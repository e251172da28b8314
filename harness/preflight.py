"""The check before a run trains anything: every component of the suite can be built, and no
defense would train a model that comes trained.

A broken plugin (a factory that does not import, a dependency it imports lazily that is missing,
an attack or defense whose parameters its constructor rejects) is one clear error before any
training, not one ``error`` row per cell after minutes of it.
"""

from __future__ import annotations

import importlib
import math

from harness.errors import ValidationError, one_line
from harness.registry import Component
from harness.suite import Entry, Suite

BUILT_WITHOUT_DATA = ("defense", "attack", "metric")
"""Kinds whose factories take only their parameters, so the check can build them."""


def check_buildable(suite: Suite) -> None:
    """Raise :class:`ValidationError` naming every component of ``suite`` that cannot be built."""
    problems: list[str] = []
    entries = [*suite.datasets, *suite.models, *suite.defenses, *suite.attacks, *suite.metrics]
    for entry in entries:
        problem = _check(entry.component, entry.params) or _check_nested(entry)
        if problem is None and entry.component.kind == "attack":
            problem = _check_budgets(entry)
        if problem:
            problems.append(f"{_describe(entry.component)} cannot be built: {problem}")
    if not problems:
        problems = _trained_twice(suite)
    if problems:
        raise ValidationError(str(suite.path), problems)


def retraining_problem(model_label: str, defense_label: str) -> str:
    """Why a defense that trains cannot be given a model that comes trained (a checkpoint)."""
    return (
        f"defense '{defense_label}' trains its model, but model '{model_label}' is loaded trained: give it defense "
        f"'none' (or one that acts only at evaluation), or restrict '{defense_label}' with models = [...]"
    )


def _trained_twice(suite: Suite) -> list[str]:
    """One problem per (pretrained model, training defense) pair of the suite, for models
    registered as a :class:`~harness.contracts.Model` class whose ``pretrained`` is set (a model
    built by a function is checked when it is built, by the runner)."""
    pretrained = [m for m in suite.models if getattr(m.component.load(), "pretrained", False) is True]
    if not pretrained:
        return []
    trains = {d.label: getattr(d.component.build(d.params), "trains", True) for d in suite.defenses}
    return [
        retraining_problem(model.label, defense.label)
        for model in pretrained
        for defense in suite.defenses
        if defense.applies_to(model) and trains[defense.label]
    ]


def _check(component: Component, params: dict) -> str | None:
    if component.unavailable:
        return f"it is unavailable: {component.unavailable}"
    try:
        factory = component.load()
    except Exception as exc:
        return f"its factory '{component.factory}' fails to import: {one_line(exc)}"
    for module in component.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:
            return f"its dependency '{module}' fails to import: {one_line(exc)}"
    if component.kind in BUILT_WITHOUT_DATA:
        try:
            factory(**params)
        except Exception as exc:
            return f"its factory raised {one_line(exc)}"
    return None


def _check_nested(entry: Entry) -> str | None:
    for key, component in entry.uses.items():
        table = {k: v for k, v in entry.params[key].items() if k not in ("name", "eps")}
        problem = _check(component, table)
        if problem:
            return f"parameter '{key}': {_describe(component)} {problem}"
    return None


def _check_budgets(entry: Entry) -> str | None:
    if not any(math.isinf(eps) for eps in entry.eps):
        return None
    if entry.component.build(entry.params).minimal_norm:
        return None
    return "eps = inf is an unbounded budget, allowed only for a minimal-norm attack"


def _describe(component: Component) -> str:
    release = f"{component.distribution} {component.version}".strip()
    return f"{component.kind} '{component.name}' (plugin '{component.plugin}', {release})"

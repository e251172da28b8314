"""Command-line overrides of a suite (``harness run SUITE --set KEY=VALUE``), and their record.

An override changes the raw suite table before validation, so an overridden suite is checked
exactly like a file (a bad parameter name or value type is reported by :func:`parse_suite`).
A key is a TOML key (``models.mlp.epochs``, ``models."my.label".epochs``): a top-level key of
the suite, or ``SECTION.LABEL.PARAM[.KEY...]``, the parameter of the entry of that section
whose ``label`` (else ``name``) is LABEL, deeper for a parameter that is a table. A value is a
TOML value (``50``, ``[0.1, 0.3]``, ``"l2"``, ``{name = "pgd", eps = 0.3}``); a bare word that
is not TOML and starts with a letter is taken as a string (``norm=l2``), as a shell user means it.

A run with overrides records the suite it ran (:func:`record_effective_suite`) beside its
leaderboard, so that no row depends on an override that is written nowhere.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import ValidationError
from harness.files import write_atomically
from harness.registry import did_you_mean
from harness.suite import DEFAULT_DEFENSES, SECTIONS

SETTABLE = ("name", "description", "seeds", "n_samples", "batch_size", "draws")
"""The top-level keys an override may set (``plugins`` is not one: it decides what is loaded)."""
BARE_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*")


def apply_overrides(raw: Mapping[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """A copy of the suite table ``raw`` with each ``KEY=VALUE`` of ``assignments`` applied in
    order; raise :class:`ValidationError` (source ``--set``) listing every one that cannot be."""
    table = copy.deepcopy(dict(raw))
    problems = [f"'{text}': {problem}" for text in assignments if (problem := _apply(table, text))]
    if problems:
        raise ValidationError("--set", problems)
    return table


def _apply(table: dict[str, Any], text: str) -> str:
    """Apply one assignment to ``table`` in place; return what is wrong with it, or ``""``."""
    key, equals, value_text = text.partition("=")
    if not equals:
        return "missing '=' (give KEY=VALUE, e.g. n_samples=50 or models.mlp.epochs=2)"
    keys = _keys(key.strip())
    if keys is None:
        return f"'{key.strip()}' is not a key (a top-level key, or SECTION.LABEL.PARAM)"
    value = _value(value_text.strip())
    if value is None:
        return f"{value_text.strip()!r} is not a TOML value (quote a string: KEY='\"text\"')"
    section, *rest = keys
    if not rest:
        if section not in SETTABLE:
            hint = f"; set a parameter of one of its entries: {section}.LABEL.PARAM" if section in SECTIONS else ""
            return f"unknown key '{section}'{did_you_mean(section, SETTABLE)} (keys: {', '.join(SETTABLE)}){hint}"
        table[section] = value
        return ""
    if section not in SECTIONS:
        return f"unknown section '{section}'{did_you_mean(section, SECTIONS)} (sections: {', '.join(SECTIONS)})"
    if len(rest) < 2:
        return f"name a parameter: {section}.{rest[0]}.PARAM"
    if section == "defenses":
        table.setdefault(section, copy.deepcopy(DEFAULT_DEFENSES))
    entries = table.get(section)
    labels: dict[str, dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and isinstance(label := entry.get("label", entry.get("name")), str):
            labels.setdefault(label, entry)
    label, *params = rest
    target = labels.get(label)
    if target is None:
        kind = SECTIONS[section]
        known = ", ".join(labels) or "none"
        return f"no {kind} labelled '{label}' in [[{section}]]{did_you_mean(label, labels)} (labels: {known})"
    for depth, param in enumerate(params[:-1], start=3):
        inner = target.get(param)
        if not isinstance(inner, dict):
            where = ".".join(keys[:depth])
            unset = f"; it is not set in the suite: set it whole, {where}={{...}}" if inner is None else ""
            return f"'{where}' is not a table{unset}"
        target = inner
    target[params[-1]] = value
    return ""


def _keys(text: str) -> list[str] | None:
    """The parts of a TOML key (``a.b``, ``a."b.c"``), or None if ``text`` is not one."""
    try:
        tree: Any = tomllib.loads(f"{text} = 0")
    except tomllib.TOMLDecodeError:
        return None
    keys = []
    while isinstance(tree, dict) and len(tree) == 1:
        key, tree = next(iter(tree.items()))
        keys.append(key)
    return keys if tree == 0 else None


def _value(text: str) -> Any:
    """A TOML value, a bare word (a string), or None if ``text`` is neither."""
    try:
        document = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text if BARE_WORD.fullmatch(text) else None
    return document["v"] if len(document) == 1 else None


def effective_suite_path(output: Path) -> Path:
    """Where a run records the suite it ran with overrides: ``<csv stem>.suite.json`` beside it."""
    return output.with_name(f"{output.stem}.suite.json")


def record_effective_suite(output: Path, table: Mapping[str, Any] | None) -> None:
    """Write ``table``, the suite a run with overrides ran, beside its leaderboard ``output`` as
    JSON (the TOML's structure; an infinite eps is ``Infinity``), or with ``None`` (a run
    without overrides) remove a record an earlier run left, which no longer describes the rows."""
    path = effective_suite_path(output)
    if table is None:
        path.unlink(missing_ok=True)
    else:
        write_atomically(path, (json.dumps(table, indent=2) + "\n").encode())

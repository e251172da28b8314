"""The registry of components that plugins provide, and the checking of their parameters.

Loading the plugins that fill it is :mod:`harness.plugins`; this module imports neither that nor
the hook specs, so both can refer to it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import UsageError, one_line

if TYPE_CHECKING:
    import pluggy

KINDS = ("dataset", "model", "defense", "attack", "metric")


class RegisterFunction(Protocol):
    def __call__(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        params: Mapping[str, Any] | None = None,
        choices: Mapping[str, Iterable[Any]] | None = None,
        ranges: Mapping[str, Range] | None = None,
        description: str = "",
        imports: Iterable[str] = (),
        evaluation_params: Iterable[str] = (),
        horizon: str = "",
        higher_is_better: bool | None = None,
        unavailable: str = "",
    ) -> None: ...


CORE_PACKAGE = "harness"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Range:
    """The interval a numeric parameter's values must lie in, so that a suite giving a meaningless
    value (``epochs = -1``, ``dropout = 2``) is rejected before anything trains instead of giving a
    row. ``None`` leaves that side unbounded; an open side excludes its bound. For a list parameter
    every number of the list must lie in it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __post_init__(self) -> None:
        for bound in (self.low, self.high):
            if bound is not None and not (_is_number(bound) and math.isfinite(bound)):
                raise ValueError(f"a Range's bounds must be finite numbers or None, got {bound!r}")
        if self.low is not None and self.high is not None and (
            self.low > self.high or (self.low == self.high and (self.low_open or self.high_open))
        ):
            raise ValueError(f"empty Range: {self}")

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return (
                f"in {'(' if self.low_open else '['}{_format_bound(self.low)}, "
                f"{_format_bound(self.high)}{')' if self.high_open else ']'}"
            )
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_format_bound(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_format_bound(self.high)}"
        return "any number"


def _format_bound(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


POSITIVE = Range(0, low_open=True)
"""Counts that must not be zero and sizes, rates and durations: epochs, batch sizes, learning rates."""
NON_NEGATIVE = Range(0)
"""Counts and weights where zero means "none" or "off": random restarts, weight decay, a loss weight."""
FRACTION = Range(0, 1)
"""Probabilities, dropout rates, and weights that mix two losses as ``(1 - w) * a + w * b``."""


@dataclass(frozen=True)
class ComponentTable:
    """The default of a parameter whose value is a suite-style table naming another component,
    e.g. the attack a defense trains against: ``ComponentTable("attack", {"name": "pgd", "eps": 0.3})``.
    A suite's table is validated like a top-level entry (an attack's ``eps`` is one number)."""

    kind: str
    default: Mapping[str, Any]
    own_budget: bool = True
    """Whether a nested attack table carries its own ``eps`` (a defense's training budget); a
    transfer attack's inner attack takes the cell's instead."""


@dataclass(frozen=True)
class EntryRef:
    """The default of a parameter naming another entry of the same suite by its label, e.g. the
    surrogate model of a transfer attack: ``EntryRef("model")``. The suite checks that the label
    exists; the referring entry's identity includes that entry's, so that changing the surrogate
    recomputes what depends on it."""

    kind: str
    default: str = ""


@dataclass(frozen=True)
class FilePath:
    """The default of a parameter naming a file, e.g. a checkpoint: ``FilePath()``. A suite gives
    it relative to the suite's folder; the suite checks that the file exists, and the entry's
    identity holds a sha256 of the file's bytes instead of its path, so that the same file moved
    keeps its results and a file rewritten under the same name recomputes them. An empty path
    means "not given"."""

    default: str = ""


@dataclass(frozen=True)
class CodeRef:
    """The default of a parameter naming a callable as ``"package.module:attribute"``, e.g. the
    function that builds a network: ``CodeRef()``. The module is found on the installed packages,
    the working directory or the suite's folder, and the entry's identity holds a fingerprint of
    its source (:mod:`harness.fingerprint`), so that editing the code recomputes what it built.
    An empty string means "not given"."""

    default: str = ""


REFERENCES = (EntryRef, FilePath, CodeRef)
"""Defaults that the suite resolves: a label of the suite, a file, a callable."""


@dataclass(frozen=True)
class Component:
    """A dataset, model, defense, attack or metric that a plugin registered.

    ``params`` maps each parameter to its default; a suite may override them, and the default's
    type is the type a suite must give. A default of ``None`` accepts a number or is left unset.
    ``imports`` are modules the component imports lazily (checked before a run trains anything);
    ``evaluation_params`` are parameters that choose how a trained model is evaluated (its head),
    not how it is trained, so entries differing only in them share one trained model.
    ``horizon`` (models) names the parameter that only says how long the model trains (its epochs),
    a promise that training for n is the start of training for more: a longer training then
    continues from a shorter one's final checkpoint (see :mod:`harness.resume`).
    ``higher_is_better`` (metrics) tells ``harness show --sort`` which way to rank its column.
    ``unavailable`` is a reason the component can never run (see :meth:`availability`).
    ``ranges`` bounds numeric parameters (see :class:`Range`); whatever their range, a given NaN is
    rejected, and so is an infinite value unless the default is infinite (``eps = inf``).
    """

    kind: str
    name: str
    factory: Callable[..., Any] | str
    params: Mapping[str, Any]
    choices: Mapping[str, tuple[Any, ...]]
    description: str
    plugin: str
    distribution: str
    version: str
    imports: tuple[str, ...] = ()
    evaluation_params: tuple[str, ...] = ()
    horizon: str = ""
    higher_is_better: bool | None = None
    ranges: Mapping[str, Range] = field(default_factory=dict)
    unavailable: str = ""
    """Why the component cannot run at all, whatever is installed (e.g. an ART attack for object
    detectors): listed with the reason by ``harness plugins``, refused by a suite's check."""

    def availability(self) -> str:
        """Why the component cannot run here (its :attr:`unavailable` reason, or a package of its
        ``imports`` that is not installed), or ``""``. Finds packages without importing them."""
        if self.unavailable:
            return self.unavailable
        for module in self.imports:
            top = module.partition(".")[0]
            try:
                found = importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"needs the package '{top}', which is not installed"
        return ""

    @property
    def fingerprint(self) -> str:
        """A digest of the component's source (see :mod:`harness.fingerprint`). A component of the
        core itself (the ``none`` defense) is covered by the core's revision numbers instead, so
        that editing the core does not invalidate every trained model."""
        from harness.fingerprint import source_fingerprint

        module = self.factory.partition(":")[0] if isinstance(self.factory, str) else self.factory.__module__
        if module.partition(".")[0] == CORE_PACKAGE:
            return CORE_PACKAGE
        return source_fingerprint(self.factory)

    def load(self) -> Callable[..., Any]:
        """The factory, importing it if it was registered as ``"module:attribute"``."""
        if callable(self.factory):
            return self.factory
        return import_reference(self.factory)

    def build(self, params: Mapping[str, Any], **context: Any) -> Any:
        return self.load()(**context, **params)

    def resolve_params(self, given: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Merge ``given`` over the defaults; return the parameters and one message per problem."""
        problems = []
        resolved = dict(self.params)
        for key, value in given.items():
            if key not in self.params:
                hint = did_you_mean(key, self.params)
                known = ", ".join(sorted(self.params)) or "none"
                problems.append(f"unknown parameter '{key}' for {self.kind} '{self.name}'{hint} (known: {known})")
                continue
            checked = _check_type(value, self.params[key])
            if checked is _BAD:
                problems.append(
                    f"parameter '{key}' of {self.kind} '{self.name}' must be "
                    f"{_with_article(type_name(self.params[key]))}, got {value!r}"
                )
                continue
            allowed = self.choices.get(key)
            if allowed is not None and checked not in allowed:
                problems.append(
                    f"parameter '{key}' of {self.kind} '{self.name}' must be one of "
                    f"{', '.join(map(repr, allowed))}, got {value!r}"
                )
                continue
            problem = self._check_numbers(key, checked)
            if problem:
                problems.append(f"parameter '{key}' of {self.kind} '{self.name}' must {problem}, got {value!r}")
                continue
            resolved[key] = checked
        return resolved, problems

    def _check_numbers(self, key: str, value: Any) -> str:
        """What is wrong with the numbers of ``value`` (itself, or those of a list), after "must":
        a NaN, an infinite number where the default is finite, or one out of the parameter's range."""
        default = self.params[key]
        infinite_allowed = any(math.isinf(n) for n in _numbers(default))
        bounds = self.ranges.get(key)
        is_list = isinstance(value, list)
        for number in _numbers(value):
            if math.isnan(number) and infinite_allowed:
                return "not hold NaN" if is_list else "not be NaN"
            if not math.isfinite(number) and not infinite_allowed:
                return "be a list of finite numbers" if is_list else "be a finite number"
            if bounds is not None and number not in bounds:
                if not is_list:
                    return f"be {bounds}"
                items = type_name(default) if isinstance(default, (list, tuple)) and default else "list of numbers"
                return f"be {_with_article(items)} {bounds}"
        return ""


_BAD = object()


def _numbers(value: Any) -> list[float]:
    """The numbers of a parameter's value: itself, or those of a (nested) list."""
    if _is_number(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    return []


def is_numeric_default(default: Any) -> bool:
    """Whether a parameter with this default takes numbers, and so may have a :class:`Range`: a
    number, ``None`` (a number or unset), or a list of numbers."""
    if default is None or _is_number(default):
        return True
    return isinstance(default, (list, tuple)) and all(_is_number(item) for item in default)


def _check_type(value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default``, or ``_BAD``."""
    if isinstance(default, ComponentTable):
        return dict(value) if isinstance(value, dict) else _BAD
    if isinstance(default, REFERENCES):
        return value if isinstance(value, str) else _BAD
    if default is None:
        return value if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)) else _BAD
    if isinstance(default, bool):
        return value if isinstance(value, bool) else _BAD
    if isinstance(default, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if isinstance(default, float):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _BAD
    if isinstance(default, (list, tuple)):
        if not isinstance(value, list):
            return _BAD
        if default and not all(_check_type(v, default[0]) is not _BAD for v in value):
            return _BAD
        return [_check_type(v, default[0]) for v in value] if default else value
    return value if isinstance(value, type(default)) else _BAD


def type_name(default: Any) -> str:
    """The type a suite must give for a parameter whose default is ``default``, e.g. ``integer``."""
    if isinstance(default, ComponentTable):
        return f"table naming a registered {default.kind}"
    if isinstance(default, EntryRef):
        return f"string naming a {default.kind} of the suite"
    if isinstance(default, FilePath):
        return "path of a file (relative to the suite's folder)"
    if isinstance(default, CodeRef):
        return "string 'package.module:attribute'"
    if default is None:
        return "number"
    if isinstance(default, (list, tuple)):
        if not default:
            return "list"
        item = type_name(default[0])
        plural = "lists" + item[4:] if item.startswith("list") else f"{item}s"
        return f"list of {plural}"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "table"}
    return names.get(type(default), type(default).__name__)


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def import_reference(reference: str) -> Any:
    """What ``"package.module:attribute"`` names (a dotted attribute walks into the module's
    objects; without one, the module); raises ImportError or AttributeError."""
    module_name, _, attribute = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        target = getattr(target, part)
    return target


def make_importable(module_names: Iterable[str], search_path: Iterable[Path]) -> None:
    """Let each named module (a plugin, a checkpoint's factory) that is not installed be imported from the first folder of
    ``search_path`` that holds it, by appending that folder to ``sys.path``.

    Appending, as pytest's ``--import-mode=append`` does, keeps installed packages first: a
    ``tqdm.py`` or ``pandas.py`` beside a suite can never shadow the real one. A folder is added
    only for a module that a suite or ``-p`` names, so a folder that holds none adds nothing.
    """
    directories = [Path(d) for d in search_path]
    for module_name in module_names:
        top = module_name.partition(".")[0]
        if not top.isidentifier() or top in sys.modules or importlib.util.find_spec(top) is not None:
            continue  # installed (or already imported) wins; an invalid name fails at import, as a typo
        for directory in directories:
            if (directory / f"{top}.py").is_file() or (directory / top).is_dir():
                if str(directory) not in sys.path:
                    sys.path.append(str(directory))
                break


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# The warn callback of the Registry.notify call that is running, for the guards of isolated().
_notify_warn: ContextVar[Callable[[str], None] | None] = ContextVar("harness_notify_warn", default=None)


def isolated(function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
    """``function``, a lifecycle hook implementation, reporting an exception to the ``warn`` of
    :meth:`Registry.notify` instead of raising it, so that the hook's other implementations run."""

    @functools.wraps(function)
    def guard(*args: Any, **kwargs: Any) -> Any:  # pluggy passes the arguments by position
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            warn = _notify_warn.get()
            if warn is None:  # called outside notify: nobody to tell
                raise
            warn(f"plugin '{plugin_name}': hook {hook_name} raised {one_line(exc)}")
            return None

    return guard


@dataclass
class Registry:
    """Every component registered by the loaded plugins, by kind and name.

    ``plugins`` holds a :class:`harness.plugins.PluginInfo` per plugin, failed ones included (typed
    loosely so that this module need not import the loader).
    """

    plugin_manager: pluggy.PluginManager
    plugins: list[Any] = field(default_factory=list)
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def get(self, kind: str, name: str) -> Component:
        try:
            return self.components[kind][name]
        except KeyError:
            known = sorted(self.components[kind])
            hint = did_you_mean(name, known)
            raise UsageError(
                f"unknown {kind} '{name}'{hint} (known: {', '.join(known) or 'none'})"
            ) from None

    def build_from_table(
        self, kind: str, table: Mapping[str, Any], ignore: Iterable[str] = (), **context: Any
    ) -> Any:
        """Build a component from a suite-style table (``{name = "pgd", norm = "linf", ...}``),
        checking its parameters; keys in ``ignore`` (like an attack's ``eps``) are not parameters.
        ``context`` goes to the factory as a runner's would (a model's ``input_shape``, a dataset's
        ``data_dir``)."""
        table = {k: v for k, v in table.items() if k not in set(ignore)}
        component = self.get(kind, str(table.pop("name", "")))
        params, problems = component.resolve_params(table)
        if problems:
            raise UsageError("; ".join(problems))
        return component.build(params, **context)

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        return {
            kind: sorted(c.name for c in comps.values() if c.plugin == plugin)
            for kind, comps in self.components.items()
        }

    def notify(self, hook_name: str, warn: Callable[[str], None], **kwargs: Any) -> None:
        """Call a lifecycle hook through pluggy (its order, ``tryfirst``/``trylast`` and wrappers
        apply); an implementation that raises is reported to ``warn`` and the others still run."""
        token = _notify_warn.set(warn)
        try:
            getattr(self.plugin_manager.hook, hook_name)(**kwargs)
        finally:
            _notify_warn.reset(token)

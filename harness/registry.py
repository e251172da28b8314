"""Plugin loading and the registry of components that plugins provide.

Plugins are found through the ``harness`` entry-point group (the shipped ones too), plus modules
named with ``-p MODULE``. ``HARNESS_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry-point loading off and
``HARNESS_BLOCK_PLUGINS=a,b`` (or ``-p no:NAME``) blocks plugins by name, as in pytest.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pluggy

from harness import hookspecs
from harness.errors import PluginError, UsageError

KINDS = ("dataset", "model", "defense", "attack", "metric")
REGISTRATION_HOOKS = {kind: f"register_{kind}s" for kind in KINDS}
DISABLE_AUTOLOAD_ENV = "HARNESS_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"
UNPACKAGED = "(unpackaged)"


class RegisterFunction(Protocol):
    def __call__(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        params: Mapping[str, Any] | None = None,
        choices: Mapping[str, Iterable[Any]] | None = None,
        description: str = "",
        imports: Iterable[str] = (),
        evaluation_params: Iterable[str] = (),
        higher_is_better: bool | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class ComponentTable:
    """The default of a parameter whose value is a suite-style table naming another component,
    e.g. the attack a defense trains against: ``ComponentTable("attack", {"name": "pgd", "eps": 0.3})``.
    A suite's table is validated like a top-level entry (an attack's ``eps`` is one number)."""

    kind: str
    default: Mapping[str, Any]


@dataclass(frozen=True)
class PluginInfo:
    """A plugin as ``harness plugins`` shows it."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...] = ()
    error: str = ""

    @property
    def release(self) -> str:
        """The distribution and its version, as people write them."""
        return f"{self.distribution} {self.version}".strip()


@dataclass(frozen=True)
class Component:
    """A dataset, model, defense, attack or metric that a plugin registered.

    ``params`` maps each parameter to its default; a suite may override them, and the default's
    type is the type a suite must give. A default of ``None`` accepts a number or is left unset.
    ``imports`` are modules the component imports lazily (checked before a run trains anything);
    ``evaluation_params`` are parameters that choose how a trained model is evaluated (its head),
    not how it is trained, so entries differing only in them share one trained model.
    ``higher_is_better`` (metrics) tells ``harness show --sort`` which way to rank its column.
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
    higher_is_better: bool | None = None

    @property
    def fingerprint(self) -> str:
        """A digest of the component's source (see :mod:`harness.fingerprint`)."""
        from harness.fingerprint import source_fingerprint

        return source_fingerprint(self.factory)

    def load(self) -> Callable[..., Any]:
        """The factory, importing it if it was registered as ``"module:attribute"``."""
        if callable(self.factory):
            return self.factory
        module_name, _, attribute = self.factory.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module

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
                    f"{_type_name(self.params[key])}, got {value!r}"
                )
                continue
            allowed = self.choices.get(key)
            if allowed is not None and checked not in allowed:
                problems.append(
                    f"parameter '{key}' of {self.kind} '{self.name}' must be one of "
                    f"{', '.join(map(repr, allowed))}, got {value!r}"
                )
                continue
            resolved[key] = checked
        return resolved, problems


_BAD = object()


def _check_type(value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default``, or ``_BAD``."""
    if isinstance(default, ComponentTable):
        return dict(value) if isinstance(value, dict) else _BAD
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


def _type_name(default: Any) -> str:
    if isinstance(default, ComponentTable):
        return f"a table naming a registered {default.kind}"
    if default is None:
        return "a number"
    if isinstance(default, (list, tuple)):
        return f"a list of {_type_name(default[0])}s" if default else "a list"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    return names.get(type(default), type(default).__name__)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass
class Registry:
    """Every component registered by the loaded plugins, by kind and name."""

    plugin_manager: pluggy.PluginManager
    plugins: list[PluginInfo] = field(default_factory=list)
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

    def build_from_table(self, kind: str, table: Mapping[str, Any], ignore: Iterable[str] = ()) -> Any:
        """Build a component from a suite-style table (``{name = "pgd", norm = "linf", ...}``),
        checking its parameters; keys in ``ignore`` (like an attack's ``eps``) are not parameters."""
        table = {k: v for k, v in table.items() if k not in set(ignore)}
        component = self.get(kind, str(table.pop("name", "")))
        params, problems = component.resolve_params(table)
        if problems:
            raise UsageError("; ".join(problems))
        return component.build(params)

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        return {
            kind: sorted(c.name for c in comps.values() if c.plugin == plugin)
            for kind, comps in self.components.items()
        }

    def notify(self, hook_name: str, warn: Callable[[str], None], **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin; one that raises is reported and the others still run."""
        for impl in getattr(self.plugin_manager.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:
                warn(f"plugin '{impl.plugin_name}': hook {hook_name} raised {_one_line(exc)}")


def _blocked_names(plugin_args: Iterable[str]) -> set[str]:
    from_env = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
    return from_env | {a[3:] for a in plugin_args if a.startswith("no:")}


def load_plugins(plugin_args: Iterable[str] = (), search_path: Iterable[Path] = ()) -> Registry:
    """Load the plugins and collect their components.

    ``plugin_args`` are ``-p`` values: ``MODULE`` loads a module as a plugin, ``no:NAME`` blocks
    the plugin NAME; such modules are also looked up in ``search_path`` (like pytest's rootdir).
    A plugin that fails to import, or whose registration hook raises, is listed with its error and
    left out; the others still work.
    """
    plugin_args = list(plugin_args)
    for directory in search_path:
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in _blocked_names(plugin_args):
        pm.set_blocked(name)

    infos: dict[str, PluginInfo] = {}
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        for entry_point in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            if pm.is_blocked(entry_point.name) or pm.has_plugin(entry_point.name):
                continue
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist else UNPACKAGED
            version = dist.version if dist else ""
            try:
                pm.register(entry_point.load(), name=entry_point.name)
            except Exception as exc:  # a broken plugin must not break the others
                infos[entry_point.name] = PluginInfo(entry_point.name, dist_name, version, error=_one_line(exc))
                continue
            infos[entry_point.name] = PluginInfo(entry_point.name, dist_name, version)

    for module_name in (a for a in plugin_args if not a.startswith("no:")):
        if pm.is_blocked(module_name) or pm.has_plugin(module_name):
            continue
        try:
            pm.register(importlib.import_module(module_name), name=module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.partition(".")[0] and exc.name != module_name:
                infos[module_name] = PluginInfo(module_name, UNPACKAGED, "", error=_one_line(exc))
                continue
            raise UsageError(f"cannot load plugin module '{module_name}': {exc}") from None
        except Exception as exc:
            infos[module_name] = PluginInfo(module_name, UNPACKAGED, "", error=_one_line(exc))
            continue
        infos[module_name] = PluginInfo(module_name, UNPACKAGED, "")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(_one_line(exc)) from None

    for plugin_name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        info = infos[plugin_name]
        infos[plugin_name] = PluginInfo(info.name, info.distribution, info.version, hooks)

    registry = Registry(pm)
    errors: dict[str, str] = {}
    for kind, hook_name in REGISTRATION_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name in errors:
                continue
            register = _register_function(registry, kind, infos[impl.plugin_name])
            try:
                impl.function(**{name: register for name in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:
                errors[impl.plugin_name] = f"{hook_name} raised {_one_line(exc)}"
                _drop_components(registry, impl.plugin_name)
    for name, message in errors.items():
        info = infos[name]
        infos[name] = PluginInfo(info.name, info.distribution, info.version, info.hooks, message)
        pm.unregister(name=name)
    registry.plugins = sorted(infos.values(), key=lambda p: p.name)
    return registry


def _register_function(registry: Registry, kind: str, plugin: PluginInfo) -> RegisterFunction:
    def register(
        name: str,
        factory: Callable[..., Any] | str,
        *,
        params: Mapping[str, Any] | None = None,
        choices: Mapping[str, Iterable[Any]] | None = None,
        description: str = "",
        imports: Iterable[str] = (),
        evaluation_params: Iterable[str] = (),
        higher_is_better: bool | None = None,
    ) -> None:
        if kind == "attack" and "norm" not in (params or {}):
            raise PluginError(f"attack '{name}' of plugin '{plugin.name}' must declare a 'norm' parameter")
        existing = registry.components[kind].get(name)
        if existing is not None:
            first = PluginInfo(existing.plugin, existing.distribution, existing.version)
            raise PluginError(
                f"{kind} '{name}' is registered twice: by plugin '{first.name}' ({first.release}) "
                f"and by plugin '{plugin.name}' ({plugin.release})"
            )
        registry.components[kind][name] = Component(
            kind=kind,
            name=name,
            factory=factory,
            params=dict(params or {}),
            choices={k: tuple(v) for k, v in (choices or {}).items()},
            description=description,
            plugin=plugin.name,
            distribution=plugin.distribution,
            version=plugin.version,
            imports=tuple(imports),
            evaluation_params=tuple(evaluation_params),
            higher_is_better=higher_is_better,
        )

    return register


def _drop_components(registry: Registry, plugin_name: str) -> None:
    for comps in registry.components.values():
        for name in [n for n, c in comps.items() if c.plugin == plugin_name]:
            del comps[name]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

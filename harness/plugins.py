"""Plugin loading through pluggy: entry points, ``-p`` modules, blocking, and broken plugins.

Plugins are found through the ``harness`` entry-point group (the shipped ones too), plus modules
named with ``-p MODULE``. ``HARNESS_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry-point loading off and
``HARNESS_BLOCK_PLUGINS=a,b`` (or ``-p no:NAME``) blocks plugins by name, as in pytest.

A broken plugin must break neither the other plugins nor the commands that do not use it: one that
fails to import, implements a hook that does not exist or with arguments it does not have, or fails
to register its components is listed with its error, its components are dropped and none of its
hooks is called.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import PluginError, UsageError, one_line
from harness.registry import (
    KINDS,
    Component,
    Range,
    RegisterFunction,
    Registry,
    did_you_mean,
    is_numeric_default,
    isolated,
    make_importable,
)

REGISTRATION_HOOKS = {kind: f"register_{kind}s" for kind in KINDS}
LIFECYCLE_HOOKS = ("suite_started", "cell_started", "cell_finished", "suite_finished")
DISABLE_AUTOLOAD_ENV = "HARNESS_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"
UNPACKAGED = "(unpackaged)"


@dataclass(frozen=True)
class PluginInfo:
    """A plugin as ``harness plugins`` shows it; ``error`` is why it was disabled, if it was."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...] = ()
    error: str = ""

    @property
    def release(self) -> str:
        """The distribution and its version, as people write them."""
        return f"{self.distribution} {self.version}".strip()


def load_plugins(plugin_args: Iterable[str] = (), search_path: Iterable[Path] = ()) -> Registry:
    """Load the plugins and collect their components.

    ``plugin_args`` are ``-p`` values: ``MODULE`` loads a module as a plugin, ``no:NAME`` blocks
    the plugin NAME; a module that is not installed is also looked up in ``search_path`` (see
    :func:`harness.registry.make_importable`). Only a ``-p`` module that does not exist raises (a
    :class:`UsageError`: a typo); a broken plugin is listed with its error and left out, and the
    others still work.
    """
    plugin_args = list(plugin_args)
    make_importable([a for a in plugin_args if not a.startswith("no:")], search_path)
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
            release = (dist.metadata["Name"], dist.version) if dist else (UNPACKAGED, "")
            info = PluginInfo(entry_point.name, *release)
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a broken plugin must not break the others
                infos[info.name] = dataclasses.replace(info, error=one_line(exc))
                continue
            infos[info.name] = _register(pm, plugin, info)

    for module_name in (a for a in plugin_args if not a.startswith("no:")):
        if pm.is_blocked(module_name) or pm.has_plugin(module_name):
            continue
        info = PluginInfo(module_name, UNPACKAGED, "")
        try:
            plugin = importlib.import_module(module_name)
        except Exception as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name in (module_name, module_name.partition(".")[0]):
                raise UsageError(f"cannot load plugin module '{module_name}': {exc}") from None
            infos[module_name] = dataclasses.replace(info, error=one_line(exc))
            continue
        infos[module_name] = _register(pm, plugin, info)

    registered = [name for name, plugin in pm.list_name_plugin() if plugin is not None]  # None: blocked
    for name in registered:
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(pm.get_plugin(name)) or ()))
        infos[name] = dataclasses.replace(infos[name], hooks=hooks)

    registry = Registry(pm)
    failures = _unknown_hooks(pm)
    for name in registered:
        if name not in failures and (error := _register_components(registry, infos[name])):
            failures[name] = error
    for name, error in failures.items():
        infos[name] = dataclasses.replace(infos[name], error=error)
        pm.unregister(name=name)
    _isolate_lifecycle_hooks(pm)
    registry.plugins = sorted(infos.values(), key=lambda p: p.name)
    return registry


def _blocked_names(plugin_args: Iterable[str]) -> set[str]:
    from_env = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
    return from_env | {a[3:] for a in plugin_args if a.startswith("no:")}


def _register(pm: pluggy.PluginManager, plugin: object, info: PluginInfo) -> PluginInfo:
    """Register ``plugin``; pluggy rejecting it (hook arguments the spec lacks) is its error."""
    try:
        pm.register(plugin, name=info.name)
    except Exception as exc:
        if pm.has_plugin(info.name):  # older pluggy leaves a rejected plugin half registered
            pm.unregister(name=info.name)
        return dataclasses.replace(info, error=one_line(exc))
    return info


def _unknown_hooks(pm: pluggy.PluginManager) -> dict[str, str]:
    """The error of each plugin implementing a hook that has no spec (a misspelled name, usually),
    which pluggy would only report by raising from ``check_pending``."""
    callers = [caller for name, caller in vars(pm.hook).items() if not name.startswith("_")]
    specs = [caller.name for caller in callers if caller.has_spec()]
    errors: dict[str, str] = {}
    for caller in (c for c in callers if not c.has_spec()):
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                hint = did_you_mean(caller.name, specs)
                errors.setdefault(impl.plugin_name, f"hook '{caller.name}' matches no hook spec{hint}")
    return errors


def _register_components(registry: Registry, plugin: PluginInfo) -> str:
    """Call the plugin's registration hooks; return its first problem ("" if none), having then
    dropped the components it registered."""
    problems: list[str] = []
    for kind, hook_name in REGISTRATION_HOOKS.items():
        register = _register_function(registry, kind, plugin, problems)
        for impl in getattr(registry.plugin_manager.hook, hook_name).get_hookimpls():
            if impl.plugin_name != plugin.name:
                continue
            try:
                impl.function(**{name: register for name in impl.argnames})
            except Exception as exc:
                problems.append(f"{hook_name} raised {one_line(exc)}")
            if problems:
                _drop_components(registry, plugin.name)
                return problems[0]
    return ""


def _register_function(registry: Registry, kind: str, plugin: PluginInfo, problems: list[str]) -> RegisterFunction:
    """The ``register`` callback of ``plugin``'s hook for ``kind``; a bad registration is put in
    ``problems`` (so that a plugin catching the exception still fails) and raised."""

    def register(
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
    ) -> None:
        existing = registry.components[kind].get(name)
        range_problem = _range_problem(params or {}, ranges or {})
        if kind == "attack" and "norm" not in (params or {}):
            problem = f"attack '{name}' of plugin '{plugin.name}' must declare a 'norm' parameter"
        elif horizon and kind != "model":
            problem = f"{kind} '{name}' of plugin '{plugin.name}' has a horizon, which only models have"
        elif horizon and horizon not in (params or {}):
            problem = f"model '{name}' of plugin '{plugin.name}': its horizon '{horizon}' is not one of its parameters"
        elif range_problem:
            problem = f"{kind} '{name}' of plugin '{plugin.name}' {range_problem}"
        elif existing is not None and existing.plugin == plugin.name:
            problem = f"{kind} '{name}' is registered twice by plugin '{plugin.name}' ({plugin.release})"
        elif existing is not None:
            first = PluginInfo(existing.plugin, existing.distribution, existing.version)
            problem = (
                f"{kind} '{name}' is registered twice: by plugin '{first.name}' ({first.release}) "
                f"and by plugin '{plugin.name}' ({plugin.release})"
            )
        else:
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
                horizon=horizon,
                higher_is_better=higher_is_better,
                ranges=dict(ranges or {}),
                unavailable=unavailable,
            )
            return
        problems.append(problem)
        raise PluginError(problem)

    return register


def _range_problem(params: Mapping[str, Any], ranges: Mapping[str, Any]) -> str:
    """Why ``ranges`` do not fit ``params`` (after "<kind> '<name>' of plugin '<plugin>'"), or ``""``:
    a range must be a :class:`Range` of a numeric parameter, and hold the parameter's default."""
    for key, bounds in ranges.items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            return f"declares a range for unknown parameter '{key}'{did_you_mean(key, params)} (known: {known})"
        if not isinstance(bounds, Range):
            return f"declares a range for parameter '{key}' that is not a harness.registry.Range: {bounds!r}"
        default = params[key]
        if not is_numeric_default(default):
            return f"declares a range for parameter '{key}', whose default {default!r} is not numeric"
        numbers = default if isinstance(default, (list, tuple)) else [default]
        if any(n is not None and n not in bounds for n in numbers):
            return f"declares parameter '{key}' {bounds}, but its default is {default!r}"
    return ""


def _drop_components(registry: Registry, plugin_name: str) -> None:
    for comps in registry.components.values():
        for name in [n for n, c in comps.items() if c.plugin == plugin_name]:
            del comps[name]


def _isolate_lifecycle_hooks(pm: pluggy.PluginManager) -> None:
    """Guard every ordinary lifecycle hook implementation, so that one that raises is reported by
    :meth:`Registry.notify` and the others still run; wrappers see the call as pluggy makes it."""
    for hook_name in LIFECYCLE_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if not (impl.wrapper or impl.hookwrapper):
                impl.function = isolated(impl.function, impl.plugin_name, hook_name)

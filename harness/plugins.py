"""Plugin loading through pluggy: entry points, ``-p`` modules and blocking.

Plugins are found through the ``harness`` entry-point group (the shipped ones too), plus modules
named with ``-p MODULE``. ``HARNESS_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry-point loading off and
``HARNESS_BLOCK_PLUGINS=a,b`` (or ``-p no:NAME``) blocks plugins by name, as in pytest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import PluginError, UsageError, one_line
from harness.registry import KINDS, Component, RegisterFunction, Registry

REGISTRATION_HOOKS = {kind: f"register_{kind}s" for kind in KINDS}
DISABLE_AUTOLOAD_ENV = "HARNESS_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"
UNPACKAGED = "(unpackaged)"


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
                infos[entry_point.name] = PluginInfo(entry_point.name, dist_name, version, error=one_line(exc))
                continue
            infos[entry_point.name] = PluginInfo(entry_point.name, dist_name, version)

    for module_name in (a for a in plugin_args if not a.startswith("no:")):
        if pm.is_blocked(module_name) or pm.has_plugin(module_name):
            continue
        try:
            pm.register(importlib.import_module(module_name), name=module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.partition(".")[0] and exc.name != module_name:
                infos[module_name] = PluginInfo(module_name, UNPACKAGED, "", error=one_line(exc))
                continue
            raise UsageError(f"cannot load plugin module '{module_name}': {exc}") from None
        except Exception as exc:
            infos[module_name] = PluginInfo(module_name, UNPACKAGED, "", error=one_line(exc))
            continue
        infos[module_name] = PluginInfo(module_name, UNPACKAGED, "")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(one_line(exc)) from None

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
                errors[impl.plugin_name] = f"{hook_name} raised {one_line(exc)}"
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
        )

    return register


def _drop_components(registry: Registry, plugin_name: str) -> None:
    for comps in registry.components.values():
        for name in [n for n, c in comps.items() if c.plugin == plugin_name]:
            del comps[name]

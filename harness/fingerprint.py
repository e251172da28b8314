"""Source fingerprints of component factories, so that cached results follow the code, not the version.

A fingerprint covers the module that defines the factory and every module of the same top-level
package that it imports, transitively (a package's ``__init__`` only when it is named by an import,
not when Python merely runs it on the way to a submodule). Modules of other top-level packages (the
harness core, torch, other plugins) are left out, so that a core change does not invalidate every
plugin's results. Imports are found by parsing, never by importing: light commands stay fast and a
broken plugin is not run.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

DIGEST_LENGTH = 16


def source_fingerprint(factory: Callable[..., Any] | str) -> str:
    """A short hex digest of the factory's source (see the module docstring); never raises.

    ``factory`` is a callable or a ``"module:attribute"`` string. Where no source file can be found
    (a builtin, a module built in memory, a C extension), the digest is of the callable's source if
    :mod:`inspect` can get it, else of its qualified name. Results are cached per module until
    :func:`clear_cache`.
    """
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
    else:
        module = getattr(factory, "__module__", None)
        module = module if isinstance(module, str) else ""
        name = getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or repr(factory)
    fingerprint = _module_fingerprint(module) if module else None
    return fingerprint or _fallback(factory, f"{module}:{name}")


def clear_cache() -> None:
    """Forget the cached fingerprints, for a process that edits sources while it runs (tests)."""
    _module_fingerprint.cache_clear()


def _fallback(factory: Callable[..., Any] | str, qualified_name: str) -> str:
    """The digest of the callable's source if ``inspect`` finds it, else of its qualified name."""
    text = qualified_name
    if callable(factory):
        try:
            text = inspect.getsource(factory)
        except (OSError, TypeError):
            pass
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


@functools.lru_cache(maxsize=None)
def _module_fingerprint(module: str) -> str | None:
    """The digest of ``module`` and its same-package imports; ``None`` if its source is not found."""
    try:
        # Only the top-level name: find_spec of a dotted name would import (run) the parent package.
        top = importlib.util.find_spec(module.partition(".")[0])
    except (ImportError, ValueError):  # ValueError: in sys.modules without a __spec__
        return None
    if top is None:
        return None
    sources = _collect(top, module)
    if module not in sources:
        return None
    digest = hashlib.sha256()
    for name in sorted(sources):
        source = sources[name]
        digest.update(f"{name}\0{len(source)}\0".encode())
        digest.update(source)
    return digest.hexdigest()[:DIGEST_LENGTH]


def _collect(top: ModuleSpec, module: str) -> dict[str, bytes]:
    """The source of ``module`` and of the modules of its package that it imports, by module name."""
    top_name = module.partition(".")[0]
    sources: dict[str, bytes] = {}
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _locate(top, name)
        if path is None:
            continue
        try:
            sources[name] = path.read_bytes()
        except OSError:
            continue
        for imported, fromlist in _imports(sources[name], name, path.name == "__init__.py"):
            if imported.partition(".")[0] != top_name:
                continue
            submodules = [f"{imported}.{item}" for item in fromlist if _locate(top, f"{imported}.{item}")]
            pending += submodules
            if len(submodules) < len(fromlist) or not fromlist:  # attributes (or ``*``) of ``imported``
                pending.append(imported)
    return sources


def _locate(top: ModuleSpec, module: str) -> Path | None:
    """The source file of ``module``, found by walking the top-level package's directories."""
    parts = module.split(".")
    if len(parts) == 1:
        path = Path(top.origin) if top.origin and top.has_location else None
        return path if path and path.suffix == ".py" and path.is_file() else None
    directories = [Path(location) for location in top.submodule_search_locations or ()]
    for part in parts[1:-1]:
        directories = [directory / part for directory in directories if (directory / part).is_dir()]
    for directory in directories:
        for candidate in (directory / parts[-1] / "__init__.py", directory / f"{parts[-1]}.py"):
            if candidate.is_file():
                return candidate
    return None


def _imports(source: bytes, module: str, is_package: bool) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Each import statement of ``source`` as (absolute module, names imported from it), anywhere in it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):  # not Python: hashed, but no imports to follow
        return
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parents = package.split(".") if package else []
                if node.level - 1 >= len(parents):
                    continue  # beyond the top-level package
                base = ".".join(parents[: len(parents) - node.level + 1] + ([node.module] if node.module else []))
            names = tuple(alias.name for alias in node.names if alias.name != "*")
            yield base, names

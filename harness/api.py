"""The Python API: what the command line does, from a notebook or a script, without a shell.

``benchmark`` evaluates an in-memory ``torch.nn.Module``; ``run`` runs a suite (a file or a dict);
``read`` and ``compare`` return leaderboards and comparisons as pandas DataFrames. They use the
command line's runner (cache, per-sample outcomes, resuming, checks), print nothing (warnings go
to :mod:`warnings` as :class:`HarnessWarning`, or to ``warn``), and raise the harness's exceptions
instead of exiting: :class:`~harness.errors.UsageError` for bad input (its subclass
:class:`~harness.errors.ValidationError` lists every problem of a suite or file in ``problems``),
:class:`~harness.errors.OutputError` for an output that cannot be written and
:class:`~harness.errors.BusyError` for a leaderboard another run is writing.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from harness.distributed import RayOptions
    from harness.registry import Registry

Warn = Callable[[str], None]


class HarnessWarning(UserWarning):
    """What the command line prints as ``harness: warning: ...``."""


def _warn_with_warnings(message: str) -> None:
    warnings.warn(message, HarnessWarning, stacklevel=2)


def run(
    suite: str | Path | Mapping[str, Any],
    *,
    output: str | Path | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    force: bool = False,
    plugins: Sequence[str] = (),
    progress: bool = False,
    warn: Warn | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Run a suite, as ``harness run``, and return its leaderboard.

    ``suite`` is a suite file or the same tables as a dict (its relative paths are then relative
    to the working directory). ``output`` defaults to the suite file's path with ``.csv``; a dict
    suite without one is written to a temporary folder (its models and attack runs still go to
    the cache, so running it again is quick). ``overrides`` are ``--set`` assignments
    (``"n_samples=50"``, ``"models.mlp.epochs=2"``); ``plugins`` are ``-p`` modules; ``threads``
    is ``--threads`` (torch's threads during the run, set back after it). ``executor="ray"``
    computes on Ray: a local runtime, or the cluster at ``address``, ``workers`` tasks at once.
    """
    from harness.distributed import RayOptions
    from harness.suite import read_suite_file

    if executor not in ("local", "ray"):
        raise UsageError(f"executor must be 'local' or 'ray', got {executor!r}")
    ray = RayOptions(address, workers) if executor == "ray" else None

    if isinstance(suite, Mapping):
        raw, path = dict(suite), Path.cwd() / f"{suite.get('name', 'suite')}.toml"
    else:
        path = Path(suite)
        raw = read_suite_file(path)
    default = None if isinstance(suite, Mapping) else path.with_suffix(".csv")
    return _run_raw(
        raw, path, output or default, overrides, cache_dir, data_dir, device, threads, force, plugins, progress, warn,
        ray=ray,
    )  # fmt: skip


def benchmark(
    model: nn.Module,
    *,
    eps: float | Sequence[float],
    attacks: Sequence[str | Mapping[str, Any]] = ("autoattack",),
    norm: str = "linf",
    dataset: str | Mapping[str, Any] = "digits",
    seeds: Sequence[int] = (0,),
    n_samples: int = 100,
    batch_size: int = 100,
    input_range: Sequence[float] = (0.0, 1.0),
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    label: str | None = None,
    output: str | Path | None = None,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    plugins: Sequence[str] = (),
    progress: bool = False,
    warn: Warn | None = None,
) -> pd.DataFrame:
    """Evaluate a trained ``model`` (class scores for images of ``dataset``) under ``attacks``
    at each ``eps`` in ``norm``, and return the leaderboard rows.

    ``attacks`` are names or suite-style tables (``{"name": "pgd", "max_iter": 100}``; a table's
    own ``eps`` and ``norm`` win). The model sees images in [0, 1] converted to its
    ``input_range`` and normalised with ``mean`` and ``std``, inside the evaluated model. Its
    identity (cache, cell ids) is a digest of its state dict and its class: the same weights
    reuse cached attack runs, other weights recompute. ``seeds`` seed the attacks (the model is
    already trained). The model itself is not changed: the harness evaluates a copy. ``threads``
    is as for :func:`run`.
    """
    from torch import nn

    from harness.cache import digest

    if not isinstance(model, nn.Module):
        raise UsageError(f"benchmark() evaluates a torch.nn.Module, got {type(model).__name__}")
    budgets = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    kind = type(model)
    name = label or kind.__name__
    tables = [{"name": a} if isinstance(a, str) else dict(a) for a in attacks]
    raw = {
        "name": "benchmark",
        "seeds": list(seeds),
        "n_samples": n_samples,
        "batch_size": batch_size,
        "datasets": [{"name": dataset} if isinstance(dataset, str) else dict(dataset)],
        "models": [
            {
                "name": IN_MEMORY,
                "label": name,
                "state": f"sha256:{digest(model.state_dict())}",
                "module_class": f"{kind.__module__}.{kind.__qualname__}",
                "input_range": [float(v) for v in input_range],
                "mean": [float(v) for v in mean],
                "std": [float(v) for v in std],
            }
        ],
        "attacks": [{"norm": norm, "eps": budgets, **table} for table in tables],
    }
    path = Path.cwd() / "benchmark.toml"
    return _run_raw(raw, path, output, (), cache_dir, data_dir, device, threads, False, plugins, progress, warn, model)


def read(leaderboard: str | Path) -> pd.DataFrame:
    """A leaderboard CSV, validated (a :class:`~harness.errors.ValidationError` otherwise)."""
    from harness.leaderboard import read_leaderboard

    return read_leaderboard(Path(leaderboard))


def compare(
    a: str | Path,
    b: str | Path | None = None,
    *,
    by: str | None = None,
    baseline: str | None = None,
    alpha: float = 0.05,
    warn: Warn | None = None,
) -> pd.DataFrame:
    """``harness compare``'s table: B against A entry by entry, or, with one leaderboard, each
    value of the column ``by`` against ``baseline`` (see :mod:`harness.comparison`). Empty when the
    two have no ok entry in common."""
    from harness import comparison as comparing
    from harness.outcomes import read_with_outcomes
    from harness.registry import did_you_mean

    warn = warn or _warn_with_warnings
    if b is not None and by:
        raise UsageError("--by (by=) compares the entries of one leaderboard: give one, or two without it")
    if b is None and not (by and baseline):
        raise UsageError("give two leaderboards (A.csv B.csv), or one with --by COLUMN --baseline VALUE (by=, baseline=)")
    first = comparing.side(*read_with_outcomes(Path(a), warn))
    if b is not None:
        return comparing.compare_two(first, comparing.side(*read_with_outcomes(Path(b), warn)), alpha)
    if by not in comparing.ENTRY[:4]:
        raise UsageError(f"'by' must be one of {', '.join(comparing.ENTRY[:4])}, got {by!r}")
    values = sorted(map(str, first.rows[by].unique()))
    if baseline not in values:
        raise UsageError(
            f"no ok rows with {by} = '{baseline}'{did_you_mean(str(baseline), values)} (found: {', '.join(values)})"
        )
    return comparing.compare_within(first, by, str(baseline), alpha)


# --- shared by run() and benchmark() ------------------------------------------------------------

IN_MEMORY = "module"
"""The model component that stands for :func:`benchmark`'s module in its suite."""


class _InMemoryModule:
    """The factory of the in-memory model component: a copy of the module, wrapped to take
    images in [0, 1]. Its suite parameters ``state`` and ``module_class`` are the identity only."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        state: str,
        module_class: str,
        input_range: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> Any:
        import copy

        from harness.checkpoint import PretrainedClassifier

        network = copy.deepcopy(self.module)
        source = f"the module {module_class}"
        return PretrainedClassifier(network, input_shape, num_classes, input_range=input_range, mean=mean, std=std, source=source)


def _register_module(registry: Registry, module: nn.Module) -> None:
    from harness.registry import Component

    registry.components["model"][IN_MEMORY] = Component(
        kind="model",
        name=IN_MEMORY,
        factory=_InMemoryModule(module),
        params={"state": "", "module_class": "", "input_range": [0.0, 1.0], "mean": [0.0], "std": [1.0]},
        choices={},
        description="the torch module given to harness.benchmark()",
        plugin="harness",
        distribution="robustness-harness",
        version=_own_version(),
    )


def _own_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("robustness-harness")
    except importlib.metadata.PackageNotFoundError:
        return ""


@contextmanager
def _output_or_temporary(output: str | Path | None) -> Iterator[Path]:
    if output is not None:
        yield Path(output)
        return
    with tempfile.TemporaryDirectory(prefix="harness-") as folder:
        yield Path(folder) / "leaderboard.csv"


def _run_raw(
    raw: dict[str, Any],
    path: Path,
    output: str | Path | None,
    overrides: Sequence[str],
    cache_dir: str | Path | None,
    data_dir: str | Path | None,
    device: str,
    threads: int | None,
    force: bool,
    plugins: Sequence[str],
    progress: bool,
    warn: Warn | None,
    module: nn.Module | None = None,
    ray: RayOptions | None = None,
) -> pd.DataFrame:
    from harness.leaderboard import read_leaderboard
    from harness.plugins import load_plugins
    from harness.runner import RunOptions, run_suite
    from harness.suite import parse_suite, suite_plugins

    warn = warn or _warn_with_warnings
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a whole number of at least 1, got {threads!r}")
    if overrides:
        from harness.overrides import apply_overrides

        raw = apply_overrides(raw, overrides)
    registry = load_plugins([*plugins, *suite_plugins(raw)], [Path.cwd(), path.resolve().parent])
    for plugin in registry.plugins:
        if plugin.error:
            warn(f"plugin '{plugin.name}' failed: {plugin.error}")
    if module is not None:
        _register_module(registry, module)
    suite = parse_suite(raw, path, registry)
    with _output_or_temporary(output) as csv:
        options = RunOptions(
            output=csv, device=device, threads=threads, force=force, progress=progress,
            effective_suite=raw if overrides else None, ray=ray,
        )  # fmt: skip
        if cache_dir is not None:
            options.cache_dir = Path(cache_dir)
        if data_dir is not None:
            options.data_dir = Path(data_dir)
        run_suite(suite, registry, options, warn)
        return read_leaderboard(csv)

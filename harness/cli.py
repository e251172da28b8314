"""The ``harness`` command line.

``plugins``, ``show``, ``compare``, ``plot``, ``validate`` and ``--help`` never import torch or ART,
so they start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, UsageError
from harness.plugins import load_plugins
from harness.registry import Component, ComponentTable, Registry, type_name
from harness.runner import warn_on_stderr

if TYPE_CHECKING:
    import pandas as pd

ENTRY_COLUMNS = ["dataset", "model", "defense", "attack", "norm", "eps"]


def _registry(
    args: argparse.Namespace, extra_plugins: Sequence[str] = (), search_path: Sequence[Path] = ()
) -> Registry:
    """The plugins, with -p modules looked up in the working directory and ``search_path`` too."""
    registry = load_plugins([*args.plugin, *extra_plugins], [Path.cwd(), *search_path])
    for plugin in registry.plugins:
        if plugin.error:
            warn_on_stderr(f"plugin '{plugin.name}' failed: {plugin.error}")
    return registry


def _load_suite(args: argparse.Namespace, path: Path) -> tuple[Any, Registry]:
    from harness.suite import parse_suite, read_suite_file, suite_plugins

    raw = read_suite_file(path)
    registry = _registry(args, suite_plugins(raw), [path.resolve().parent])
    return parse_suite(raw, path, registry), registry


def cmd_plugins(args: argparse.Namespace) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # what plugins print while loading must not spoil --json
        registry = _registry(args)
    listing = []
    for plugin in registry.plugins:
        components = {k: v for k, v in registry.by_plugin(plugin.name).items() if v}
        item: dict[str, Any] = {
            "name": plugin.name,
            "distribution": plugin.distribution,
            "version": plugin.version,
            "hooks": list(plugin.hooks),
            "components": components,
        }
        if args.params:
            item["params"] = {k: {n: _params(registry.get(k, n)) for n in names} for k, names in components.items()}
        if plugin.error:
            item["error"] = plugin.error
        listing.append(item)
    if args.json:
        print(json.dumps(listing, indent=2, default=repr))  # repr: a default JSON cannot hold
        return 0
    for plugin, item in zip(registry.plugins, listing):
        print(f"{plugin.name}  ({plugin.release})")
        if "error" in item:
            print(f"  FAILED: {item['error']}")
        print(f"  hooks: {', '.join(item['hooks']) or '-'}")
        for kind, names in item["components"].items():
            print(f"  {kind}s:")
            for name in names:
                print(f"    {name}: {registry.get(kind, name).description}")
                for param, spec in item["params"][kind][name].items() if args.params else ():
                    choices = f" (one of {', '.join(map(repr, spec['choices']))})" if spec["choices"] else ""
                    print(f"      {param}: {spec['type']} = {spec['default']!r}{choices}")
    return 0


def _params(component: Component) -> dict[str, dict[str, Any]]:
    """Each parameter's type, default and allowed values (``None``: any value of the type)."""
    return {
        name: {
            "type": type_name(default),
            "default": dict(default.default) if isinstance(default, ComponentTable) else default,
            "choices": list(component.choices[name]) if name in component.choices else None,
        }
        for name, default in component.params.items()
    }


def cmd_run(args: argparse.Namespace) -> int:
    from harness.runner import RunOptions, run_suite

    suite, registry = _load_suite(args, args.suite)
    options = RunOptions(output=args.output or args.suite.with_suffix(".csv"), device=args.device, force=args.force)
    if args.cache_dir:
        options.cache_dir = args.cache_dir
    if args.data_dir:
        options.data_dir = args.data_dir
    if args.progress is not None:
        options.progress = args.progress
    summary = run_suite(suite, registry, options)
    counts = ", ".join(f"{summary.counts.get(s, 0)} {s}" for s in ("ok", "skipped", "error"))
    print(
        f"{suite.name}: {summary.computed + summary.reused} cells ({summary.computed} computed, "
        f"{summary.reused} already done): {counts} in {summary.seconds:.1f}s -> {summary.output}"
    )
    if summary.counts.get("error"):
        print(f"harness: {summary.counts['error']} failed cells; see their 'message' column", file=sys.stderr)
        return 1
    return 0


def _filtered(frame: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    for column in ("dataset", "model", "defense", "attack", "norm"):
        wanted = getattr(args, column)
        if wanted:
            frame = frame[frame[column].isin(wanted)]
    if args.eps:
        frame = frame[frame["eps"].isin(args.eps)]
    if args.status != "all":
        frame = frame[frame["status"] == args.status]
    return frame


def cmd_show(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.leaderboard import metric_columns, read_leaderboard

    frame = read_leaderboard(args.csv)
    shown = _filtered(frame, args)
    if shown.empty:
        print("no rows match")
        return 0
    metrics = metric_columns(frame.columns)
    if args.per_seed:
        table = shown[[*ENTRY_COLUMNS, "seed", "clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low",
                       "robust_accuracy_ci_high", "attack_success_rate", *metrics, "status"]]  # fmt: skip
    else:
        grouped = shown.groupby(ENTRY_COLUMNS, dropna=False, sort=False)
        table = grouped.agg(
            seeds=("seed", "nunique"),
            clean_accuracy=("clean_accuracy", "mean"),
            robust_accuracy=("robust_accuracy", "mean"),
            robust_accuracy_std=("robust_accuracy", "std"),
            attack_success_rate=("attack_success_rate", "mean"),
            **{m: (m, "mean") for m in metrics},
        ).reset_index()
    if args.sort not in table.columns:
        raise UsageError(f"cannot sort by '{args.sort}' (columns: {', '.join(table.columns)})")
    # Rank within each threat setting: entries are comparable only at the same norm and eps.
    setting = ["dataset", "norm", "eps"]
    ascending = args.ascending or not higher_is_better(args.sort, frame)
    table = table.sort_values([*setting, args.sort], ascending=[True, True, True, ascending], kind="stable")
    table.insert(0, "rank", table.groupby(setting, dropna=False).cumcount() + 1)
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    hidden = len(frame) - len(_filtered(frame, argparse.Namespace(**{**vars(args), "status": "all"})))
    if args.status != "all":
        others = frame[frame["status"] != args.status]["status"].value_counts()
        if len(others):
            print("hidden: " + ", ".join(f"{n} {s}" for s, n in others.items()) + " rows (--status all shows them)")
    elif hidden:
        print(f"{hidden} rows filtered out")
    return 0


LOWER_IS_BETTER = {"attack_success_rate", "train_seconds", "attack_seconds"}


def higher_is_better(column: str, frame: pd.DataFrame) -> bool:
    """Which way ranks ``column`` best first: from the ``metrics`` provenance for a plugin's
    metric (unknown counts as higher), from the schema's meaning for the fixed columns."""
    from harness.leaderboard import METRIC_PREFIX

    if column.startswith(METRIC_PREFIX):
        label = column[len(METRIC_PREFIX) :]
        for text in frame["metrics"].dropna().unique():
            declared = json.loads(text).get(label, {}).get("higher_is_better")
            if declared is not None:
                return bool(declared)
        return True
    return column not in LOWER_IS_BETTER


def _schema_version(path: Path) -> Any:
    import pandas as pd

    try:
        versions = pd.read_csv(path, usecols=["schema_version"])["schema_version"].dropna().unique()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such leaderboard file") from None
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None  # validation explains what is wrong
    return versions[0] if len(versions) == 1 else None


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.leaderboard import KEY, read_leaderboard

    version_a, version_b = _schema_version(args.a), _schema_version(args.b)
    if version_a is not None and version_b is not None and version_a != version_b:
        raise HarnessError(f"schema versions differ: {args.a} has {version_a}, {args.b} has {version_b}")
    a = read_leaderboard(args.a)
    b = read_leaderboard(args.b)
    settings = ["n_samples", *(f"{kind}_params" for kind in ("dataset", "model", "defense", "attack"))]
    columns = [*KEY, "clean_accuracy", "robust_accuracy", *settings]
    merged = pd.merge(
        a[a["status"] == "ok"][columns], b[b["status"] == "ok"][columns], on=KEY, how="outer",
        suffixes=("_a", "_b"), indicator=True,
    )  # fmt: skip
    both = merged[merged["_merge"] == "both"].drop(columns="_merge")
    for metric in ("clean_accuracy", "robust_accuracy"):
        both[f"{metric}_diff"] = both[f"{metric}_b"] - both[f"{metric}_a"]
    both["note"] = [_differences(row, settings) for row in both.to_dict("records")]
    shown = [*KEY, "clean_accuracy_a", "clean_accuracy_b", "clean_accuracy_diff",
             "robust_accuracy_a", "robust_accuracy_b", "robust_accuracy_diff"]  # fmt: skip
    beyond = pd.Series(False, index=both.index)
    if args.tolerance is not None:
        largest = both[["clean_accuracy_diff", "robust_accuracy_diff"]].abs().max(axis=1)
        beyond = largest > args.tolerance + 1e-12
        both["within_tolerance"] = ~beyond
        shown.append("within_tolerance")
    print(f"A = {args.a}\nB = {args.b}  (diff = B - A)")
    with pd.option_context("display.width", 250, "display.max_rows", None, "display.max_columns", None):
        table = both[[*shown, "note"]] if both["note"].astype(bool).any() else both[shown]
        print(table.to_string(index=False, float_format=lambda v: f"{v:+.4f}" if v < 0 else f"{v:.4f}") if len(both) else "no common entries")
        for side, label in (("left_only", "A"), ("right_only", "B")):
            only = merged[merged["_merge"] == side][KEY]
            if len(only):
                print(f"\nonly in {label} ({len(only)}):")
                print(only.to_string(index=False))
    if args.tolerance is not None:
        largest = both[["clean_accuracy_diff", "robust_accuracy_diff"]].abs().max().max() if len(both) else 0.0
        print(
            f"\n{int((~beyond).sum())} of {len(both)} common entries within {args.tolerance:g} "
            f"(largest difference {largest:.4f})"
        )
        return 1 if beyond.any() else 0
    return 0


def _differences(row: dict[str, Any], settings: list[str]) -> str:
    """Why two aligned rows may not be comparable: their sample counts or parameters differ."""
    notes = []
    for column in settings:
        left, right = row[f"{column}_a"], row[f"{column}_b"]
        if left != right:
            notes.append(f"{column} differ ({left} vs {right})" if column == "n_samples" else f"{column} differ")
    return "; ".join(notes)


def cmd_validate(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path.suffix == ".toml":
        suite, _ = _load_suite(args, path)
        print(f"{path}: valid suite '{suite.name}' ({len(suite.cells())} cells)")
    elif path.suffix == ".csv":
        from harness.leaderboard import read_leaderboard

        frame = read_leaderboard(path)
        counts = frame["status"].value_counts()
        summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "error"))
        print(f"{path}: valid leaderboard ({len(frame)} rows: {summary})")
    else:
        raise UsageError(f"{path}: cannot tell a suite (.toml) from a leaderboard (.csv) by its name")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from harness.plots import plot_leaderboard

    plots = plot_leaderboard(args.csv, args.output or args.csv.parent / f"{args.csv.stem}-plots")
    for note in plots.skipped:
        print(f"harness: skipped {note}", file=sys.stderr)
    for path in plots.written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Benchmark the adversarial robustness of PyTorch models through plugins."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_own_version()}")
    parser.add_argument(
        "-p", dest="plugin", action="append", default=[], metavar="MODULE|no:NAME",
        help="load a module as a plugin, or block plugin NAME with no:NAME (repeatable)",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list plugins and the components they register")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.add_argument("--params", action="store_true", help="also list each component's parameters")
    plugins.set_defaults(handler=cmd_plugins)

    run = commands.add_parser("run", help="run a suite into a leaderboard CSV (resumes unfinished runs)")
    run.add_argument("suite", type=Path, help="suite TOML file")
    run.add_argument("--output", "-o", type=Path, help="leaderboard CSV (default: the suite's path with .csv)")
    run.add_argument("--cache-dir", type=Path, help="cache of trained models, heads and attack runs (default: $HARNESS_CACHE_DIR or ~/.cache/harness/cache)")
    run.add_argument("--data-dir", type=Path, help="dataset files (default: $HARNESS_DATA_DIR or ~/.cache/harness/data)")
    run.add_argument("--force", action="store_true", help="recompute every cell, even completed ones")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: when stderr is a terminal)")  # fmt: skip
    run.set_defaults(handler=cmd_run)

    show = commands.add_parser("show", help="a ranked table of a leaderboard, averaged over seeds")
    show.add_argument("csv", type=Path)
    for column in ("dataset", "model", "defense", "attack", "norm"):
        show.add_argument(f"--{column}", action="append", help=f"keep only this {column} (repeatable)")
    show.add_argument("--eps", action="append", type=float, help="keep only this eps (repeatable)")
    show.add_argument("--status", default="ok", choices=["ok", "skipped", "error", "all"], help="default: ok")
    show.add_argument("--sort", default="robust_accuracy", help="column to rank by, best first (default: robust_accuracy)")
    show.add_argument("--ascending", action="store_true", help="rank from the lowest value, whatever is better")
    show.add_argument("--per-seed", action="store_true", help="one row per seed instead of the mean over seeds")
    show.set_defaults(handler=cmd_show)

    compare = commands.add_parser("compare", help="align two leaderboards entry by entry")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.add_argument(
        "--tolerance", type=float, metavar="T",
        help="flag entries whose accuracies differ by more than T, and exit 1 if any does",
    )  # fmt: skip
    compare.set_defaults(handler=cmd_compare)

    plot = commands.add_parser("plot", help="PNG figures: robust accuracy against eps, perturbation sizes")
    plot.add_argument("csv", type=Path)
    plot.add_argument(
        "--output", "-o", type=Path, metavar="DIR", help="folder for the figures (default: <csv stem>-plots beside the CSV)"
    )
    plot.set_defaults(handler=cmd_plot)

    validate = commands.add_parser("validate", help="check a suite (.toml) or a leaderboard (.csv)")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=cmd_validate)
    return parser


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("robustness-harness")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (`harness plugins | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("harness: interrupted; finished cells are saved, run the same command again to resume", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())

"""The ``harness`` command line.

``plugins``, ``show``, ``compare``, ``plot``, ``site``, ``validate`` and ``--help`` never import torch or ART,
so they start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, UsageError
from harness.files import describe
from harness.plugins import load_plugins
from harness.registry import REFERENCES, Component, ComponentTable, Registry, type_name
from harness.runner import default_cache_dir, warn_on_stderr

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
    from harness.suite import read_suite_file

    return _parse_suite(args, read_suite_file(path), path)


def _parse_suite(args: argparse.Namespace, raw: dict[str, Any], path: Path) -> tuple[Any, Registry]:
    from harness.suite import parse_suite, suite_plugins

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
            item["unavailable"] = {
                f"{kind}:{name}": reason
                for kind, names in components.items() for name in names
                if (reason := registry.get(kind, name).availability())
            }  # fmt: skip
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
                reason = item.get("unavailable", {}).get(f"{kind}:{name}")
                status = f"UNAVAILABLE ({reason}): " if reason else ""
                print(f"    {name}: {status}{registry.get(kind, name).description}")
                for param, spec in item["params"][kind][name].items() if args.params else ():
                    choices = f" (one of {', '.join(map(repr, spec['choices']))})" if spec["choices"] else ""
                    bounds = f" ({spec['range']})" if spec["range"] else ""
                    print(f"      {param}: {spec['type']} = {spec['default']!r}{choices}{bounds}")
    return 0


def _params(component: Component) -> dict[str, dict[str, Any]]:
    """Each parameter's type, default, allowed values and range (``None``: any value of the type)."""
    return {
        name: {
            "type": type_name(default),
            "default": dict(default.default) if isinstance(default, ComponentTable)
            else default.default if isinstance(default, REFERENCES) else default,
            "choices": list(component.choices[name]) if name in component.choices else None,
            "range": str(component.ranges[name]) if name in component.ranges else None,
        }
        for name, default in component.params.items()
    }


def cmd_run(args: argparse.Namespace) -> int:
    from harness.errors import ValidationError
    from harness.overrides import apply_overrides, effective_suite_path
    from harness.suite import read_suite_file

    raw = apply_overrides(read_suite_file(args.suite), args.set)
    try:
        suite, registry = _parse_suite(args, raw, args.suite)
    except ValidationError as exc:
        if not args.set:
            raise
        raise ValidationError(f"{exc.source} with --set", exc.problems) from None
    output = args.suite.with_suffix(".csv") if args.output is None else args.output
    cache_dir = args.cache_dir or default_cache_dir()
    if args.set:
        recorded = "" if args.plan else f" (the suite run is recorded in {effective_suite_path(output)})"
        print(f"harness: overrides: {', '.join(args.set)}{recorded}", file=sys.stderr)
    if args.plan:
        from harness.plan import plan_run, render_plan

        print(render_plan(plan_run(suite, output, cache_dir, force=args.force)))
        return 0
    from harness.distributed import RayOptions
    from harness.runner import RunOptions, run_suite

    if args.executor == "local" and (args.address or args.workers):
        raise UsageError("--address and --workers are for --executor ray")
    ray = None
    if args.executor == "ray":
        ray = RayOptions(args.address, args.workers, args.cpus_per_task, args.gpus_per_task)
    options = RunOptions(
        output=output, cache_dir=cache_dir, device=args.device, force=args.force, wait=args.wait,
        threads=args.threads, effective_suite=raw if args.set else None, ray=ray,
        checkpoint_minutes=args.checkpoint_every,
    )  # fmt: skip
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


def read_with_outcomes(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A leaderboard and its valid outcomes (see :func:`harness.outcomes.read_with_outcomes`)."""
    from harness import outcomes

    return outcomes.read_with_outcomes(path, warn_on_stderr)


def cmd_show(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.leaderboard import metric_columns
    from harness.review import FLAGS, WORST_CASE, flags, over_seeds, verdicts, worst_case

    frame, outcomes = read_with_outcomes(args.csv)
    frame = frame.assign(flags=flags(frame))
    if outcomes is not None and args.by == "attack":
        frame = pd.concat([frame, worst_case(frame, outcomes)], ignore_index=True)
    shown = _filtered(frame, args)
    if args.by == "entry" and not (shown["status"] == "ok").any() and len(shown):
        print("no ok rows match (the entries are ranked on ok rows; --by attack lists the others)")
        return 0
    if shown.empty:
        print("no rows match")
        return 0
    metrics = metric_columns(frame.columns)
    seed = ["seed"] if args.per_seed else []
    if args.by == "entry":
        table, worst = _entry_table(shown[shown["status"] == "ok"], outcomes, seed)
    elif args.per_seed:
        table = shown[[*ENTRY_COLUMNS, "seed", "clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low",
                       "robust_accuracy_ci_high", "attack_success_rate", *metrics, "status", "flags"]]  # fmt: skip
    else:
        table = over_seeds(shown, ENTRY_COLUMNS, metrics)
    sort = args.sort or ("worst_case" if args.by == "entry" else "robust_accuracy")
    if sort not in table.columns:
        hint = " (per-attack columns such as metrics: add --by attack)" if args.by == "entry" and sort in frame.columns else ""
        raise UsageError(f"cannot sort by '{sort}'{hint} (columns: {', '.join(table.columns)})")
    # Rank within each threat setting: entries are comparable only at the same norm and eps.
    setting = ["dataset", "norm", "eps"]
    ascending = args.ascending or not higher_is_better(sort, frame)
    table = table.sort_values([*setting, sort], ascending=[True, True, True, ascending], kind="stable")
    table.insert(0, "rank", table.groupby(setting, dropna=False).cumcount() + 1)
    table["flags"] = table["flags"].fillna("")
    with pd.option_context("display.width", 250, "display.max_rows", None, "display.max_columns", None):
        print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))
    if not args.per_seed:
        interval = "ci_low, ci_high" if args.by == "entry" else "robust_ci"
        print(f"{interval}: 95% Student-t interval of the mean over seeds, clipped to [0, 1] (Wilson interval for one seed)")
    if args.by == "entry":
        print("worst_case: robust accuracy when a sample counts as robust only if every attack failed on it; "
              "then each attack's robust accuracy")  # fmt: skip
        bounded = worst[worst["message"].str.startswith("lowest of")]
        if len(bounded):
            print(f"worst_case: {len(bounded)} rows without per-sample outcomes show the lowest attack's, an upper bound")
    elif outcomes is not None and (shown["attack"] == WORST_CASE).any():
        print("worst-case: a sample counts as robust only if every attack of the leaderboard failed on it")
    raised = sorted({name for text in table["flags"] for name in text.split("; ") if name})
    for name in raised:
        print(f"flag {name}: {FLAGS[name]}")
    for line in verdicts(shown[shown["attack"] != WORST_CASE]):
        print(line)
    hidden = len(frame) - len(_filtered(frame, argparse.Namespace(**{**vars(args), "status": "all"})))
    if args.status != "all":
        others = frame[frame["status"] != args.status]["status"].value_counts()
        if len(others):
            print("hidden: " + ", ".join(f"{n} {s}" for s, n in others.items()) + " rows (--status all shows them)")
    elif hidden:
        print(f"{hidden} rows filtered out")
    return 0


def _entry_table(ok: pd.DataFrame, outcomes: pd.DataFrame | None, seed: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per (dataset, norm, eps, model, defense) (and seed): the worst case over the attacks
    shown, with its interval, then each attack's robust accuracy; and the worst-case rows."""
    from harness.review import over_seeds, worst_over_attacks

    keys = ["dataset", "norm", "eps", "model", "defense", *seed]
    worst, _ = worst_over_attacks(ok, outcomes)
    table = over_seeds(worst, keys)
    table = table.drop(columns=["attack_success_rate", *(["seeds"] if seed else [])])
    table = table.rename(columns={"clean_accuracy": "clean", "robust_accuracy": "worst_case", "robust_ci_low": "ci_low",
                                  "robust_ci_high": "ci_high"})  # fmt: skip
    per_attack = ok.groupby([*keys, "attack"], dropna=False)["robust_accuracy"].mean().unstack("attack")
    per_attack.columns = [f"{a} (attack)" if a in table.columns or a == "flags" else a for a in per_attack.columns]
    raised = ok.groupby(keys, dropna=False)["flags"].agg(
        lambda texts: "; ".join(sorted({n for text in texts.fillna("") for n in text.split("; ") if n}))
    )
    return table.join(per_attack, on=keys).join(raised, on=keys), worst


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


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.api import compare, read

    table = compare(args.a, args.b, by=args.by, baseline=args.baseline, alpha=args.alpha, warn=warn_on_stderr)
    if args.b is None:
        title = f"{args.a}: each {args.by} against {args.by} = {args.baseline}"
    else:
        title = f"B = {args.b} against A = {args.a}"
    beyond = pd.Series(False, index=table.index)
    if args.tolerance is not None and len(table):
        largest = table[["clean_diff", "robust_diff"]].abs().max(axis=1)
        beyond = largest > args.tolerance + 1e-12
        table["within_tolerance"] = ~beyond
    if table.empty:
        if args.b is not None and not (args.json or args.csv):
            _print_one_sided(read(args.a), read(args.b))
        print(f"harness: error: {title}: no common ok entries, so nothing was compared", file=sys.stderr)
        return 1
    if args.json:
        print(table.to_json(orient="records", indent=2, double_precision=15))
    elif args.csv:
        print(table.to_csv(index=False), end="")
    else:
        _print_comparison(table, title, args)
        if args.b is not None:
            _print_one_sided(read(args.a), read(args.b))
    return 1 if beyond.any() else 0


SHORT_VERDICTS = {"no significant difference": "n.s."}
LABEL_WIDTH = 24
"""Labels longer than this are cut in the narrow ``compare`` table (``--wide`` prints them whole)."""


def _print_comparison(table: pd.DataFrame, title: str, args: argparse.Namespace) -> None:
    """The comparison as a table that fits the terminal (``--wide``: every column, whole), and the
    footnotes that say how to read it."""
    import shutil
    import textwrap

    import pandas as pd

    width = 10_000 if args.wide else shutil.get_terminal_size((120, 24)).columns
    print(title)

    def interval(measure: str) -> list[str]:
        return [
            f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            for d, lo, hi in zip(table[f"{measure}_diff"], table[f"{measure}_diff_low"], table[f"{measure}_diff_high"])
        ]

    def verdict(measure: str) -> pd.Series:
        """The verdict, marked when it calls a difference that the interval over seeds does not exclude."""
        crossing = table[f"{measure}_verdict"].isin(["better", "worse"]) & (table[f"{measure}_diff_low"] <= 0) & (
            table[f"{measure}_diff_high"] >= 0
        )
        text = table[f"{measure}_verdict"] if args.wide else table[f"{measure}_verdict"].replace(SHORT_VERDICTS)
        return text + crossing.map({True: "*", False: ""})

    def label(values: pd.Series) -> pd.Series:
        text = values.astype(str)
        return text if args.wide else text.map(lambda t: t if len(t) <= LABEL_WIDTH else t[: LABEL_WIDTH - 2] + "..")

    columns = [c for c in ("dataset", "model", "defense", "attack", "norm", "eps") if c != args.by]
    constant = [c for c in columns if c != "eps" and table[c].nunique() == 1]
    seeds = f", {table['seeds'].iloc[0]} seeds" if table["seeds"].nunique() == 1 and not args.wide else ""
    if constant or seeds:
        print("for " + ", ".join(f"{c} = {table[c].iloc[0]}" for c in constant) + seeds)
    columns = [c for c in columns if c not in constant]
    people = pd.DataFrame({c: table[c] if c == "eps" else label(table[c]) for c in columns})
    people["candidate"] = label(table["candidate"])
    if not seeds:
        people["seeds"] = table["seeds"]
    people["clean diff [95% CI]"] = interval("clean")
    verdicts = {measure: verdict(measure) for measure in ("clean", "robust")}
    people["clean verdict" if args.wide else "clean"] = verdicts["clean"]
    people["robust base" if args.wide else "base"] = table["robust_baseline"].map("{:.3f}".format)
    people["robust cand" if args.wide else "cand"] = table["robust_candidate"].map("{:.3f}".format)
    people["robust diff [95% CI]"] = interval("robust")
    people["test"] = table["robust_test"] if args.wide else table["robust_test"].str.split(" ").str[0]
    people["p (Holm)"] = table["robust_p_holm"].map(lambda v: "-" if v != v else f"{v:.3g}")
    people["verdict" if args.wide else "robust"] = verdicts["robust"]
    if "within_tolerance" in table:
        people["within tolerance"] = table["within_tolerance"]
    notes = table["note"].fillna("")
    shared_note = notes.iloc[0] if notes.nunique() == 1 else ""
    numbered = {note: f"[{i}]" for i, note in enumerate(dict.fromkeys(n for n in notes if n), 1)}
    if notes.astype(bool).any() and not shared_note:
        people["note"] = notes if args.wide else notes.map(lambda n: numbered.get(n, ""))
    clean = ["clean diff [95% CI]", "clean"]
    per_model = [c for c in people.columns if c in ("dataset", "model", "defense", "candidate", "seeds")]
    if not args.wide and len(people[per_model + clean].drop_duplicates()) == len(people[per_model].drop_duplicates()):
        # clean accuracy is a trained model's: one line per candidate model, not one per attack and eps
        print(people[per_model + clean].drop_duplicates().to_string(index=False, line_width=width) + "\n")
        people = people.drop(columns=clean)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.max_colwidth", None):
        print(people.to_string(index=False, line_width=width))
    if shared_note:
        print(f"note (every row): {shared_note}")
    elif not args.wide:
        for note, mark in numbered.items():
            print(f"{mark} {note}")
    if not args.wide and any(v.str.startswith("n.s.").any() for v in verdicts.values()):
        print("n.s.: no significant difference")
    if any(v.str.endswith("*").any() for v in verdicts.values()):
        print(textwrap.fill(
            "*: significant, but the 95% interval crosses zero: the test pools the per-sample outcomes of the seeds "
            "(these trained models, these samples), the interval is over seeds (another seed may disagree)", width=width
        ))  # fmt: skip
    tested = int(table["robust_p"].notna().sum())
    print(textwrap.fill(
        f"\nverdict: candidate against baseline at alpha {args.alpha:g}, Holm-corrected over the {tested} tested comparisons "
        "of each column; test: Wilcoxon signed-rank over seeds when it can reach alpha (6+ seeds), else exact McNemar "
        "on the per-sample outcomes pooled over seeds; interval: Student-t over per-seed differences (Newcombe for one seed)",
        width=width, replace_whitespace=False,
    ))  # fmt: skip
    if "within_tolerance" in table:
        largest = table[["clean_diff", "robust_diff"]].abs().max().max()
        print(f"{int(table['within_tolerance'].sum())} of {len(table)} common entries within {args.tolerance:g} (largest difference {largest:.4f})")


def _print_one_sided(a: pd.DataFrame, b: pd.DataFrame) -> None:
    import pandas as pd

    from harness.leaderboard import KEY

    merged = pd.merge(a[a["status"] == "ok"][KEY], b[b["status"] == "ok"][KEY], on=KEY, how="outer", indicator=True)
    for side_name, label in (("left_only", "A"), ("right_only", "B")):
        only = merged[merged["_merge"] == side_name][KEY]
        if len(only):
            print(f"\nonly in {label} ({len(only)}):")
            print(only.to_string(index=False))


def cmd_validate(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path.suffix == ".toml":
        from harness.suite import budget_warnings

        suite, _ = _load_suite(args, path)
        for message in budget_warnings(suite):
            warn_on_stderr(message)
        print(f"{path}: valid suite '{suite.name}' ({len(suite.cells())} cells)")
    elif path.suffix == ".csv":
        from harness.leaderboard import read_leaderboard

        from harness.outcomes import check_against, outcomes_path, read_outcomes

        frame = read_leaderboard(path)
        counts = frame["status"].value_counts()
        summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "error"))
        beside = outcomes_path(path)
        if beside.exists():
            outcomes = read_outcomes(beside)
            check_against(outcomes, frame, str(beside))
            summary += f"; with outcomes: {len(outcomes)} samples of {outcomes['cell_id'].nunique()} cells"
        print(f"{path}: valid leaderboard ({len(frame)} rows: {summary})")
    else:
        raise UsageError(f"{path}: cannot tell a suite (.toml) from a leaderboard (.csv) by its name")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from harness.plots import plot_leaderboard

    filters = {column: getattr(args, column) for column in ("model", "defense", "attack")}
    plots = plot_leaderboard(args.csv, args.output or args.csv.parent / f"{args.csv.stem}-plots", filters)
    for note in plots.skipped:
        print(f"harness: skipped {note}", file=sys.stderr)
    for path in plots.written:
        print(path)
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    from harness.site import build_site

    pages = build_site(args.csv, args.output, warn_on_stderr)
    print(f"{args.output / 'index.html'} ({len(pages)} pages)")
    return 0


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_name(text: str) -> str:
    """A ``--device`` value, checked when the arguments are parsed (exit 2, before any work)."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda, cuda:N or mps")
    return text


def positive_int(text: str) -> int:
    """A count such as ``--threads``: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def positive_number(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def non_negative_number(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def significance_level(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"the significance level must lie strictly between 0 and 1, got {text!r}")
    return value


def tolerance(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"the tolerance must be a finite number >= 0, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


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
    run.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    run.add_argument("--wait", action="store_true", help="wait for another run writing the same output, instead of failing")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars even without a terminal, or nothing (default: bars on a terminal, "
                     "else a plain line per finished model and, between them, every 30 s or so)")  # fmt: skip
    run.add_argument("--threads", type=positive_int, metavar="N",
                     help="torch threads (default: $OMP_NUM_THREADS, else the cores this process may use)")  # fmt: skip
    run.add_argument("--checkpoint-every", type=non_negative_number, default=10.0, metavar="MINUTES",
                     help="save a training's state this often, at the end of an epoch, so that a killed run "
                     "resumes it (default: 10; 0: every epoch)")  # fmt: skip
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override the suite: a top-level key (n_samples=50) or SECTION.LABEL.PARAM (models.mlp.epochs=2, "
        "attacks.pgd.eps=[0.1]); VALUE is TOML, or a bare word taken as a string (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "--plan", action="store_true",
        help="compute nothing: print the cells already done and the models and attack runs to compute or load",
    )  # fmt: skip
    ray = run.add_argument_group("Ray (robustness-harness[ray]; see 'Running on a cluster' in the README)")
    ray.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="compute in this process (default) or as Ray tasks")  # fmt: skip
    ray.add_argument("--address", help="a Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT "
                     "(default: start a local Ray runtime)")  # fmt: skip
    ray.add_argument("--workers", type=positive_int, metavar="N",
                     help="at most N tasks at once (default: as many as the cluster's CPUs allow)")  # fmt: skip
    ray.add_argument("--cpus-per-task", type=positive_number, default=1.0, metavar="C",
                     help="CPUs per task; its torch threads (default: 1)")  # fmt: skip
    ray.add_argument("--gpus-per-task", type=non_negative_number, default=0.0, metavar="G",
                     help="GPUs per task; fractions share one (default: 0)")  # fmt: skip
    run.set_defaults(handler=cmd_run)

    show = commands.add_parser("show", help="a ranked table of a leaderboard, averaged over seeds")
    show.add_argument("csv", type=Path)
    for column in ("dataset", "model", "defense", "attack", "norm"):
        show.add_argument(f"--{column}", action="append", help=f"keep only this {column} (repeatable)")
    show.add_argument("--eps", action="append", type=float, help="keep only this eps (repeatable)")
    show.add_argument("--status", default="ok", choices=["ok", "skipped", "error", "all"], help="default: ok")
    show.add_argument(
        "--by", choices=["entry", "attack"], default="entry",
        help="entry: a row per (model, defense), ranked by the worst case over the attacks, then each attack's "
        "robust accuracy (default); attack: a row per attack, and the worst case as one more",
    )  # fmt: skip
    show.add_argument("--sort", help="column to rank by, best first (default: worst_case, or robust_accuracy with --by attack)")
    show.add_argument("--ascending", action="store_true", help="rank from the lowest value, whatever is better")
    show.add_argument("--per-seed", action="store_true", help="one row per seed instead of the mean over seeds")
    show.set_defaults(handler=cmd_show)

    compare = commands.add_parser(
        "compare", help="paired statistics: B against A entry by entry, or one leaderboard's entries against a baseline"
    )
    compare.add_argument("a", type=Path, help="a leaderboard (the baseline when B is given)")
    compare.add_argument("b", type=Path, nargs="?", help="a second leaderboard, compared against A")
    compare.add_argument("--by", choices=["model", "defense", "attack", "dataset"], help="compare the values of this column within A")
    compare.add_argument("--baseline", help="the value of --by the others are compared against")
    compare.add_argument(
        "--alpha", type=significance_level, default=0.05, help="significance level of the verdicts, in (0, 1) (default 0.05)"
    )
    compare.add_argument(
        "--tolerance", type=tolerance, metavar="T",
        help="flag entries whose accuracies differ by more than T, and exit 1 if any does",
    )  # fmt: skip
    output = compare.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the full table as JSON records")
    output.add_argument("--csv", action="store_true", help="print the full table as CSV")
    output.add_argument("--wide", action="store_true", help="print every column whole, however wide (default: fit the terminal)")
    compare.set_defaults(handler=cmd_compare)

    plot = commands.add_parser("plot", help="PNG figures: robust accuracy against eps, perturbation sizes")
    plot.add_argument("csv", type=Path)
    plot.add_argument(
        "--output", "-o", type=Path, metavar="DIR", help="folder for the figures (default: <csv stem>-plots beside the CSV)"
    )
    for column in ("model", "defense", "attack"):
        plot.add_argument(f"--{column}", action="append", help=f"draw only this {column} (repeatable)")
    plot.set_defaults(handler=cmd_plot)

    site = commands.add_parser("site", help="a static website of leaderboards: sortable tables, entry pages, figures")
    site.add_argument("csv", type=Path, nargs="+", help="leaderboard CSVs (their outcomes files are read when beside them)")
    site.add_argument("--output", "-o", type=Path, default=Path("site"), metavar="DIR", help="folder of the site (default: site)")
    site.set_defaults(handler=cmd_site)

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
    except BrokenPipeError:  # the reader went away (`harness plugins | head`); an OSError, so caught first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file that cannot be read or written, wherever it was met
        print(f"harness: error: {describe(exc)}", file=sys.stderr)
        return UsageError.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted; finished cells are saved, run the same command again to resume", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())

"""The figures of ``harness plot``: robust accuracy against eps, and the perturbation sizes a
minimal-norm attack needed.

The series behind each line (:func:`accuracy_series`, :func:`perturbation_cdf`) are computed with
pandas apart from the drawing, so that tests check the numbers rather than pixels. Drawing is
headless (Agg) and, like ``show``, imports neither torch nor ART: plotting a leaderboard takes
seconds, not the start-up of a run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.leaderboard import read_leaderboard
from harness.outcomes import check_against, outcomes_path, read_outcomes
from harness.review import wilson_interval, worst_case
from harness.statistics import t_quantile

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL = ["dataset", "norm"]
LINE = ["model", "defense", "attack"]
MAX_LINES = 8
"""More lines than this in a panel split it, a panel per model, or per (model, defense): a legend
of 20 entries is larger than the plot and no line can be told from its neighbours."""
PANELS_PER_PAGE = 12
"""Panels per figure file; more go to further pages (``robust-accuracy-page2.png``, ...)."""
CONFIDENCE = 0.95
DPI = 150
PANEL_SIZE = (6.5, 4.5)
"""Inches per panel: wide enough for five eps ticks and a legend row under it."""
MARKERS = ["o", "s", "^", "D", "v", "P", "*"]
NORM_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}
ACCURACY_FILE = "robust-accuracy.png"
CDF_FILE = "perturbation-cdf.png"


@dataclass
class Plots:
    """What ``plot_leaderboard`` wrote, and why it left a figure out."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def accuracy_series(rows: pd.DataFrame) -> pd.DataFrame:
    """One point per (dataset, norm, model, defense, attack, eps): the mean robust accuracy over
    seeds with its 95% interval (Student-t over the seeds' values with 2+ seeds, else the row's
    Wilson interval), clipped to [0, 1].

    Rows at eps = inf are left out (they have no place on an eps axis). An entry without a
    measured eps-0 row starts at its clean accuracy at eps 0 (``measured`` False there), where
    robust accuracy equals clean accuracy by definition.
    """
    rows = rows[(rows["status"] == "ok") & np.isfinite(rows["eps"])]
    measured = rows.assign(measured=True)
    has_zero = rows[rows["eps"] == 0].groupby([*PANEL, *LINE]).size().index
    clean = rows[~rows.set_index([*PANEL, *LINE]).index.isin(has_zero)].drop_duplicates([*PANEL, *LINE, "seed"])
    intervals = [wilson_interval(round(a * n), int(n)) for a, n in zip(clean["clean_accuracy"], clean["n_samples"])]
    clean = clean.assign(
        eps=0.0,
        robust_accuracy=clean["clean_accuracy"],
        robust_accuracy_ci_low=[low for low, _ in intervals],
        robust_accuracy_ci_high=[high for _, high in intervals],
        measured=False,
    )
    points = pd.concat([measured, clean], ignore_index=True)
    series = (
        points.groupby([*PANEL, *LINE, "eps", "measured"], sort=True)
        .agg(
            seeds=("seed", "nunique"),
            robust_accuracy=("robust_accuracy", "mean"),
            std=("robust_accuracy", "std"),
            wilson_low=("robust_accuracy_ci_low", "first"),
            wilson_high=("robust_accuracy_ci_high", "first"),
        )
        .reset_index()
    )
    several = series["seeds"] >= 2
    quantile = series["seeds"].map(lambda seeds: t_quantile(CONFIDENCE, max(seeds - 1, 1)))
    half = quantile * series["std"] / np.sqrt(series["seeds"])
    series["low"] = np.where(several, series["robust_accuracy"] - half, series["wilson_low"]).clip(0, 1)
    series["high"] = np.where(several, series["robust_accuracy"] + half, series["wilson_high"]).clip(0, 1)
    return series[[*PANEL, *LINE, "eps", "measured", "seeds", "robust_accuracy", "low", "high"]]


def perturbation_cdf(rows: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """For each minimal-norm attack entry, its success rate within each perturbation size: the
    fraction of clean-correct samples it broke with a perturbation at most ``size`` (in the
    attack's norm), averaged over seeds.

    Each seed's sizes come from the outcomes of its sweep's largest eps that has outcomes (all eps
    of a minimal-norm attack share one run; the largest keeps the most samples): a sample is
    broken where ``robust < clean_correct``, by the fraction ``clean_correct - robust`` for a
    stochastic model, and ``perturbation`` is its size. Beyond a finite ``largest_eps`` the sizes
    are unknown.
    """
    minimal = rows[(rows["status"] == "ok") & (rows["minimal_norm"] == "True")]
    minimal = minimal[minimal["cell_id"].isin(outcomes["cell_id"])]
    largest = minimal.loc[minimal.groupby([*PANEL, *LINE, "seed"])["eps"].idxmax()]
    by_cell = dict(tuple(outcomes.groupby("cell_id")))
    lines = []
    for key, sweeps in largest.groupby([*PANEL, *LINE], sort=True):
        curves = []
        for cell_id in sweeps["cell_id"]:
            samples = by_cell[cell_id]
            broken = (samples["clean_correct"] - samples["robust"]).clip(lower=0)
            if samples["clean_correct"].sum() > 0:
                steps = broken[broken > 0].groupby(samples["perturbation"][broken > 0]).sum().sort_index()
                curves.append((steps.index.to_numpy(), steps.cumsum().to_numpy() / samples["clean_correct"].sum()))
        if not curves:
            continue
        sizes = np.unique(np.concatenate([[0.0], *(s for s, _ in curves)]))
        success = np.mean(
            [np.concatenate([[0.0], c])[np.searchsorted(s, sizes, side="right")] for s, c in curves], axis=0
        )
        lines.append(
            pd.DataFrame(
                {
                    **dict(zip([*PANEL, *LINE], key)),
                    "seeds": len(curves),
                    "largest_eps": sweeps["eps"].min(),
                    "size": sizes,
                    "success": success,
                }
            )
        )
    columns = [*PANEL, *LINE, "seeds", "largest_eps", "size", "success"]
    return pd.concat(lines, ignore_index=True) if lines else pd.DataFrame(columns=columns)


def plot_leaderboard(csv: Path, output: Path, filters: dict[str, Sequence[str]] | None = None) -> Plots:
    """Write the figures of the leaderboard ``csv`` into the folder ``output``; ``filters`` keeps
    the rows whose column (``model``, ``defense``, ``attack``) holds one of the values given."""
    frame = read_leaderboard(csv)
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        raise UsageError(f"{csv}: no ok rows to plot")
    for column, values in (filters or {}).items():
        if values:
            ok = ok[ok[column].isin(values)]
    if ok.empty:
        raise UsageError(f"{csv}: no ok rows match {_describe(filters or {})}")
    outcomes = None
    if outcomes_path(csv).exists():
        outcomes = read_outcomes(outcomes_path(csv))
        check_against(outcomes, frame, str(outcomes_path(csv)))
    suite = ", ".join(sorted(ok["suite"].unique()))
    plots = Plots()
    try:
        output.mkdir(parents=True, exist_ok=True)
        datasets = sorted(ok["dataset"].unique())
        for dataset in datasets:
            rows = ok[ok["dataset"] == dataset]
            worst = worst_case(rows, outcomes) if outcomes is not None else None
            name = ACCURACY_FILE if len(datasets) == 1 else f"robust-accuracy-{file_label(dataset)}.png"
            figures = accuracy_figures(rows, worst, suite if len(datasets) == 1 else f"{suite} ({dataset})")
            plots.written += _save_pages(figures, output / name)
        minimal = ok[ok["minimal_norm"] == "True"]
        if minimal.empty:
            plots.skipped.append(f"{CDF_FILE}: no minimal-norm attack in {csv}")
        elif outcomes is None:
            plots.skipped.append(f"{CDF_FILE}: no outcomes file ({outcomes_path(csv).name}) beside {csv}")
        else:
            cdf = perturbation_cdf(ok, outcomes)
            if cdf.empty:
                plots.skipped.append(f"{CDF_FILE}: the outcomes hold no minimal-norm cell with clean-correct samples")
            else:
                plots.written += _save_pages(cdf_figures(cdf, ok, suite), output / CDF_FILE)
    except OSError as exc:
        raise UsageError(f"{output}: cannot write figures: {exc.strerror or exc}") from None
    return plots


def _describe(filters: dict[str, Sequence[str]]) -> str:
    return ", ".join(f"{column} {' or '.join(values)}" for column, values in filters.items() if values)


def facet_depth(lines: pd.DataFrame) -> int:
    """How many of (model, defense) split each (dataset, norm) panel so that none holds more than
    :data:`MAX_LINES` lines; ``lines`` has a row per line, with the columns of ``PANEL`` and ``LINE``."""
    for depth in (0, 1):
        if lines.groupby([*PANEL, *LINE[:depth]]).size().max() <= MAX_LINES:
            return depth
    return 2


def _panels(keys: pd.DataFrame, depth: int) -> list[list[tuple]]:
    """The panels, (dataset, norm, and the first ``depth`` of model and defense), in pages."""
    panels = sorted(keys.groupby([*PANEL, *LINE[:depth]]).groups)
    return [panels[i : i + PANELS_PER_PAGE] for i in range(0, len(panels), PANELS_PER_PAGE)]


def _in(frame: pd.DataFrame, panel: tuple) -> pd.DataFrame:
    """The rows of ``frame`` in ``panel``."""
    columns = [*PANEL, *LINE][: len(panel)]
    return frame[(frame[columns] == list(panel)).all(axis=1)] if len(frame) else frame


def _panel_title(panel: tuple, what: str) -> str:
    dataset, norm, *entry = panel
    return f"{dataset}, {_norm_name(norm)}{what}" + (f": {' · '.join(entry)}" if entry else "")


def accuracy_figures(rows: pd.DataFrame, worst: pd.DataFrame | None, title: str) -> list[Figure]:
    """Robust accuracy against eps, a panel per (dataset, norm), split per model or (model,
    defense) when a panel would hold too many lines, in pages; worst case over attacks dashed."""
    series = accuracy_series(rows)
    worst_series = accuracy_series(worst) if worst is not None and len(worst) else series.iloc[:0]
    lines = pd.concat([series, worst_series])[[*PANEL, *LINE]].drop_duplicates()
    depth = facet_depth(lines)
    styles = _accuracy_styles(sorted(series.groupby(LINE).groups), sorted(worst_series.groupby(LINE).groups), depth)
    figures = []
    for page in _panels(lines, depth):
        figure, axes = _figure(len(page), columns=2 if depth == 0 else 3)
        for ax, panel in zip(axes, page):
            in_rows, in_series, in_worst = _in(rows, panel), _in(series, panel), _in(worst_series, panel)
            for entry, line in [*in_series.groupby(LINE), *in_worst.groupby(LINE)]:
                _accuracy_line(ax, line, **styles[entry[depth:]])
            seeds = sorted(in_rows.groupby([*LINE, "eps"])["seed"].nunique().unique())
            notes = [_band_note(seeds)]
            if not in_series["measured"].all():
                notes.append("hollow marker: clean accuracy")
            unbounded = in_rows[~np.isfinite(in_rows["eps"])]
            if len(unbounded):
                count = unbounded.groupby(LINE).ngroups
                notes.append(f"eps = inf not shown ({count} {'entry' if count == 1 else 'entries'})")
            ax.set_title(_panel_title(panel, " attacks") + "\n" + _join(notes), fontsize=10)
            ax.set_xlabel(f"eps ({_norm_name(panel[1])})")
            ax.set_ylabel("robust accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        figure.suptitle(f"Robust accuracy under attack: {title}")
        columns = len(styles) if depth == 2 else len({key[:-1] for key in styles})
        _legend(figure, axes, [style["label"] for style in styles.values()], columns=min(columns, 4))
        figures.append(figure)
    return figures


def cdf_figures(cdf: pd.DataFrame, rows: pd.DataFrame, suite: str) -> list[Figure]:
    """Success rate of each minimal-norm attack against the perturbation size it may use, with
    the leaderboard's eps values of that norm marked; split and paged as the accuracy figures."""
    lines = cdf[[*PANEL, *LINE]].drop_duplicates()
    depth = facet_depth(lines)
    keys = sorted({tuple(key)[depth:] for key in lines[LINE].itertuples(index=False)})
    color = dict(zip(keys, _colors(len(keys))))
    figures = []
    for page in _panels(lines, depth):
        figure, axes = _figure(len(page), columns=2 if depth == 0 else 3)
        for ax, panel in zip(axes, page):
            dataset, norm = panel[:2]
            budgets = rows[(rows["dataset"] == dataset) & (rows["norm"] == norm)]["eps"]
            budgets = sorted(e for e in budgets.unique() if 0 < e < math.inf)
            in_panel = _in(cdf, panel)
            right = max([*budgets, in_panel["size"].max()]) * 1.05 or 1.0
            for entry, line in in_panel.groupby(LINE):
                end = min(line["largest_eps"].iloc[0], right)
                sizes = np.append(line["size"].to_numpy(), end)
                success = np.append(line["success"].to_numpy(), line["success"].iloc[-1])
                seeds = line["seeds"].iloc[0]
                label = f"{' · '.join(entry[depth:])} ({seeds} seed{'s' if seeds > 1 else ''})"
                ax.step(sizes, success, where="post", color=color[entry[depth:]], linewidth=1.8, label=label)
            for eps in budgets:
                ax.axvline(eps, color="0.55", linestyle=":", linewidth=1)
            top = ax.secondary_xaxis("top")  # the eps values named where they cannot cover a curve
            top.set_xticks(budgets, [f"{eps:g}" for eps in budgets], fontsize=8, color="0.35")
            source = ", ".join(f"{e:g}" for e in sorted(in_panel["largest_eps"].unique()))
            ax.set_title(
                _panel_title(panel, "") + f"\nsizes from each sweep's largest eps ({source}); "
                "dotted: the leaderboard's eps (top axis)",
                fontsize=10,
            )
            ax.set_xlabel(f"perturbation size ({_norm_name(norm)})")
            ax.set_ylabel("attack success rate\n(clean-correct samples broken)")
            ax.set_xlim(0, right)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        figure.suptitle(f"Perturbation size of minimal-norm attacks: {suite}")
        _legend(figure, axes)
        figures.append(figure)
    return figures


def _accuracy_styles(entries: Sequence[tuple], worst: Sequence[tuple], depth: int = 0) -> dict[tuple, dict]:
    """Label, color and marker of every line, keyed by its (model, defense, attack) less the first
    ``depth`` fields (those of its panel), in legend order. A (model, defense) keeps one hue
    across its attacks (lighter shades, one marker per attack) and its worst case (darker,
    dashed), so that the dashed line stays visible on top of the attack it usually equals; in a
    panel of one (model, defense), each attack has its own hue."""
    from matplotlib.colors import to_rgb

    entries = sorted({entry[depth:] for entry in entries})
    worst = sorted({entry[depth:] for entry in worst})
    groups = sorted({entry[:-1] for entry in [*entries, *worst]})
    attacks = sorted({entry[-1] for entry in entries})
    styles = {}
    if groups == [()]:
        for j, (attack, color) in enumerate(zip(attacks, _colors(len(attacks)))):
            styles[(attack,)] = {"label": attack, "color": color, "marker": MARKERS[j % len(MARKERS)]}
        for entry in worst:
            styles[entry] = {"label": "worst case", "color": (0.15, 0.15, 0.15), "worst": True}
        return styles
    bases = dict(zip(groups, _colors(len(groups))))
    for group in groups:
        base = np.array(to_rgb(bases[group]))
        for j, attack in enumerate(attacks):
            if (*group, attack) in entries:
                light = 0.45 * j / max(len(attacks) - 1, 1)
                styles[(*group, attack)] = {
                    "label": " · ".join([*group, attack]),
                    "color": tuple(base + (1 - base) * light),
                    "marker": MARKERS[j % len(MARKERS)],
                }
        for entry in worst:
            if entry[:-1] == group:
                label = " · ".join([*group, "worst case"])
                styles[entry] = {"label": label, "color": tuple(base * 0.55), "worst": True}
    return styles


def _accuracy_line(
    ax: Axes, line: pd.DataFrame, label: str, color: tuple, marker: str = "", worst: bool = False
) -> None:
    if worst:  # no band or markers: they would cover the attack it usually equals
        ax.plot(line["eps"], line["robust_accuracy"], color=color, linestyle=(0, (3, 3)), linewidth=1.6,
                label=label, zorder=3)  # fmt: skip
        return
    ax.fill_between(line["eps"], line["low"], line["high"], color=color, alpha=0.15, linewidth=0)
    ax.plot(line["eps"], line["robust_accuracy"], color=color, linewidth=1.8, marker=marker, markersize=5,
            markevery=list(np.flatnonzero(line["measured"].to_numpy())), label=label)  # fmt: skip
    clean = line[~line["measured"]]
    ax.plot(clean["eps"], clean["robust_accuracy"], color=color, marker=marker, markersize=6, linestyle="none",
            markerfacecolor="white")  # fmt: skip


def _join(notes: Sequence[str], width: int = 80) -> str:
    """Notes joined by "; ", broken into lines between notes, never inside one."""
    lines = [notes[0]]
    for note in notes[1:]:
        if len(lines[-1]) + 2 + len(note) > width:
            lines[-1] += ";"
            lines.append(note)
        else:
            lines[-1] += "; " + note
    return "\n".join(lines)


def _band_note(seeds: Sequence[int]) -> str:
    if min(seeds) >= 2:
        count = f"{seeds[0]}" if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)}"
        return f"mean of {count} seeds, band: 95% t interval"
    if max(seeds) == 1:
        return "1 seed, band: 95% Wilson interval"
    return "mean over seeds, band: 95% t interval (Wilson for one seed)"


def _figure(panels: int, columns: int = 2) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(panels, columns)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.8), layout="constrained",
        squeeze=False,
    )  # fmt: skip
    flat = list(axes.flat)
    for unused in flat[panels:]:
        unused.remove()
    return figure, flat[:panels]


def _legend(figure: Figure, axes: Sequence[Axes], order: Sequence[str] = (), columns: int | None = None) -> None:
    """One legend under all panels: lines are the same entries in every panel, and below the axes
    it never hides data. Labels in ``order`` come first, in that order."""
    labelled: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    labels = sorted(labelled, key=lambda label: list(order).index(label) if label in order else len(order))
    if columns is None:
        columns = 2 if max(map(len, labels)) > 30 else 3
    handles = [labelled[label] for label in labels]
    figure.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False)


def _colors(n: int) -> list[tuple]:
    """Distinct colors: tab10 while it lasts, tab20 beyond."""
    import matplotlib

    name = "tab10" if n <= 10 else "tab20"
    cmap = matplotlib.colormaps[name]
    return [cmap(i % cmap.N) for i in range(n)]


def _norm_name(norm: str) -> str:
    return NORM_NAMES.get(norm, norm)


SLUG_LENGTH = 80


def file_label(text: str) -> str:
    """``text`` as part of a file name: kept when it is short and safe, else its safe characters
    (cut to :data:`SLUG_LENGTH`) and a digest of the whole, so that two labels never share a
    file (``ds/x`` and ``ds-x``) and a long label never makes a name the file system refuses."""
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in text)
    if slug == text and len(text) <= SLUG_LENGTH and not text.startswith("."):
        return text
    return f"{slug[:SLUG_LENGTH]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _save_pages(figures: Sequence[Figure], path: Path) -> list[Path]:
    """Save the pages of one figure: the first as ``path``, the others as ``<stem>-page<k>``."""
    return [
        _save(figure, path if k == 1 else path.with_name(f"{path.stem}-page{k}{path.suffix}"))
        for k, figure in enumerate(figures, 1)
    ]


def _save(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        figure.savefig(path, dpi=DPI, bbox_inches="tight")  # a wide legend widens the image, never clipped
    finally:
        plt.close(figure)
    return path

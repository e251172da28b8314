"""``harness site``: a static website of leaderboards that works from its files alone.

Opened as ``file://`` or served by any static server, it asks no other host for anything: its
one script (sorting, filtering, hiding columns; fifty lines in ``site_assets``, so nothing is
vendored) and style sheet lie beside the pages, and the figures are inline SVG drawn here from
the numbers of :mod:`harness.plots`. A leaderboard is data, never markup: every label, parameter
and message goes through :func:`html.escape`.

The layout: ``index.html`` (a line per leaderboard), ``assets/``, and a folder per leaderboard
with its ``index.html`` (a table per dataset and threat model, a line per model and defense
ranked by the worst case over the attacks) and a page per (dataset, model, defense) with its
provenance, per-attack tables, figures and checks.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

ALPHA = 0.05
BASELINE_PLUGIN = "standard"
"""The plugin of the core's ``none`` defense: an entry trained with it is its model's baseline."""
ASSETS = ("site.css", "site.js")
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
ENTRY = ["dataset", "model", "defense"]
SOFTWARE = {"harness": "harness_version", "torch": "torch_version", "numpy": "numpy_version", "ART": "art_version",
            "Python": "python_version"}  # fmt: skip


def esc(value: object) -> str:
    """``value`` as HTML text, also inside a quoted attribute."""
    return html.escape(str(value), quote=True)


def slug(*parts: object) -> str:
    """A file name or id for ``parts``: its safe characters, and a digest that keeps two different
    ``parts`` apart (``a/b`` and ``a-b``, ``("a-b", "c")`` and ``("a", "b-c")``)."""
    text = "-".join(map(str, parts))
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in text)[:60]
    return f"{safe}-{hashlib.sha256(json.dumps(list(map(str, parts))).encode()).hexdigest()[:8]}"


@dataclass
class Board:
    """One leaderboard: its ok rows with their flags, and the worst case over attacks of each
    (dataset, model, defense, norm, eps, seed) with its per-sample outcomes."""

    path: Path
    folder: str
    frame: pd.DataFrame
    ok: pd.DataFrame
    worst: pd.DataFrame
    samples: pd.DataFrame
    outcomes: pd.DataFrame | None


def build_site(paths: Sequence[Path], output: Path, warn: Callable[[str], None]) -> list[Path]:
    """Write the website of the leaderboards ``paths`` into ``output``; return the pages."""
    from harness.outcomes import read_with_outcomes
    from harness.review import flags, worst_over_attacks

    paths = list({path.resolve(): path for path in paths}.values())  # a file named twice is one leaderboard
    boards = []
    for path, folder in zip(paths, _folders(paths)):
        frame, outcomes = read_with_outcomes(path, warn)
        frame = frame.assign(flags=flags(frame))
        ok = frame[frame["status"] == "ok"]
        worst, samples = worst_over_attacks(ok, outcomes)
        boards.append(Board(path, folder, frame, ok, worst, samples, outcomes))
    pages = {output / "index.html": _index(boards)}
    for board in boards:
        pages[output / board.folder / "index.html"] = _leaderboard_page(board)
        for key, rows in board.ok.groupby(ENTRY, sort=True):
            pages[output / board.folder / _entry_file(key)] = _entry_page(board, key, rows)
    try:
        (output / "assets").mkdir(parents=True, exist_ok=True)
        for name in ASSETS:
            (output / "assets" / name).write_text(resources.files("harness").joinpath("site_assets", name).read_text())
        for page, text in pages.items():
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write the site: {exc.strerror or exc}") from None
    return list(pages)


def _folders(paths: Sequence[Path]) -> list[str]:
    """A folder name per leaderboard: its file's stem, unless two stems are alike."""
    from harness.plots import file_label

    stems = [file_label(path.stem) for path in paths]
    return [stem if stems.count(stem) == 1 else slug(path.resolve()) for stem, path in zip(stems, paths)]


def _entry_file(key: tuple) -> str:
    return slug(*key) + ".html"


# --- the pages ------------------------------------------------------------------------------------


def _index(boards: Sequence[Board]) -> str:
    headers = [
        ("suite", "the suite's name; the link opens its tables"), ("datasets", ""), ("threat models", "the attacks' norms"),
        ("entries", "trained (dataset, model, defense) entries with ok rows"), ("rows", "ok / skipped / error rows"),
        ("seeds", ""), ("date", "when the newest row was computed (UTC)"), ("software", "the versions that computed the rows"),
    ]  # fmt: skip
    rows = []
    for board in boards:
        frame, counts = board.frame, board.frame["status"].value_counts()
        suite = ", ".join(sorted(frame["suite"].dropna().unique()))
        rows.append([
            _td(markup=f'<a href="{esc(board.folder)}/index.html">{esc(suite or board.path.stem)}</a>'),
            _td(", ".join(sorted(frame["dataset"].unique()))),
            _td(", ".join(sorted(map(_norm_name, board.ok["norm"].unique())))),
            _td(board.ok.groupby(ENTRY).ngroups, value=board.ok.groupby(ENTRY).ngroups),
            _td(" / ".join(str(counts.get(s, 0)) for s in ("ok", "skipped", "error")), value=len(frame)),
            _td(", ".join(map(str, sorted(frame["seed"].unique())))),
            _td(str(frame["created_at"].dropna().max())[:10] if frame["created_at"].notna().any() else ""),
            _td(markup=_wrapping(_software(frame))),
        ])  # fmt: skip
    body = (
        "<h1>Robustness leaderboards</h1>\n"
        '<p class="muted">Each leaderboard ranks its (model, defense) entries per dataset and threat model by the '
        "robust accuracy left under the worst case over its attacks: a sample counts as robust only if every "
        "attack failed on it.</p>\n" + _table("leaderboards", headers, rows)
    )
    return _document("Robustness leaderboards", body, depth=0)


def _leaderboard_page(board: Board) -> str:
    suite = ", ".join(sorted(board.frame["suite"].dropna().unique())) or board.path.stem
    counts = board.frame["status"].value_counts()
    parts = [
        '<nav><a href="../index.html">All leaderboards</a></nav>',
        f"<h1>{esc(suite)}</h1>",
        f'<p class="muted">{esc(board.path.name)}: {counts.get("ok", 0)} ok, {counts.get("skipped", 0)} skipped, '
        f'{counts.get("error", 0)} error rows; {esc(_software(board.frame))}.</p>',
        _method_note(board),
    ]
    for (dataset, norm), rows in board.ok.groupby(["dataset", "norm"], sort=True):
        parts.append(_threat_table(board, dataset, norm, rows))
    parts.append(_flag_notes(board.ok))
    return _document(suite, "\n".join(parts), depth=1)


def _method_note(board: Board) -> str:
    outcomes = (
        "per sample, from the outcomes file"
        if board.outcomes is not None
        else "as the lowest attack's robust accuracy (no outcomes file: an upper bound on the per-sample worst case)"
    )
    return (
        f'<p class="note">Robust accuracy (%) under the worst case over the attacks, computed {outcomes}; '
        "the mean over seeds, its 95% interval on hover (Student-t over seeds, clipped to [0, 100]; Wilson for one "
        "seed). Rank: the mean of these over the eps that every entry of the table has. Against the baseline, where "
        "the model was also trained with the core's <code>none</code> defense: the worst case compared with that "
        f"entry's as <code>harness compare --by defense</code> does, at alpha {ALPHA:g} with Holm's correction per "
        "model; * marks a verdict "
        "whose interval over seeds crosses zero. Click a header to sort, type to filter the rows.</p>"
    )


def _threat_table(board: Board, dataset: str, norm: str, rows: pd.DataFrame) -> str:
    from harness.review import FLAGS, checks, over_seeds

    worst = board.worst[(board.worst["dataset"] == dataset) & (board.worst["norm"] == norm)]
    per_eps = over_seeds(worst, ["model", "defense", "eps"]).set_index(["model", "defense", "eps"])
    eps_values = sorted(rows["eps"].unique())
    entries = sorted(rows.groupby(["model", "defense"]).groups)
    common = [e for e in eps_values if all((*entry, e) in per_eps.index for entry in entries)]
    versus = _versus_baseline(board, dataset, norm, worst)
    records = []
    for model, defense in entries:
        entry = rows[(rows["model"] == model) & (rows["defense"] == defense)]
        own = [e for e in eps_values if (model, defense, e) in per_eps.index]
        score = [per_eps.loc[(model, defense, e), "robust_accuracy"] for e in (common or own)]
        records.append((-_mean(score), model, defense, entry))
    records.sort(key=lambda r: (math.isnan(r[0]), r[0]))
    headers = [
        ("rank", "by the mean worst-case robust accuracy over the eps every entry has"),
        ("model", "the entry's page has its provenance, per-attack numbers and figures"), ("defense", ""),
        ("mean robust", "the mean of the worst-case robust accuracy (%) over the eps that every entry has"),
        *[(f"eps {e:g}", f"worst-case robust accuracy (%) at eps {e:g}; hover for its interval") for e in eps_values],
        ("clean", "clean accuracy (%); hover for its 95% interval"), ("seeds", ""), ("attacks", "the attacks of this threat model"),
        ("flags", "the reviewer's flags its rows raise (see the notes below)"),
        ("checks", "the adaptive-evaluation checks (hover for which; details on the entry's page)"),
    ]  # fmt: skip
    if versus:
        headers.append(("vs baseline", "the worst case against the same model with the core's none defense"))
    table = []
    for rank, (negative, model, defense, entry) in enumerate(records, 1):
        anchor = f"{_entry_file((dataset, model, defense))}#{slug('norm', norm)}"
        cells = [
            _td(rank, value=rank),
            _td(markup=f'<a href="{esc(anchor)}">{esc(model)}</a>'),
            _td(defense),
            _td(_percent(-negative), value=-negative),
        ]
        for e in eps_values:
            if (model, defense, e) not in per_eps.index:
                cells.append(_td("", value=math.nan))
                continue
            point = per_eps.loc[(model, defense, e)]
            how = worst[(worst["model"] == model) & (worst["defense"] == defense) & (worst["eps"] == e)]["message"]
            title = f"95% interval {_interval(point['robust_ci_low'], point['robust_ci_high'])}; {how.iloc[0]}"
            cells.append(_td(_percent(point["robust_accuracy"]), value=point["robust_accuracy"], title=title))
        clean, low, high = _clean(entry)
        result = checks(entry)
        checked = len(result.failed) + len(result.passed)
        summary = "; ".join(
            [*(f"failed {name}" for name in result.failed), f"passed: {', '.join(result.passed) or 'none'}",
             *(f"not checked {name}" for name in result.missing)]  # fmt: skip
        )
        raised = sorted({n for text in entry["flags"].fillna("") for n in text.split("; ") if n})
        cells += [
            _td(_percent(clean), value=clean, title=f"95% interval {_interval(low, high)}"),
            _td(entry["seed"].nunique(), value=entry["seed"].nunique()),
            _td(markup=_wrapping(", ".join(sorted(entry["attack"].unique())))),
            _td(markup=_wrapping(" ".join(_badge(name, FLAGS[name]) for name in raised), escaped=True)),
            _td(markup=f'<span class="badge {"fail" if result.failed else "pass"}" title="{esc(summary)}">'
                f"{len(result.failed)} of {checked} failed</span>", value=len(result.failed)),
        ]  # fmt: skip
        if versus:
            text, value, title = versus.get((model, defense), ("", math.nan, ""))
            cells.append(_td(text, value=value, title=title, prose=True))
        table.append(cells)
    title = f"{dataset}, {_norm_name(norm)}"
    return f'<h2 id="{slug("table", dataset, norm)}">{esc(title)}</h2>\n' + _table(slug("t", dataset, norm), headers, table)


def _versus_baseline(board: Board, dataset: str, norm: str, worst: pd.DataFrame) -> dict[tuple, tuple[str, float, str]]:
    """Per (model, defense): the worst case against its model's baseline, summarised over eps
    (text, better minus worse, the verdict at each eps)."""
    from harness import comparison

    found: dict[tuple, tuple[str, float, str]] = {}
    frame = board.ok[board.ok["dataset"] == dataset]
    for model, rows in worst.groupby("model", sort=True):
        baselines = frame[(frame["model"] == model) & (frame["defense_plugin"] == BASELINE_PLUGIN)]["defense"].unique()
        if len(baselines) != 1 or rows["defense"].nunique() < 2:
            continue
        found[(model, baselines[0])] = ("baseline", math.nan, f"the {baselines[0]} defense: the others are compared with it")
        table = comparison.compare_within(comparison.side(rows, board.samples), "defense", str(baselines[0]), ALPHA)
        for defense, compared in table.groupby("candidate", sort=False) if len(table) else ():
            marks = _marks(compared)
            verdicts = compared["robust_verdict"] + marks
            better, worse = int((compared["robust_verdict"] == "better").sum()), int((compared["robust_verdict"] == "worse").sum())
            counted = [f"{word} at {n}" for n, word in ((better, "better"), (worse, "worse")) if n]
            text = (", ".join(counted) + f" of {len(compared)} eps") if counted else "no significant difference"
            if (compared["robust_verdict"] == "untested").all():
                text = "untested"
            lines = [
                f"eps {e:g}: {v}, {d:+.3f} [{lo:+.3f}, {hi:+.3f}], {test}, p (Holm) {p:.3g}"
                for e, v, d, lo, hi, test, p in zip(
                    compared["eps"], verdicts, compared["robust_diff"], compared["robust_diff_low"],
                    compared["robust_diff_high"], compared["robust_test"], compared["robust_p_holm"],
                )
            ]  # fmt: skip
            found[(model, defense)] = (text + ("*" if marks.str.len().any() else ""), better - worse, "\n".join(lines))
    return found


def _marks(compared: pd.DataFrame) -> pd.Series:
    """"*" where a verdict calls a difference that its interval over seeds does not exclude."""
    crossing = (
        compared["robust_verdict"].isin(["better", "worse"])
        & (compared["robust_diff_low"] <= 0)
        & (compared["robust_diff_high"] >= 0)
    )
    return crossing.map({True: "*", False: ""})


def _entry_page(board: Board, key: tuple, rows: pd.DataFrame) -> str:
    from harness.review import NEXT_STEP, checks, over_seeds

    dataset, model, defense = key
    suite = ", ".join(sorted(board.frame["suite"].dropna().unique())) or board.path.stem
    parts = [
        f'<nav><a href="../index.html">All leaderboards</a> › <a href="index.html">{esc(suite)}</a></nav>',
        f"<h1>{esc(model)} · {esc(defense)} <span class=\"muted\">on {esc(dataset)}</span></h1>",
        "<h2>Provenance</h2>",
        _provenance(rows),
    ]
    worst = board.worst[(board.worst[ENTRY] == list(key)).all(axis=1)]
    for norm, in_norm in rows.groupby("norm", sort=True):
        parts.append(f'<h2 id="{slug("norm", norm)}">Threat model: {esc(_norm_name(norm))}</h2>')
        result = checks(in_norm)
        items = [f"<li><span class=\"badge fail\">failed</span> <b>{esc(n)}</b>: {esc(w)} → {esc(NEXT_STEP[n])}</li>"
                 for n, w in result.failed.items()]  # fmt: skip
        items.append(f"<li><span class=\"badge pass\">passed</span> {esc(', '.join(result.passed) or 'none')}</li>")
        items += [f"<li><span class=\"badge\">not checked</span> <b>{esc(n)}</b>: {esc(w)}</li>" for n, w in result.missing.items()]
        parts.append("<h3>Checks</h3>\n<ul>" + "\n".join(items) + "</ul>")
        in_worst = worst[worst["norm"] == norm]
        summary = over_seeds(in_norm, ["attack", "eps"])
        several = in_norm["attack"].nunique() > 1  # the worst case of one attack is that attack
        summary_worst = over_seeds(in_worst.assign(attack="worst case") if several else in_worst.iloc[:0], ["attack", "eps"])
        parts.append("<h3>Per attack</h3>\n" + _attack_table(slug("attacks", norm), in_norm, summary, summary_worst))
        parts.append(_accuracy_svg(in_norm, in_worst, norm))
        minimal = in_norm[in_norm["minimal_norm"] == "True"]
        if len(minimal) and board.outcomes is not None:
            parts.append(_cdf_svg(in_norm, board.outcomes, norm))
    parts.append(_flag_notes(rows))
    return _document(f"{model} · {defense} ({suite})", "\n".join(parts), depth=1)


def _provenance(rows: pd.DataFrame) -> str:
    headers = [("component", ""), ("label", ""), ("plugin", ""), ("distribution", ""), ("version", ""),
               ("parameters", "as the leaderboard records them (JSON)")]  # fmt: skip
    table = []
    for kind in ("dataset", "model", "defense", "attack"):
        for label, component in rows.groupby(kind, sort=True):
            cells = [_td(kind), _td(label)]
            cells += [_td(", ".join(sorted(component[f"{kind}_{field}"].dropna().astype(str).unique())))
                      for field in ("plugin", "distribution", "version")]  # fmt: skip
            params = sorted(component[f"{kind}_params"].dropna().astype(str).unique())
            cells.append(_td(markup="".join(f"<pre>{esc(p)}</pre>" for p in params)))
            table.append(cells)
    created = rows["created_at"].dropna().astype(str)
    facts = {
        "software": _software(rows),
        "device": ", ".join(sorted(rows["device"].dropna().astype(str).unique())),
        "computed": f"{created.min()} to {created.max()}" if len(created) else "",
        "training": ", ".join(f"seed {s}: {t:.0f} s" for s, t in rows.groupby("seed")["train_seconds"].first().items()
                              if t == t),  # fmt: skip
        "source fingerprints": "not stored in the leaderboard: each cell_id (in the per-attack tables) is a content "
        "hash of its configuration, versions and the fingerprints of the components' source",
    }
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts.items() if v)
    return _table("provenance", headers, table, tools=False) + f'\n<dl class="notes">{items}</dl>'


def _attack_table(table_id: str, rows: pd.DataFrame, summary: pd.DataFrame, worst: pd.DataFrame) -> str:
    from harness.review import FLAGS

    headers = [
        ("attack", ""), ("eps", ""), ("seeds", ""), ("robust", "robust accuracy (%), mean over seeds; hover for its interval"),
        ("success", "attack success rate (%) among clean-correct samples"),
        ("median L2", "median L2 size of the successful perturbations"), ("max Linf", "largest Linf perturbation"),
        ("access", ""), ("flags", ""), ("cells", "cell_id of each seed's row"),
    ]  # fmt: skip
    table = []
    for record in [*summary.to_dict("records"), *worst.to_dict("records")]:
        cell = rows[(rows["attack"] == record["attack"]) & (rows["eps"] == record["eps"])]
        interval = f"95% interval {_interval(record['robust_ci_low'], record['robust_ci_high'])}"
        table.append([
            _td(record["attack"]),
            _td(f"{record['eps']:g}", value=record["eps"]),
            _td(record["seeds"], value=record["seeds"]),
            _td(_percent(record["robust_accuracy"]), value=record["robust_accuracy"], title=interval),
            _td(_percent(record["attack_success_rate"]), value=record["attack_success_rate"]),
            _td(_number(cell["median_perturbation_l2"].mean()), value=cell["median_perturbation_l2"].mean()),
            _td(_number(cell["max_perturbation_linf"].max()), value=cell["max_perturbation_linf"].max()),
            _td(", ".join(sorted(cell["attack_access"].dropna().unique()))),
            _td(markup=" ".join(_badge(n, FLAGS[n]) for n in record.get("flags", "").split("; ") if n)),
            _td(markup='<span class="ids">' + " ".join(f"<code>{esc(c)}</code>" for c in cell["cell_id"]) + "</span>"),
        ])  # fmt: skip
    return _table(table_id, headers, table)


# --- figures: inline SVG --------------------------------------------------------------------------

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 640, 360, 56, 16, 12, 44


@dataclass
class Line:
    label: str
    x: list[float]
    y: list[float]
    color: str
    dashed: bool = False
    band: tuple[list[float], list[float]] | None = None


def _accuracy_svg(rows: pd.DataFrame, worst: pd.DataFrame, norm: str) -> str:
    from harness.plots import accuracy_series

    series = accuracy_series(rows)
    lines = [
        Line(attack, line["eps"].tolist(), line["robust_accuracy"].tolist(), PALETTE[i % len(PALETTE)],
             band=(line["low"].tolist(), line["high"].tolist()))
        for i, (attack, line) in enumerate(series.groupby("attack", sort=True))
    ]  # fmt: skip
    if rows["attack"].nunique() > 1 and len(worst):
        line = accuracy_series(worst)
        lines.append(Line("worst case", line["eps"].tolist(), line["robust_accuracy"].tolist(), "#222222", dashed=True))
    caption = (
        "Robust accuracy against eps: the mean over seeds, a band for its 95% interval; a line without an eps-0 row "
        "starts at the clean accuracy; eps = inf is left out; dashed: the worst case over the attacks."
    )
    return _svg_figure(lines, f"eps ({_norm_name(norm)})", "robust accuracy", caption, [])


def _cdf_svg(rows: pd.DataFrame, outcomes: pd.DataFrame, norm: str) -> str:
    from harness.plots import perturbation_cdf

    cdf = perturbation_cdf(rows, outcomes[outcomes["cell_id"].isin(rows["cell_id"])])
    if cdf.empty:
        return ""
    budgets = sorted(e for e in rows["eps"].unique() if 0 < e < math.inf)
    right = max([*budgets, cdf["size"].max()]) * 1.05 or 1.0
    lines = []
    for i, (attack, line) in enumerate(cdf.groupby("attack", sort=True)):
        x, y = [0.0], [0.0]
        for size, success in zip(line["size"], line["success"]):
            x += [size, size]
            y += [y[-1], success]
        x.append(min(line["largest_eps"].iloc[0], right))
        y.append(y[-1])
        seeds = line["seeds"].iloc[0]
        lines.append(Line(f"{attack} ({seeds} seed{'s' if seeds > 1 else ''})", x, y, PALETTE[i % len(PALETTE)]))
    caption = (
        "Attack success rate (of the clean-correct samples) within each perturbation size, for the minimal-norm "
        "attacks, from each sweep's largest eps and averaged over seeds; dotted: the leaderboard's eps."
    )
    return _svg_figure(lines, f"perturbation size ({_norm_name(norm)})", "attack success rate", caption, budgets, right)


def _svg_figure(
    lines: Sequence[Line], x_label: str, y_label: str, caption: str, marks: Sequence[float], right: float | None = None
) -> str:
    """A line chart over [0, right] x [0, 1] as inline SVG, its legend as HTML below it."""
    finite = [v for line in lines for v in line.x if math.isfinite(v)]
    right = right or max([*finite, 0.0]) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def point(x: float, y: float) -> str:
        return f"{LEFT + plot_w * min(x, right) / right:.1f},{TOP + plot_h * (1 - y):.1f}"

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'aria-label="{esc(y_label)} against {esc(x_label)}" font-size="11" font-family="system-ui, sans-serif">']  # fmt: skip
    for y in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h * (1 - y):.1f}" '
                     f'y2="{TOP + plot_h * (1 - y):.1f}" stroke="#e5e5e5"/>')  # fmt: skip
        parts.append(f'<text x="{LEFT - 6}" y="{TOP + plot_h * (1 - y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    for x in _ticks(right):
        parts.append(f'<text x="{LEFT + plot_w * x / right:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{x:g}</text>')
    for x in marks:
        position = LEFT + plot_w * x / right
        parts.append(f'<line x1="{position:.1f}" x2="{position:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#999" '
                     f'stroke-dasharray="2 3"><title>eps {x:g}</title></line>')  # fmt: skip
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>')
    for line in lines:
        keep = [i for i, x in enumerate(line.x) if math.isfinite(x)]
        if line.band:
            low, high = line.band
            outline = [point(line.x[i], high[i]) for i in keep] + [point(line.x[i], low[i]) for i in reversed(keep)]
            parts.append(f'<polygon points="{" ".join(outline)}" fill="{line.color}" fill-opacity="0.15"/>')
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        points = " ".join(point(line.x[i], line.y[i]) for i in keep)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{line.color}" stroke-width="2"{dash}>'
                     f"<title>{esc(line.label)}</title></polyline>")  # fmt: skip
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">{esc(y_label)}</text>')
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch{" dashed" if line.dashed else ""}" style="border-color: {line.color}"></span>'
        f"{esc(line.label)}</li>"
        for line in lines
    )
    return f'<figure>{"".join(parts)}<ul class="legend">{legend}</ul><figcaption>{esc(caption)}</figcaption></figure>'


def _ticks(right: float) -> list[float]:
    """Round tick values from 0 to ``right``, four to ten of them."""
    step = 10 ** math.floor(math.log10(right / 5))
    step *= next(m for m in (1, 2, 5, 10) if right / (step * m) <= 10)
    return [round(k * step, 12) for k in range(int(right / step + 1e-9) + 1)]


# --- building blocks ------------------------------------------------------------------------------


def _document(title: str, body: str, depth: int) -> str:
    root = "../" * depth
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'">
<title>{esc(title)}</title>
<link rel="stylesheet" href="{root}assets/site.css">
</head>
<body>
{body}
<footer>Written by <code>harness site</code> from the leaderboard files; it loads nothing from any other host.</footer>
<script src="{root}assets/site.js"></script>
</body>
</html>
"""


def _table(table_id: str, headers: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]], tools: bool = True) -> str:
    """A table the script sorts (every header), filters (the search box) and hides columns of."""
    head = "".join(f'<th scope="col"{_title(why)}><button type="button">{esc(name)}</button></th>' for name, why in headers)
    body = "\n".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    controls = ""
    if tools:
        boxes = "".join(
            f'<label><input type="checkbox" checked data-table="{table_id}" data-column="{i}"> {esc(name)}</label>'
            for i, (name, _) in enumerate(headers)
        )
        controls = (
            f'<div class="tools"><input type="search" placeholder="Filter rows" aria-label="Filter the rows" '
            f'data-filter="{table_id}"><details><summary>Columns</summary><div>{boxes}</div></details></div>\n'
        )
    return (f'{controls}<div class="scroll"><table id="{table_id}" class="sortable">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")  # fmt: skip


def _td(
    text: object = "", *, value: float | None = None, title: str = "", markup: str | None = None, prose: bool = False
) -> str:
    """A cell: ``text`` escaped (or ``markup``, built from escaped parts); the script sorts it by
    ``value`` when there is one (NaN: no value, sorted last), and it is aligned as a number then,
    unless it is ``prose``."""
    attributes = ' class="prose"' if prose else ""
    if value is not None:
        number = float(value)
        attributes += f' data-value="{"" if math.isnan(number) else "Infinity" if number == math.inf else repr(number)}"'
    return f"<td{attributes}{_title(title)}>{markup if markup is not None else esc(text)}</td>"


def _wrapping(text: str, escaped: bool = False) -> str:
    """A list that may wrap inside its cell (cells do not, so that numbers and labels stay whole)."""
    return f'<span class="list">{text if escaped else esc(text)}</span>'


def _title(text: str) -> str:
    """A ``title`` attribute (shown on hover), or nothing for no text."""
    return f' title="{esc(text)}"' if text else ""


def _badge(name: str, why: str) -> str:
    return f'<a class="badge flag" href="#{slug("flag", name)}" title="{esc(why)}">{esc(name)}</a>'


def _flag_notes(rows: pd.DataFrame) -> str:
    """The explanation of every flag ``rows`` raise, where their badges link to."""
    from harness.review import FLAGS, NEXT_STEP

    raised = sorted({n for text in rows["flags"].fillna("") for n in text.split("; ") if n})
    if not raised:
        return ""
    items = "".join(
        f'<dt id="{slug("flag", n)}">{esc(n)}</dt><dd>{esc(FLAGS[n])}; next: {esc(NEXT_STEP[n])}</dd>' for n in raised
    )
    return f'<h2>Flags</h2>\n<dl class="notes">{items}</dl>'


def _software(frame: pd.DataFrame) -> str:
    versions = [
        f"{name} {'/'.join(sorted(frame[column].dropna().astype(str).unique()))}"
        for name, column in SOFTWARE.items()
        if frame[column].notna().any()
    ]
    return ", ".join(versions)


def _clean(rows: pd.DataFrame) -> tuple[float, float, float]:
    """Clean accuracy over seeds (a trained model's, the same on all its rows of a seed) and its
    95% interval: Student-t over seeds, clipped to [0, 1], or Wilson for one seed."""
    from harness.statistics import mean_interval, wilson_interval

    seeds = rows.drop_duplicates("seed")
    if len(seeds) == 1:
        n = int(seeds["n_samples"].iloc[0])
        accuracy = float(seeds["clean_accuracy"].iloc[0])
        return (accuracy, *wilson_interval(round(accuracy * n), n))
    mean, low, high = mean_interval(seeds["clean_accuracy"].tolist())
    return mean, max(low, 0.0), min(high, 1.0)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _percent(value: float) -> str:
    return "" if value != value else f"{100 * value:.1f}"


def _number(value: float) -> str:
    return "" if value != value else f"{value:.3g}"


def _interval(low: float, high: float) -> str:
    return "-" if low != low else f"[{100 * low:.1f}, {100 * high:.1f}]"


def _norm_name(norm: str) -> str:
    from harness.plots import NORM_NAMES

    return NORM_NAMES.get(norm, norm)

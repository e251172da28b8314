"""Comparing leaderboard entries as a reviewer would: is a difference real or noise?

Two leaderboards (``harness compare A.csv B.csv``: B against A) or one leaderboard's entries
against a baseline (``--by defense --baseline none``) are aligned entry by entry (dataset, model,
defense, attack, norm, eps: all but the compared column) and paired seed by seed. For each pair:

- the difference in clean and robust accuracy (candidate - baseline) with a 95% interval: a
  Student-t interval over the per-seed differences with two or more seeds, else Newcombe's
  interval for paired proportions from the per-sample outcomes, else his interval for independent
  proportions;
- an exact McNemar test on the per-sample outcomes, pooled over the paired seeds, when both sides
  have outcomes for the same samples (it tests these trained models on these samples; it does not
  see seed-to-seed variation);
- a Wilcoxon signed-rank test of the per-seed accuracies (exact for small n), which does see it,
  but needs six seeds before it can reach p < 0.05;
- a verdict from the Wilcoxon test when it can reach the level, else from McNemar: ``better``,
  ``worse`` or ``no significant difference`` at ``alpha`` after a Holm correction over the
  comparisons of the table (each of clean and robust accuracy is one family), or ``untested``.

Pure pandas and scipy: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import statistics

if TYPE_CHECKING:
    import pandas as pd

ENTRY = ["dataset", "model", "defense", "attack", "norm", "eps"]
SETTINGS = ["n_samples", "dataset_params", "model_params", "defense_params", "attack_params"]
MEASURES = {"clean": ("clean_accuracy", "clean_correct"), "robust": ("robust_accuracy", "robust")}


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a leaderboard's ok rows and, if any, its per-sample outcomes."""

    rows: pd.DataFrame
    outcomes: dict[str, pd.DataFrame]


def side(frame: pd.DataFrame, outcomes: pd.DataFrame | None) -> Side:
    ok = frame[frame["status"] == "ok"]
    groups = {} if outcomes is None else {cell: g.set_index("sample") for cell, g in outcomes.groupby("cell_id")}
    return Side(ok, groups)


def compare_two(a: Side, b: Side, alpha: float) -> pd.DataFrame:
    """B against A, entry by entry."""
    pairs = []
    for key, candidate in b.rows.groupby(ENTRY, sort=False):
        baseline = a.rows[(a.rows[ENTRY] == list(key)).all(axis=1)]
        if len(baseline):
            pairs.append(({**dict(zip(ENTRY, key)), "baseline": "A", "candidate": "B"}, baseline, candidate))
    return _table(pairs, a, b, alpha)


def compare_within(one: Side, by: str, baseline_value: str, alpha: float) -> pd.DataFrame:
    """Every value of column ``by`` against ``baseline_value``, on the entries they share."""
    others = [c for c in ENTRY if c != by]
    pairs = []
    bases = dict(list(one.rows[one.rows[by] == baseline_value].groupby(others, sort=False)))
    for key, candidate in one.rows[one.rows[by] != baseline_value].groupby([*others, by], sort=False):
        baseline = bases.get(key[:-1])
        if baseline is not None:
            pairs.append(({**dict(zip([*others, by], key)), "baseline": baseline_value, "candidate": key[-1]}, baseline, candidate))
    return _table(pairs, one, one, alpha, compared=f"{by}_params")


def _table(
    pairs: list[tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]], a: Side, b: Side, alpha: float, compared: str = ""
) -> pd.DataFrame:
    """One record per pair; ``compared`` is the parameter column that differs by design (not noted)."""
    import pandas as pd

    settings = [column for column in SETTINGS if column != compared]
    pairs = [pair for pair in pairs if set(pair[1]["seed"]) & set(pair[2]["seed"])]  # an entry without common seeds is not common
    records = [_compare_pair(label, baseline, candidate, a, b, alpha, settings) for label, baseline, candidate in pairs]
    table = pd.DataFrame(records)
    if table.empty:
        return table
    for measure in MEASURES:
        p = table[f"{measure}_p"].tolist()
        table[f"{measure}_p_holm"] = statistics.holm_adjusted(p)
        significant = statistics.holm(p, alpha)
        table[f"{measure}_verdict"] = [
            "untested" if math.isnan(pv) else ("better" if d > 0 else "worse") if s else "no significant difference"
            for pv, d, s in zip(p, table[f"{measure}_diff"], significant)
        ]
    return table


def _compare_pair(
    label: dict[str, Any],
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    a: Side,
    b: Side,
    alpha: float,
    settings: list[str],
) -> dict[str, Any]:
    seeds = sorted(set(baseline["seed"]) & set(candidate["seed"]))
    base = baseline.set_index("seed").loc[seeds]
    cand = candidate.set_index("seed").loc[seeds]
    record: dict[str, Any] = {**label, "seeds": len(seeds)}
    notes = [
        f"n_samples differ ({base['n_samples'].iloc[0]} vs {cand['n_samples'].iloc[0]})" if column == "n_samples" else f"{column} differ"
        for column in settings
        if (base[column] != cand[column]).any()
    ]
    paired_robust = _paired_outcomes(base["cell_id"], cand["cell_id"], a, b, "robust")
    for measure, (column, outcome_column) in MEASURES.items():
        base_values, cand_values = base[column].tolist(), cand[column].tolist()
        diffs = [c - b_ for b_, c in zip(base_values, cand_values)]
        mean_diff, low, high = statistics.mean_interval(diffs)
        paired = _paired_outcomes(base["cell_id"], cand["cell_id"], a, b, outcome_column)
        if len(seeds) == 1:
            if paired is not None:
                low, high = statistics.paired_difference_interval(*paired)
            else:
                n_a, n_b = int(base["n_samples"].iloc[0]), int(cand["n_samples"].iloc[0])
                low, high = statistics.unpaired_difference_interval(  # candidate - baseline
                    round(cand_values[0] * n_b), n_b, round(base_values[0] * n_a), n_a
                )
        mcnemar = _mcnemar(paired)
        wilcoxon = statistics.wilcoxon_paired(base_values, cand_values)
        if wilcoxon.min_p_value <= alpha:
            p_value, test = wilcoxon.p_value, f"Wilcoxon ({len(seeds)} seeds)"
        elif mcnemar is not None:
            p_value, test = mcnemar.p_value, f"McNemar ({mcnemar.n} pairs)"
        else:
            p_value, test = math.nan, "none"
        record.update(
            {
                f"{measure}_baseline": sum(base_values) / len(seeds),
                f"{measure}_candidate": sum(cand_values) / len(seeds),
                f"{measure}_diff": mean_diff,
                f"{measure}_diff_low": low,
                f"{measure}_diff_high": high,
                f"{measure}_mcnemar_p": mcnemar.p_value if mcnemar else math.nan,
                f"{measure}_wilcoxon_p": wilcoxon.p_value if len(seeds) > 1 else math.nan,
                f"{measure}_test": test,
                f"{measure}_p": p_value,
            }
        )
    if 1 < len(seeds) and 2 / 2 ** len(seeds) > alpha:
        notes.append(f"Wilcoxon cannot reach {alpha:g} with {len(seeds)} seeds")
    if paired_robust is None:
        notes.append("no paired outcomes")
    record["note"] = "; ".join(notes)
    return record


def _paired_outcomes(
    base_cells: pd.Series, cand_cells: pd.Series, a: Side, b: Side, column: str
) -> tuple[list[float], list[float]] | None:
    """The per-sample outcomes of both sides, seed after seed, when every seed has them for the same samples."""
    base_values: list[float] = []
    cand_values: list[float] = []
    for base_cell, cand_cell in zip(base_cells, cand_cells):
        left, right = a.outcomes.get(base_cell), b.outcomes.get(cand_cell)
        if left is None or right is None or not left.index.equals(right.index):
            return None
        base_values += left[column].tolist()
        cand_values += right[column].tolist()
    return base_values, cand_values


def _mcnemar(paired: tuple[list[float], list[float]] | None) -> statistics.McNemar | None:
    if paired is None:
        return None
    try:
        return statistics.mcnemar_exact(*paired)
    except ValueError:  # fractions of draws (a stochastic model): not binary outcomes
        return None

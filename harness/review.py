"""What a robustness reviewer derives from a leaderboard without running anything: the flags
that suggest a weak attack or masked gradients, and the worst case over attacks.

Pure pandas (and scipy for intervals): no torch, so ``show`` and ``compare`` stay fast.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from harness.leaderboard import TOLERANCE, over_budget
from harness.statistics import wilson_interval

if TYPE_CHECKING:
    import pandas as pd

FLAGS = {
    "rises-with-eps": "robust accuracy is higher than at a smaller eps of the same attack (a weak or failing attack)",
    "single-step-stronger": "a single-step attack beats this iterative attack of the same norm and budget",
    "above-chance": "an unbounded or very large budget (eps = inf, or Linf >= 0.5) leaves robust accuracy above twice chance",
    "robust-above-clean": "robust accuracy above clean accuracy, which is impossible",
    "over-budget": "the perturbation exceeds the budget (or the runner rejected the attack for it)",
}
LARGE_LINF = 0.5
"""An Linf budget that can turn any [0, 1] image into uniform grey: beyond it nothing should survive."""
WORST_CASE = "worst-case"
ENTRY = ["dataset", "model", "defense", "norm", "eps", "seed"]


def iterations(attack_params: str) -> int:
    """An attack's iteration count from its parameters: ``max_iter``, else 1 (a single step)."""
    try:
        value = json.loads(attack_params).get("max_iter", 1)
    except (TypeError, ValueError, AttributeError):
        return 1
    return value if isinstance(value, int) else 1


def flags(frame: pd.DataFrame, num_classes: int = 10) -> pd.Series:
    """For every row, the names of the :data:`FLAGS` it raises, joined by ``"; "`` ("" for none)."""
    import pandas as pd

    raised: dict[str, set[str]] = {index: set() for index in frame.index}
    ok = frame[frame["status"] == "ok"]

    def mark(rows: pd.Index, name: str) -> None:
        for index in rows:
            raised[index].add(name)

    for _, sweep in ok.groupby(["dataset", "model", "defense", "attack", "norm", "seed"], sort=False):
        sweep = sweep.sort_values("eps")
        lowest_before = sweep["robust_accuracy"].cummin().shift(1)
        mark(sweep.index[(sweep["robust_accuracy"] > lowest_before + TOLERANCE).to_numpy()], "rises-with-eps")

    steps = ok["attack_params"].map(iterations)
    for _, setting in ok.assign(steps=steps).groupby(ENTRY, sort=False):
        single, iterative = setting[setting["steps"] <= 1], setting[setting["steps"] > 1]
        if len(single) and len(iterative):
            beaten = iterative["robust_accuracy"] > single["robust_accuracy"].min() + TOLERANCE
            mark(iterative.index[beaten.to_numpy()], "single-step-stronger")

    large = ok["eps"].map(math.isinf) | ((ok["norm"] == "linf") & (ok["eps"] >= LARGE_LINF))
    mark(ok.index[(large & (ok["robust_accuracy"] > 2 / num_classes)).to_numpy()], "above-chance")
    mark(ok.index[(ok["robust_accuracy"] > ok["clean_accuracy"] + TOLERANCE).to_numpy()], "robust-above-clean")

    linf = ok[ok["norm"] == "linf"]
    exceeded = [over_budget(size, eps) for size, eps in zip(linf["max_perturbation_linf"], linf["eps"])]
    mark(linf.index[exceeded], "over-budget")
    rejected = (frame["status"] == "error") & frame["message"].fillna("").str.contains("exceeded its budget|outside \\[0, 1\\]")
    mark(frame.index[rejected.to_numpy()], "over-budget")
    return pd.Series({index: "; ".join(sorted(names)) for index, names in raised.items()}, dtype="string")


def worst_case(frame: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """For each (dataset, model, defense, norm, eps, seed) attacked by two or more attacks whose
    outcomes cover the same samples, the accuracy against their union: a sample counts as robust
    only if every attack failed on it (as AutoAttack reports). Rows shaped like the leaderboard's,
    with ``attack = "worst-case"`` and the attacks it combines in ``message``."""
    import pandas as pd

    ok = frame[(frame["status"] == "ok") & frame["cell_id"].isin(outcomes["cell_id"])]
    by_cell = outcomes.set_index("cell_id")
    rows = []
    for key, setting in ok.groupby(ENTRY, sort=True):
        if setting["attack"].nunique() < 2:
            continue
        samples = [by_cell.loc[[cell_id]].set_index("sample") for cell_id in setting["cell_id"]]
        if any(not s.index.equals(samples[0].index) for s in samples):
            continue
        robust = pd.concat([s["robust"] for s in samples], axis=1).min(axis=1)
        clean = samples[0]["clean_correct"]
        n = len(robust)
        low, high = wilson_interval(int(round(robust.sum())), n)
        rows.append(
            {
                **dict(zip(ENTRY, key)),
                "attack": WORST_CASE,
                "n_samples": n,
                "clean_accuracy": clean.mean(),
                "robust_accuracy": robust.mean(),
                "robust_accuracy_ci_low": low,
                "robust_accuracy_ci_high": high,
                "attack_success_rate": (clean - robust).sum() / clean.sum() if clean.sum() > 0 else math.nan,
                "status": "ok",
                "message": "union of " + ", ".join(sorted(setting["attack"])),
            }
        )
    return pd.DataFrame(rows)


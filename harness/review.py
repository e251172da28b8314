"""What a robustness reviewer derives from a leaderboard without running anything: the flags
that suggest a weak attack or masked gradients, the verdict they add up to per trained model,
and the worst case over attacks.

The checks follow Carlini et al., "On Evaluating Adversarial Robustness" (2019), section 5 and
appendix A: iterative attacks beat single-step ones (5.2), more budget means more success and an
unbounded attack succeeds (5.3, 5.4), black-box and transfer attacks do not beat white-box ones
(5.7), gradients are not masked (5.5), randomness is averaged (EOT, 5.9), and attacks are run to
convergence with more iterations and restarts (5.8).

Pure pandas: no torch, so ``show``, ``compare`` and ``site`` stay fast.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.leaderboard import TOLERANCE, over_budget
from harness.statistics import mean_interval, wilson_interval

if TYPE_CHECKING:
    import pandas as pd

FLAGS = {
    "rises-with-eps": "robust accuracy is higher than at a smaller eps of the same attack (a weak or failing attack)",
    "single-step-stronger": "a single-step attack beats this iterative attack of the same plugin, norm and budget",
    "above-chance": "an unbounded or very large budget (eps = inf, or Linf >= 0.5) leaves robust accuracy above twice chance",
    "robust-above-clean": "robust accuracy above clean accuracy, which is impossible",
    "over-budget": "the perturbation exceeds the budget (or the runner rejected the attack for it)",
    "weaker-white-box": "a black-box or transfer attack breaks more samples than every white-box attack at the same norm "
    "and eps (masked or obfuscated gradients)",
    "unbounded-fails": "an unbounded or very large budget leaves more than 1% of the correctly classified samples "
    "unbroken (a failing attack or masked gradients)",
    "zero-gradient": "the cross-entropy's input gradient is zero or not finite on more than 1% of the samples: a gradient "
    "attack on it cannot move them (saturated scores, non-differentiable steps)",
    "randomized-without-eot": "the model's output varies between identical forward passes, but neither the evaluation "
    "(draws) nor the attack (EOT) averages over its randomness",
    "not-converged": "the same attack with twice the iterations or more restarts lowers robust accuracy by more than a point",
}
NEXT_STEP = {
    "rises-with-eps": "run the attack with more iterations and random restarts",
    "single-step-stronger": "check the iterative attack's step size, or give it more iterations",
    "above-chance": "check that the attack can change any input at that budget (a bug, or masked gradients)",
    "robust-above-clean": "check the model for randomness or a bug in its evaluation",
    "over-budget": "fix the attack: its examples leave the threat model",
    "weaker-white-box": "use a margin or DLR loss (autoattack; pgd with loss = \"margin\") and a black-box attack "
    "(square) before trusting the white-box numbers",
    "unbounded-fails": "run a minimal-norm attack (autoattack's FAB, C&W) and a black-box attack at that budget",
    "zero-gradient": "attack a loss that keeps gradients (autoattack, whose APGD-T uses the DLR margin; pgd with "
    "loss = \"margin\") and add a black-box attack (square) or a transfer attack",
    "randomized-without-eot": "declare the model stochastic (the suite's draws) or attack with EOT "
    "(autoattack version = \"rand\")",
    "not-converged": "raise max_iter and num_random_init until robust accuracy stops falling",
}
WHITE_BOX_MARGIN = 0.002
"""How much more a black-box attack may break before the white-box one is flagged (AutoAttack's
``check_square_sr`` alpha)."""
UNBOUNDED_SUCCESS = 0.99
"""The success rate an unbounded (or very large) budget must reach."""
ZERO_GRADIENT_LIMIT = 0.01
"""The fraction of samples with a zero or non-finite gradient beyond which a model is flagged."""
CONVERGENCE_MARGIN = 0.01
"""How much more effort may lower robust accuracy before the attack counts as not converged."""
EFFORT_PARAMS = ("max_iter", "num_random_init")
LARGE_LINF = 0.5
"""An Linf budget that can turn any [0, 1] image into uniform grey: beyond it nothing should survive."""
WORST_CASE = "worst-case"
ENTRY = ["dataset", "model", "defense", "norm", "eps", "seed"]
CHECKED = [
    "attack", "status", "message", "clean_accuracy", "robust_accuracy", "attack_success_rate", "max_perturbation_linf",
    "attack_access", "attack_params", "attack_plugin", "zero_gradient_fraction", "randomness",
]  # fmt: skip
"""The columns the checks read, beside :data:`ENTRY`."""
WORST_COLUMNS = [
    *ENTRY, "attack", "n_samples", "clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low", "robust_accuracy_ci_high",
    "attack_success_rate", "status", "message", "cell_id", "dataset_params", "model_params", "defense_params",
    "attack_params",
]  # fmt: skip
"""The columns of :func:`worst_over_attacks`' rows: what ``show``, ``site`` and a comparison read."""


def iterations(attack_params: str) -> int:
    """An attack's iteration count from its parameters: ``max_iter``, else 1 (a single step)."""
    try:
        value = json.loads(attack_params).get("max_iter", 1)
    except (TypeError, ValueError, AttributeError):
        return 1
    return value if isinstance(value, int) else 1


def _effort(attack_params: str) -> tuple[str, int, int] | None:
    """An attack's parameters without its effort (``max_iter``, ``num_random_init``), and the effort."""
    try:
        params = json.loads(attack_params)
    except (TypeError, ValueError):
        return None
    if not isinstance(params, dict):
        return None
    effort = [params.pop(name, 0) for name in EFFORT_PARAMS]
    if not all(isinstance(value, int) for value in effort):
        return None
    return json.dumps(params, sort_keys=True), effort[0], effort[1]


def _by_access(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The white-box rows and the black-box or transfer rows. A transfer from the row's own model
    and defense is a white-box attack, and counts as one."""
    import pandas as pd

    sources = rows["attack_params"].map(_source)
    own = pd.Series([s == (m, d) for s, m, d in zip(sources, rows["model"], rows["defense"])], index=rows.index, dtype=bool)
    white = rows["attack_access"].eq("white-box").fillna(False).astype(bool) | own
    other = rows["attack_access"].isin(["black-box", "transfer"]) & ~own
    return rows[white], rows[other]


def _source(attack_params: str) -> tuple[str, str] | None:
    """A transfer attack's surrogate, (model, defense), from its parameters."""
    try:
        params = json.loads(attack_params)
        return (params["source"], params.get("source_defense", "none"))
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _large(rows: pd.DataFrame) -> pd.Series:
    """Rows whose budget is unbounded or very large (eps = inf, or Linf >= :data:`LARGE_LINF`)."""
    return rows["eps"].map(math.isinf) | ((rows["norm"] == "linf") & (rows["eps"] >= LARGE_LINF))


def _effort_pairs(setting: pd.DataFrame) -> list[tuple[Any, Any]]:
    """(index, longer index) for each pair of rows of one setting where the second is the same attack
    (plugin and parameters) run with more effort (:func:`more_effort`)."""
    efforts = {index: _effort(params) for index, params in setting["attack_params"].items()}
    plugins = setting["attack_plugin"].fillna("")  # a missing plugin is no plugin, not an unknown one
    return [
        (index, longer)
        for index, effort in efforts.items()
        for longer, longer_effort in efforts.items()
        if effort is not None and longer_effort is not None and effort[0] == longer_effort[0]
        and plugins[index] == plugins[longer] and more_effort(longer_effort[1:], effort[1:])
    ]  # fmt: skip


def more_effort(more: tuple[int, int], less: tuple[int, int]) -> bool:
    """Whether (iterations, restarts) ``more`` is the same attack run longer: at least twice the
    iterations, or as many and more restarts."""
    iterations, restarts = more
    return (iterations >= 2 * less[0] > 0 and restarts >= less[1]) or (iterations >= less[0] and restarts > less[1])


def flags(frame: pd.DataFrame, num_classes: int = 10) -> pd.Series:
    """For every row, the names of the :data:`FLAGS` it raises, joined by ``"; "`` ("" for none)."""
    import pandas as pd

    if frame.empty:  # a run stopped before its first cell: no rows, and columns of no type
        return pd.Series("", index=frame.index, dtype=object)
    frame = frame[[*ENTRY, *CHECKED]]  # each subset below copies every column: only those read
    raised: dict[str, set[str]] = {index: set() for index in frame.index}
    ok = frame[frame["status"] == "ok"]

    def mark(rows: pd.Index, name: str) -> None:
        for index in rows:
            raised[index].add(name)

    for _, sweep in ok.groupby(["dataset", "model", "defense", "attack", "norm", "seed"], sort=False):
        sweep = sweep.sort_values("eps")
        lowest_before = sweep["robust_accuracy"].cummin().shift(1)
        mark(sweep.index[(sweep["robust_accuracy"] > lowest_before + TOLERANCE).to_numpy()], "rises-with-eps")

    gradient_rows = ok[~ok["attack_access"].isin(["black-box", "transfer"])]  # steps of their own gradients
    steps = gradient_rows["attack_params"].map(iterations)
    # within one plugin, whose max_iter means one thing (an AutoAttack has none and is no single step)
    for _, setting in gradient_rows.assign(steps=steps).groupby([*ENTRY, "attack_plugin"], sort=False, dropna=False):
        single, iterative = setting[setting["steps"] <= 1], setting[setting["steps"] > 1]
        if len(single) and len(iterative):
            beaten = iterative["robust_accuracy"] > single["robust_accuracy"].min() + TOLERANCE
            mark(iterative.index[beaten.to_numpy()], "single-step-stronger")

    large = _large(ok)
    mark(ok.index[(large & (ok["robust_accuracy"] > 2 / num_classes)).to_numpy()], "above-chance")
    mark(ok.index[(ok["robust_accuracy"] > ok["clean_accuracy"] + TOLERANCE).to_numpy()], "robust-above-clean")

    linf = ok[ok["norm"] == "linf"]
    exceeded = [over_budget(size, eps) for size, eps in zip(linf["max_perturbation_linf"], linf["eps"])]
    mark(linf.index[exceeded], "over-budget")
    rejected = (frame["status"] == "error") & frame["message"].fillna("").str.contains("exceeded its budget|outside \\[0, 1\\]")
    mark(frame.index[rejected.to_numpy()], "over-budget")

    success = ok["attack_success_rate"]
    mark(ok.index[(large & success.notna() & (success < UNBOUNDED_SUCCESS - TOLERANCE)).to_numpy()], "unbounded-fails")
    white_box = ok["attack_access"].eq("white-box").fillna(False).astype(bool)
    mark(ok.index[(white_box & (ok["zero_gradient_fraction"] > ZERO_GRADIENT_LIMIT)).to_numpy()], "zero-gradient")
    mark(ok.index[ok["randomness"].eq("unhandled").fillna(False).astype(bool).to_numpy()], "randomized-without-eot")
    for _, setting in ok.groupby(ENTRY, sort=False):
        gradient, other = _by_access(setting)
        if len(gradient) and len(other) and gradient["robust_accuracy"].min() > other["robust_accuracy"].min() + WHITE_BOX_MARGIN:
            mark(gradient.index, "weaker-white-box")
        robust = setting["robust_accuracy"]
        for index, longer in _effort_pairs(setting):
            if robust[index] > robust[longer] + CONVERGENCE_MARGIN:
                mark(pd.Index([index]), "not-converged")
    return pd.Series({index: "; ".join(sorted(names)) for index, names in raised.items()}, dtype="string")


MODEL = ["dataset", "model", "defense"]


@dataclass(frozen=True)
class Checks:
    """What the checks say about one trained entry: the failed ones with their worst number, the
    passed ones, and those its rows give no material for, with what to add."""

    failed: dict[str, str]
    passed: list[str]
    missing: dict[str, str]


def checks(rows: pd.DataFrame) -> Checks:
    """The :data:`FLAGS` checks over ``rows``, the ok rows of one trained entry with ``flags``."""
    rows = rows[[*ENTRY, *CHECKED, "flags"]]  # each subset copies every column: only those read
    raised = {name for text in rows["flags"].fillna("") for name in text.split("; ") if name}
    missing = _unchecked(rows)
    return Checks(
        failed={name: _worst(name, rows) for name in FLAGS if name in raised},
        passed=[name for name in FLAGS if name not in raised and name not in missing],
        missing=missing,
    )


def verdicts(frame: pd.DataFrame) -> list[str]:
    """Per trained entry (dataset, model, defense): the checks its rows failed, with their worst
    numbers and what to run next, the checks it passed, and those the leaderboard cannot make.
    ``frame`` carries the ``flags`` column (:func:`flags`)."""
    lines = []
    for key, rows in frame[frame["status"] == "ok"].groupby(MODEL, sort=False):
        result = checks(rows)
        checked = len(result.failed) + len(result.passed)
        lines.append(f"verdict {'/'.join(map(str, key))}: {len(result.failed)} of {checked} checks failed")
        for name, worst in result.failed.items():
            lines.append(f"  failed {name}: {worst} -> {NEXT_STEP[name]}")
        if result.passed:
            lines.append(f"  passed: {', '.join(result.passed)}")
        for name, why in result.missing.items():
            lines.append(f"  not checked {name}: {why}")
    return lines


def _unchecked(rows: pd.DataFrame) -> dict[str, str]:
    """The checks that ``rows`` (one trained entry's ok rows) give no material for, and why."""
    missing = {}
    gradient, other = _by_access(rows)
    if not (len(gradient) and len(other)):
        missing["weaker-white-box"] = "add a black-box attack (square) or a transfer attack beside the white-box ones"
    if not _large(rows).any():
        missing["above-chance"] = missing["unbounded-fails"] = (
            "add an unbounded minimal-norm attack (eps = inf) or an Linf budget of 0.5"
        )
    if rows["zero_gradient_fraction"].isna().all():
        missing["zero-gradient"] = "the rows predate the check or the model has no logits"
    if rows["randomness"].isna().all():
        missing["randomized-without-eot"] = "the rows predate the check (rerun them)"
    if not any(_effort_pairs(setting) for _, setting in rows.groupby(ENTRY, sort=False)):
        missing["not-converged"] = "add the same attack with twice max_iter or more num_random_init"
    return missing


def _worst(name: str, rows: pd.DataFrame) -> str:
    """The worst number behind a failed check among ``rows``."""
    flagged = rows[rows["flags"].fillna("").str.contains(name, regex=False)]
    if name == "zero-gradient":
        return f"{flagged['zero_gradient_fraction'].max():.1%} of the samples"
    if name == "unbounded-fails":
        worst = flagged.loc[flagged["attack_success_rate"].idxmin()]
        return f"{worst['attack']} succeeds on {worst['attack_success_rate']:.1%} at {worst['norm']} {worst['eps']:g}"
    if name == "weaker-white-box":
        gaps = []
        for _, setting in rows.groupby(ENTRY, sort=False):
            gradient, other = _by_access(setting)
            if len(other) and len(gradient.index.intersection(flagged.index)):
                best = other.loc[other["robust_accuracy"].idxmin()]
                strongest = gradient.loc[gradient["robust_accuracy"].idxmin()]
                gaps.append((strongest["robust_accuracy"] - best["robust_accuracy"], strongest, best))
        _, strongest, best = max(gaps, key=lambda g: g[0])
        return (f"{best['attack']} leaves {best['robust_accuracy']:.1%} where the strongest white-box attack, "
                f"{strongest['attack']}, leaves {strongest['robust_accuracy']:.1%} ({strongest['norm']} "
                f"{strongest['eps']:g}, seed {strongest['seed']})")
    if name == "not-converged":
        drops = [
            (rows.at[index, "robust_accuracy"] - rows.at[longer, "robust_accuracy"], index)
            for _, setting in rows.groupby(ENTRY, sort=False)
            for index, longer in _effort_pairs(setting)
            if index in flagged.index
        ]
        drop, index = max(drops)
        row = rows.loc[index]
        return f"{row['attack']} at {row['norm']} {row['eps']:g}: {drop:.1%} lower with more effort"
    return f"{len(flagged)} of {len(rows)} rows"


def worst_case(frame: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """For each (dataset, model, defense, norm, eps, seed) attacked by two or more attacks whose
    outcomes cover the same samples, the accuracy against their union: a sample counts as robust
    only if every attack failed on it (as AutoAttack reports). Rows shaped like the leaderboard's,
    with ``attack = "worst-case"`` and the attacks it combines in ``message``."""
    return _union(frame, outcomes, minimum=2)[0]


def worst_over_attacks(frame: pd.DataFrame, outcomes: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (dataset, model, defense, norm, eps, seed) of the ok rows under the worst case over
    its attacks, whatever their number: the per-sample union (:func:`worst_case`) where the
    outcomes cover the same samples, else the attack with the lowest robust accuracy (an upper
    bound on the union when there are several; ``message`` says so). Returns the rows, with
    ``attack = "worst-case"`` and the columns :data:`WORST_COLUMNS`, and the per-sample outcomes of
    the unions (``cell_id``, ``sample``, ``clean_correct``, ``robust``), so that
    :mod:`harness.comparison` can compare them."""
    import pandas as pd

    ok = frame[frame["status"] == "ok"]
    rows, samples = _union(ok, outcomes, minimum=1) if outcomes is not None else (ok.iloc[:0], None)
    done = set(map(tuple, rows[ENTRY].to_numpy())) if len(rows) else set()
    rest = ok[[key not in done for key in map(tuple, ok[ENTRY].to_numpy())]]
    grouped = rest.groupby(ENTRY, sort=True)
    names = grouped["attack"].agg(lambda attacks: ", ".join(sorted(attacks)))
    counts = grouped.size()
    lowest = rest.loc[grouped["robust_accuracy"].idxmin().to_numpy()]
    lowest = lowest.assign(
        attack=WORST_CASE,
        message=[
            f"{names[key]}, the only attack" if counts[key] == 1
            else f"lowest of {names[key]} (no per-sample outcomes: an upper bound)"
            for key in lowest.set_index(ENTRY).index
        ],
    )  # fmt: skip
    if samples is None:
        samples = pd.DataFrame(columns=["cell_id", "sample", "clean_correct", "robust"])
    return pd.concat([rows, lowest], ignore_index=True).reindex(columns=WORST_COLUMNS), samples


def _union(frame: pd.DataFrame, outcomes: pd.DataFrame, minimum: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The worst case of each setting with ``minimum`` or more attacks whose outcomes cover the
    same samples: rows (with the parameters of the dataset, model and defense, and a ``cell_id``
    derived from the cells it combines) and their per-sample outcomes."""
    import pandas as pd

    ok = frame[(frame["status"] == "ok") & frame["cell_id"].isin(outcomes["cell_id"])]
    by_cell = {cell_id: cell.set_index("sample") for cell_id, cell in outcomes[outcomes["cell_id"].isin(ok["cell_id"])].groupby("cell_id")}
    rows, samples_of = [], []
    for key, setting in ok.groupby(ENTRY, sort=True):
        if setting["attack"].nunique() < minimum:
            continue
        samples = [by_cell[cell_id] for cell_id in setting["cell_id"]]
        if any(not s.index.equals(samples[0].index) for s in samples):
            continue
        robust = pd.concat([s["robust"] for s in samples], axis=1).min(axis=1)
        clean = samples[0]["clean_correct"]
        n = len(robust)
        low, high = wilson_interval(int(round(robust.sum())), n)
        cell_id = f"{WORST_CASE}-{hashlib.sha256(' '.join(sorted(setting['cell_id'])).encode()).hexdigest()[:16]}"
        attacks = sorted(setting["attack"])
        first = setting.iloc[0]
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
                "message": f"{attacks[0]}, the only attack" if len(attacks) == 1 else "union of " + ", ".join(attacks),
                "cell_id": cell_id,
                **{column: first[column] for column in ("dataset_params", "model_params", "defense_params")},
                "attack_params": json.dumps(attacks),
            }
        )
        samples_of.append(pd.DataFrame({"cell_id": cell_id, "sample": robust.index, "clean_correct": clean.to_numpy(),
                                        "robust": robust.to_numpy()}))  # fmt: skip
    columns = ["cell_id", "sample", "clean_correct", "robust"]
    return pd.DataFrame(rows), pd.concat(samples_of, ignore_index=True) if samples_of else pd.DataFrame(columns=columns)


def over_seeds(rows: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str] = ()) -> pd.DataFrame:
    """One row per ``keys``, averaged over its seeds: ``seeds``, the mean clean and robust
    accuracy, attack success rate and ``metrics``, the union of the ``flags``, and
    ``robust_ci_low``/``robust_ci_high``: the 95% Student-t interval of the mean over seeds,
    which covers the seed-to-seed spread, clipped to [0, 1] (a t interval knows no bounds: 0.99
    and 1.0 would give 1.04); for one seed, the row's Wilson interval, which stays inside."""
    import numpy as np
    import pandas as pd

    flagged = ["flags"] if "flags" in rows else []
    columns = [*keys, "seed", "clean_accuracy", "robust_accuracy", "robust_accuracy_ci_low", "robust_accuracy_ci_high",
               "attack_success_rate", *metrics, *flagged]  # fmt: skip
    rows = rows[list(dict.fromkeys(columns))]  # each group copies every column: only those read
    records = []
    for _, group in rows.groupby(list(keys), dropna=False, sort=False):
        values = group["robust_accuracy"].dropna().tolist()
        mean, low, high = mean_interval(values) if values else (math.nan, math.nan, math.nan)
        if len(group) == 1:
            low, high = group["robust_accuracy_ci_low"].iloc[0], group["robust_accuracy_ci_high"].iloc[0]
        first = group.iloc[0]
        records.append(
            {
                **{column: first[column] for column in keys},
                "seeds": group["seed"].nunique(),
                "clean_accuracy": group["clean_accuracy"].mean(),
                "robust_accuracy": mean,
                "robust_ci_low": float(np.clip(low, 0, 1)),
                "robust_ci_high": float(np.clip(high, 0, 1)),
                "attack_success_rate": group["attack_success_rate"].mean(),
                **{m: group[m].mean() for m in metrics},
                **{f: "; ".join(sorted({n for text in group[f].fillna("") for n in text.split("; ") if n})) for f in flagged},
            }
        )
    columns = [*keys, "seeds", "clean_accuracy", "robust_accuracy", "robust_ci_low", "robust_ci_high",
               "attack_success_rate", *metrics, *flagged]  # fmt: skip
    return pd.DataFrame(records, columns=columns)

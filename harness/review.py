"""What a robustness reviewer derives from a leaderboard without running anything: the flags
that suggest a weak attack or masked gradients, the verdict they add up to per trained model,
and the worst case over attacks.

The checks follow Carlini et al., "On Evaluating Adversarial Robustness" (2019), section 5 and
appendix A: iterative attacks beat single-step ones (5.2), more budget means more success and an
unbounded attack succeeds (5.3, 5.4), black-box and transfer attacks do not beat white-box ones
(5.7), gradients are not masked (5.5), randomness is averaged (EOT, 5.9), and attacks are run to
convergence with more iterations and restarts (5.8).

Pure pandas (and scipy for intervals): no torch, so ``show`` and ``compare`` stay fast.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from harness.leaderboard import TOLERANCE, over_budget
from harness.statistics import wilson_interval

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
    own = rows["attack_params"].map(_source).eq(list(zip(rows["model"], rows["defense"])))
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
    return [
        (index, longer)
        for index, effort in efforts.items()
        for longer, longer_effort in efforts.items()
        if effort is not None and longer_effort is not None and effort[0] == longer_effort[0]
        and setting.at[index, "attack_plugin"] == setting.at[longer, "attack_plugin"]
        and more_effort(longer_effort[1:], effort[1:])
    ]  # fmt: skip


def more_effort(more: tuple[int, int], less: tuple[int, int]) -> bool:
    """Whether (iterations, restarts) ``more`` is the same attack run longer: at least twice the
    iterations, or as many and more restarts."""
    iterations, restarts = more
    return (iterations >= 2 * less[0] > 0 and restarts >= less[1]) or (iterations >= less[0] and restarts > less[1])


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


def verdicts(frame: pd.DataFrame) -> list[str]:
    """Per trained entry (dataset, model, defense): the checks its rows failed, with their worst
    numbers and what to run next, the checks it passed, and those the leaderboard cannot make.
    ``frame`` carries the ``flags`` column (:func:`flags`)."""
    lines = []
    for key, rows in frame[frame["status"] == "ok"].groupby(MODEL, sort=False):
        raised = {name for text in rows["flags"].fillna("") for name in text.split("; ") if name}
        missing = _unchecked(rows)
        failed = [name for name in FLAGS if name in raised]
        passed = [name for name in FLAGS if name not in raised and name not in missing]
        lines.append(f"verdict {'/'.join(map(str, key))}: {len(failed)} of {len(failed) + len(passed)} checks failed")
        for name in failed:
            lines.append(f"  failed {name}: {_worst(name, rows)} -> {NEXT_STEP[name]}")
        if passed:
            lines.append(f"  passed: {', '.join(passed)}")
        for name, why in missing.items():
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


"""`harness plot`: the figures it writes, the numbers behind their lines, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from scipy.stats import t
from test_leaderboard import make_row

from harness.leaderboard import read_leaderboard, write_leaderboard
from harness.outcomes import outcomes_path, read_outcomes, write_outcomes
from harness.plots import accuracy_series, perturbation_cdf
from harness.review import wilson_interval, worst_case

N = 20
CLEAN = {("mlp", 0): 18, ("mlp", 1): 19, ("mlp", 2): 18, ("cnn", 0): 17}
"""Clean-correct samples of each (model, seed): the first ones."""
ROBUST = {
    ("mlp", "pgd", 0.1): [12, 14, 13],
    ("mlp", "pgd", 0.2): [4, 6, 5],
    ("mlp", "fgsm", 0.1): [15, 15, 16],
    ("mlp", "fgsm", 0.2): [8, 9, 7],
    ("cnn", "pgd", 0.1): [10],
    ("cnn", "pgd", 0.2): [3],
}
"""Robust samples per seed: PGD keeps the first ones, FGSM the last clean-correct ones, so their
union (the worst case) keeps fewer than either."""
LINESEARCH = {  # seed -> eps -> (clean_correct, robust, perturbation), an L2 minimal-norm attack
    0: {
        math.inf: ([1, 1, 1, 1, 0], [0, 0, 0, 1, 0], [0.05, 0.15, 0.3, 0.5, 0.02]),
        0.1: ([1, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0.05, 0, 0, 0, 0]),
    },
    1: {
        math.inf: ([1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0.1, 0.15, 0.4, 0.6, 0.25]),
        0.1: ([1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0.1, 0, 0, 0, 0]),
    },
}


def cell(model, attack, norm, eps, seed, clean, robust, perturbation, **overrides):
    """A leaderboard row and its outcomes, consistent with each other."""
    cell_id = f"{model}-{attack}-{eps}-{seed}"
    n, successes = len(clean), int(sum(robust))
    low, high = wilson_interval(successes, n)
    row = make_row(
        model=model, attack=attack, norm=norm, eps=eps, seed=seed, n_samples=n, cell_id=cell_id,
        clean_accuracy=sum(clean) / n, robust_accuracy=successes / n, robust_accuracy_ci_low=low,
        robust_accuracy_ci_high=high, attack_success_rate=(sum(clean) - successes) / sum(clean), **overrides,
    )  # fmt: skip
    outcomes = pd.DataFrame(
        {"cell_id": cell_id, "sample": range(n), "clean_correct": clean, "adversarial_correct": robust,
         "robust": robust, "adversarial_label": 0, "perturbation": perturbation}  # fmt: skip
    )
    return row, outcomes


def budgeted(model, attack, eps, seed, kept):
    clean_count = CLEAN[(model, seed)]
    clean = [1] * clean_count + [0] * (N - clean_count)
    first = range(kept) if attack == "pgd" else range(clean_count - kept, clean_count)
    robust = [int(i in first) for i in range(N)]
    return cell(model, attack, "linf", eps, seed, clean, robust, [eps] * N)


def cells():
    for (model, attack, eps), counts in ROBUST.items():
        for seed, kept in enumerate(counts):
            yield budgeted(model, attack, eps, seed, kept)
    for seed, sweep in LINESEARCH.items():
        for eps, samples in sweep.items():
            yield cell("mlp", "linesearch", "l2", eps, seed, *samples, minimal_norm=True)


@pytest.fixture
def leaderboard(tmp_path):
    rows, outcomes = zip(*cells())
    path = tmp_path / "board.csv"
    write_outcomes(outcomes, outcomes_path(path))
    write_leaderboard(rows, path)
    return path


def test_plot_writes_the_figures_into_a_folder_beside_the_csv(cli, leaderboard):
    code, out, err = cli("plot", leaderboard)
    folder = leaderboard.parent / "board-plots"
    assert code == 0 and err == ""
    assert out.splitlines() == [str(folder / "robust-accuracy.png"), str(folder / "perturbation-cdf.png")]
    for path in folder.iterdir():
        image = imread(path)
        assert image.shape[0] > 500 and image.shape[1] > 800, path
        assert image.std() > 0.05, f"{path} looks blank"


def test_output_folder_and_one_accuracy_figure_per_dataset(cli, leaderboard, tmp_path):
    frame = read_leaderboard(leaderboard)
    other = frame[frame["attack"] == "pgd"].assign(dataset="other", cell_id=lambda f: "other-" + f["cell_id"])
    write_leaderboard(pd.concat([frame, other]).to_dict("records"), leaderboard)
    outcomes_path(leaderboard).unlink()
    code, out, err = cli("plot", leaderboard, "--output", tmp_path / "figures" / "here")
    assert code == 0
    folder = tmp_path / "figures" / "here"
    assert out.splitlines() == [str(folder / f"robust-accuracy-{d}.png") for d in ("digits", "other")]
    skipped = f"perturbation-cdf.png: no outcomes file (board.outcomes.csv.gz) beside {leaderboard}"
    assert err == f"harness: skipped {skipped}\n"


def test_without_a_minimal_norm_attack_the_cdf_is_skipped(cli, leaderboard):
    frame = read_leaderboard(leaderboard)
    write_leaderboard(frame[frame["attack"] != "linesearch"].to_dict("records"), leaderboard)
    outcomes = read_outcomes(outcomes_path(leaderboard))
    write_outcomes([outcomes[~outcomes["cell_id"].str.contains("linesearch")]], outcomes_path(leaderboard))
    code, out, err = cli("plot", leaderboard)
    assert code == 0 and out.splitlines() == [str(leaderboard.parent / "board-plots" / "robust-accuracy.png")]
    assert "skipped perturbation-cdf.png: no minimal-norm attack" in err


def test_accuracy_lines_are_seed_means_with_their_intervals(leaderboard):
    frame = read_leaderboard(leaderboard)
    series = accuracy_series(frame).set_index(["norm", "model", "attack", "eps"])
    for (model, attack, eps), counts in ROBUST.items():
        point = series.loc[("linf", model, attack, eps)]
        assert point["robust_accuracy"] == pytest.approx(np.mean(counts) / N)
        assert point["seeds"] == len(counts) and point["measured"]
    # three seeds: the Student-t interval of their values
    values = np.array(ROBUST[("mlp", "pgd", 0.1)]) / N
    half = t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    point = series.loc[("linf", "mlp", "pgd", 0.1)]
    assert (point["low"], point["high"]) == pytest.approx((values.mean() - half, values.mean() + half))
    # one seed: the row's Wilson interval
    point = series.loc[("linf", "cnn", "pgd", 0.2)]
    assert (point["low"], point["high"]) == pytest.approx(wilson_interval(3, N))
    # no eps-0 row: the line starts at the clean accuracy; eps = inf has no place on the axis
    start = series.loc[("linf", "mlp", "fgsm", 0.0)]
    assert start["robust_accuracy"] == pytest.approx((18 + 19 + 18) / 60) and not start["measured"]
    assert sorted(series.loc[("l2", "mlp", "linesearch")].index) == [0.0, 0.1]


def test_the_worst_case_line_is_the_union_of_the_attacks(leaderboard):
    frame = read_leaderboard(leaderboard)
    worst = accuracy_series(worst_case(frame, read_outcomes(outcomes_path(leaderboard))))
    worst = worst.set_index(["model", "eps"])["robust_accuracy"]
    # PGD keeps the first k of c clean-correct samples, FGSM the last k': both keep k - (c - k')
    assert worst[("mlp", 0.1)] == pytest.approx(((12 - 3) + (14 - 4) + (13 - 2)) / 60)
    assert worst[("mlp", 0.2)] == pytest.approx(0)
    assert ("cnn", 0.1) not in worst.index  # one attack: nothing to combine


def test_the_cdf_is_the_success_rate_within_each_size(leaderboard):
    frame = read_leaderboard(leaderboard)
    cdf = perturbation_cdf(frame, read_outcomes(outcomes_path(leaderboard)))
    assert set(cdf["attack"]) == {"linesearch"} and set(cdf["seeds"]) == {2} and set(cdf["largest_eps"]) == {math.inf}
    # seed 0 breaks 3 of its 4 clean-correct samples at 0.05, 0.15, 0.3 (not the failed one at 0.5,
    # nor the misclassified one at 0.02); seed 1 breaks 3 of 5 at 0.1, 0.15, 0.25
    seed0 = [0, 1 / 4, 1 / 4, 2 / 4, 2 / 4, 3 / 4]
    seed1 = [0, 0, 1 / 5, 2 / 5, 3 / 5, 3 / 5]
    assert cdf["size"].tolist() == pytest.approx([0, 0.05, 0.1, 0.15, 0.25, 0.3])
    assert cdf["success"].tolist() == pytest.approx(np.mean([seed0, seed1], axis=0))
    # at a measured eps, the curve is that eps's attack success rate, averaged over seeds
    rows = frame[(frame["attack"] == "linesearch") & (frame["eps"] == 0.1)]
    assert cdf[cdf["size"] <= 0.1]["success"].iloc[-1] == pytest.approx(rows["attack_success_rate"].mean())


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "no such leaderboard file"),
        ("corrupt", "missing columns"),
        ("no-ok-rows", "no ok rows to plot"),
        ("corrupt-outcomes", "not a readable gzip CSV"),
        ("output-is-a-file", "cannot write figures"),
    ],
)
def test_errors_are_one_line_with_exit_2(cli, leaderboard, tmp_path, breakage, message):
    args = [leaderboard]
    if breakage == "missing":
        args = [tmp_path / "nope.csv"]
    elif breakage == "corrupt":
        leaderboard.write_text("not,a\nleaderboard,at all\n")
    elif breakage == "no-ok-rows":
        frame = read_leaderboard(leaderboard).assign(status="error", message="ValueError: x")
        write_leaderboard(frame.to_dict("records"), leaderboard)
        outcomes_path(leaderboard).unlink()
    elif breakage == "corrupt-outcomes":
        outcomes_path(leaderboard).write_bytes(b"not gzip")
    else:
        (tmp_path / "taken").write_text("")
        args += ["--output", tmp_path / "taken"]
    code, out, err = cli("plot", *args)
    assert code == 2 and out == ""
    assert err.startswith("harness: error:") and err.count("\n") == 1 and message in err, err


def test_plot_keeps_the_entries_asked_for(cli, leaderboard, tmp_path):
    code, out, err = cli("plot", leaderboard, "--attack", "pgd", "--model", "mlp", "--output", tmp_path / "pgd")
    assert code == 0 and out.splitlines() == [str(tmp_path / "pgd" / "robust-accuracy.png")]
    assert "perturbation-cdf.png: no minimal-norm attack" in err  # linesearch was left out
    code, out, err = cli("plot", leaderboard, "--defense", "nope")
    assert code == 2 and out == "" and "no ok rows match defense nope" in err


def test_a_crowded_panel_is_split_per_entry_and_continues_on_a_page(cli, leaderboard):
    import matplotlib.pyplot as plt

    from harness.plots import PANELS_PER_PAGE, accuracy_figures, facet_depth

    frame = read_leaderboard(leaderboard)
    linf = frame[(frame["model"] == "mlp") & (frame["norm"] == "linf")]
    defenses = [linf.assign(defense=f"d{k:02d}", cell_id=f"d{k:02d}-" + linf["cell_id"]) for k in range(PANELS_PER_PAGE + 1)]
    crowded = pd.concat([frame[frame["norm"] == "l2"], *defenses], ignore_index=True)
    lines = crowded[["dataset", "norm", "model", "defense", "attack"]].drop_duplicates()
    assert facet_depth(lines) == 2  # 26 lines of one model: a panel per (model, defense), a line per attack
    grid = pd.MultiIndex.from_product([["digits"], ["linf"], ["a", "b"], ["x", "y", "z"], ["p", "q"]]).to_frame(
        index=False, name=["dataset", "norm", "model", "defense", "attack"]
    )
    assert facet_depth(grid) == 1 and facet_depth(grid[grid["defense"] != "z"]) == 0  # 12 lines split per model; 8 kept
    figures = accuracy_figures(crowded, None, "crowded")
    titles = [[ax.get_title().split("\n")[0] for ax in figure.axes] for figure in figures]
    plt.close("all")
    assert [len(t) for t in titles] == [PANELS_PER_PAGE, 2]  # 13 Linf panels and the L2 one
    assert titles[0][0] == "digits, L2 attacks: mlp · none" and titles[1][0] == "digits, Linf attacks: mlp · d11"
    write_leaderboard(crowded.to_dict("records"), leaderboard)
    outcomes_path(leaderboard).unlink()  # the copies have none
    code, out, _ = cli("plot", leaderboard)
    folder = leaderboard.parent / "board-plots"
    assert code == 0 and out.splitlines()[:2] == [str(folder / "robust-accuracy.png"), str(folder / "robust-accuracy-page2.png")]

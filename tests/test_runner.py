"""End-to-end runs of tiny suites through the CLI: resume, skip, errors, caching, determinism."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import TINY_SUITE, run_harness, subprocess_env

from harness.journal import journal_path
from harness.leaderboard import read_leaderboard
from harness.outcomes import outcomes_path

TIMING = ["train_seconds", "attack_seconds", "created_at"]


def results(path):
    """The leaderboard without the columns that legitimately differ between runs."""
    return read_leaderboard(path).drop(columns=TIMING)


def test_run_writes_a_valid_leaderboard(cli, write_suite, tmp_path):
    suite = write_suite()
    code, out, err = cli("run", suite)
    assert code == 0, err
    assert "4 cells (4 computed, 0 already done): 4 ok, 0 skipped, 0 error" in out
    frame = read_leaderboard(suite.with_suffix(".csv"))
    assert frame["status"].eq("ok").all() and frame["n_samples"].eq(60).all()
    assert (frame["robust_accuracy"] <= frame["clean_accuracy"]).all()
    assert frame["clean_accuracy"].nunique() == 1, "clean accuracy is computed once per trained model"
    assert (frame["max_perturbation_linf"] <= frame["eps"] + 1e-6).all()
    assert (frame["robust_accuracy_ci_low"] <= frame["robust_accuracy"]).all()
    assert frame["model_plugin"].eq("classifiers").all() and frame["attack_distribution"].eq("robustness-harness").all()
    assert frame["torch_version"].str.startswith("2.").all() and frame["device"].str.startswith("cpu").all()
    assert frame["attack_params"].str.contains('"max_iter": 5').sum() == 2


def test_second_run_skips_every_cell_and_leaves_the_file_alone(cli, write_suite):
    suite = write_suite()
    cli("run", suite)
    output = suite.with_suffix(".csv")
    before = output.read_bytes()
    code, out, _ = cli("run", suite)
    assert code == 0 and "(0 computed, 4 already done)" in out
    assert output.read_bytes() == before
    code, out, _ = cli("run", suite, "--force")
    assert code == 0 and "(4 computed, 0 already done)" in out
    first = output.with_name("first.csv")
    first.write_bytes(before)
    pd.testing.assert_frame_equal(results(output), results(first))


def test_partial_leaderboard_is_completed(cli, write_suite):
    suite = write_suite()
    cli("run", suite)
    output = suite.with_suffix(".csv")
    full = results(output)
    frame = pd.read_csv(output)
    frame.iloc[[0, 3]].to_csv(output, index=False)
    code, out, _ = cli("run", suite)
    assert code == 0 and "(2 computed, 2 already done)" in out
    pd.testing.assert_frame_equal(results(output), full)


def test_same_seed_same_numbers_with_a_cold_cache(cli, write_suite, tmp_path):
    suite = write_suite()
    cli("run", suite, "--output", tmp_path / "a.csv", "--cache-dir", tmp_path / "cache-a")
    cli("run", suite, "--output", tmp_path / "b.csv", "--cache-dir", tmp_path / "cache-b")
    pd.testing.assert_frame_equal(results(tmp_path / "a.csv"), results(tmp_path / "b.csv"))


def test_models_and_attack_runs_are_cached_and_corrupt_entries_recomputed(cli, write_suite, tmp_path):
    suite = write_suite()
    cache = tmp_path / "cache"
    cli("run", suite, "--cache-dir", cache)
    [checkpoint] = (cache / "models").glob("*.pt")
    assert len(list((cache / "attacks").glob("*.pt"))) == 4
    first = read_leaderboard(suite.with_suffix(".csv"))
    code, _, err = cli("run", suite, "--cache-dir", cache, "--force", "--output", tmp_path / "cached.csv")
    assert code == 0 and "unusable" not in err
    cached = read_leaderboard(tmp_path / "cached.csv")
    # nothing was trained or attacked again: the recorded timings came back from the cache
    pd.testing.assert_frame_equal(cached.drop(columns="created_at"), first.drop(columns="created_at"))
    checkpoint.write_bytes(b"not a checkpoint")
    next((cache / "attacks").glob("*.pt")).write_bytes(b"")
    code, _, err = cli("run", suite, "--cache-dir", cache, "--force", "--output", tmp_path / "retrained.csv")
    assert code == 0 and "cached model" in err and "cached attack" in err and "computing it again" in err
    pd.testing.assert_frame_equal(results(tmp_path / "retrained.csv"), results(suite.with_suffix(".csv")))


SKIP_AND_ERROR_SUITE = TINY_SUITE.replace('name = "tiny"', 'name = "mixed"\nplugins = ["harness_testplugin"]') + """
[[models]]
name = "centroid"

[[attacks]]
name = "exploding"
eps = [0.1]

[[metrics]]
name = "flip_rate"
"""


def test_skipped_and_error_cells_do_not_stop_the_suite(cli, write_suite):
    import harness_testplugin

    harness_testplugin.EVENTS.clear()
    suite = write_suite(SKIP_AND_ERROR_SUITE)
    code, out, err = cli("run", suite)
    assert code == 1
    assert "10 cells (10 computed, 0 already done): 4 ok, 5 skipped, 1 error" in out
    assert "1 failed cells" in err and "kaboom" in err
    frame = read_leaderboard(suite.with_suffix(".csv")).set_index(["model", "attack", "eps"])
    assert frame.loc[("centroid", "pgd", 0.1), "status"] == "skipped"
    assert "needs logits, which model 'centroid' lacks" in frame.loc[("centroid", "pgd", 0.1), "message"]
    assert frame.loc[("mlp", "exploding", 0.1), "status"] == "error"
    assert frame.loc[("mlp", "exploding", 0.1), "message"] == "RuntimeError: kaboom second line"
    assert frame.loc[("mlp", "pgd", 0.3), "status"] == "ok"
    assert frame.loc[("mlp", "fgsm", 0.1), "metric_flip_rate"] > 0
    assert [e for e, _ in harness_testplugin.EVENTS].count("finished") == 10
    # error cells are retried on the next run, completed ones are not
    code, out, _ = cli("run", suite)
    assert code == 1 and "(1 computed, 9 already done)" in out


def test_minimal_norm_attack_runs_once_for_every_eps(cli, write_suite):
    import harness_testplugin

    harness_testplugin.FgsmLineSearch.runs = 0
    suite = write_suite(
        TINY_SUITE.replace('name = "tiny"', 'name = "minimal"\nplugins = ["harness_testplugin"]')
        + '[[attacks]]\nname = "linesearch"\neps = [0.0, 0.05, 0.1, 0.3, 1.0]\n'
    )
    code, _, err = cli("run", suite)
    assert code == 0, err
    assert harness_testplugin.FgsmLineSearch.runs == 2  # once for all five eps: two batches of 32
    frame = read_leaderboard(suite.with_suffix(".csv"))
    rows = frame[frame["attack"] == "linesearch"].sort_values("eps")
    assert len(rows) == 5 and rows["attack_seconds"].nunique() == 1
    assert rows["robust_accuracy"].iloc[0] == rows["clean_accuracy"].iloc[0]  # nothing is within eps 0
    assert rows["robust_accuracy"].is_monotonic_decreasing
    assert rows["robust_accuracy"].iloc[-1] < rows["robust_accuracy"].iloc[0]
    assert (rows["max_perturbation_linf"] <= rows["eps"] + 1e-6).all()
    pgd = frame[(frame["attack"] == "pgd") & (frame["eps"] == 0.3)]["robust_accuracy"].item()
    assert rows[rows["eps"] == 0.3]["robust_accuracy"].item() >= pgd - 0.2


def test_unknown_device_and_missing_cuda_are_clean_errors(cli, write_suite):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli("run", write_suite(), "--device", "cuda")
    assert code == 2 and "torch sees no CUDA device" in err


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_leaderboard(tmp_path, write_suite):
    """SIGKILL in the middle of a run, run again: the leaderboard equals an uninterrupted run's."""
    suite = write_suite(TINY_SUITE.replace("seeds = [0]", "seeds = [0, 1, 2]").replace("max_iter = 5", "max_iter = 60"))
    reference = tmp_path / "reference.csv"
    done = run_harness(tmp_path, "run", suite, "--output", reference, "--cache-dir", tmp_path / "ref-cache")
    assert done.returncode == 0, done.stderr
    assert not journal_path(reference).exists()

    output = tmp_path / "killed.csv"
    journal = journal_path(output)
    command = [sys.executable, "-m", "harness", "run", str(suite), "--output", str(output), "--cache-dir", str(tmp_path / "cache")]
    process = subprocess.Popen(command, env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if 3 <= len(list(journal.glob("*.cell"))) < 12:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(journal.glob("*.cell")))
    assert 3 <= finished < 12
    assert not output.exists(), "the files are written at the end (or every minute), not after each cell"

    resumed = run_harness(tmp_path, "run", suite, "--output", output, "--cache-dir", tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({12 - finished} computed, {finished} already done)" in resumed.stdout
    pd.testing.assert_frame_equal(results(output), results(reference))
    assert outcomes_path(output).read_bytes() == outcomes_path(reference).read_bytes()
    assert not journal.exists()


def test_a_raising_reporter_hook_is_reported_and_the_run_goes_on(cli, write_suite, tmp_path):
    (tmp_path / "noisy_reporter.py").write_text(
        "from harness.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef cell_finished(cell, row):\n    raise ValueError('reporter is down')\n"
    )
    suite = write_suite(TINY_SUITE.replace('name = "tiny"', 'name = "tiny"\nplugins = ["noisy_reporter"]'))
    code, out, err = cli("run", suite)
    assert code == 0 and "4 ok" in out
    assert err.count("plugin 'noisy_reporter': hook cell_finished raised ValueError: reporter is down") == 4

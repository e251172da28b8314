"""The run's state (issue 20): a journal of finished cells from which the leaderboard is written
at the end and every minute, resumed with the leaderboard after a crash; progress lines without a
terminal; torch's threads."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
import torch
from conftest import TINY_SUITE

from harness import runner
from harness.cli import main
from harness.journal import journal_path
from harness.leaderboard import read_leaderboard
from harness.outcomes import outcomes_path

TWO_SEEDS = TINY_SUITE.replace("seeds = [0]", "seeds = [0, 1]")
LINE = re.compile(r"^tiny: (\d+)/8 cells, \d+s elapsed(, ~\d+s left)?( \(digits/mlp/none/seed\d done\))?$", re.M)


class Crash(BaseException):
    """A run that stops dead, as if killed: nothing is written on the way out."""


def results(path):
    return read_leaderboard(path).drop(columns=["train_seconds", "attack_seconds", "created_at"])


def test_a_crashed_run_resumes_from_the_leaderboard_and_its_journal(cli, write_suite, tmp_path, monkeypatch):
    suite = write_suite(TWO_SEEDS)
    reference = tmp_path / "reference.csv"
    assert cli("run", suite, "--output", reference)[0] == 0
    output = suite.with_suffix(".csv")
    journal = journal_path(output)
    add, added = runner.RunState.add, []

    def crashing(state, row, samples):
        """Written at once after the first cell, then never: the leaderboard lags the journal."""
        add(state, row, samples)
        added.append(row["cell_id"])
        monkeypatch.setattr(runner, "PUBLISH_SECONDS", math.inf)
        if len(added) == 3:
            raise Crash

    monkeypatch.setattr(runner, "PUBLISH_SECONDS", 0.0)
    monkeypatch.setattr(runner.RunState, "add", crashing)
    with pytest.raises(Crash):
        cli("run", suite)
    monkeypatch.undo()
    assert list(read_leaderboard(output)["cell_id"]) == added[:1]
    assert cli("validate", output)[0] == 0, "the leaderboard written during the run agrees with its outcomes"
    assert sorted(p.stem for p in journal.glob("*.cell")) == sorted(added)
    (journal / f"{added[1]}.cell").write_bytes(b"")  # torn by a power cut: computed again
    code, out, err = cli("run", suite)
    assert code == 0 and "(6 computed, 2 already done)" in out
    assert "leaving out 1 unreadable entries" in err
    pd.testing.assert_frame_equal(results(output), results(reference))
    assert outcomes_path(output).read_bytes() == outcomes_path(reference).read_bytes()
    assert not journal.exists()


def test_an_interrupted_run_writes_every_finished_cell_before_it_stops(cli, write_suite, monkeypatch):
    suite = write_suite()
    add, added = runner.RunState.add, []

    def interrupted(state, row, samples):
        add(state, row, samples)
        added.append(row["cell_id"])
        if len(added) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.RunState, "add", interrupted)
    assert cli("run", suite)[0] == 130
    output = suite.with_suffix(".csv")
    assert list(read_leaderboard(output)["cell_id"]) == added and not journal_path(output).exists()
    monkeypatch.undo()
    code, out, _ = cli("run", suite)
    assert code == 0 and "(2 computed, 2 already done)" in out


def test_without_a_terminal_progress_is_a_line_per_model_and_every_so_often(cli, write_suite, monkeypatch):
    suite = write_suite(TWO_SEEDS)
    code, _, err = cli("run", suite)  # captured stderr is not a terminal
    assert code == 0
    lines = LINE.findall(err)
    assert [(done, bool(left), model) for done, left, model in lines] == [
        ("4", True, " (digits/mlp/none/seed0 done)"), ("8", False, " (digits/mlp/none/seed1 done)")
    ]  # fmt: skip
    monkeypatch.setattr(runner, "LINE_SECONDS", 0.0)
    code, _, err = cli("run", suite, "--force")
    assert code == 0 and [done for done, _, _ in LINE.findall(err)] == [str(n) for n in range(1, 9)]
    code, _, err = cli("run", suite, "--force", "--no-progress")
    assert code == 0 and not LINE.findall(err) and "cells" not in err


def test_duration():
    assert [runner.duration(s) for s in (4.6, 59.4, 185, 3599, 7625)] == ["5s", "59s", "3m05s", "59m59s", "2h07m"]


def test_threads_are_applied_recorded_and_set_back(cli, write_suite):
    before = torch.get_num_threads()
    code, _, err = cli("run", write_suite(), "--threads", "1")
    assert code == 0, err
    assert read_leaderboard(write_suite().with_suffix(".csv"))["device"].str.fullmatch(r"cpu \((.+, )?1 thread\)").all()
    assert torch.get_num_threads() == before
    from harness.execute import describe_device, torch_threads

    with torch_threads(2):
        assert describe_device(torch.device("cpu")).endswith(" 2 threads)")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_threads_must_be_a_positive_whole_number(capsys, write_suite, value):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(write_suite()), "--threads", value])
    assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_default_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runner.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    assert [runner.default_threads(workers) for workers in (1, 2, 8)] == [4, 2, 1]

"""The Python API: ``harness.run``, ``read`` and ``compare`` return DataFrames, print nothing and
raise the harness's exceptions (``benchmark`` is tested with the checkpoints it shares code with)."""

from __future__ import annotations

import json
import tomllib

import pytest

import harness
from harness.errors import UsageError, ValidationError

from conftest import TINY_SUITE


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE.replace('hidden = [32]', 'hidden = [32]\nlabel = "mlp"') + '\n[[models]]\nname = "mlp"\nlabel = "wide"\nhidden = [64]\nepochs = 2\n')
    return suite


def test_run_returns_the_leaderboard_it_writes_and_prints_nothing(tiny, capsys):
    frame = harness.run(tiny, threads=1)
    assert len(frame) == 8 and (frame["status"] == "ok").all()
    assert frame["device"].str.endswith(" 1 thread)").all()
    assert harness.read(tiny.with_suffix(".csv")).equals(frame)
    assert capsys.readouterr() == ("", "")
    table = harness.compare(tiny.with_suffix(".csv"), by="model", baseline="mlp")
    assert set(table["candidate"]) == {"wide"} and len(table) == 4
    assert {"robust_diff", "robust_verdict"} <= set(table.columns)


def test_a_dict_suite_with_overrides_runs_into_a_temporary_leaderboard(tiny, tmp_path):
    raw = tomllib.loads(tiny.read_text())
    frame = harness.run(raw, overrides=["n_samples=20", "attacks.pgd.eps=[0.1]"])
    assert set(frame["n_samples"]) == {20} and len(frame) == 6
    assert not list(tmp_path.glob("*.csv"))
    output = tmp_path / "out" / "board.csv"
    harness.run(raw, overrides=["n_samples=20"], output=output)
    assert json.loads((output.parent / "board.suite.json").read_text())["n_samples"] == 20


def test_errors_are_raised_not_exited(tiny, tmp_path):
    with pytest.raises(ValidationError) as raised:
        harness.run({**tomllib.loads(tiny.read_text()), "n_sample": 3})
    assert any("did you mean 'n_samples'" in p for p in raised.value.problems)
    with pytest.raises(UsageError, match="threads must be a whole number"):
        harness.run(tiny, threads=0)
    with pytest.raises(UsageError, match="no such suite file"):
        harness.run(tmp_path / "absent.toml")
    harness.run(tiny)
    with pytest.raises(UsageError, match="did you mean 'mlp'"):
        harness.compare(tiny.with_suffix(".csv"), by="model", baseline="mpl")
    with pytest.raises(UsageError):
        harness.benchmark("not a module", eps=0.1)

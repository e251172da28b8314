"""Fuzzing the command line with suites and leaderboards built from valid and broken pieces.

Whatever the input, every command exits 0, 1 or 2, never with a traceback (in process, an uncaught
exception fails the test with the example that raised it), and every leaderboard a run writes is
one that ``validate`` reads back. The example counts keep the module under a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main

pytestmark = pytest.mark.slow

# Text that a user may type: control characters and spreadsheet formulas included.
TEXT = st.one_of(
    st.sampled_from(["mlp", "=1+2", "+x", "-2+3", "@SUM(1)", "a\rb", "tab\there", "nul\0", "ds/x", "L" * 300, ""]),
    st.text(max_size=12),
)
NUMBER = st.one_of(
    st.sampled_from([0, 1, -1, 2, 0.5, 1e9, math.inf, -math.inf, math.nan]),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUE = st.one_of(NUMBER, TEXT, st.booleans(), st.lists(NUMBER, max_size=3), st.lists(TEXT, max_size=2))


def toml(value: object) -> str:
    """A Python value as TOML (floats as TOML spells them; strings escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value) + '"'
    return "[" + ", ".join(toml(v) for v in value) + "]"


def table(section: str, pairs: dict[str, object]) -> str:
    return f"[[{section}]]\n" + "".join(f"{key} = {toml(value)}\n" for key, value in pairs.items())


SMALL_INT = st.integers(-2, 70)
# For each piece of the small suite, the keys a user may set and values a user may type: mostly
# plausible (so that many examples run), sometimes broken, sometimes of the wrong type.
KEYS = {
    "top": {"name": TEXT, "seeds": st.lists(st.integers(-1, 2), max_size=3), "n_samples": st.one_of(SMALL_INT, NUMBER),
            "batch_size": SMALL_INT, "draws": SMALL_INT, "plugins": st.lists(TEXT, max_size=1), "unknown_key": VALUE},
    "dataset": {"test_size": st.one_of(st.integers(-1, 2000), NUMBER), "size": st.integers(-1, 12), "label": TEXT,
                "name": st.sampled_from(["digits", "mnist", "digitz"])},
    "model": {"hidden": st.lists(st.integers(-1, 16), max_size=2), "epochs": st.integers(-1, 2), "lr": NUMBER,
              "label": TEXT, "batch_size": SMALL_INT, "name": st.sampled_from(["mlp", "cnn", "mlpp"])},
    "attack": {"eps": st.lists(st.one_of(st.sampled_from([0.0, 0.1, 0.3, 2.0, math.inf]), NUMBER), max_size=3),
               "norm": st.sampled_from(["linf", "l2", "l7", "=1"]), "label": TEXT, "max_iter": SMALL_INT,
               "name": st.sampled_from(["fgsm", "pgd", "fgsn"])},
}  # fmt: skip


@st.composite
def suites(draw: st.DrawFn) -> str:
    """A suite: the small valid one, with a few of its values replaced and perhaps a piece added."""
    pieces = {
        "top": {"name": "fuzz", "seeds": [0], "n_samples": 20, "batch_size": 20},
        "dataset": {"name": "digits", "test_size": 40},
        "model": {"name": "mlp", "hidden": [8], "epochs": 1},
        "attack": {"name": "fgsm", "eps": [0.1]},
    }
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        piece = draw(st.sampled_from(sorted(pieces)))
        key = draw(st.sampled_from(sorted(KEYS[piece])))
        pieces[piece][key] = draw(KEYS[piece][key])
    extra = draw(
        st.sampled_from(
            [
                "",
                "",
                table("models", {**pieces["model"], "label": "twin"}),  # differs only in its label
                table("models", {"name": "cnn", "channels": [4], "hidden": 8, "epochs": 1}),
                table("attacks", {"name": "pgd", "max_iter": 2, "eps": [0.1, 2.0]}),
                table("defenses", {"name": "no-such-defense"}),
                "[[attacks]]\nname = \"fgsm\"\n",  # no eps
                "this is = not [ toml",
            ]
        )
    )
    top = pieces["top"]
    body = "".join(f"{key} = {toml(value)}\n" for key, value in top.items())
    return body + "".join(table(section, pieces[piece]) for section, piece in
                          (("datasets", "dataset"), ("models", "model"), ("attacks", "attack"))) + extra


def run_cli(*args: object) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's exit on a bad option
            code = exit_.code
    return code, err.getvalue()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cache")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=suites())
def test_any_suite_exits_cleanly_and_writes_only_what_validate_reads(cache, text):
    with tempfile.TemporaryDirectory() as folder:
        suite = Path(folder) / "suite.toml"
        suite.write_text(text)
        output = Path(folder) / "out.csv"
        code, err = run_cli("run", suite, "--output", output, "--cache-dir", cache)
        assert code in (0, 1, 2) and "Traceback" not in err, err
        if output.exists():
            assert run_cli("validate", output) == (0, ""), f"the run wrote {output}, which validate rejects"


@pytest.fixture(scope="module")
def leaderboard(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-leaderboard")
    suite = folder / "base.toml"
    suite.write_text(
        'name = "base"\nseeds = [0, 1]\nn_samples = 20\n'
        + table("datasets", {"name": "digits", "test_size": 40})
        + table("models", {"name": "mlp", "hidden": [8], "epochs": 1})
        + table("attacks", {"name": "fgsm", "eps": [0.1, 0.3]})
        + table("attacks", {"name": "pgd", "max_iter": 2, "eps": [0.1]})
    )
    assert run_cli("run", suite, "--cache-dir", folder / "cache")[0] == 0
    return suite.with_suffix(".csv")


@st.composite
def broken_leaderboards(draw: st.DrawFn, base: pd.DataFrame) -> tuple[str, bytes | None]:
    """A leaderboard's text after a few mutations, and what to put in its outcomes file
    (None: keep the real one)."""
    frame = base.copy()
    for _ in range(draw(st.integers(1, 3))):
        if frame.empty or len(frame.columns) < 2:
            break
        mutation = draw(st.sampled_from(["cell", "drop-column", "drop-rows", "duplicate", "reorder", "rename"]))
        if mutation == "cell":
            row, column = draw(st.integers(0, len(frame) - 1)), draw(st.sampled_from(list(frame.columns)))
            frame[column] = frame[column].astype(object)
            frame.iloc[row, frame.columns.get_loc(column)] = draw(VALUE)
        elif mutation == "drop-column":
            frame = frame.drop(columns=draw(st.sampled_from(list(frame.columns))))
        elif mutation == "drop-rows":
            frame = frame.iloc[: draw(st.integers(0, len(frame)))]
        elif mutation == "duplicate":
            frame = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
        elif mutation == "reorder":
            frame = frame[list(reversed(frame.columns))]
        else:
            frame = frame.rename(columns={draw(st.sampled_from(list(frame.columns))): draw(TEXT)})
    text = frame.to_csv(index=False)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    outcomes = draw(st.sampled_from([None, b"", b"not gzip", b"\x1f\x8b\x08garbage"]))
    return text, outcomes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_leaderboard_gets_a_clean_answer_from_every_command(leaderboard, data):
    from harness.outcomes import outcomes_path

    base = pd.read_csv(leaderboard, keep_default_na=False)
    text, outcomes = data.draw(broken_leaderboards(base))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "broken.csv"
        path.write_text(text)
        outcomes_path(path).write_bytes(outcomes_path(leaderboard).read_bytes() if outcomes is None else outcomes)
        commands = [
            ["validate", path],
            ["show", path],
            ["show", path, "--per-seed", "--status", "all"],
            ["compare", leaderboard, path, "--tolerance", "0.01"],
            ["compare", path, "--by", "attack", "--baseline", "fgsm"],
        ]
        if data.draw(st.booleans()):
            commands.append(["plot", path, "--output", Path(folder) / "plots"])
        for command in commands:
            code, err = run_cli(*command)
            assert code in (0, 1, 2) and "Traceback" not in err, (command, err)

"""Third-party plugins as users write them: the guide's example and the example package."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_harness, subprocess_env

from harness.leaderboard import read_leaderboard

GUIDE = ROOT / "docs" / "plugins.md"


def guide_files() -> dict[str, str]:
    """The example package's files, exactly as the author's guide shows them."""
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return dict(blocks)


def robust_by(frame, attack):
    rows = frame[frame["attack"] == attack]
    return dict(zip(zip(rows["model"], rows["eps"]), rows["robust_accuracy"]))


@pytest.mark.slow
def test_the_guides_example_package_works_as_documented(tmp_path):
    files = guide_files()
    assert {
        "pyproject.toml", "harness_signnoise/__init__.py", "harness_signnoise/attack.py", "harness_signnoise/defense.py",
        "harness_signnoise/metric.py", "tests/test_sign_noise.py", "suite.toml",
    } == set(files)  # fmt: skip
    package = tmp_path / "harness-signnoise"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(package)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": str(site)}

    listing = run_harness(tmp_path, "plugins", "--json", extra_env=env)
    assert listing.returncode == 0, listing.stderr
    plugin = {p["name"]: p for p in json.loads(listing.stdout)}["signnoise"]
    assert plugin["distribution"] == "harness-signnoise" and plugin["version"] == "0.1.0"
    assert plugin["components"] == {"attack": ["sign-noise"], "defense": ["noise-training"], "metric": ["mean-abs-perturbation"]}
    assert plugin["hooks"] == ["register_attacks", "register_defenses", "register_metrics"]

    run = run_harness(tmp_path, "run", package / "suite.toml", extra_env=env)
    assert run.returncode == 0, run.stderr
    frame = read_leaderboard(package / "suite.csv")
    assert frame["status"].eq("ok").all() and len(frame) == 8
    noise = frame[frame["attack"] == "sign-noise"]
    assert len(noise) == 4 and noise["attack_distribution"].eq("harness-signnoise").all()
    assert noise["attack_version"].eq("0.1.0").all() and noise["attack_plugin"].eq("signnoise").all()
    assert frame[frame["defense"] == "noise-training"]["defense_distribution"].eq("harness-signnoise").all()
    assert frame["metric_mean-abs-perturbation"].gt(0).all()
    plain = frame[frame["defense"] == "none"]
    pgd, sign = robust_by(plain, "pgd"), robust_by(plain, "sign-noise")
    assert all(sign[key] >= pgd[key] for key in pgd)

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
        capture_output=True, text=True, cwd=package, env=subprocess_env(tmp_path, env),
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_the_example_package_is_installed_and_registered(cli):
    code, out, _ = cli("plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(out)}
    assert "noise" in plugins, "install the example plugin: pip install -e examples/harness-noise (the README's test command does)"
    assert plugins["noise"]["distribution"] == "harness-noise"
    assert plugins["noise"]["components"] == {"attack": ["uniform-noise"], "model": ["logreg"]}


def test_the_example_suite_runs_and_noise_is_weaker_than_pgd(cli, tmp_path):
    output = tmp_path / "noise.csv"
    code, _, err = cli("run", ROOT / "examples" / "harness-noise" / "noise.toml", "--output", output)
    assert code == 0, err
    frame = read_leaderboard(output)
    assert frame["status"].eq("ok").all() and set(frame["model"]) == {"logreg", "mlp"}
    noise = frame[frame["attack"] == "uniform-noise"]
    assert noise["attack_distribution"].eq("harness-noise").all()
    pgd, uniform = robust_by(frame, "pgd"), robust_by(frame, "uniform-noise")
    assert all(uniform[key] >= pgd[key] for key in pgd)
    assert all(uniform[key] > pgd[key] for key in pgd if key[1] >= 0.2)

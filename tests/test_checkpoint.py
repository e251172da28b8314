"""Models trained outside the harness: the ``checkpoint`` model in its three forms, its input
conventions and identity, and ``harness.benchmark`` on an in-memory module. The reference is the
same network trained by the harness: the same weights must give the same rows and outcomes."""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd
import pytest
import torch

import harness
from harness.cache import ArtifactCache
from harness.checkpoint import PretrainedClassifier
from harness.cli import main
from harness.errors import ValidationError
from harness.outcomes import outcomes_path, read_outcomes
from harness.plugins import load_plugins
from harness.suite import parse_suite, read_suite_file

pytestmark = pytest.mark.slow

CNN = {"channels": [8, 16], "hidden": 32, "epochs": 3, "batch_size": 64, "lr": 1e-3}
HEAD = """
name = "{name}"
seeds = [0]
n_samples = 80
batch_size = 40

[[datasets]]
name = "digits"
test_size = 100
"""
ATTACKS = """
[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]

[[attacks]]
name = "pgd"
max_iter = 5
eps = [0.1]
"""
COMPARED = ["attack", "eps", "clean_accuracy", "robust_accuracy", "attack_success_rate", "mean_perturbation_l2"]


@pytest.fixture(scope="module")
def harness_trained(tmp_path_factory):
    """The digits CNN trained by the harness: its leaderboard, outcomes and state dict."""
    folder = tmp_path_factory.mktemp("trained")
    suite = folder / "trained.toml"
    model = "\n".join(f"{k} = {v}" for k, v in CNN.items())
    suite.write_text(HEAD.format(name="trained") + f'\n[[models]]\nname = "cnn"\n{model}\n' + ATTACKS)
    cache = folder / "cache"
    assert main(["run", str(suite), "--cache-dir", str(cache)]) == 0
    parsed = parse_suite(read_suite_file(suite), suite, load_plugins())
    cell = parsed.cells()[0]
    state = ArtifactCache(cache, print).load("models", cell.training_key, cell.training_config).tensors
    csv = suite.with_suffix(".csv")
    return harness.read(csv), read_outcomes(outcomes_path(csv)), state


def _network(state):
    from harness_classifiers.models import SmallCNN

    network = SmallCNN((1, 8, 8), 10, **CNN)
    network.load_state_dict(state)
    return network.eval()


def _same_rows(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        ours[COMPARED].reset_index(drop=True), theirs[COMPARED].reset_index(drop=True), check_exact=True
    )


def _write_forms(folder, state) -> str:
    """The network saved as TorchScript, as a torch.export program, as a state dict for a
    factory, and inside a factory module of its own; returns the [[models]] tables that load each."""
    network = _network(state)
    torch.jit.trace(network, torch.rand(2, 1, 8, 8)).save(str(folder / "net.pt"))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(network, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "net.pt2")
    torch.save(network.state_dict(), folder / "net.pth")
    (folder / "mynets.py").write_text(
        textwrap.dedent(
            f"""
            import torch
            from harness_classifiers.models import SmallCNN

            def build():
                network = SmallCNN((1, 8, 8), 10, **{CNN!r})
                network.load_state_dict(torch.load({str(folder / "net.pth")!r}, weights_only=True))
                return network
            """
        )
    )
    kwargs = ", ".join(f"{k} = {v}" for k, v in CNN.items())
    return f"""
[[models]]
name = "checkpoint"
label = "torchscript"
path = "net.pt"

[[models]]
name = "checkpoint"
label = "export"
path = "net.pt2"

[[models]]
name = "checkpoint"
label = "state-dict"
factory = "harness_classifiers.models:SmallCNN"
kwargs = {{ input_shape = [1, 8, 8], num_classes = 10, {kwargs} }}
weights = "net.pth"

[[models]]
name = "checkpoint"
label = "factory"
factory = "mynets:build"
image_shape = [1, 8, 8]
classes = 10
"""


def test_each_form_of_a_checkpoint_gives_the_rows_of_the_same_network_trained_by_the_harness(harness_trained, tmp_path):
    trained, trained_outcomes, state = harness_trained
    suite = tmp_path / "loaded.toml"
    suite.write_text(HEAD.format(name="loaded") + _write_forms(tmp_path, state) + ATTACKS)
    assert main(["run", str(suite), "--cache-dir", str(tmp_path / "cache")]) == 0
    loaded = harness.read(suite.with_suffix(".csv"))
    outcomes = read_outcomes(outcomes_path(suite.with_suffix(".csv")))
    per_sample = ["clean_correct", "adversarial_correct", "adversarial_label"]
    for label in ("torchscript", "export", "state-dict", "factory"):
        rows = loaded[loaded["model"] == label]
        assert (rows["status"] == "ok").all()
        _same_rows(rows, trained)
        for ours, theirs in zip(rows["cell_id"], trained["cell_id"]):
            a = outcomes[outcomes["cell_id"] == ours][per_sample].reset_index(drop=True)
            b = trained_outcomes[trained_outcomes["cell_id"] == theirs][per_sample].reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b)


def test_the_identity_follows_the_bytes_of_the_file_not_its_path(harness_trained, tmp_path):
    _, _, state = harness_trained
    _network(state)
    torch.jit.trace(_network(state), torch.rand(2, 1, 8, 8)).save(str(tmp_path / "net.pt"))
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "net.pt", tmp_path / "moved" / "renamed.pt")

    def cell_ids(path: str) -> list[str]:
        suite = tmp_path / "s.toml"
        suite.write_text(HEAD.format(name="s") + f'[[models]]\nname = "checkpoint"\npath = "{path}"\n' + ATTACKS)
        return [c.cell_id for c in parse_suite(read_suite_file(suite), suite, load_plugins()).cells()]

    before = cell_ids("net.pt")
    assert cell_ids("moved/renamed.pt") == before
    retrained = _network(state)
    with torch.no_grad():
        retrained.head[-1].bias += 1.0
    torch.jit.trace(retrained, torch.rand(2, 1, 8, 8)).save(str(tmp_path / "net.pt"))
    assert set(cell_ids("net.pt")).isdisjoint(before)


def test_the_normalising_wrapper_gives_the_logits_of_normalising_by_hand(harness_trained):
    network = _network(harness_trained[2])
    mean, std = [0.2], [0.5]
    wrapped = PretrainedClassifier(network, (1, 8, 8), 10, input_range=[0, 255], mean=mean, std=std).eval()
    x = torch.rand(6, 1, 8, 8)
    by_hand = network((x * 255 - 0.2) / 0.5)
    torch.testing.assert_close(wrapped.logits(x), by_hand, rtol=0, atol=0)
    centred = PretrainedClassifier(network, (1, 8, 8), 10, input_range=[-1, 1], mean=mean, std=std).eval()
    torch.testing.assert_close(centred.logits(x), network((x * 2 - 1 - 0.2) / 0.5))
    plain = PretrainedClassifier(network, (1, 8, 8), 10).eval()
    torch.testing.assert_close(plain.logits(x), network(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one per channel"):
        PretrainedClassifier(network, (1, 8, 8), 10, mean=[0.1, 0.2])


def test_a_network_that_does_not_fit_the_dataset_is_one_clear_error(harness_trained, tmp_path):
    network = _network(harness_trained[2])
    with pytest.raises(ValueError, match=r"must return \(2, 5\) class scores"):
        PretrainedClassifier(network, (1, 8, 8), 5)
    with pytest.raises(ValueError, match="does not take the dataset's images"):
        PretrainedClassifier(network, (1, 28, 28), 10)


def test_a_training_defense_on_a_checkpoint_is_refused_before_anything_runs(harness_trained, tmp_path, capsys):
    torch.jit.trace(_network(harness_trained[2]), torch.rand(2, 1, 8, 8)).save(str(tmp_path / "net.pt"))
    suite = tmp_path / "s.toml"
    suite.write_text(
        HEAD.format(name="s")
        + '[[models]]\nname = "checkpoint"\nlabel = "mine"\npath = "net.pt"\n'
        + '[[defenses]]\nname = "none"\n[[defenses]]\nname = "pgd-at"\nmax_iter = 2\n'
        + ATTACKS
    )
    assert main(["run", str(suite), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "defense 'pgd-at' trains its model, but model 'mine' is loaded trained" in err
    assert not suite.with_suffix(".csv").exists()


def test_missing_files_and_bad_references_are_validation_errors(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        HEAD.format(name="s")
        + '[[models]]\nname = "checkpoint"\nlabel = "a"\npath = "absent.pt"\n'
        + '[[models]]\nname = "checkpoint"\nlabel = "b"\nfactory = "no_such_module_here:build"\n'
        + '[[models]]\nname = "checkpoint"\nlabel = "c"\nfactory = "not a reference"\n'
        + ATTACKS
    )
    with pytest.raises(ValidationError) as raised:
        parse_suite(read_suite_file(suite), suite, load_plugins())
    problems = raised.value.problems
    assert any("'a': parameter 'path': no such file" in p and "relative to the suite's folder" in p for p in problems)
    assert any("'b': parameter 'factory': cannot find module 'no_such_module_here'" in p for p in problems)
    assert any("'c': parameter 'factory': 'not a reference' is not 'package.module:attribute'" in p for p in problems)


def test_a_file_that_is_no_checkpoint_gives_error_rows_with_one_line(tmp_path, capsys):
    (tmp_path / "net.pt").write_bytes(b"not a checkpoint")
    suite = tmp_path / "s.toml"
    suite.write_text(HEAD.format(name="s") + '[[models]]\nname = "checkpoint"\npath = "net.pt"\n' + ATTACKS)
    assert main(["run", str(suite), "--cache-dir", str(tmp_path / "cache")]) == 1
    rows = pd.read_csv(suite.with_suffix(".csv"))
    assert (rows["status"] == "error").all()
    assert rows["message"].str.contains("is not a TorchScript file that torch.jit.load reads").all()


def test_benchmark_evaluates_a_module_as_the_harness_trained_it(harness_trained, tmp_path):
    trained, _, state = harness_trained
    network = _network(state)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    attacks = [{"name": "fgsm", "eps": [0.1, 0.2]}, {"name": "pgd", "max_iter": 5, "eps": [0.1]}]
    frame = harness.benchmark(
        network, eps=[0.1], attacks=attacks, dataset={"name": "digits", "test_size": 100}, n_samples=80,
        batch_size=40, cache_dir=tmp_path / "cache", output=tmp_path / "b.csv",
    )  # fmt: skip
    assert (frame["status"] == "ok").all() and list(frame["model"].unique()) == ["SmallCNN"]
    _same_rows(frame, trained)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    again = harness.benchmark(
        network, eps=[0.1], attacks=attacks, dataset={"name": "digits", "test_size": 100}, n_samples=80,
        batch_size=40, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert list(again["cell_id"]) == list(frame["cell_id"])
    with torch.no_grad():
        network.head[-1].bias += 1.0
    changed = harness.benchmark(
        network, eps=[0.1], attacks=["fgsm"], dataset={"name": "digits", "test_size": 100}, n_samples=80,
        batch_size=40, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert set(changed["cell_id"]).isdisjoint(frame["cell_id"])

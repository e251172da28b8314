"""The Ray executor: the same leaderboard and outcomes as in process, on a local runtime and on a
two-node cluster that loses a node mid-run; bad input is one line, exit 2."""

from __future__ import annotations

import sys
import threading
import time

import pandas as pd
import pytest

import harness
from harness.cli import main
from harness.journal import journal_path
from harness.leaderboard import read_leaderboard
from harness.outcomes import outcomes_path, read_outcomes

ray = pytest.importorskip("ray", reason="the Ray executor needs the extra: pip install -e '.[ray]'")

pytestmark = pytest.mark.ray

RESULTS = ["dataset", "model", "defense", "attack", "eps", "cell_id", "status", "clean_accuracy", "robust_accuracy",
           "attack_success_rate", "mean_perturbation_l2", "train_seconds"]  # fmt: skip
SUITE = """
name = "spread"
seeds = [0, 1, 2]
n_samples = 40
batch_size = 20

[[datasets]]
name = "digits"
test_size = 100

[[models]]
name = "mlp"
hidden = [16]
epochs = 2

[[models]]
name = "cnn"
channels = [4]
hidden = 8
epochs = 1

[[attacks]]
name = "fgsm"
eps = [0.1, 0.3]

[[attacks]]
name = "pgd"
max_iter = 3
eps = [0.1]

[[attacks]]
name = "transfer"
source = "mlp"
eps = [0.2]
"""


@pytest.fixture(autouse=True)
def no_runtime_left():
    yield
    if ray is not None:
        ray.shutdown()


def _same(csv, reference) -> None:
    """Same rows in the same order (training times too: the models come from one cache) and
    byte-identical outcomes."""
    ours, theirs = read_leaderboard(csv), read_leaderboard(reference)
    pd.testing.assert_frame_equal(ours[RESULTS], theirs[RESULTS])
    pd.testing.assert_frame_equal(read_outcomes(outcomes_path(csv)), read_outcomes(outcomes_path(reference)))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in-process")
    suite = folder / "spread.toml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--cache-dir", str(folder / "cache")]) == 0
    return suite, folder / "cache"


def test_a_local_runtime_gives_the_rows_and_outcomes_of_an_in_process_run(in_process, tmp_path):
    suite, cache = in_process
    output = tmp_path / "ray.csv"
    code = main(["run", str(suite), "--cache-dir", str(cache), "--output", str(output), "--executor", "ray",
                 "--workers", "2"])  # fmt: skip
    assert code == 0
    _same(output, suite.with_suffix(".csv"))


def test_a_cluster_that_loses_a_node_mid_run_completes_with_the_same_rows(in_process, tmp_path):
    from ray.cluster_utils import Cluster

    suite, _ = in_process
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    output = tmp_path / "cluster.csv"
    run = threading.Thread(
        target=harness.run,
        args=(suite,),
        kwargs={"output": output, "cache_dir": tmp_path / "cache", "executor": "ray", "address": cluster.address},
    )
    journal = journal_path(output)
    try:
        run.start()
        deadline = time.monotonic() + 300
        while not list(journal.glob("*.cell")) and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.remove_node(worker)
        finished_before = len(list(journal.glob("*.cell")))
        run.join(timeout=600)
        assert not run.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert 0 < finished_before < 24, "the node was removed mid-run"
    reference = read_leaderboard(suite.with_suffix(".csv"))
    ours = read_leaderboard(output)
    assert (ours["status"] == "ok").all()
    pd.testing.assert_frame_equal(ours[RESULTS[:-1]], reference[RESULTS[:-1]])  # models retrained: other times


def test_bad_input_is_one_line_and_exit_2(in_process, tmp_path, capsys):
    suite, cache = in_process
    code = main(["run", str(suite), "--cache-dir", str(cache), "--output", str(tmp_path / "x.csv"),
                 "--executor", "ray", "--address", "127.0.0.1:9"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        "harness: error: cannot reach the Ray cluster at 127.0.0.1:9: nothing answers there (Connection refused)"
    )


def test_without_the_extra_the_executor_is_one_line_and_exit_2(in_process, tmp_path, capsys, monkeypatch):
    suite, cache = in_process
    monkeypatch.setitem(sys.modules, "ray", None)  # what an import of a package not installed meets
    code = main(["run", str(suite), "--cache-dir", str(cache), "--output", str(tmp_path / "x.csv"),
                 "--executor", "ray"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "harness: error: --executor ray needs Ray: pip install 'robustness-harness[ray]'"


def test_a_node_with_other_plugin_code_is_refused_before_any_work(in_process):
    """check_nodes compares each node's components with the driver's: a node that lacks one or
    has another source fingerprint is named in one error (a fake cluster of two nodes)."""
    from harness.distributed import WorkerSettings, check_nodes
    from harness.errors import UsageError
    from harness.plugins import load_plugins
    from harness.suite import parse_suite, read_suite_file

    suite_path, _ = in_process
    suite = parse_suite(read_suite_file(suite_path), suite_path, load_plugins())
    settings = WorkerSettings((), (), "cpu", "/cache", "/data", 20, 1, 600.0)

    class FakeRay:
        """Two nodes: 10.0.0.1 as the driver, 10.0.0.2 with another fgsm and without pgd."""

        def nodes(self):
            return [{"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"},
                    {"Alive": True, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"}]  # fmt: skip

        def remote(self, **_):
            def wrap(function):
                class Remote:
                    def options(self, scheduling_strategy):
                        self.node = scheduling_strategy.node_id
                        return self

                    def remote(self, settings, wanted):
                        found = function(settings, wanted)
                        if self.node.startswith("b"):
                            found[("attack", "fgsm")] = (*found[("attack", "fgsm")][:2], "0123456789abcdef")
                            del found[("attack", "pgd")]
                        return found

                return Remote()

            return wrap

        def get(self, value):
            return value

    with pytest.raises(UsageError) as raised:
        check_nodes(FakeRay(), suite, settings)
    message = str(raised.value)
    assert "10.0.0.1" not in message and len(message.splitlines()) == 1
    assert "node 10.0.0.2: attack 'fgsm'" in message and "(source 0123456789abcdef)" in message
    assert "node 10.0.0.2: attack 'pgd'" in message and "the node lacks it" in message


def test_a_training_tasks_warning_reaches_the_driver_once(in_process, tmp_path, capsys):
    """A cached model that does not fit is retrained with a warning, which the training task
    raises on its worker: the driver prints it once, not once per task that meets it."""
    import shutil

    import torch

    from harness.cache import ArtifactCache
    from harness.plugins import load_plugins
    from harness.suite import parse_suite, read_suite_file

    suite_path, cache_dir = in_process
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    suite = parse_suite(read_suite_file(suite_path), suite_path, load_plugins())
    mlp = next(cell for cell in suite.cells() if cell.model.label == "mlp" and cell.seed == 0)
    artifacts = ArtifactCache(cache, warn=print)
    entry = artifacts.load("models", mlp.training_key, mlp.training_config)
    artifacts.save("models", mlp.training_key, mlp.training_config, {"stray": torch.zeros(2)},
                   train_seconds=entry.meta["train_seconds"])
    code = main(["run", str(suite_path), "--cache-dir", str(cache), "--output", str(tmp_path / "ray.csv"),
                 "--executor", "ray", "--workers", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("does not fit the model's structure; retraining") == 1, err
    ours, reference = read_leaderboard(tmp_path / "ray.csv"), read_leaderboard(suite_path.with_suffix(".csv"))
    pd.testing.assert_frame_equal(ours[RESULTS[:-1]], reference[RESULTS[:-1]])  # one model retrained: its time

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SHARED = ROOT.parent / "shared"



def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """``array`` written as an IDX file (gzipped if asked), as MNIST's files are."""
    codes = {np.uint8: 0x08, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype.type], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


TINY_SUITE = """
name = "tiny"
seeds = [0]
n_samples = 60
batch_size = 32

[[datasets]]
name = "digits"
test_size = 100

[[models]]
name = "mlp"
hidden = [32]
epochs = 2

[[attacks]]
name = "fgsm"
eps = [0.1, 0.3]

[[attacks]]
name = "pgd"
max_iter = 5
eps = [0.1, 0.3]
"""


def trained_digits_mlp(hidden: list[int], epochs: int = 10, test_size: int = 200):
    """A small MLP trained (seed 0) on sklearn's 8x8 digits, in evaluation mode, and the dataset:
    the model the attack and check tests run on."""
    from harness_classifiers.models import MLP
    from harness_datasets.loaders import load_digits

    from harness.testing import make_context
    from harness.training import seed_everything

    data = load_digits(Path("."), size=8, test_size=test_size)
    seed_everything(0)
    model = MLP(data.input_shape, 10, hidden=hidden, epochs=epochs, batch_size=64, lr=1e-3)
    model.fit(data, make_context())
    return model.eval(), data


@pytest.fixture
def write_suite(tmp_path):
    def write(text: str = TINY_SUITE, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    """Run the CLI in-process; returns (exit code, stdout, stderr). Uses a private model cache."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def subprocess_env(tmp_path: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a harness subprocess: the test plugin importable, a private cache;
    a PYTHONPATH in ``extra_env`` is put in front."""
    env = dict(os.environ)
    extra = dict(extra_env or {})
    paths = [extra.pop("PYTHONPATH", ""), str(TESTS), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["HARNESS_CACHE_DIR"] = str(tmp_path / "cache")
    env.update(extra)
    return env


def run_harness(tmp_path: Path, *args, extra_env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *map(str, args)],
        env=subprocess_env(tmp_path, extra_env),
        capture_output=True,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's benchmarks: a ratio of two timings should measure the
    algorithms, not intra-op parallelism, which is erratic when the cores are busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

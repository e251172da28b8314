"""Dataset plugins: the IDX reader, MNIST-style loaders and digits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, write_idx
from harness_datasets.idx import read_idx
from harness_datasets.loaders import load_digits, load_idx_pair, load_mnist

MNIST_9K = SHARED / "datasets" / "mnist-9k"


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(2 * 3 * 4) * 3).reshape(2, 3, 4).astype(dtype)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", array, compress)), array)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00\x08", "bad magic"),
        (b"\x01\x02\x08\x01" + b"\x00" * 8, "bad magic"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "has 3 bytes, its header promises 5"),
        (b"\x1f\x8b\x08garbage", "corrupt gzip"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def write_fake_mnist(directory: Path, n_train: int = 30, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), True)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def test_mnist_loader_reads_standard_files(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    data = load_mnist(tmp_path, size=28, download=False)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert data.y_test.tolist() == [i % 10 for i in range(20)] and data.num_classes == 10
    assert load_mnist(tmp_path, size=14, download=False).input_shape == (1, 14, 14)


def test_missing_mnist_files_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist: train-images-idx3-ubyte\[.gz\] not found in"):
        load_mnist(tmp_path, size=28, download=False)


def test_download_failure_is_explained(tmp_path, monkeypatch):
    import harness_datasets.idx as idx

    def refuse(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(idx.urllib.request, "urlopen", refuse)
    with pytest.raises(FileNotFoundError, match="the download failed .*network unreachable.*put the IDX files there"):
        load_mnist(tmp_path, size=28, download=True)
    assert not list(tmp_path.rglob("*.part"))


def test_download_rejects_a_checksum_mismatch(tmp_path, monkeypatch):
    import io

    import harness_datasets.idx as idx

    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"tampered"))
    with pytest.raises(OSError, match="does not match"):
        idx.download(["http://mirror/x.gz"], tmp_path / "x.gz", "md5", hashlib.md5(b"original").hexdigest())
    assert not (tmp_path / "x.gz").exists()


def test_digits_split_is_fixed_and_stratified():
    data = load_digits(Path("."), size=8, test_size=500)
    again = load_digits(Path("."), size=8, test_size=500)
    assert torch.equal(data.x_test, again.x_test) and torch.equal(data.y_train, again.y_train)
    assert len(data.y_test) == 500 and len(data.y_train) == 1797 - 500
    counts = torch.bincount(data.y_test, minlength=10)
    assert counts.min() >= 48 and counts.max() <= 52
    assert data.x_train.max() == 1.0 and data.x_train.min() == 0.0
    assert load_digits(Path("."), size=28, test_size=500).input_shape == (1, 28, 28)


@pytest.mark.skipif(not MNIST_9K.exists(), reason="../shared/datasets/mnist-9k is not present")
def test_real_mnist_subset_through_the_idx_dataset():
    images = MNIST_9K / "images-idx3-ubyte.gz"
    assert hashlib.sha256(images.read_bytes()).hexdigest().startswith("1f73d7d1abc9e78f")
    raw = read_idx(images)
    assert raw.shape == (9000, 28, 28) and raw.dtype == np.uint8
    data = load_idx_pair(MNIST_9K, "images-idx3-ubyte.gz", "labels-idx1-ubyte.gz", test_size=1500, size=28)
    assert data.x_train.shape == (7500, 1, 28, 28) and data.x_test.shape == (1500, 1, 28, 28)
    assert data.num_classes == 10
    assert 0.10 < data.x_test.mean() < 0.16  # MNIST's mean intensity is about 0.13

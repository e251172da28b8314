"""Datasets from files, without code: image folders, NumPy arrays and CIFAR-10's python batches."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from harness_datasets.arrays import load_arrays
from harness_datasets.cifar import load_cifar10
from harness_datasets.folders import load_image_folder
from PIL import Image

from harness.contracts import Dataset
from harness.plugins import load_plugins

ARRAY_DEFAULTS = {"npz": "", "images": "", "labels": "", "test_size": 3, "layout": "auto", "size": 0, "channels": 0}


def write_folder(root: Path, classes: dict[str, int], mode: str = "RGB", size: tuple[int, int] = (6, 5)) -> None:
    """``n`` images per class, every pixel of the k-th class by name equal to 40 * (k + 1)."""
    for name, n in classes.items():
        k = sorted(classes).index(name)
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new(mode, size, 40 * (k + 1) if mode == "L" else (40 * (k + 1),) * 3).save(root / name / f"{i}.png")


def folder(data_dir: Path, root: str, test_root: str = "", test_size: int = 3, size: int = 0, channels: int = 0):
    return load_image_folder(data_dir, root, test_root, test_size, size, channels)


def test_image_folder_reads_classes_in_name_order_and_splits_them(tmp_path):
    write_folder(tmp_path / "train", {"cat": 4, "ant": 4, "dog": 4})
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    data = folder(tmp_path, "train")
    assert data.x_train.shape == (9, 3, 5, 6) and data.x_test.shape == (3, 3, 5, 6)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64 and data.num_classes == 3
    assert sorted(data.y_test.tolist()) == [0, 1, 2]  # stratified: one test image of each class
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert torch.allclose(x.amax(dim=(1, 2, 3)), 40 * (y + 1) / 255)  # ant is 0, cat 1, dog 2
    assert torch.equal(folder(tmp_path, "train").x_test, data.x_test)


def test_image_folder_resizes_and_converts_channels(tmp_path):
    write_folder(tmp_path / "grey", {"a": 2, "b": 2}, mode="L")
    assert folder(tmp_path, "grey", test_size=2).input_shape == (1, 5, 6)
    rgb = folder(tmp_path, str(tmp_path / "grey"), test_size=2, size=4, channels=3)  # an absolute root
    assert rgb.input_shape == (3, 4, 4) and torch.equal(rgb.x_train[:, 0], rgb.x_train[:, 2])
    write_folder(tmp_path / "colour", {"a": 2, "b": 2})
    assert folder(tmp_path, "colour", test_size=2, channels=1).input_shape == (1, 5, 6)
    Image.new("L", (6, 5), 40).save(tmp_path / "colour" / "a" / "grey.png")  # one grey image among colour ones
    data = folder(tmp_path, "colour", test_size=2)
    assert data.input_shape == (3, 5, 6)
    assert torch.allclose(data.x_train.amax(dim=(1, 2, 3)), 40 * (data.y_train + 1) / 255)


def test_image_folder_sizes_must_agree_unless_resized(tmp_path):
    write_folder(tmp_path / "train", {"a": 2})
    write_folder(tmp_path / "other", {"b": 2}, size=(7, 7))
    (tmp_path / "other" / "b").rename(tmp_path / "train" / "b")
    with pytest.raises(ValueError, match=r"images differ in size \(.*is 6x5, .*is 7x7\); set size"):
        folder(tmp_path, "train", test_size=2)
    assert folder(tmp_path, "train", test_size=2, size=7).x_train.shape == (2, 3, 7, 7)


def test_image_folder_with_a_test_folder(tmp_path):
    write_folder(tmp_path / "train", {"a": 3, "b": 2})
    write_folder(tmp_path / "test", {"a": 1, "b": 2})
    data = folder(tmp_path, "train", "test")
    assert data.y_train.tolist() == [0, 0, 0, 1, 1] and data.y_test.tolist() == [0, 1, 1]
    write_folder(tmp_path / "odd", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"test_root .*odd differ from those of root .*train: missing b; extra c"):
        folder(tmp_path, "train", "odd")


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image-folder: root .*nowhere: no such folder"):
        folder(tmp_path, "nowhere")
    with pytest.raises(ValueError, match="set 'root'"):
        folder(tmp_path, "")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"class folder\(s\) a of .*empty hold no images"):
        folder(tmp_path, "empty")
    write_folder(tmp_path / "broken", {"a": 2})
    (tmp_path / "broken" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read .*0\.png"):
        folder(tmp_path, "broken")


def arrays(data_dir: Path, **params) -> Dataset:
    return load_arrays(data_dir, **{**ARRAY_DEFAULTS, **params})


def test_npz_with_a_given_split_in_any_layout(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)  # NHWC
    x_test = rng.integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x_train, y_train=np.arange(5), x_test=x_test, y_test=np.array([1, 0]))
    data = arrays(tmp_path, npz="a.npz")
    assert data.x_train.shape == (5, 3, 4, 6) and data.x_test.shape == (2, 3, 4, 6) and data.num_classes == 5
    np.testing.assert_allclose(data.x_train.numpy(), x_train.transpose(0, 3, 1, 2) / 255, rtol=1e-6)
    assert data.y_test.tolist() == [1, 0] and data.y_test.dtype == torch.int64
    np.savez(tmp_path / "b.npz", x_train=x_train.transpose(0, 3, 1, 2), y_train=np.arange(5), x_test=x_test[:, :, :, 0],
             y_test=np.array([1, 0]))  # NCHW train, (N, H, W) test: both give (C, H, W) = (3, 4, 6) and (1, 4, 6)
    with pytest.raises(ValueError, match="train and test images differ in shape"):
        arrays(tmp_path, npz="b.npz")
    assert arrays(tmp_path, npz="b.npz", channels=3).input_shape == (3, 4, 6)


def test_npz_x_y_is_split_resized_and_converted(tmp_path):
    x = np.linspace(0, 1, 9 * 8 * 8, dtype=np.float32).reshape(9, 8, 8)  # float in [0, 1], (N, H, W)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(9) % 3)
    data = arrays(tmp_path, npz="xy.npz")
    assert len(data.y_train) == 6 and len(data.y_test) == 3 and sorted(data.y_test.tolist()) == [0, 1, 2]
    assert data.input_shape == (1, 8, 8) and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert arrays(tmp_path, npz="xy.npz", size=4, channels=3).input_shape == (3, 4, 4)


def test_npy_pair_and_channels_to_grey(tmp_path):
    x = np.zeros((6, 3, 4, 4), dtype=np.uint8)  # NCHW, pure red
    x[:, 0] = 255
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([0, 1] * 3))
    data = arrays(tmp_path, images="x.npy", labels="y.npy", test_size=2, channels=1)
    assert data.input_shape == (1, 4, 4) and torch.allclose(data.x_test, torch.full_like(data.x_test, 0.299))
    np.save(tmp_path / "f.npy", np.array([0.0, 1.0] * 3))
    with pytest.raises(ValueError, match="labels must be integers"):
        arrays(tmp_path, images="x.npy", labels="f.npy", test_size=2)


@pytest.mark.parametrize(
    ("x", "params", "message"),
    [
        (np.full((4, 5, 5), 2.0), {}, r"float pixels must lie in \[0, 1\], got values in \[2.0, 2.0\]"),
        (np.full((4, 5, 5), np.nan, dtype=np.float32), {}, "float pixels must lie in"),
        (np.zeros((4, 5, 5), dtype=np.int64), {}, "pixels must be uint8 .* got int64"),
        (np.zeros((4, 3, 5, 3), dtype=np.uint8), {}, "cannot tell the channel axis .* set layout"),
        (np.zeros((4, 5, 5, 4), dtype=np.uint8), {"layout": "nhwc"}, "images must have 1 or 3 channels, got 4"),
        (np.zeros((4, 5), dtype=np.uint8), {}, r"images must be \(N, H, W\)"),
    ],
)
def test_bad_arrays_give_a_clear_error(tmp_path, x, params, message):
    np.savez(tmp_path / "bad.npz", x=x, y=np.arange(4) % 2)
    with pytest.raises(ValueError, match=f"bad.npz \\[x\\]: {message}"):
        arrays(tmp_path, npz="bad.npz", test_size=2, **params)


def test_arrays_never_unpickle_and_check_their_arguments(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None]), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.arange(2))
    with pytest.raises(ValueError, match="cannot read .*objects.npy: .*allow_pickle"):
        arrays(tmp_path, images="objects.npy", labels="y.npy")
    with pytest.raises(ValueError, match="set 'npz'"):
        arrays(tmp_path, npz="a.npz", images="objects.npy")
    with pytest.raises(FileNotFoundError, match=r"arrays: npz .*missing.npz: no such file"):
        arrays(tmp_path, npz="missing.npz")
    np.savez(tmp_path / "keys.npz", images=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="expected arrays x_train, y_train, x_test, y_test, or x, y; found images"):
        arrays(tmp_path, npz="keys.npz")


def write_cifar(directory: Path, n: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    """Batches of ``n`` images laid out as CIFAR-10's python files: image i of a batch is i * 10 in
    every pixel, with label i."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": list(range(n)), b"filenames": [b"x.png"] * n,
                 b"data": np.repeat(np.arange(n, dtype=np.uint8) * 10, 3072).reshape(n, 3072)}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_reads_the_python_batches(tmp_path, protocol):
    write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    data = load_cifar10(tmp_path, size=32)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32) and data.num_classes == 10
    assert data.y_train.tolist() == [0, 1, 2, 3] * 5 and data.y_train.dtype == torch.int64
    assert torch.allclose(data.x_test.amax(dim=(1, 2, 3)), torch.arange(4) * 10 / 255)


def test_cifar10_in_data_dir_with_numpy_1_names_and_resized(tmp_path):
    write_cifar(tmp_path, protocol=3)
    for path in tmp_path.iterdir():  # as the official files, pickled by NumPy 1, name the reconstructor
        raw = path.read_bytes()
        assert b"numpy._core.multiarray\n_reconstruct" in raw
        path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert load_cifar10(tmp_path, size=16).input_shape == (3, 16, 16)


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(ValueError, match=r"cifar10: cannot read .*data_batch_3: refused to load (posix|nt)\.system"):
        load_cifar10(tmp_path, size=32)
    assert not marker.exists()


def test_cifar10_missing_or_malformed_files(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar10: test_batch not found in .*cifar-10-batches-py; extract"):
        load_cifar10(tmp_path, size=32)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8)}))
    with pytest.raises(ValueError, match=r"test_batch: 'data' must be uint8 pixels of shape \(N, 3072\)"):
        load_cifar10(tmp_path, size=32)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match="cannot read .*test_batch"):
        load_cifar10(tmp_path, size=32)


def test_image_folder_through_the_registry(tmp_path):
    write_folder(tmp_path / "imgs", {"a": 3, "b": 3}, mode="L")
    registry = load_plugins()
    table = {"name": "image-folder", "root": "imgs", "test_size": 2, "size": 8, "channels": 3}
    data = registry.build_from_table("dataset", table, data_dir=tmp_path)
    assert isinstance(data, Dataset) and data.input_shape == (3, 8, 8) and len(data.y_test) == 2
    assert {"arrays", "cifar10"} <= set(registry.components["dataset"])

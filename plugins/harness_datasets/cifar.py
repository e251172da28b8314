"""CIFAR-10 from the python version of its files (cifar-10-batches-py), unpickled without running code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.contracts import Dataset
from harness_datasets.arrays import to_images

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
_ARRAY = np.zeros(1)
ARRAY_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # NumPy 1 names its array reconstructor numpy.core.multiarray._reconstruct (the official files),
    # NumPy 2 numpy._core...; pickle protocol 5 rebuilds arrays with _frombuffer instead.
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0] for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0] for core in ("core", "_core")},
}


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and numpy arrays.

    Unpickling calls whatever globals a pickle names, so a crafted batch file could run any code.
    CIFAR-10's batches hold dicts of bytes, lists and uint8 arrays, and the only globals they name
    are those numpy arrays are pickled with: ``numpy.ndarray``, ``numpy.dtype`` and numpy's array
    reconstructor (see ``ARRAY_GLOBALS``). Every other global is refused, before it is imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ARRAY_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: only numpy arrays are unpickled "
                "(a CIFAR-10 batch holds no other objects)"
            ) from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A batch's pixels, uint8 (N, 3, 32, 32), and labels (N,)."""
    try:
        with path.open("rb") as file:
            batch = ArrayUnpickler(file, encoding="bytes").load()
    except Exception as exc:  # a malformed pickle fails in many ways; a refused global is one
        raise ValueError(f"cifar10: cannot read {path}: {exc}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"cifar10: {path} is not a CIFAR-10 batch (a dict), it holds a {type(batch).__name__}")
    batch = {key.decode("latin-1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data, labels = batch.get("data"), np.asarray(batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"cifar10: {path}: 'data' must be uint8 pixels of shape (N, 3072)")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(f"cifar10: {path}: 'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: Path, size: int) -> Dataset:
    """The 50,000 training and 10,000 test images of CIFAR-10 (its own split), in --data-dir or
    --data-dir/cifar-10-batches-py, resized to size x size unless ``size`` is 32."""
    data_dir = Path(data_dir)
    names = (*TRAIN_FILES, TEST_FILE)
    directory = next((d for d in (data_dir / FOLDER, data_dir) if all((d / n).is_file() for n in names)), None)
    if directory is None:
        base = data_dir / FOLDER if (data_dir / FOLDER).is_dir() else data_dir
        missing = ", ".join(n for n in names if not (base / n).is_file())
        raise FileNotFoundError(
            f"cifar10: {missing} not found in {base}; extract cifar-10-python.tar.gz "
            "(https://www.cs.toronto.edu/~kriz/cifar.html) into --data-dir"
        )
    train = [read_batch(directory / name) for name in TRAIN_FILES]
    x_test, y_test = read_batch(directory / TEST_FILE)
    source = f"cifar10 {directory}"
    return Dataset(
        "cifar10",
        to_images(np.concatenate([x for x, _ in train]), source, "nchw", size),
        torch.from_numpy(np.concatenate([y for _, y in train]).astype(np.int64)),
        to_images(x_test, source, "nchw", size),
        torch.from_numpy(y_test.astype(np.int64)),
        10,
    )

"""Dataset factories (imported only when a suite uses them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.contracts import Dataset
from harness_datasets.idx import download, find_file, read_idx

SPLIT_SEED = 0
STANDARD_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# (mirrors, hash algorithm, digests of the .gz files by role), as published with each dataset.
SOURCES = {
    "mnist": (
        ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
        "md5",
        {
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "sha256",
        {
            "train_images": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            "train_labels": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            "test_images": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            "test_labels": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        },
    ),
}


def to_images(array: np.ndarray, scale: float, size: int) -> torch.Tensor:
    """(N, H, W) pixels as float32 (N, 1, size, size) in [0, 1]."""
    if array.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / scale).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def to_labels(array: np.ndarray) -> torch.Tensor:
    if array.ndim != 1:
        raise ValueError(f"expected labels of shape (N,), got {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def stratified_split(
    name: str, x: torch.Tensor, y: torch.Tensor, test_size: int, num_classes: int
) -> Dataset:
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < len(y):
        raise ValueError(f"{name}: test_size must lie between 1 and {len(y) - 1}, got {test_size}")
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y.numpy(), random_state=SPLIT_SEED)
    return Dataset(name, x[train], y[train], x[test], y[test], num_classes)


def load_digits(data_dir: Path, size: int, test_size: int) -> Dataset:
    """sklearn's digits: 16 grey levels, scaled to [0, 1]; the split is fixed and stratified."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return stratified_split("digits", to_images(bunch.images, 16.0, size), to_labels(bunch.target), test_size, 10)


def _standard(name: str, data_dir: Path, size: int, allow_download: bool) -> Dataset:
    mirrors, algorithm, digests = SOURCES[name]
    directories = [data_dir / name, data_dir]
    arrays = {}
    for role, filename in STANDARD_FILES.items():
        path = find_file(directories, filename)
        if path is None:
            target = data_dir / name / f"{filename}.gz"
            if not allow_download:
                raise FileNotFoundError(f"{name}: {filename}[.gz] not found in {data_dir / name} or {data_dir}")
            try:
                download([m + f"{filename}.gz" for m in mirrors], target, algorithm, digests[role])
            except OSError as exc:
                raise FileNotFoundError(
                    f"{name}: {filename}[.gz] not found in {data_dir / name} or {data_dir}, and the download failed "
                    f"({exc}); put the IDX files there"
                ) from None
            path = target
        arrays[role] = read_idx(path)
    return Dataset(
        name,
        to_images(arrays["train_images"], 255.0, size),
        to_labels(arrays["train_labels"]),
        to_images(arrays["test_images"], 255.0, size),
        to_labels(arrays["test_labels"]),
        10,
    )


def load_mnist(data_dir: Path, size: int, download: bool) -> Dataset:
    return _standard("mnist", data_dir, size, download)


def load_fashion_mnist(data_dir: Path, size: int, download: bool) -> Dataset:
    return _standard("fashion-mnist", data_dir, size, download)


def load_idx_pair(data_dir: Path, images: str, labels: str, test_size: int, size: int) -> Dataset:
    """One images/labels pair of IDX files (e.g. a subset of MNIST), split train/test."""
    if not images or not labels:
        raise ValueError("idx: set both 'images' and 'labels' (paths, relative to --data-dir)")
    x = read_idx(data_dir / images)
    y = read_idx(data_dir / labels)
    if len(x) != len(y):
        raise ValueError(f"idx: {len(x)} images but {len(y)} labels")
    labels_tensor = to_labels(y)
    return stratified_split("idx", to_images(x, 255.0, size), labels_tensor, test_size, int(labels_tensor.max()) + 1)

"""Datasets from NumPy files, and the conversions the file-based datasets share: pixels in any usual
layout to float32 (N, C, H, W) in [0, 1], with the channels and size asked for."""

from __future__ import annotations

from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import torch
import torch.nn.functional as F

from harness.contracts import Dataset
from harness_datasets.loaders import stratified_split

LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601-2 weights of red, green and blue in grey: Pillow's ``convert("L")``, so that a grey
image-folder and the same pixels from an array agree."""
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def locate(data_dir: Path, path: str, dataset: str, param: str, folder: bool = False) -> Path:
    """``path`` under ``data_dir`` (an absolute one stays as it is), which must exist."""
    if not path:
        raise ValueError(f"{dataset}: set '{param}' (a path relative to --data-dir, or absolute)")
    full = Path(data_dir) / path
    if not (full.is_dir() if folder else full.is_file()):
        raise FileNotFoundError(f"{dataset}: {param} {full}: no such {'folder' if folder else 'file'}")
    return full


def channels_first(array: np.ndarray, layout: str, source: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) pixels as (N, C, H, W); ``layout`` "auto" takes the
    channel axis to be the one of the two with 1 or 3 entries."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise ValueError(f"{source}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {array.shape}")
    if layout == "auto":
        first, last = array.shape[1] in (1, 3), array.shape[3] in (1, 3)
        if first == last:
            raise ValueError(
                f"{source}: cannot tell the channel axis of shape {array.shape}; set layout to 'nhwc' or 'nchw'"
            )
        layout = "nchw" if first else "nhwc"
    return array if layout == "nchw" else array.transpose(0, 3, 1, 2)


def to_images(array: np.ndarray, source: str, layout: str = "nchw", size: int = 0, channels: int = 0) -> torch.Tensor:
    """uint8 pixels (scaled by 1/255) or float ones already in [0, 1], as float32 (N, C, H, W) in
    [0, 1]; ``channels`` 1 or 3 converts grey and RGB, ``size`` resizes to size x size (0: keep)."""
    shape, array = array.shape, channels_first(array, layout, source)
    if len(array) == 0:
        raise ValueError(f"{source}: no images")
    if array.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).div_(255)
    elif array.dtype.kind == "f":
        if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ValueError(
                f"{source}: float pixels must lie in [0, 1], got values in [{array.min()}, {array.max()}]; "
                "scale them, or store uint8 pixels (0-255)"
            )
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    else:
        raise ValueError(f"{source}: pixels must be uint8 (0-255) or float in [0, 1], got {array.dtype}")
    if x.shape[1] not in (1, 3):
        raise ValueError(
            f"{source}: images must have 1 or 3 channels, got {x.shape[1]} (shape {shape}, layout {layout})"
        )
    if channels == 3 and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif channels == 1 and x.shape[1] == 3:
        x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if size and x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def to_labels(array: np.ndarray, source: str) -> torch.Tensor:
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be integers of shape (N,), got {array.dtype} {array.shape}")
    if len(array) and array.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0, got {array.min()}")
    return torch.from_numpy(array.astype(np.int64))


def split(name: str, source: str, x: torch.Tensor, y: torch.Tensor, test_size: int) -> Dataset:
    """The fixed stratified split of the other datasets (:func:`stratified_split`), its errors naming the source."""
    if len(x) != len(y):
        raise ValueError(f"{source}: {len(x)} images but {len(y)} labels")
    if not 0 < test_size < len(y):
        raise ValueError(f"{source}: test_size must lie between 1 and {len(y) - 1} ({len(y)} images), got {test_size}")
    try:
        return stratified_split(name, x, y, test_size, int(y.max()) + 1)
    except ValueError as exc:  # sklearn's: a class with one image, fewer test images than classes
        raise ValueError(f"{source}: no stratified split of {test_size} test images: {exc}") from None


def read_numpy(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """The array of an .npy file or the arrays of an .npz one, never unpickling (``allow_pickle=False``:
    an object array is refused), since unpickling a crafted file runs its code."""
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, BadZipFile) as exc:
        raise ValueError(f"arrays: cannot read {path}: {exc}") from None


def load_arrays(
    data_dir: Path, npz: str, images: str, labels: str, test_size: int, layout: str, size: int, channels: int
) -> Dataset:
    """Images and labels saved with NumPy: an .npz holding x_train, y_train, x_test, y_test (a given
    split) or x, y, or a pair of .npy files (``images``, ``labels``); x and y are split with a fixed
    stratified split of ``test_size``."""
    if bool(npz) == bool(images or labels):
        raise ValueError("arrays: set 'npz' (an .npz file), or 'images' and 'labels' (.npy files), but not both")
    if npz:
        path = locate(data_dir, npz, "arrays", "npz")
        arrays, source = read_numpy(path), f"arrays {path}"
        if not isinstance(arrays, dict):
            raise ValueError(f"{source}: a single array, not an .npz archive; give an .npy file as 'images'")
        if all(key in arrays for key in SPLIT_KEYS):
            x_train, x_test = (
                to_images(arrays[key], f"{source} [{key}]", layout, size, channels) for key in ("x_train", "x_test")
            )
            y_train, y_test = (to_labels(arrays[key], f"{source} [{key}]") for key in ("y_train", "y_test"))
            for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
                if len(x) != len(y):
                    raise ValueError(f"{source}: {len(x)} {part} images but {len(y)} labels")
            num_classes = int(max(y_train.max(), y_test.max())) + 1
            return Dataset("arrays", x_train, y_train, x_test, y_test, num_classes)
        if "x" not in arrays or "y" not in arrays:
            found = ", ".join(sorted(arrays)) or "none"
            raise ValueError(f"{source}: expected arrays x_train, y_train, x_test, y_test, or x, y; found {found}")
        x = to_images(arrays["x"], f"{source} [x]", layout, size, channels)
        return split("arrays", source, x, to_labels(arrays["y"], f"{source} [y]"), test_size)
    image_path, label_path = locate(data_dir, images, "arrays", "images"), locate(data_dir, labels, "arrays", "labels")
    x, y = read_numpy(image_path), read_numpy(label_path)
    if isinstance(x, dict) or isinstance(y, dict):
        raise ValueError("arrays: 'images' and 'labels' must be .npy files; give an .npz archive as 'npz'")
    source = f"arrays {image_path}"
    x = to_images(x, source, layout, size, channels)
    return split("arrays", source, x, to_labels(y, f"arrays {label_path}"), test_size)

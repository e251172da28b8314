"""Datasets from image files in torchvision's ImageFolder layout (root/<class>/<images>), read with
Pillow so that torchvision is never needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.contracts import Dataset
from harness_datasets.arrays import locate, split, to_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "La")


def scan(root: Path) -> dict[str, list[Path]]:
    """The class folders of ``root`` sorted by name (a class's label is its position) and the image
    files in each, at any depth, sorted; hidden files and folders are left out."""
    classes = {
        folder.name: sorted(
            path for path in folder.rglob("*")
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }
    if not classes:
        raise ValueError(f"image-folder: {root} has no class folders (expected {root}/<class>/<images>)")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise ValueError(
            f"image-folder: class folder(s) {', '.join(empty)} of {root} hold no images ({' '.join(IMAGE_SUFFIXES)})"
        )
    return classes


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image as uint8 (H, W, C): grey (C = 1) or RGB (C = 3) as ``channels`` asks (0: as stored),
    resized to size x size unless ``size`` is 0."""
    try:
        with Image.open(path) as image:
            if image.mode.startswith(("I", "F")):
                raise ValueError(f"{image.mode} pixels (16-bit or float) are not read; save 8-bit images")
            mode = {1: "L", 3: "RGB"}.get(channels, "L" if image.mode in GREY_MODES else "RGB")
            image = image.convert(mode)
        if size:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as exc:
        raise ValueError(f"image-folder: cannot read {path}: {exc}") from None
    return np.asarray(image).reshape(image.height, image.width, -1)


def load_image_folder(data_dir: Path, root: str, test_root: str, test_size: int, size: int, channels: int) -> Dataset:
    """Images in class folders: ``test_root``'s as the test set (its classes must be ``root``'s), else
    a fixed stratified split of ``test_size`` images of ``root``. ``size`` 0 keeps the images' size,
    which must then be one; ``channels`` 0 keeps grey images grey unless some are in colour."""
    train_dir = locate(data_dir, root, "image-folder", "root", folder=True)
    folders = [scan(train_dir)]
    classes = list(folders[0])
    if test_root:
        test_dir = locate(data_dir, test_root, "image-folder", "test_root", folder=True)
        folders.append(scan(test_dir))
        if list(folders[1]) != classes:
            missing, extra = sorted(set(classes) - set(folders[1])), sorted(set(folders[1]) - set(classes))
            raise ValueError(
                f"image-folder: the classes of test_root {test_dir} differ from those of root {train_dir}: "
                f"missing {', '.join(missing) or 'none'}; extra {', '.join(extra) or 'none'}"
            )
    items = [(path, label) for folder in folders for label, paths in enumerate(folder.values()) for path in paths]
    pixels = [read_image(path, channels, size) for path, _ in items]
    for (path, _), image in zip(items, pixels):
        if image.shape[:2] != pixels[0].shape[:2]:
            (h, w), (h0, w0) = image.shape[:2], pixels[0].shape[:2]
            raise ValueError(
                f"image-folder: images differ in size ({items[0][0]} is {w0}x{h0}, {path} is {w}x{h}); "
                "set size to resize them all"
            )
    if max(image.shape[2] for image in pixels) == 3:  # some in colour: grey ones too (as Pillow's L to RGB)
        pixels = [np.repeat(image, 3 // image.shape[2], axis=2) for image in pixels]
    x = to_images(np.stack(pixels), f"image-folder {train_dir}", "nhwc")
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    if not test_root:
        return split("image-folder", f"image-folder {train_dir}", x, y, test_size)
    n = sum(len(paths) for paths in folders[0].values())
    return Dataset("image-folder", x[:n], y[:n], x[n:], y[n:], len(classes))

"""Image datasets: sklearn's digits (embedded, offline), MNIST and Fashion-MNIST from IDX files, any
pair of IDX files split into train and test, and without code: class folders of image files, NumPy
arrays and CIFAR-10's python batches."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import NON_NEGATIVE, POSITIVE, RegisterFunction


@hookimpl
def register_datasets(register: RegisterFunction) -> None:
    register(
        "digits",
        "harness_datasets.loaders:load_digits",
        params={"size": 8, "test_size": 500},
        ranges={"size": POSITIVE, "test_size": POSITIVE},
        description="sklearn's 8x8 digits (1,797 images, offline), fixed stratified split, optionally resized",
    )
    for name, loader in (("mnist", "load_mnist"), ("fashion-mnist", "load_fashion_mnist")):
        register(
            name,
            f"harness_datasets.loaders:{loader}",
            params={"size": 28, "download": True},
            ranges={"size": POSITIVE},
            description=f"{name} from the standard IDX files in --data-dir (or --data-dir/{name}); "
            "downloaded with checksum verification when missing and a network allows",
        )
    register(
        "idx",
        "harness_datasets.loaders:load_idx_pair",
        params={"images": "", "labels": "", "test_size": 1500, "size": 28},
        ranges={"test_size": POSITIVE, "size": POSITIVE},
        description="one pair of IDX files (paths relative to --data-dir), split into train and test with a fixed stratified split",
    )
    register(
        "image-folder",
        "harness_datasets.folders:load_image_folder",
        params={"root": "", "test_root": "", "test_size": 1000, "size": 0, "channels": 0},
        choices={"channels": (0, 1, 3)},
        ranges={"test_size": POSITIVE, "size": NON_NEGATIVE},
        imports=("PIL",),
        description="image files in class folders (root/<class>/*.png, .jpg ...; labels by sorted class name), "
        "read with Pillow; test_root (same classes) or a fixed stratified split of test_size; "
        "size: resize (0: keep, one size); channels 1 or 3 (0: as stored)",
    )
    register(
        "arrays",
        "harness_datasets.arrays:load_arrays",
        params={"npz": "", "images": "", "labels": "", "test_size": 1000, "layout": "auto", "size": 0, "channels": 0},
        choices={"layout": ("auto", "nhwc", "nchw"), "channels": (0, 1, 3)},
        ranges={"test_size": POSITIVE, "size": NON_NEGATIVE},
        description="NumPy arrays: an .npz (x_train, y_train, x_test, y_test; or x, y) or .npy images and labels, "
        "split with a fixed stratified split of test_size; uint8 or float in [0, 1] pixels, (N, H, W), "
        "(N, H, W, C) or (N, C, H, W); size (0: keep) and channels (0: as stored)",
    )
    register(
        "cifar10",
        "harness_datasets.cifar:load_cifar10",
        params={"size": 32},
        ranges={"size": POSITIVE},
        description="CIFAR-10 from its python batches in --data-dir (or --data-dir/cifar-10-batches-py), "
        "unpickled without running code; its own 50,000/10,000 split",
    )

"""Image datasets: sklearn's digits (embedded, offline), MNIST and Fashion-MNIST from IDX files, and
any pair of IDX files split into train and test."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.registry import POSITIVE, RegisterFunction


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

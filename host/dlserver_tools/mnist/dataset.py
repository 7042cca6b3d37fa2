"""MNIST in memory: uint8 images [n, 28, 28] and labels [n] of the training and test sets."""

from __future__ import annotations

from .errors import PrepError

OFFICIAL_TRAIN = 60000
OFFICIAL_TEST = 10000
CLASSES = 10
ROWS = COLS = 28


class Dataset:
    def __init__(self, train_x, train_y, test_x, test_y, source: str, detail: dict):
        self.train_x, self.train_y = train_x, train_y
        self.test_x, self.test_y = test_x, test_y
        self.source = source
        self.detail = detail

    def check(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if len(x) != len(y):
                raise PrepError(f"{self.source}: {split} has {len(x)} images but {len(y)} labels")
            if len(x) == 0:
                raise PrepError(f"{self.source}: {split} set is empty")


def check_official(ds: Dataset) -> None:
    """For the registry sources: sizes must be the official ones."""
    if (len(ds.train_x), len(ds.test_x)) != (OFFICIAL_TRAIN, OFFICIAL_TEST):
        raise PrepError(
            f"{ds.source}: {len(ds.train_x)} train / {len(ds.test_x)} test images, "
            f"expected {OFFICIAL_TRAIN} / {OFFICIAL_TEST}"
        )

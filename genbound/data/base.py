"""What a task is: a Split (examples and labels) and a Task (two splits, classes, provenance), with the seeded
sampling every loader shares. Every random choice draws from a generator seeded with the run seed (never global
RNG), so (name, seed, sizes) determine a split exactly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError


@dataclass
class Split:
    """One side of a task: features (N, d) float32, N texts, or N text pairs (a, b); labels (N,): int64 class
    ids, or float32 targets for a regression task."""

    x: torch.Tensor | list[str]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def fingerprint(self) -> str:
        """sha256 over every example's content (text bytes, or the float32 features' dtype, shape and bytes)
        and label, in order: equal iff the split holds the same examples with the same labels."""
        h = hashlib.sha256()
        if isinstance(self.x, list):
            pairs = bool(self.x) and isinstance(self.x[0], tuple)
            h.update(f"{'pairs' if pairs else 'text'}|{len(self.x)}|".encode())
            for item in self.x:
                for text in (item if pairs else (item,)):
                    raw = text.encode("utf-8")
                    h.update(len(raw).to_bytes(8, "little") + raw)
        else:
            x = self.x.detach().cpu().contiguous()
            h.update(f"tensor|{x.dtype}|{tuple(x.shape)}|".encode())
            h.update(x.numpy().tobytes())
        y = self.y.detach().cpu()
        y = (y.to(torch.float32) if y.is_floating_point() else y.to(torch.int64)).contiguous()
        h.update(f"labels|{len(y)}|".encode() + (f"{y.dtype}|".encode() if y.is_floating_point() else b"")
                 + y.numpy().tobytes())
        return h.hexdigest()

    def take(self, idx: torch.Tensor) -> Split:
        """The examples at ``idx`` (a 1-D index tensor), in that order."""
        x = [self.x[i] for i in idx.tolist()] if isinstance(self.x, list) else self.x[idx]
        return Split(x, self.y[idx])


@dataclass
class Task:
    """A classification task (or a regression task: ``problem == "regression"``, one output, float32 targets,
    trained with mean squared error); ``info`` is JSON-able and goes into checkpoint manifests. ``metrics`` names
    what the task is judged by beside the loss (``genbound.metrics``): accuracy by default; F1, Matthews
    correlation, Pearson/Spearman correlation where a benchmark asks for them."""

    name: str
    kind: str  # "vision" (x is a float tensor) or "text" (x is list[str])
    num_classes: int  # 1 for a regression task
    train: Split
    test: Split
    class_names: list[str]
    info: dict = field(default_factory=dict)
    problem: str = "classification"  # or "regression"
    metrics: tuple[str, ...] = ("accuracy",)

    @property
    def regression(self) -> bool:
        return self.problem == "regression"

    def fingerprint(self) -> dict[str, str]:
        """The fingerprints of both splits (``Split.fingerprint``), as a checkpoint's manifest records them."""
        return {"train": self.train.fingerprint(), "test": self.test.fingerprint()}


def _take(n_avail: int, n: int | None, what: str, task: str,
          rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` of ``n_avail`` items: all (in order) when n is None, else a seeded subset."""
    if n is None:
        return np.arange(n_avail)
    if n > n_avail:
        raise DataError(f"{task}: {what}={n} is larger than the {n_avail} examples available")
    return np.sort(rng.permutation(n_avail)[:n])


def _split_pools(n_total: int, seed: int, n_train: int | None, n_test: int | None,
                 test_fraction: float, task: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Seeded split of ``n_total`` items (test pool = round(N * test_fraction)), then a seeded
    subsample of each pool; the three draws use independent child generators of ``seed``."""
    n_pool_test = round(n_total * test_fraction)
    if n_pool_test < 1 or n_total - n_pool_test < 1:
        raise DataError(f"{task}: {n_total} examples cannot be split with test_fraction="
                        f"{test_fraction} (each side needs at least one example)")
    rng_split, rng_train, rng_test = np.random.default_rng(seed).spawn(3)
    perm = rng_split.permutation(n_total)
    train_pool, test_pool = np.sort(perm[n_pool_test:]), np.sort(perm[:n_pool_test])
    train = train_pool[_take(len(train_pool), n_train, "n_train", task, rng_train)]
    test = test_pool[_take(len(test_pool), n_test, "n_test", task, rng_test)]
    return train, test, len(train_pool), len(test_pool)


def _info(source: str, seed: int, train: np.ndarray, test: np.ndarray, n_avail_train: int,
          n_avail_test: int, preprocessing: str, **extra: object) -> dict:
    return {"source": source, "seed": seed, "n_train": len(train), "n_test": len(test),
            "n_available_train": int(n_avail_train), "n_available_test": int(n_avail_test),
            "preprocessing": preprocessing, **extra}

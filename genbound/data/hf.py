"""Hugging Face datasets: ``hf:NAME[:CONFIG]`` (the hub, or its local cache when the hub cannot be reached) and
folders written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Columns are named by roles: ``text``; ``text_a`` and ``text_b`` (sentence pairs); ``image`` (flattened float32
pixels/255, a vision task); ``label``. Roles not given are guessed from common names. Train = the "train" split;
test = the first labelled split of test, validation, validation_matched (GLUE's test splits carry label -1 and
are skipped), or a seeded split of train when none is labelled. Examples whose label is missing (-1 or None) are
dropped and counted in ``task.info``.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..hub import hub_reachable
from .base import Split, Task, _info, _split_pools, _take

ROLES = ("text", "text_a", "text_b", "image", "label")
INPUT_FORMS = ({"text"}, {"text_a", "text_b"}, {"image"})
PAIR_GUESSES = (("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
                ("premise", "hypothesis"))
TEXT_GUESSES = ("text", "sentence")
IMAGE_GUESSES = ("image", "img")
LABEL_GUESSES = ("label", "labels")
TEST_SPLITS = ("test", "validation", "validation_matched")
OFFLINE_FIX = "save it with save_to_disk where there is internet and pass the folder as --data"
COLUMNS_HINT = "--columns text=COL,label=COL (pairs: text_a=COL,text_b=COL; images: image=COL)"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("Hugging Face datasets need the `datasets` package: pip install 'genbound[data]'") from None
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a DatasetDict or a single Dataset)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or ((path / "dataset_info.json").is_file() and (path / "state.json").is_file()))


def parse_columns(spec: str | dict | None, where: str) -> dict[str, str]:
    """``"text_a=sentence1,text_b=sentence2,label=label"`` (or such a dict) -> {role: column}."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, str):
        pairs = [part.partition("=") for part in spec.split(",")]
        if any(not sep or not role.strip() or not col.strip() for role, sep, col in pairs):
            raise DataError(f"{where}: columns {spec!r}: give ROLE=COLUMN pairs separated by commas, e.g. "
                            "text=sentence,label=label")
        spec = {role.strip(): col.strip() for role, _, col in pairs}
    bad = sorted(set(spec) - set(ROLES))
    if bad:
        raise DataError(f"{where}: unknown column role(s) {', '.join(bad)}; roles are {', '.join(ROLES)}")
    return dict(spec)


def columns_text(columns: dict[str, str]) -> str:
    """The inverse of ``parse_columns``, roles in a fixed order."""
    return ",".join(f"{role}={columns[role]}" for role in ROLES if role in columns)


def resolve_columns(given: dict[str, str], names: list[str], features: dict, where: str) -> dict[str, str]:
    """The role -> column map for a split with columns ``names``: ``given`` checked, the rest guessed."""
    for col in given.values():
        if col not in names:
            raise DataError(f"{where}: no column {col!r} (columns: {', '.join(names)})")
    columns = dict(given)
    if not set(columns) - {"label"}:
        guess = next(({"text_a": a, "text_b": b} for a, b in PAIR_GUESSES if a in names and b in names), None)
        guess = guess or next(({"text": c} for c in TEXT_GUESSES if c in names), None)
        images = [c for c in names if type(features.get(c)).__name__ == "Image"] + list(IMAGE_GUESSES)
        guess = guess or next(({"image": c} for c in images if c in names), None)
        if guess is None:
            raise DataError(f"{where}: cannot tell which column holds the input (columns: {', '.join(names)}); "
                            f"name it with {COLUMNS_HINT}")
        columns.update(guess)
    if set(columns) - {"label"} not in INPUT_FORMS:
        raise DataError(f"{where}: columns {columns_text(columns)} name no one input: give text, or text_a and "
                        "text_b, or image")
    if "label" not in columns:
        label = next((c for c in LABEL_GUESSES if c in names), None)
        if label is None:
            raise DataError(f"{where}: cannot tell which column holds the label (columns: {', '.join(names)}); "
                            "name it with --columns ...,label=COL")
        columns["label"] = label
    return columns


@contextlib.contextmanager
def _offline(datasets, on: bool):
    """The hub libraries in offline mode (cache only, no retries) while ``on``."""
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    if on:
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def open_hub(name: str, config: str | None, where: str, fix: str = OFFLINE_FIX) -> tuple[dict, str]:
    """The splits of hub dataset ``name`` (config ``config``), from the hub or, when it cannot be reached, from
    the local cache only (never waiting out retries); ``fix`` says what an offline user can do."""
    datasets = _datasets()
    offline = not hub_reachable()
    with _offline(datasets, offline):
        try:
            loaded = datasets.load_dataset(name, config)
        except Exception as err:  # noqa: BLE001 -- the library's many errors become one line
            if offline:
                raise DataError(f"{where}: the Hugging Face hub cannot be reached and {name}"
                                f"{':' + config if config else ''} is not in the local cache "
                                f"({datasets.config.HF_DATASETS_CACHE}); {fix}") from None
            raise DataError(f"{where}: cannot load {name}{':' + config if config else ''} ({_one_line(err)})") from None
    source = f"Hugging Face hub {name}{':' + config if config else ''}" + (" (local cache)" if offline else "")
    return dict(loaded), source


def open_folder(path: Path, where: str) -> tuple[dict, str]:
    """The splits of a ``save_to_disk`` folder (a single Dataset is the split "train")."""
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{where}: cannot read the save_to_disk folder {path} ({_one_line(err)})") from None
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return splits, f"save_to_disk folder {path}"


def _unlabelled(value, regression: bool) -> bool:
    if value is None:
        return True
    if regression:
        return isinstance(value, float) and np.isnan(value)
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value == -1


def _labels(ds, column: str, regression: bool) -> tuple[list, np.ndarray]:
    """All labels of split ``ds`` and the indices of the labelled examples."""
    values = list(ds[column])
    if regression and values and all(v == -1 for v in values):  # GLUE's unlabelled test split
        return values, np.zeros(0, dtype=np.int64)
    keep = np.asarray([i for i, v in enumerate(values) if not _unlabelled(v, regression)], dtype=np.int64)
    return values, keep


def _inputs(ds, columns: dict[str, str], where: str) -> list | torch.Tensor:
    if "image" in columns:
        rows = [np.asarray(img, dtype=np.float32).reshape(-1) for img in ds[columns["image"]]]
        if len({r.size for r in rows}) > 1:
            raise DataError(f"{where}: the images of column {columns['image']!r} differ in size; genbound needs "
                            "one size")
        return torch.from_numpy(np.stack(rows) / np.float32(255.0)) if rows else torch.zeros(0, 0)
    cols = [columns["text"]] if "text" in columns else [columns["text_a"], columns["text_b"]]
    values = [list(ds[c]) for c in cols]
    for col, vals in zip(cols, values):
        bad = next((i for i, v in enumerate(vals) if not isinstance(v, str)), None)
        if bad is not None:
            raise DataError(f"{where}: column {col!r} holds {type(vals[bad]).__name__}, not text (example {bad})")
    return values[0] if len(values) == 1 else list(zip(*values))


def _pick_test(splits: dict, label: str, regression: bool, test_split: str | None, where: str) -> str | None:
    """The split that serves as test: ``test_split`` when named (it must be labelled), else the first labelled of
    TEST_SPLITS; None when none is (train is then split)."""
    if test_split is not None:
        if test_split not in splits:
            raise DataError(f"{where}: no split {test_split!r} (splits: {', '.join(splits)})")
        if not len(_labels(splits[test_split], label, regression)[1]):
            raise DataError(f"{where}: split {test_split!r} has no labels")
        return test_split
    return next((s for s in TEST_SPLITS if s in splits and len(_labels(splits[s], label, regression)[1])), None)


def build_task(name: str, splits: dict, source: str, *, seed: int, n_train: int | None, n_test: int | None,
               test_fraction: float, columns: dict[str, str], test_split: str | None = None,
               problem: str | None = None, metrics: tuple[str, ...] | None = None) -> Task:
    """A Task from the splits of a Hugging Face dataset (see the module's docstring for the rules)."""
    if "train" not in splits:
        raise DataError(f"{name}: no split 'train' (splits: {', '.join(splits) or 'none'})")
    train_ds = splits["train"]
    columns = resolve_columns(columns, list(train_ds.column_names), dict(train_ds.features), name)
    feature = train_ds.features[columns["label"]]
    if problem is None:
        problem = "regression" if getattr(feature, "dtype", "").startswith("float") else "classification"
    regression = problem == "regression"
    test_name = _pick_test(splits, columns["label"], regression, test_split, name)
    for side in {test_name} - {None, "train"}:
        missing = [c for c in columns.values() if c not in splits[side].column_names]
        if missing:
            raise DataError(f"{name}: split {side!r} lacks column(s) {', '.join(missing)}")

    train_values, train_keep = _labels(train_ds, columns["label"], regression)
    dropped = len(train_values) - len(train_keep)
    if not len(train_keep):
        raise DataError(f"{name}: the train split has no labelled examples (column {columns['label']!r})")
    rng_train, rng_test = np.random.default_rng(seed).spawn(2)
    if test_name is None:
        tr, te, avail_train, avail_test = _split_pools(len(train_keep), seed, n_train, n_test, test_fraction, name)
        picks = {"train": (train_ds, train_values, train_keep[tr]), "test": (train_ds, train_values, train_keep[te])}
        test_said = f"train (seeded split, test_fraction={test_fraction}; no labelled test or validation split)"
    else:
        test_ds = splits[test_name]
        test_values, test_keep = _labels(test_ds, columns["label"], regression)
        avail_train, avail_test = len(train_keep), len(test_keep)
        picks = {"train": (train_ds, train_values, train_keep[_take(avail_train, n_train, "n_train", name, rng_train)]),
                 "test": (test_ds, test_values, test_keep[_take(avail_test, n_test, "n_test", name, rng_test)])}
        test_said = test_name

    if regression:
        class_names = ["score"]
        to_y = lambda values: np.asarray(values, dtype=np.float32)
        label_said = "float32 targets"
    elif type(feature).__name__ == "ClassLabel":
        class_names = list(feature.names)
        to_y = lambda values: np.asarray(values, dtype=np.int64)
        label_said = "class ids of the ClassLabel feature"
    else:  # raw labels: sorted unique values -> 0..K-1, as for files
        pools = [(train_values, train_keep)] + ([] if test_name is None else [(test_values, test_keep)])
        raw = {values[i] for values, keep in pools for i in keep}  # every labelled example, not just the drawn ones
        ordered = sorted(raw, key=lambda v: (isinstance(v, str), v))
        class_names = [str(v) for v in ordered]
        to_id = {v: i for i, v in enumerate(ordered)}
        to_y = lambda values: np.asarray([to_id[v] for v in values], dtype=np.int64)
        label_said = "sorted unique labels mapped to 0..K-1"

    out = {}
    for side, (ds, values, idx) in picks.items():
        y = to_y([values[i] for i in idx])
        if not regression and len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"{name}: {side} labels out of 0..{len(class_names) - 1}")
        out[side] = Split(_inputs(ds.select(idx.tolist()), columns, name), torch.from_numpy(y))

    kind = "vision" if "image" in columns else "text"
    metrics = tuple(metrics or (("pearson", "spearman") if regression else ("accuracy",)))
    inputs = {"text": "raw text", "text_a": "raw text pairs", "image": "pixels/255, flattened"}
    info = _info(source, seed, picks["train"][2], picks["test"][2], avail_train, avail_test,
                 f"{next(v for k, v in inputs.items() if k in columns)}; label: {label_said}; unlabelled examples "
                 "(label -1 or None) dropped", test_split=test_said, columns=columns_text(columns),
                 splits=list(splits), dropped_unlabelled_train=int(dropped), pairs="text_a" in columns,
                 problem=problem, metrics=list(metrics))
    return Task(name, kind, len(class_names), out["train"], out["test"], class_names, info, problem=problem,
                metrics=metrics)


def load_hf(name: str, *, seed: int, n_train: int | None, n_test: int | None, test_fraction: float,
            columns: dict[str, str]) -> Task:
    """``hf:NAME[:CONFIG]`` or a save_to_disk folder ``name``."""
    if name.startswith("hf:"):
        hub_name, _, config = name[3:].partition(":")
        if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", hub_name):
            raise DataError(f"{name}: give a hub dataset as hf:NAME or hf:NAME:CONFIG (e.g. hf:nyu-mll/glue:mrpc)")
        splits, source = open_hub(hub_name, config or None, name)
    else:
        splits, source = open_folder(Path(name).expanduser(), name)
    return build_task(name, splits, source, seed=seed, n_train=n_train, n_test=n_test,
                      test_fraction=test_fraction, columns=columns)

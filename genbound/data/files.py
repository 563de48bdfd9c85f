"""User text files: ``.csv`` (a header) or ``.jsonl`` (one object a line) with ``text`` and ``label``, or with
``text_a``, ``text_b`` and ``label`` for sentence pairs (each example then is the pair (a, b), which a text model
reads as the tokenizer's pair input)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from ..errors import DataError
from .base import Split, Task, _info, _split_pools


Text = str | tuple[str, str]


def _read_rows(path: Path) -> list[tuple[Text, object]]:
    """(text or (text_a, text_b), raw label) rows of a .csv (a header) or .jsonl file."""
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


def _columns(names: list[str], where: str) -> tuple[str, ...]:
    """The text columns of a file: ("text",) or ("text_a", "text_b"); one line when they are incomplete."""
    if "text_a" in names or "text_b" in names:
        missing = [c for c in ("text_a", "text_b", "label") if c not in names]
        if missing:
            raise DataError(f"{where} lacks {', '.join(missing)}: a sentence-pair file needs columns text_a, "
                            "text_b and label (has "
                            f"{', '.join(names)})")
        return ("text_a", "text_b")
    missing = [c for c in ("text", "label") if c not in names]
    if missing:
        raise DataError(f"{where} lacks column(s) {', '.join(missing)} (has {', '.join(names)}; "
                        "sentence pairs: text_a, text_b, label)")
    return ("text",)


def _text(rec: dict, columns: tuple[str, ...]) -> Text | None:
    values = [rec.get(c) for c in columns]
    if any(not isinstance(v, str) for v in values):
        return None
    return values[0] if len(values) == 1 else (values[0], values[1])


def _csv_rows(f: TextIO, path: Path) -> list[tuple[Text, object]]:
    reader = csv.DictReader(f)
    if reader.fieldnames is None:
        raise DataError(f"{path}: empty file (expected a header with columns text,label or text_a,text_b,label)")
    columns = _columns(list(reader.fieldnames), f"{path}:1: header")
    rows: list[tuple[Text, object]] = []
    for rec in reader:
        text, label = _text(rec, columns), rec.get("label")
        if text is None or label is None or label.strip() == "":
            raise DataError(f"{path}:{reader.line_num}: missing {' or '.join(columns)} or label")
        rows.append((text, label.strip()))
    return rows


def _jsonl_rows(f: TextIO, path: Path) -> list[tuple[Text, object]]:
    rows: list[tuple[Text, object]] = []
    columns: tuple[str, ...] | None = None
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(rec, dict) or not ("text" in rec or "text_a" in rec or "text_b" in rec):
            raise DataError(f"{path}:{lineno}: expected an object with keys text and label (or text_a, text_b, label)")
        columns = columns or _columns(list(rec), f"{path}:{lineno}:")
        if any(c not in rec for c in (*columns, "label")):
            raise DataError(f"{path}:{lineno}: expected an object with keys {', '.join(columns)} and label")
        text = _text(rec, columns)
        if text is None or not isinstance(rec.get("label"), (str, int)) or isinstance(rec.get("label"), bool):
            what = "text must be a string" if len(columns) == 1 else "text_a and text_b must be strings"
            raise DataError(f"{path}:{lineno}: {what}, label a string or int")
        rows.append((text, rec["label"]))
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

    pairs = isinstance(rows[0][0], tuple)
    info = _info(str(path), seed, train, test, avail_train, avail_test,
                 f"raw {'text pairs (text_a, text_b)' if pairs else 'text'}; sorted unique labels mapped to 0..K-1; "
                 f"seeded split with test_fraction={test_fraction}", test_fraction=test_fraction, pairs=pairs)
    return Task(name, "text", len(class_names), split(train), split(test), class_names, info)

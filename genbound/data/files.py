"""User text files: ``.csv`` (a header) or ``.jsonl`` (one object a line) with ``text`` and ``label``."""

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

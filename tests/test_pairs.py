"""Sentence-pair tasks: text_a/text_b files, the WordNet pair task, pair encoding, and the commands on them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from genbound.cli import main
from genbound.data import Split, load_task
from genbound.data.wordnet import _pair_indices, _read_wordnet
from genbound.errors import DataError


def pair_csv(folder: Path, n: int = 90) -> Path:
    """Pairs whose label says whether both halves speak of the same topic."""
    topics = ["apple banana grape", "river ocean lake", "engine wheel gear"]
    rows = ["text_a,text_b,label"]
    for i in range(n):
        a, b = i % 3, (i // 3) % 3
        rows.append(f"{topics[a].split()[i % 3]} number {i},{topics[b].split()[(i + 1) % 3]} {i},{int(a == b)}")
    path = folder / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_pair_files_read_as_pairs(tmp_path):
    task = load_task(str(pair_csv(tmp_path)))
    assert task.info["pairs"] and all(isinstance(x, tuple) and len(x) == 2 for x in task.train.x)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text_a": f"a {i}", "text_b": f"b {i % 4}", "label": i % 2})
                               for i in range(40)) + "\n")
    assert load_task(str(jsonl)).train.x[0][1].startswith("b ")


@pytest.mark.parametrize("content, words", [
    ("text_a,label\nx,1\ny,0\n", "lacks text_b"),
    ("text_a,text_b\nx,y\n", "lacks label"),
    ("text_a,text_b,label\nx\n", "missing text_a or text_b or label"),
])
def test_broken_pair_files_are_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=words):
        load_task(str(path))
    capsys.readouterr()
    assert main(["train", "--model", "tiny-bert", "--data", str(path), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_a_pair_is_not_its_concatenation():
    y = torch.tensor([0, 1])
    pairs = Split([("a b", "c"), ("d", "e")], y).fingerprint()
    assert pairs != Split([("a", "b c"), ("d", "e")], y).fingerprint()
    assert pairs != Split(["a b c", "d e"], y).fingerprint()
    assert pairs == Split([("a b", "c"), ("d", "e")], y.clone()).fingerprint()


def test_pair_indices_by_brute_force():
    """Synthetic supersenses: every pair is two distinct synsets of the pool, labelled by equality of their
    classes; exactly half are positives; the draw depends on the seed."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])
    pool = np.array([0, 1, 3, 4, 5, 6, 9, 10, 11])
    pairs, y = _pair_indices(labels, pool, 101, np.random.default_rng(0), "t")
    assert len(pairs) == 101 and int(y.sum()) == 50
    for (i, j), same in zip(pairs, y):
        assert i != j and i in pool and j in pool
        assert same == int(labels[i] == labels[j])
    again, _ = _pair_indices(labels, pool, 101, np.random.default_rng(0), "t")
    other, _ = _pair_indices(labels, pool, 101, np.random.default_rng(1), "t")
    assert np.array_equal(pairs, again) and not np.array_equal(pairs, other)
    with pytest.raises(DataError, match="too few"):
        _pair_indices(labels, np.array([9, 10]), 4, np.random.default_rng(0), "t")


def test_wordnet_pairs_are_balanced_seeded_and_disjoint():
    task = load_task("wordnet-pairs", seed=0, n_train=3000, n_test=1000)
    assert (task.num_classes, task.class_names) == (2, ["different", "same"])
    assert task.train.y.float().mean() == 0.5 and task.test.y.float().mean() == 0.5
    _, texts, labels = _read_wordnet(Path("/usr/share/wordnet"))
    lex = {}
    for text, label in zip(texts, labels):
        lex.setdefault(text, set()).add(int(label))
    unique = {t for t, c in Counter(texts).items() if c == 1}  # glosses of exactly one synset
    for split in (task.train, task.test):
        for (a, b), same in zip(split.x, split.y.tolist()):
            if a in unique and b in unique:
                assert same == int(lex[a] == lex[b])
    seen = {t for pair in task.train.x for t in pair} & unique
    assert not seen & {t for pair in task.test.x for t in pair}  # the test synsets are not training synsets
    assert load_task("wordnet-pairs", seed=1, n_train=3000, n_test=1000).train.x != task.train.x


def test_pairs_are_encoded_as_the_tokenizers_pair_input(tmp_path):
    from genbound.models import load_backbone, resolve_ref

    task = load_task(str(pair_csv(tmp_path)))
    backbone = load_backbone(resolve_ref("tiny-bert"), task, 0)
    enc = backbone.encode(Split(task.train.x[:2], task.train.y[:2]))
    ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
    sep = backbone.tokenizer.sep_token_id
    assert ids.count(sep) == 2 and set(enc["token_type_ids"][0].tolist()) >= {0, 1}
    a, b = task.train.x[0]
    assert ids == backbone.tokenizer(a, b)["input_ids"]


def test_every_command_runs_on_a_pair_task(tmp_path):
    data = str(pair_csv(tmp_path))
    ck = str(tmp_path / "ck")
    assert main(["train", "--model", "tiny-bert", "--data", data, "--method", "cla", "--rank", "2", "--steps", "6",
                 "--quiet", "--out", ck]) == 0
    assert main(["compute", "--ckpt", ck, "--compress", "--compress-bits", "2", "--json", str(tmp_path / "c.json"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["n_train"] == 72
    assert main(["spectrum", "--ckpt", ck, "--quiet"]) == 0
    assert main(["hessian", "--ckpt", ck, "--top-k", "1", "--samples", "16", "--quiet"]) == 0
    assert main(["landscape", "--ckpt", ck, "--grid", "3", "--samples", "16", "--out", str(tmp_path / "ls"),
                 "--quiet"]) == 0
    assert main(["export-peft", "--ckpt", ck, "--out", str(tmp_path / "peft")]) == 0

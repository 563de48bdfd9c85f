"""Tokenized splits kept on disk (models.tokenized): the same tensors as the tokenizer gives, read back instead of
tokenized again, and a new file for any other tokenizer setting, length limit or text."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from genbound import models
from genbound.models import minilm_folder, tokenized

TEXTS = ["a river bank", "the bank of a river in spring", "gear box", "x"]
PAIRS = [("a river bank", "the edge of a river"), ("gear box", "a box of gears with teeth")]


@pytest.fixture
def tok(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    return AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)


def files(tmp_path):
    return sorted((tmp_path / "cache" / "tokens").glob("*.safetensors"))


@pytest.mark.parametrize("texts", [TEXTS, PAIRS])
def test_a_split_is_tokenized_once_and_read_back_equal(tok, tmp_path, monkeypatch, texts):
    first = tokenized(tok, texts, 16)
    pairs = isinstance(texts[0], tuple)
    oracle = (tok([a for a, _ in texts], [b for _, b in texts], padding="longest", truncation=True, max_length=16,
                  return_tensors="pt") if pairs else
              tok(texts, padding="longest", truncation=True, max_length=16, return_tensors="pt"))
    assert set(first) == set(oracle) and all(torch.equal(first[k], oracle[k]) for k in oracle)
    assert len(files(tmp_path)) == 1

    def no_tokenizing(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(models, "_tokenize", no_tokenizing)
    again = tokenized(tok, texts, 16)
    assert all(torch.equal(again[k], oracle[k]) for k in oracle)


def test_another_limit_text_or_padding_side_is_another_file_and_a_broken_cache_is_passed_by(tok, tmp_path,
                                                                                            monkeypatch):
    tokenized(tok, TEXTS, 16)
    tokenized(tok, TEXTS, 3)
    tokenized(tok, TEXTS[:3], 16)
    tok.padding_side = "left"
    left = tokenized(tok, TEXTS, 16)
    assert len(files(tmp_path)) == 4 and int(left["attention_mask"][3, 0]) == 0  # padded on the left, as asked
    files(tmp_path)[0].write_bytes(b"not a safetensors file")
    tok.padding_side = "right"
    for limit in (16, 3):
        assert torch.equal(tokenized(tok, TEXTS, limit)["input_ids"],
                           tok(TEXTS, padding="longest", truncation=True, max_length=limit,
                               return_tensors="pt")["input_ids"])
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")  # the cache folder cannot be made: tokenized all the same
    assert torch.equal(tokenized(tok, TEXTS, 8)["input_ids"],
                       tok(TEXTS, padding="longest", truncation=True, max_length=8, return_tensors="pt")["input_ids"])

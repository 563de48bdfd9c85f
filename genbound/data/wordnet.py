"""WordNet 3.0 (Debian ``wordnet-base``): gloss -> supersense (lexicographer file), 45 classes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import Split, Task, _info


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


def _pair_indices(labels: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator,
                  where: str) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs (i, j), i != j, of synsets from ``pool``: n // 2 of the same supersense (label 1) and the rest of
    different ones (label 0), in a seeded random order. The first synset of each pair is uniform over the pool
    (among those with a partner for positives); its partner is uniform among the qualifying synsets."""
    by_label: dict[int, np.ndarray] = {int(c): pool[labels[pool] == c] for c in np.unique(labels[pool])}
    partnered = [v for v in by_label.values() if len(v) > 1]
    with_partner = np.concatenate(partnered) if partnered else np.zeros(0, dtype=np.int64)
    if len(by_label) < 2 or not len(with_partner):
        raise DataError(f"{where}: the pool has too few synsets of one supersense to draw pairs from")
    n_same = n // 2
    firsts = np.concatenate([rng.choice(with_partner, n_same), rng.choice(pool, n - n_same)])
    pairs = np.empty((n, 2), dtype=np.int64)
    for k, i in enumerate(firsts):
        same = by_label[int(labels[i])]
        if k < n_same:
            j = i
            while j == i:
                j = same[rng.integers(len(same))]
        else:
            j = pool[rng.integers(len(pool))]
            while labels[j] == labels[i]:
                j = pool[rng.integers(len(pool))]
        pairs[k] = (i, j)
    y = (np.arange(n) < n_same).astype(np.int64)
    order = rng.permutation(n)
    return pairs[order], y[order]


def _load_wordnet_pairs(seed: int, n_train: int | None, n_test: int | None) -> Task:
    """Do two glosses name the same supersense? Balanced (half same, half different), seeded; the synsets of the
    test pairs are disjoint from those of the training pairs (the synsets are split 80/20 first)."""
    root = Path(os.environ.get("GENBOUND_WORDNET_DIR") or "/usr/share/wordnet")
    _, texts, labels = _read_wordnet(root)
    n_train, n_test = 8000 if n_train is None else n_train, 2000 if n_test is None else n_test
    rng_split, rng_train, rng_test = np.random.default_rng([seed, 2]).spawn(3)
    perm = rng_split.permutation(len(texts))
    cut = round(0.8 * len(texts))
    pools = {"train": np.sort(perm[:cut]), "test": np.sort(perm[cut:])}
    splits = {}
    for side, n, rng in (("train", n_train, rng_train), ("test", n_test, rng_test)):
        pairs, y = _pair_indices(labels, pools[side], n, rng, f"wordnet-pairs ({side})")
        splits[side] = Split([(texts[i], texts[j]) for i, j in pairs], torch.from_numpy(y))
    info = _info(f"Debian wordnet-base ({root})", seed, np.arange(n_train), np.arange(n_test), len(pools["train"]),
                 len(pools["test"]), "pairs of glosses; label 1 when both synsets have the same lex_filenum "
                 "(supersense), 0 otherwise; half of each split 1; train and test pairs drawn from disjoint 80/20 "
                 "pools of synsets", pairs=True, n_available_total=len(texts))
    return Task("wordnet-pairs", "text", 2, splits["train"], splits["test"], ["different", "same"], info)

"""GLUE recipes by name (``glue/mrpc``...): each knows its columns, its metrics, its problem and the split that
serves as test (GLUE's test labels are hidden, so the validation split). The data come from the folder
``$GENBOUND_GLUE_DIR/TASK`` (written by ``DatasetDict.save_to_disk``) when that variable is set, else from the hub
dataset nyu-mll/glue, config TASK (or its local cache)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .base import Task
from .hf import build_task, is_saved_dataset, open_folder, open_hub, parse_columns

GLUE_HUB = "nyu-mll/glue"
PAIRS = "text_a=sentence1,text_b=sentence2,label=label"


@dataclass(frozen=True)
class Recipe:
    columns: str
    metrics: tuple[str, ...]
    test_split: str = "validation"
    problem: str = "classification"


GLUE: dict[str, Recipe] = {
    "cola": Recipe("text=sentence,label=label", ("matthews", "accuracy")),
    "sst2": Recipe("text=sentence,label=label", ("accuracy",)),
    "mrpc": Recipe(PAIRS, ("f1", "accuracy")),
    "qqp": Recipe("text_a=question1,text_b=question2,label=label", ("f1", "accuracy")),
    "stsb": Recipe(PAIRS, ("pearson", "spearman"), problem="regression"),
    "mnli": Recipe("text_a=premise,text_b=hypothesis,label=label", ("accuracy",), test_split="validation_matched"),
    "qnli": Recipe("text_a=question,text_b=sentence,label=label", ("accuracy",)),
    "rte": Recipe(PAIRS, ("accuracy",)),
    "wnli": Recipe(PAIRS, ("accuracy",)),
}
GLUE_NAMES = tuple(f"glue/{t}" for t in GLUE)


def load_glue(name: str, *, seed: int, n_train: int | None, n_test: int | None, test_fraction: float,
              columns: dict[str, str]) -> Task:
    """Recipe ``glue/TASK``; ``columns`` (roles) override the recipe's."""
    task = name.partition("/")[2]
    if task not in GLUE:
        raise DataError(f"unknown GLUE task {name!r}: known are {', '.join(GLUE_NAMES)}")
    recipe = GLUE[task]
    root = os.environ.get("GENBOUND_GLUE_DIR")
    if root:
        folder = Path(root).expanduser() / task
        if not is_saved_dataset(folder):
            raise DataError(f"{name}: GENBOUND_GLUE_DIR={root} holds no save_to_disk folder {task}/ "
                            "(write one with DatasetDict.save_to_disk)")
        splits, source = open_folder(folder, name)
    else:
        splits, source = open_hub(GLUE_HUB, task, name, fix=f"save it with DatasetDict.save_to_disk as DIR/{task} "
                                  "where there is internet and set GENBOUND_GLUE_DIR=DIR")
    ours = parse_columns(recipe.columns, name)
    if set(columns) - {"label"}:  # the user names the input: the recipe's input columns give way
        ours = {"label": ours["label"]}
    return build_task(name, splits, source, seed=seed, n_train=n_train, n_test=n_test, test_fraction=test_fraction,
                      columns={**ours, **columns}, test_split=recipe.test_split,
                      problem=recipe.problem, metrics=recipe.metrics)

"""The metrics a task is judged by beside its loss (``Task.metrics``), as plain functions of (predictions or
logits, targets) in float64 numpy: accuracy, F1, Matthews correlation, Pearson and Spearman correlation.

Classification metrics take logits (N, K) (the prediction is the argmax) or predicted labels (N,); regression
metrics take predictions (N,) or one-output logits (N, 1). A number that is not defined (a correlation with a
constant side) is None, never nan, so it stays a JSON null. ``task_metrics`` computes a task's metrics.
"""

from __future__ import annotations

import numpy as np

from .errors import GenboundError

CLASSIFICATION = ("accuracy", "f1", "matthews")
REGRESSION = ("pearson", "spearman")
DESCRIPTIONS = {
    "accuracy": "share of examples whose argmax is the label",
    "f1": "F1 of class 1 (binary tasks); macro-F1 over the classes present (more than two classes)",
    "matthews": "Matthews correlation (multi-class form; 0 when a side is constant, as scikit-learn)",
    "pearson": "Pearson correlation of predictions and targets (null when either is constant)",
    "spearman": "Spearman rank correlation, ties averaged (null when either is constant)",
}


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def labels_of(logits) -> np.ndarray:
    """Predicted labels: the argmax of (N, K) logits, or the labels themselves."""
    a = _array(logits)
    return a.argmax(-1) if a.ndim == 2 else a.astype(np.int64)


def values_of(pred) -> np.ndarray:
    """Predicted values as float64 (N,): one-output logits (N, 1) are squeezed."""
    a = _array(pred).astype(np.float64)
    return a[:, 0] if a.ndim == 2 else a


def accuracy(logits, y) -> float:
    p, t = labels_of(logits), _array(y).astype(np.int64)
    return float((p == t).mean())


def f1(logits, y) -> float:
    """Binary F1 of the positive class 1 when the task has at most two classes (K of the logits, or the labels
    seen); with more classes the unweighted mean of every present class's F1 (macro-F1, sklearn's
    ``average="macro"``). An F1 with no true and no predicted positive is 0, as scikit-learn gives."""
    p, t = labels_of(logits), _array(y).astype(np.int64)
    k = _array(logits).shape[1] if _array(logits).ndim == 2 else int(max(p.max(initial=0), t.max(initial=0))) + 1
    classes = [1] if k <= 2 else sorted(set(p.tolist()) | set(t.tolist()))
    scores = []
    for c in classes:
        tp = int(((p == c) & (t == c)).sum())
        denom = int((p == c).sum()) + int((t == c).sum())
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def matthews(logits, y) -> float:
    """Matthews correlation in its multi-class form (Gorodkin 2004) from the confusion matrix C:
    (c s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)), 0 when the denominator is 0."""
    p, t = labels_of(logits), _array(y).astype(np.int64)
    k = int(max(p.max(initial=0), t.max(initial=0))) + 1
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (t, p), 1.0)
    s, c = conf.sum(), np.trace(conf)
    pk, tk = conf.sum(0), conf.sum(1)
    denom = (s * s - pk @ pk) * (s * s - tk @ tk)
    return float((c * s - pk @ tk) / np.sqrt(denom)) if denom > 0 else 0.0


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    a, b = a - a.mean(), b - b.mean()
    na, nb = np.sqrt(a @ a), np.sqrt(b @ b)
    if na == 0 or nb == 0:
        return None
    return float(np.clip((a @ b) / (na * nb), -1.0, 1.0))


def pearson(pred, y) -> float | None:
    """Pearson correlation; None (undefined) when predictions or targets are constant or not finite."""
    return _correlation(values_of(pred), values_of(y))


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    start = np.r_[True, sx[1:] != sx[:-1]]
    first = np.flatnonzero(start)
    last = np.r_[first[1:], len(x)] - 1
    out = np.empty(len(x), dtype=np.float64)
    out[order] = ((first + last) / 2 + 1)[np.cumsum(start) - 1]
    return out


def spearman(pred, y) -> float | None:
    """Spearman correlation: Pearson of the average ranks; None when either side is constant."""
    a, b = values_of(pred), values_of(y)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    return _correlation(ranks(a), ranks(b))


FUNCTIONS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}


def check_metrics(names, problem: str) -> None:
    """One line for a metric genbound does not know or one that does not fit the task's problem."""
    for name in names:
        if name not in FUNCTIONS:
            raise GenboundError(f"unknown metric {name!r}: choose from {', '.join(FUNCTIONS)}")
        fits = REGRESSION if problem == "regression" else CLASSIFICATION
        if name not in fits:
            raise GenboundError(f"metric {name!r} does not apply to a {problem} task (those are {', '.join(fits)})")


def check_task(task) -> None:
    """A task's problem and metrics fit each other (a regression task has one output), in one line if not."""
    if task.problem not in ("classification", "regression"):
        raise GenboundError(f"task {task.name}: problem {task.problem!r} is neither classification nor regression")
    if task.regression and task.num_classes != 1:
        raise GenboundError(f"task {task.name}: a regression task has one output, not {task.num_classes}")
    check_metrics(task.metrics, task.problem)


def task_metrics(task, logits, y) -> dict[str, float | None]:
    """Every metric ``task.metrics`` names, computed on ``logits`` (or predictions) against ``y``."""
    check_metrics(task.metrics, task.problem)
    return {name: FUNCTIONS[name](logits, y) for name in task.metrics}

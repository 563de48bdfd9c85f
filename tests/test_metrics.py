"""genbound.metrics against scikit-learn and scipy on random inputs, with the edge cases (constant predictions,
ties, a class never predicted)."""

import json

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from genbound import metrics
from genbound.data import Split, Task
from genbound.errors import GenboundError
from genbound.files import json_text


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_metrics_equal_sklearn(seed, k):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, k, generator=g)
    y = torch.randint(0, k, (200,), generator=g)
    pred = logits.argmax(1).numpy()
    assert metrics.accuracy(logits, y) == pytest.approx(skm.accuracy_score(y.numpy(), pred), abs=1e-12)
    f1 = skm.f1_score(y.numpy(), pred) if k == 2 else skm.f1_score(y.numpy(), pred, average="macro")
    assert metrics.f1(logits, y) == pytest.approx(f1, abs=1e-12)
    assert metrics.matthews(logits, y) == pytest.approx(skm.matthews_corrcoef(y.numpy(), pred), abs=1e-12)
    # predicted labels give the same numbers as logits
    assert metrics.matthews(torch.from_numpy(pred), y) == metrics.matthews(logits, y)


def test_classification_edge_cases_follow_sklearn():
    y = np.array([0, 1, 1, 0, 1, 0])
    const = np.ones(6, dtype=int)
    assert metrics.matthews(const, y) == skm.matthews_corrcoef(y, const) == 0.0  # constant predictions
    assert metrics.matthews(y, y) == pytest.approx(1.0)
    assert metrics.matthews(1 - y, y) == pytest.approx(-1.0)
    zeros = np.zeros(6, dtype=int)
    assert metrics.f1(zeros, zeros) == skm.f1_score(zeros, zeros, zero_division=0) == 0.0  # no positive at all
    assert metrics.f1(zeros, y) == 0.0
    # 3 classes, one never predicted and one never true: macro over the classes present, as sklearn's default
    t, p = np.array([0, 0, 1, 1, 1, 0]), np.array([0, 2, 1, 1, 0, 0])
    assert metrics.f1(p, t) == pytest.approx(skm.f1_score(t, p, average="macro"), abs=1e-12)
    # binary logits: F1 is class 1's even when the labels seen are all 0
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    assert metrics.f1(logits, torch.tensor([0, 0])) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_correlations_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=120)
    pred = 0.5 * y + rng.normal(size=120)
    assert metrics.pearson(pred, y) == pytest.approx(stats.pearsonr(pred, y)[0], abs=1e-12)
    assert metrics.spearman(pred, y) == pytest.approx(stats.spearmanr(pred, y)[0], abs=1e-12)
    # ties (rounded values) and (N, 1) outputs as torch tensors
    yt, pt = np.round(y), np.round(pred * 2) / 2
    assert metrics.spearman(torch.tensor(pt)[:, None], torch.tensor(yt, dtype=torch.float32)) == pytest.approx(
        stats.spearmanr(pt, yt)[0], abs=1e-6)
    assert metrics.pearson(torch.tensor(pt, dtype=torch.float32)[:, None], torch.tensor(yt)) == pytest.approx(
        stats.pearsonr(pt.astype(np.float32), yt)[0], abs=1e-6)


def test_ranks_equal_scipy_rankdata():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0, 7.0])
    assert np.array_equal(metrics.ranks(x), stats.rankdata(x))


def test_a_constant_side_has_no_correlation():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    for fn in (metrics.pearson, metrics.spearman):
        assert fn(np.full(4, 2.5), y) is None  # scipy gives nan (and warns): genbound says undefined
        assert fn(y, np.zeros(4)) is None
        assert fn(y[:1], y[:1]) is None
        assert fn(np.array([1.0, np.nan, 2.0, 3.0]), y) is None
    assert json.loads(json_text({"p": metrics.pearson(np.full(4, 2.5), y)})) == {"p": None}


def _task(problem, names, k=2):
    y = torch.zeros(4) if problem == "regression" else torch.zeros(4, dtype=torch.long)
    return Task("t", "vision", 1 if problem == "regression" else k, Split(torch.zeros(4, 2), y),
                Split(torch.zeros(4, 2), y), ["score"] if problem == "regression" else ["a", "b"],
                problem=problem, metrics=names)


def test_task_metrics_and_their_checks():
    task = _task("classification", ("f1", "accuracy", "matthews"))
    logits, y = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0, 0])
    out = metrics.task_metrics(task, logits, y)
    assert list(out) == ["f1", "accuracy", "matthews"]
    assert out["f1"] == pytest.approx(skm.f1_score(y, logits.argmax(1)))
    reg = _task("regression", ("pearson", "spearman"))
    out = metrics.task_metrics(reg, torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 3.0, 2.0]))
    assert out["pearson"] == pytest.approx(stats.pearsonr([1, 2, 4], [1, 3, 2])[0])
    with pytest.raises(GenboundError, match="does not apply to a regression task"):
        metrics.task_metrics(_task("regression", ("accuracy",)), torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(GenboundError, match="does not apply to a classification task"):
        metrics.check_task(_task("classification", ("pearson",)))
    with pytest.raises(GenboundError, match="unknown metric 'auc'"):
        metrics.check_metrics(["auc"], "classification")
    bad = _task("regression", ("pearson",))
    bad.num_classes = 3
    with pytest.raises(GenboundError, match="one output, not 3"):
        metrics.check_task(bad)

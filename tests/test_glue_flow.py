"""GLUE recipes through every command: STS-B trained as regression (MSE) and judged by Pearson/Spearman, MRPC by
F1, on local copies in GLUE's schema; each metric genbound reports equals scipy's or sklearn's on the reloaded
model's own predictions, and compare shows the metric columns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score

from genbound import checkpoint
from genbound.cli import main
from genbound.runtime import predict
from test_hf_data import glue_copy


@pytest.fixture
def glue(tmp_path, monkeypatch):
    root = tmp_path / "glue"
    for task in ("stsb", "mrpc"):
        glue_copy(root, task, n_train=40, n_val=16)
    monkeypatch.setenv("GENBOUND_GLUE_DIR", str(root))
    return root


def predictions(ck):
    loaded = checkpoint.load(ck)
    inputs = loaded.built.backbone.encode(loaded.task.test)
    out = predict(loaded.model, inputs, len(loaded.task.test))
    return loaded, out, loaded.task.test.y


def test_stsb_regression_end_to_end(glue, tmp_path, one_thread):
    ck = tmp_path / "stsb"
    assert main(["train", "--model", "tiny-bert", "--data", "glue/stsb", "--method", "lora", "--rank", "2",
                 "--steps", "6", "--batch-size", "8", "--quiet", "--out", str(ck)]) == 0
    man = json.loads((ck / "genbound.json").read_text())
    assert man["task"]["problem"] == "regression" and man["task"]["num_classes"] == 1
    assert man["task"]["metrics"] == ["pearson", "spearman"]
    loaded, out, y = predictions(ck)
    assert out.shape == (16, 1) and y.dtype == torch.float32
    pred = out[:, 0].double().numpy()
    assert man["metrics"]["test_mse"] == pytest.approx(float(np.mean((pred - y.double().numpy()) ** 2)), rel=1e-4)
    assert main(["compute", "--ckpt", str(ck), "--loss", "mse", "--json", str(tmp_path / "c.json"),
                 "--quiet"]) == 0
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["test_pearson"] == pytest.approx(pearsonr(pred, y.numpy()).statistic, abs=1e-5)
    assert res["test_spearman"] == pytest.approx(spearmanr(pred, y.numpy()).statistic, abs=1e-5)
    assert main(["compute", "--ckpt", str(ck), "--loss", "01", "--quiet"]) == 2  # 0-1 loss: classification only


def test_mrpc_f1_end_to_end_and_in_compare(glue, tmp_path, one_thread):
    cks = []
    for method in ("lora", "cla"):
        ck = tmp_path / method
        assert main(["train", "--model", "tiny-bert", "--data", "glue/mrpc", "--method", method, "--rank", "2",
                     "--steps", "6", "--batch-size", "8", "--quiet", "--out", str(ck)]) == 0
        cks.append(ck)
        loaded, out, y = predictions(ck)
        f1 = f1_score(y.numpy(), out.argmax(-1).numpy(), zero_division=0.0)
        man = json.loads((ck / "genbound.json").read_text())
        assert man["metrics"]["test_f1"] == pytest.approx(f1, abs=1e-9)
        assert main(["compute", "--ckpt", str(ck), "--json", str(tmp_path / f"{method}.json"), "--quiet"]) == 0
        assert json.loads((tmp_path / f"{method}.json").read_text())["test_f1"] == pytest.approx(f1, abs=1e-9)
    report = tmp_path / "report"
    assert main(["compare", *map(str, cks), "--analyses", "compute", "--out", str(report), "--quiet"]) == 0
    rows = json.loads((report / "results.json").read_text())["rows"]
    assert all("test_f1" in r for r in rows)
    assert "| test f1 |" in (report / "README.md").read_text()

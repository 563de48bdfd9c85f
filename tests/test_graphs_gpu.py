"""CUDA-graph training (genbound.graphs) against eager training on the GPU: the same adapters for a dense
method, a selector chain across its boundaries, LoRA+'s two learning rates and a text model; a resumed
graphed run equals an uninterrupted one. Marked gpu: run with `pytest -m gpu` on a CUDA machine."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from genbound import checkpoint
from genbound.train import TrainConfig, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def adapters(path):
    return load_file(str(path / checkpoint.ADAPTER))


@pytest.mark.parametrize("method,chain", [("lora", 1), ("c3la", 3), ("lora_plus", 1), ("paca", 1)])
def test_graphed_training_equals_eager(tmp_path, method, chain):
    base = dict(model="mlp", data="digits", method=method, rank=4, chain=chain, steps=40, batch_size=32,
                hidden=[64, 64], eval_every=10, device="cuda", amp=False)
    eager = train(TrainConfig(**base, graphs=False), tmp_path / "eager", progress=False)
    graphed = train(TrainConfig(**base, graphs=True), tmp_path / "graphed", progress=False)
    assert graphed["timing"]["cuda_graphs"] and graphed["timing"]["cuda_graph_error"] is None
    a, b = adapters(tmp_path / "eager"), adapters(tmp_path / "graphed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert abs(graphed["metrics"]["test_acc"] - eager["metrics"]["test_acc"]) < 0.01


def test_graphed_text_model_trains_and_records_graphs(tmp_path):
    cfg = TrainConfig(model="tiny-bert", data="wordnet", method="cla", rank=4, steps=20, batch_size=16,
                      n_train=320, n_test=64, device="cuda")
    man = train(cfg, tmp_path / "t", progress=False)
    assert man["timing"]["cuda_graphs"], man["timing"]["cuda_graph_error"]


def test_graphed_resume_equals_uninterrupted(tmp_path, interrupt_training):
    from genbound.errors import TrainingError

    cfg = TrainConfig(model="mlp", data="digits", method="c3la", rank=4, chain=3, steps=30, batch_size=32,
                      hidden=[64, 64], save_every=5, device="cuda", amp=False)
    train(cfg, tmp_path / "ref", progress=False)
    undo = interrupt_training(17)
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, tmp_path / "cut", progress=False)
    undo()
    train(None, tmp_path / "cut", resume=True, progress=False)
    a, b = adapters(tmp_path / "ref"), adapters(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_peak_memory_counts_the_training_steps_not_the_evaluations(tmp_path, monkeypatch):
    """Every evaluation here holds an extra 256 MiB: the recorded peak (training steps) stays far below it."""
    import genbound.train as train_mod

    real = train_mod.evaluate

    def heavy(*args, **kwargs):
        ballast = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        out = real(*args, **kwargs)
        del ballast
        return out

    monkeypatch.setattr(train_mod, "evaluate", heavy)
    cfg = TrainConfig(model="mlp", data="digits", method="lora", rank=4, steps=30, batch_size=32, hidden=[64, 64],
                      eval_every=10, device="cuda")
    before = torch.cuda.memory_allocated()  # what earlier tests of this process still hold
    man = train(cfg, tmp_path / "p", progress=False)
    peak = man["timing"]["peak_gpu_memory_bytes"]
    assert before < peak < before + 64 * 2**20, (before, peak)
    assert torch.cuda.max_memory_allocated() >= 256 * 2**20  # the ballast was there (final evaluation)


def test_graphed_regression_training_equals_eager(tmp_path, monkeypatch):
    """A regression task (one output, float targets, MSE) through the captured step: the same adapters as eager."""
    import genbound.checkpoint as ckpt_mod
    import genbound.train as train_mod
    from genbound.data import Split, Task, load_task

    def digits_value(name, **kw):
        t = load_task("digits", **kw)
        return Task(name, "vision", 1, Split(t.train.x, t.train.y.float()), Split(t.test.x, t.test.y.float()),
                    ["score"], dict(t.info), "regression", ("pearson", "spearman"))

    monkeypatch.setattr(train_mod, "load_task", digits_value)
    monkeypatch.setattr(ckpt_mod, "load_task", digits_value)
    base = dict(model="mlp", data="digits-value", method="lora", rank=4, steps=40, batch_size=32, hidden=[64, 64],
                eval_every=10, device="cuda", amp=False, lr=1e-2)
    eager = train(TrainConfig(**base, graphs=False), tmp_path / "eager", progress=False)
    graphed = train(TrainConfig(**base, graphs=True), tmp_path / "graphed", progress=False)
    assert graphed["timing"]["cuda_graphs"] and graphed["timing"]["cuda_graph_error"] is None
    a, b = adapters(tmp_path / "eager"), adapters(tmp_path / "graphed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert graphed["metrics"]["test_mse"] == pytest.approx(eager["metrics"]["test_mse"], rel=1e-3)
    assert "test_acc" not in graphed["metrics"] and graphed["metrics"]["test_pearson"] is not None

"""Checkpoint directory: atomic files, refusal of foreign bases and corrupt files, reload reproduces metrics."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genbound import checkpoint, files
from genbound.errors import CheckpointError
from genbound.runtime import evaluate
from genbound.train import TrainConfig, pretrain, train

TINY = dict(data="digits", hidden=[16, 16], rank=4, alpha=8, eval_samples=50, steps=10)


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    for name, seed in (("a", 0), ("b", 1)):
        pretrain(TrainConfig(model="mlp", data="digits", hidden=[16, 16], steps=20, seed=seed), root / name,
                 progress=False)
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def ckpt(two_bases, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "lora"
    train(TrainConfig(**TINY, model=str(two_bases[0]), method="lora"), out, progress=False)
    return out


def test_reload_reproduces_the_saved_metrics(ckpt):
    loaded = checkpoint.load(ckpt)
    inputs = loaded.built.backbone.encode(loaded.task.test)
    m = evaluate(loaded.model, inputs, loaded.task.test.y)
    assert m["loss"] == pytest.approx(loaded.manifest["metrics"]["test_loss"], rel=1e-6)
    assert m["acc"] == loaded.manifest["metrics"]["test_acc"]
    assert not loaded.model.training


def test_a_checkpoint_from_another_base_is_refused(ckpt, two_bases):
    with pytest.raises(CheckpointError, match="different base model"):
        checkpoint.load(ckpt, base=str(two_bases[1]))
    assert checkpoint.load(ckpt, base=str(two_bases[0])).manifest["method"]["name"] == "lora"


def test_a_changed_base_file_is_refused(ckpt, two_bases, tmp_path):
    import shutil

    moved = tmp_path / "base-copy"
    shutil.copytree(two_bases[0], moved)
    weights = load_file(str(moved / "model.safetensors"))
    weights["hidden.1.weight"][0, 0] += 1e-3
    save_file(weights, str(moved / "model.safetensors"))
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint.load(ckpt, base=str(moved))


def test_corrupt_or_missing_files_give_checkpoint_errors(ckpt, tmp_path, reseal):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    data = (bad / checkpoint.ADAPTER).read_bytes()
    (bad / checkpoint.ADAPTER).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="changed or damaged after training"):
        checkpoint.load(bad)
    reseal(bad)  # a truncated file that the manifest vouches for still does not parse
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        checkpoint.load(bad)
    (bad / checkpoint.ADAPTER).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load(bad)
    (bad / checkpoint.MANIFEST).write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="not a genbound checkpoint"):
        checkpoint.load(tmp_path / "nowhere")


def test_tensors_that_do_not_fit_are_refused(ckpt, tmp_path, reseal):
    import shutil

    bad = tmp_path / "shape"
    shutil.copytree(ckpt, bad)
    tensors = load_file(str(bad / checkpoint.ADAPTER))
    tensors["hidden.0.lora_B"] = torch.zeros(16, 5)
    save_file(tensors, str(bad / checkpoint.ADAPTER))
    reseal(bad)
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.load(bad)
    del tensors["hidden.0.lora_B"]
    save_file(tensors, str(bad / checkpoint.ADAPTER))
    reseal(bad)
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load(bad)


def test_newer_format_is_refused(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "newer"
    shutil.copytree(ckpt, bad)
    man = json.loads((bad / checkpoint.MANIFEST).read_text())
    man["format_version"] = 99
    (bad / checkpoint.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="format version 99"):
        checkpoint.read_manifest(bad)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.txt"
    files.atomic_write_text(path, "good")

    def boom(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files._atomic(path, boom)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reload_on_cuda_reproduces_the_test_loss(ckpt):
    loaded = checkpoint.load(ckpt, device="cuda")
    inputs = {k: v.cuda() for k, v in loaded.built.backbone.encode(loaded.task.test).items()}
    m = evaluate(loaded.model, inputs, loaded.task.test.y.cuda())
    assert m["loss"] == pytest.approx(loaded.manifest["metrics"]["test_loss"], rel=1e-4)


def test_selector_indices_out_of_range_are_refused(two_bases, tmp_path, reseal):
    out = tmp_path / "rcla"
    train(TrainConfig(**TINY, model=str(two_bases[0]), method="rcla"), out, progress=False)
    tensors = load_file(str(out / checkpoint.ADAPTER))
    tensors["hidden.1.idx"][0] = 16  # hidden.1 has 16 input columns: 0..15
    save_file(tensors, str(out / checkpoint.ADAPTER))
    reseal(out)
    with pytest.raises(CheckpointError, match=r"hidden.1: idx must hold 4 column indices in \[0, 16\)"):
        checkpoint.load(out)

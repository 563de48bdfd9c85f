"""Tests for genbound.peft_io: export to PEFT reproduces the logits, import round-trips, bad input fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genbound import checkpoint
from genbound.build import build
from genbound.errors import CheckpointError
from genbound.runtime import logits as logits_of
from genbound.peft_io import export_peft, import_peft
from genbound.train import TrainConfig, train

peft = pytest.importorskip("peft")

MLP_METHODS = ["lora", "lora_plus", "asym", "cla", "rcla"]
CASES = [("mlp", m) for m in MLP_METHODS] + [("tiny-bert", "lora"), ("tiny-bert", "cla"), ("tiny-llama", "lora"),
                                               ("tiny-llama", "rcla")]


def _text_csv(folder: Path) -> Path:
    """60 short texts in 3 classes, each class with its own vocabulary."""
    words = {"0": "apple banana cherry grape melon", "1": "river ocean lake stream sea",
             "2": "engine wheel brake gear motor"}
    rows = ["text,label"]
    for i in range(60):
        label = str(i % 3)
        vocab = words[label].split()
        rows.append(f"{vocab[i % 5]} and {vocab[(i + 2) % 5]} number {i},{label}")
    path = folder / "tiny.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Trained checkpoints keyed by (model, method), trained on first use and shared by the tests."""
    root = tmp_path_factory.mktemp("runs")
    cache: dict = {}

    def get(model: str, method: str) -> Path:
        if (model, method) not in cache:
            out = root / f"{model}-{method}"
            if model == "mlp":
                cfg = TrainConfig(model="mlp", data="digits", hidden=[32, 32], steps=20, method=method, rank=4,
                                  alpha=8, eval_samples=100, device="cpu")
            else:
                data = root / "tiny.csv" if (root / "tiny.csv").exists() else _text_csv(root)
                cfg = TrainConfig(model=model, data=str(data), steps=5, method=method, rank=4, alpha=8,
                                  lr=1e-2, eval_samples=100, device="cpu")
            train(cfg, out, progress=False)
            cache[model, method] = out
        return cache[model, method]

    return get


def _peft_logits(ckpt: Path, adapter: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(genbound logits, PEFT logits, genbound logits with B = 0) on the test split; PEFT loads the
    adapter onto a fresh base. The third shows how far the adapter moves the logits."""
    loaded = checkpoint.load(ckpt)
    inputs = loaded.built.backbone.encode(loaded.task.test)
    man = loaded.manifest
    ref = {k: v for k, v in man["base"].items() if k not in ("sha256", "head")}
    base = build(ref, loaded.task, "head", 4, 8, 1, man["seed"]).model
    model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        ours, theirs = logits_of(loaded.model, inputs), logits_of(model, inputs)
        for layer in loaded.built.layers.values():
            layer.lora_B.zero_()
        return ours, theirs, logits_of(loaded.model, inputs)


@pytest.mark.parametrize(("model", "method"), CASES)
def test_export_matches_peft_and_import_round_trips(runs, tmp_path, model, method):
    ckpt = runs(model, method)
    loaded = checkpoint.load(ckpt)
    for name, layer in loaded.built.layers.items():  # the adapter is not a no-op, so equality can fail
        assert layer.lora_B.abs().max() > 0, name
    adapter = export_peft(ckpt, tmp_path / "peft")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert config["task_type"] == (None if model == "mlp" else "SEQ_CLS")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    head = loaded.built.backbone.head[0]
    assert f"base_model.model.{head}.weight" in tensors
    for name in loaded.built.targets:
        assert tensors[f"base_model.model.{name}.lora_B.weight"].abs().max() > 0
    ours, theirs, without = _peft_logits(ckpt, adapter)
    assert (ours - without).abs().max() > 1e-4  # ten times the tolerance below
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    data = loaded.manifest["config"]["data"]
    man = import_peft(adapter, tmp_path / "back", method=method, data=data, seed=0)
    assert man["metrics"] == loaded.manifest["metrics"]
    assert man["method"]["name"] == method and man["method"]["targets"] == loaded.built.targets
    assert man["config"]["steps"] == 0 and man["base"]["sha256"] == loaded.manifest["base"]["sha256"]
    back = checkpoint.load(tmp_path / "back")
    inputs = back.built.backbone.encode(back.task.test)
    with torch.no_grad():
        assert torch.equal(logits_of(back.model, inputs), ours)
    if method == "asym":
        assert all(not la.lora_A.requires_grad for la in back.built.layers.values())


@pytest.mark.parametrize(("method", "chain", "words"), [("cola", 2, "a chain of links has no PEFT form"),
                                                        ("c3la", 2, "a chain of links has no PEFT form"),
                                                        ("paca", 1, "method paca has no PEFT form")])
def test_export_refuses_other_methods(tmp_path, method, chain, words):
    out = tmp_path / "run"
    train(TrainConfig(model="mlp", data="digits", hidden=[32, 32], steps=4, method=method, rank=4, alpha=8,
                      chain=chain, eval_samples=100, device="cpu"), out, progress=False)
    with pytest.raises(CheckpointError, match=words):
        export_peft(out, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_export_refuses_non_empty_folder(runs, tmp_path):
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not an empty folder"):
        export_peft(runs("mlp", "lora"), tmp_path / "peft")


def _edited_copy(adapter: Path, dest: Path, **changes) -> Path:
    shutil.copytree(adapter, dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return dest


@pytest.mark.parametrize(("change", "feature"), [({"use_dora": True}, "use_dora=True"),
                                                 ({"use_rslora": True}, "use_rslora"),
                                                 ({"bias": "all"}, "bias='all'"),
                                                 ({"rank_pattern": {"hidden.0": 2}}, "rank_pattern")])
def test_import_refuses_unsupported_features(runs, tmp_path, change, feature):
    adapter = export_peft(runs("mlp", "lora"), tmp_path / "peft")
    edited = _edited_copy(adapter, tmp_path / "edited", **change)
    with pytest.raises(CheckpointError, match=feature):
        import_peft(edited, tmp_path / "back", data="digits")
    assert not (tmp_path / "back").exists()


def test_import_accepts_lora_dropout(runs, tmp_path):
    adapter = export_peft(runs("mlp", "rcla"), tmp_path / "peft")
    edited = _edited_copy(adapter, tmp_path / "edited", lora_dropout=0.1)
    man = import_peft(edited, tmp_path / "back", method="rcla", data="digits")
    assert man["metrics"] == checkpoint.read_manifest(runs("mlp", "rcla"))["metrics"]


def test_import_cla_needs_a_selector(runs, tmp_path):
    adapter = export_peft(runs("mlp", "lora"), tmp_path / "peft")
    with pytest.raises(CheckpointError, match="not a column selector"):
        import_peft(adapter, tmp_path / "back", method="cla", data="digits")
    rcla = export_peft(runs("mlp", "rcla"), tmp_path / "peft-rcla")
    with pytest.raises(CheckpointError, match="not the first r"):
        import_peft(rcla, tmp_path / "back", method="cla", data="digits")


def test_import_names_missing_files(runs, tmp_path):
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        import_peft(tmp_path / "nothing", tmp_path / "back", data="digits")
    adapter = export_peft(runs("mlp", "lora"), tmp_path / "peft")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        import_peft(adapter, tmp_path / "back", data="digits")


def test_every_analysis_takes_a_peft_folder(runs, tmp_path):
    """--ckpt of spectrum (and hessian, landscape: the same option code) accepts a PEFT adapter folder with
    --data, as compute's does: imported once into DIR/genbound, the spectrum equals the original's."""
    from genbound.cli import main

    ckpt = runs("mlp", "lora")
    adapter = export_peft(ckpt, tmp_path / "peft")
    assert main(["spectrum", "--ckpt", str(adapter), "--data", "digits", "--json", str(tmp_path / "p.json")]) == 0
    assert main(["spectrum", "--ckpt", str(ckpt), "--json", str(tmp_path / "g.json")]) == 0
    assert len(list((adapter / "genbound").glob("*/genbound.json"))) == 1
    theirs, ours = (json.loads((tmp_path / f).read_text())["matrices"] for f in ("p.json", "g.json"))
    assert [m["name"] for m in theirs] == [m["name"] for m in ours]
    for a, b in zip(theirs, ours):
        assert a["singular_values"] == pytest.approx(b["singular_values"], rel=1e-6)
    assert main(["spectrum", "--ckpt", str(adapter), "--json", str(tmp_path / "x.json")]) == 0  # imported: kept

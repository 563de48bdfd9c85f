"""Model families beyond the BERT encoder: decoder classifiers (tiny Llama; SmolLM2, slow) on every command."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from genbound import checkpoint
from genbound.build import build
from genbound.cli import main
from genbound.data import Split, load_task
from genbound.errors import GenboundError
from genbound.models import _pad_token, resolve_ref
from genbound.runtime import length_order, logits, predict


def text_csv(folder: Path, n: int = 120) -> Path:
    rows = ["text,label"] + [f"{['apple pie', 'river bank', 'gear box'][i % 3]} {i},{i % 3}" for i in range(n)]
    path = folder / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_task(str(text_csv(tmp_path_factory.mktemp("fam"))))


def test_a_decoder_classifies_from_its_last_token_whatever_the_padding(task):
    """Oracle: each text alone (no padding) gives the logits it gets inside a padded batch."""
    built = build(resolve_ref("tiny-llama"), task, "lora", 2, 4.0, 1, 0)
    model = built.model.eval()
    texts = Split(task.test.x[:6], task.test.y[:6])
    texts.x[0] = texts.x[0] + " with many more words than the others"
    batch = built.backbone.encode(texts)
    assert (batch["attention_mask"] == 0).any()  # padded
    with torch.no_grad():
        together = logits(model, batch)
        for i in range(6):
            alone = logits(model, built.backbone.encode(Split([texts.x[i]], texts.y[i:i + 1])))
            torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-bert"])
def test_predict_in_length_order_gives_each_text_its_own_logits_in_the_split_order(task, model_name):
    """Oracle: each text alone. predict runs texts in batches of similar length (length_order) and must hand the
    logits back in the split's order, for the first n texts only."""
    built = build(resolve_ref(model_name), task, "lora", 2, 4.0, 1, 0)
    model = built.model.eval()
    words = [t + " and more" * (i % 5) for i, t in enumerate(task.test.x[:11])]
    split = Split(words, task.test.y[:11])
    inputs = built.backbone.encode(split)
    order = length_order(inputs, 9)
    assert order.tolist() != list(range(9)) and sorted(order.tolist()) == list(range(9))
    got = predict(model, inputs, 9, batch_size=4)
    assert got.shape[0] == 9
    with torch.no_grad():
        for i in range(9):
            alone = logits(model, built.backbone.encode(Split([words[i]], split.y[i:i + 1])))
            torch.testing.assert_close(got[i], alone[0].float(), rtol=1e-5, atol=1e-6)


def test_a_tokenizer_without_pad_pads_with_its_end_token_and_one_without_either_is_refused():
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=None))
    tok = SimpleNamespace(pad_token=None, eos_token="</s>", pad_token_id=7)
    _pad_token(tok, model, "x")
    assert tok.pad_token == "</s>" and model.config.pad_token_id == 7
    with pytest.raises(GenboundError, match="neither a pad nor an end-of-text token"):
        _pad_token(SimpleNamespace(pad_token=None, eos_token=None), model, "x")


@pytest.mark.parametrize("method", ["lora", "cla", "c3la", "dora"])
def test_fused_training_on_a_decoder_equals_the_reference_path(tmp_path, method):
    """The same run with and without the fused path: equal final metrics (float32 noise)."""
    data = str(text_csv(tmp_path))
    chain = 2 if method == "c3la" else 1
    common = ["--model", "tiny-llama", "--data", data, "--method", method, "--rank", "2", "--chain", str(chain),
              "--steps", "12", "--lr", "1e-2", "--quiet"]
    assert main(["train", *common, "--out", str(tmp_path / "f"), "--json", str(tmp_path / "f.json")]) == 0
    assert main(["train", *common, "--no-fused", "--out", str(tmp_path / "r"), "--json", str(tmp_path / "r.json")]) == 0
    fused, ref = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("f", "r"))
    for key in ("train_loss", "test_loss"):
        assert fused["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-4)
    expected = "reference" if method == "dora" else "fused (genbound/fused.py)"
    assert fused["method"]["training_path"] == expected


def test_every_analysis_runs_on_a_decoder(tmp_path):
    data = str(text_csv(tmp_path))
    ck = str(tmp_path / "ck")
    assert main(["train", "--model", "tiny-llama", "--data", data, "--method", "lora", "--rank", "2", "--steps", "20",
                 "--lr", "1e-2", "--quiet", "--out", ck]) == 0
    assert main(["compute", "--ckpt", ck, "--compress", "--compress-bits", "2", "--loss", "ce", "--smoothing", "0.1",
                 "--json", str(tmp_path / "c.json"), "--quiet"]) == 0
    assert "UNDER ASSUMPTIONS (llama)" in json.loads((tmp_path / "c.json").read_text())["theorem1_assumptions"]
    assert main(["spectrum", "--ckpt", ck, "--quiet"]) == 0
    for hvp in ("forward-over-reverse", "double-backward"):
        assert main(["hessian", "--ckpt", ck, "--top-k", "1", "--samples", "16", "--hvp", hvp, "--trace",
                     "--probes", "3", "--quiet"]) == 0
    for dirs in ("random", "pca"):
        assert main(["landscape", "--ckpt", ck, "--grid", "3", "--samples", "16", "--dirs", dirs,
                     "--out", str(tmp_path / dirs), "--quiet"]) == 0
    assert main(["compare", ck, "--out", str(tmp_path / "report"), "--analyses", "none"]) == 0


@pytest.mark.slow
def test_smollm2_forward_and_backward_on_the_cpu(task, capfd):
    """The real SmolLM2-135M (4-bit GGUF, dequantized): a forward and backward pass through LoRA adapters; its
    loading draws no dequantization bar (transformers' own bar ignores disable_progress_bar)."""
    pytest.importorskip("gguf")
    built = build(resolve_ref("smollm2"), task, "lora", 4, 8.0, 1, 0)
    assert "de-quantizing" not in capfd.readouterr().err
    assert "4-bit" in built.backbone.ref["weights"] and built.backbone.head == ["score"]
    assert len(built.targets) == 2 * 30  # q_proj and v_proj of its 30 layers
    batch = built.backbone.encode(Split(task.train.x[:4], task.train.y[:4]))
    out = logits(built.model.train(), batch)
    torch.nn.functional.cross_entropy(out, task.train.y[:4]).backward()
    layer = next(iter(built.layers.values()))
    assert out.shape == (4, 3) and layer.lora_B.grad is not None and layer.lora_B.grad.abs().max() > 0
    assert not layer.weight.requires_grad and checkpoint.FORMAT_VERSION == 2

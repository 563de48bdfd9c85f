"""Vision transformers and GPT-2-style decoders: tiny-vit and tiny-gpt2 on every command, adapters on transformers'
Conv1D (weight stored in x out) against a dense oracle and PEFT, a ViT base from `genbound pretrain`, an HF image
classifier with its image processor, and the one-line refusals of mismatched models and data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from genbound import checkpoint
from genbound.build import build
from genbound.cli import main
from genbound.data import Split, load_task
from genbound.files import sha256_file
from genbound.layers import adapter_layers, use_fused
from genbound.models import resolve_ref
from genbound.peft_io import export_peft, import_peft
from genbound.runtime import logits
from tests.test_families import text_csv

VISION = ["--data", "fashion-mnist", "--n-train", "120", "--n-test", "60"]
FAST = ["--steps", "6", "--lr", "1e-2", "--batch-size", "16", "--eval-samples", "30", "--quiet"]


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    return load_task(str(text_csv(tmp_path_factory.mktemp("vg"), n=60)))


@pytest.fixture(scope="module")
def image_task():
    return load_task("fashion-mnist", seed=0, n_train=120, n_test=60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """Checkpoints trained through the CLI on first use, keyed by (model, method)."""
    root = tmp_path_factory.mktemp("runs")
    data = ["--data", str(text_csv(root, n=60))]
    cache: dict = {}

    def get(model: str, method: str) -> Path:
        if (model, method) not in cache:
            out = root / f"{model}-{method}"
            chain = ["--chain", "2"] if method == "c3la" else []
            assert main(["train", "--model", model, *(VISION if model == "tiny-vit" else data), "--method", method,
                         "--rank", "2", "--alpha", "4", *chain, *FAST, "--out", str(out)]) == 0
            cache[model, method] = out
        return cache[model, method]

    return get


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Nonzero adapter tensors, so that every equality below can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for leaf in layer.layout.trainable:
                t = getattr(layer, leaf)
                t.add_(0.3 * torch.randn(t.shape, generator=gen))


# ---- Conv1D: the merged weight against a dense oracle ----------------------------------------------------------
def _dense_update(layer, w0: torch.Tensor) -> torch.Tensor:
    """dW of one adapted matrix from its own tensors in float64, by the method's formula (docs/theory.md)."""
    s = layer.scale
    if layer.method.name == "lora":
        return s * layer.lora_B.double() @ layer.lora_A.double()
    if layer.method.name == "cla":
        dw = torch.zeros_like(w0)
        dw[:, layer.idx] = s * layer.lora_B.double()
        return dw
    assert layer.method.name == "dora"
    v = w0 + s * layer.lora_B.double() @ layer.lora_A.double()
    return layer.magnitude.double()[:, None] * v / v.norm(dim=1, keepdim=True) - w0


@pytest.mark.parametrize("method", ["lora", "cla", "dora"])
def test_a_conv1d_layer_adapts_the_transposed_weight_and_merges_to_a_plain_gpt2(text_task, method):
    """Oracle: a plain tiny GPT-2 (same seed, same head) whose every c_attn weight (in x out) is replaced by
    (W0 + dW)^T, dW dense in float64 from the adapter's tensors, gives the adapted model's logits."""
    adapted = build(resolve_ref("tiny-gpt2"), text_task, method, 2, 4.0, 1, 0)
    plain = build(resolve_ref("tiny-gpt2"), text_task, "head", 2, 4.0, 1, 0)
    _randomize(adapted.model)
    if method == "dora":
        with torch.no_grad():
            for layer in adapted.layers.values():
                layer.magnitude.mul_(1.5)
    assert adapted.targets == [f"transformer.h.{i}.attn.c_attn" for i in range(2)]
    with torch.no_grad():
        for name, layer in adapted.layers.items():
            conv = plain.model.get_submodule(name)
            assert type(conv).__name__ == "Conv1D" and layer.fan_in_fan_out
            w0 = conv.weight.double().t()  # n x m = 96 x 32: the fused q, k, v outputs by the input
            assert tuple(w0.shape) == (96, 32) == (layer.out_features, layer.in_features)
            assert torch.equal(layer.weight, conv.weight.t())
            merged = w0 + _dense_update(layer, w0)
            torch.testing.assert_close(layer.merged().weight.double(), merged, atol=1e-6, rtol=0)
            torch.testing.assert_close(layer.delta_weight().double(), merged - w0, atol=1e-6, rtol=0)
            conv.weight.copy_(merged.t().float())
        batch = adapted.backbone.encode(text_task.test)
        ours = logits(adapted.model.eval(), batch)
        theirs = logits(plain.model.eval(), batch)
        base = build(resolve_ref("tiny-gpt2"), text_task, "head", 2, 4.0, 1, 0).model.eval()
        assert (ours - logits(base, batch)).abs().max() > 1e-3  # the adapter moves the logits
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_gpt2_classifies_from_its_last_token_whatever_the_padding(text_task):
    """Oracle: each text alone (no padding) gives the logits it gets inside a padded batch; MiniLM's tokenizer
    gives GPT-2 no token_type_ids (it has no segment embeddings, and would read them as tokens)."""
    built = build(resolve_ref("tiny-gpt2"), text_task, "lora", 2, 4.0, 1, 0)
    _randomize(built.model)
    texts = Split(list(text_task.test.x[:5]), text_task.test.y[:5])
    texts.x[0] = texts.x[0] + " with many more words than the others"
    batch = built.backbone.encode(texts)
    assert (batch["attention_mask"] == 0).any() and "token_type_ids" not in batch
    with torch.no_grad():
        together = logits(built.model.eval(), batch)
        for i in range(5):
            alone = logits(built.model, built.backbone.encode(Split([texts.x[i]], texts.y[i:i + 1])))
            torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "cla", "c3la"])
def test_the_fused_path_on_conv1d_equals_the_reference_path(text_task, method):
    """Outputs and every trainable gradient of one batch, fused against the reference path."""
    built = build(resolve_ref("tiny-gpt2"), text_task, method, 2, 4.0, 2 if method == "c3la" else 1, 0)
    _randomize(built.model)
    batch = built.backbone.encode(text_task.train)
    model = built.model.train()
    model.transformer.drop.p = 0.0  # no dropout anywhere, so both passes see the same function
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    out = {}
    for fused in (True, False):
        model.zero_grad()
        with use_fused(model, fused):
            y = logits(model, batch)
            torch.nn.functional.cross_entropy(y, text_task.train.y).backward()
        out[fused] = (y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=0)
    assert out[True][1].keys() == out[False][1].keys()
    for name in out[True][1]:
        torch.testing.assert_close(out[True][1][name], out[False][1][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("model", "method"), [("tiny-gpt2", "lora"), ("tiny-gpt2", "cla"), ("tiny-vit", "lora"),
                                               ("tiny-gpt2", "head")])
def test_training_moves_only_what_the_method_trains(text_task, image_task, model, method):
    """A few AdamW steps on the fused path: every frozen tensor keeps its bits, the trained ones move."""
    task = image_task if model == "tiny-vit" else text_task
    built = build(resolve_ref(model), task, method, 2, 4.0, 1, 0)
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    trained = {n for n, p in built.model.named_parameters() if p.requires_grad}
    expected = {n for n in before if n.startswith(built.backbone.head[0] + ".")}
    if method != "head":
        expected |= {f"{n}.lora_B" for n in built.targets} | ({f"{n}.lora_A" for n in built.targets}
                                                              if method == "lora" else set())
    assert trained == expected
    opt = torch.optim.AdamW([p for p in built.model.parameters() if p.requires_grad], lr=1e-2)
    batch = built.backbone.encode(task.train)
    with use_fused(built.model.train()):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(logits(built.model, batch), task.train.y).backward()
            opt.step()
    for name, p in built.model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trained), name


# ---- every command on tiny-gpt2 and tiny-vit ------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-vit"])
def test_every_command_runs_on_the_model(runs, tmp_path, model):
    ckpts = {m: runs(model, m) for m in ("lora", "cla", "c3la", "full", "head")}
    for method, ck in ckpts.items():
        man = checkpoint.read_manifest(ck)
        assert man["method"]["name"] == method and man["timing"]["steps"] == 6
        if method not in ("full", "head"):
            assert all(m.get("fan_in_fan_out", False) == (model == "tiny-gpt2") for m in man["matrices"])
    lora = str(ckpts["lora"])
    out = tmp_path / "c.json"
    assert main(["compute", "--ckpt", lora, "--compress", "--compress-bits", "2", "--loss", "ce", "--smoothing",
                 "0.1", "--json", str(out), "--quiet"]) == 0
    family = {"tiny-gpt2": "gpt2", "tiny-vit": "vit"}[model]
    result = json.loads(out.read_text())
    assert f"UNDER ASSUMPTIONS ({family})" in result["theorem1_assumptions"] and result["matches_manifest"]
    assert ("last-token pooling" in result["theorem1_assumptions"]) == (model == "tiny-gpt2")
    loaded = checkpoint.load(lora)
    with torch.no_grad():  # C: the largest token norm entering the first block, over the training inputs
        inputs = loaded.built.backbone.encode(loaded.task.train)
        if model == "tiny-gpt2":
            ids = inputs["input_ids"]
            tokens = loaded.model.transformer.wte(ids) + loaded.model.transformer.wpe(torch.arange(ids.shape[1]))
        else:
            tokens = loaded.model.vit.embeddings(inputs["pixel_values"])
    assert result["C"] == pytest.approx(float(tokens.norm(dim=-1).max()), rel=1e-5)
    n, m = (96, 32) if model == "tiny-gpt2" else (32, 32)
    assert [(x["n"], x["m"]) for x in result["matrices"][:2]] == [(n, m), (n, m)]
    for method in ("lora", "cla", "c3la", "full"):
        assert main(["spectrum", "--ckpt", str(ckpts[method]), "--json", str(tmp_path / f"s-{method}.json"),
                     "--quiet"]) == 0
    full = json.loads((tmp_path / "s-full.json").read_text())
    assert [(x["n"], x["m"]) for x in full["matrices"]] == [(n, m)] * (2 if model == "tiny-gpt2" else 4)
    assert main(["hessian", "--ckpt", lora, "--top-k", "1", "--samples", "16", "--trace", "--probes", "3",
                 "--params", "dw", "--quiet"]) == 0
    assert main(["landscape", "--ckpt", lora, "--grid", "3", "--samples", "16", "--space", "delta",
                 "--out", str(tmp_path / "land"), "--quiet"]) == 0
    assert main(["compare", *map(str, ckpts.values()), "--out", str(tmp_path / "report"), "--analyses", "none"]) == 0
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == sorted(ckpts)


def test_the_full_update_of_a_conv1d_layer_has_the_spectrum_of_w_minus_w0(runs, tmp_path):
    """Oracle: the singular values of the dense (W - W0) from the two models' own Conv1D weights, float64; the
    spectrum names the matrix n x m = out x in."""
    ck = runs("tiny-gpt2", "full")
    assert main(["spectrum", "--ckpt", str(ck), "--json", str(tmp_path / "s.json"), "--quiet"]) == 0
    got = json.loads((tmp_path / "s.json").read_text())["matrices"]
    loaded = checkpoint.load(ck)
    start = loaded.initial().model
    for entry in got:
        w = loaded.model.get_submodule(entry["name"]).weight.detach().double()  # Conv1D: in x out = 32 x 96
        w0 = start.get_submodule(entry["name"]).weight.detach().double()
        assert tuple(w.shape) == (32, 96) and (entry["n"], entry["m"]) == (96, 32)  # spectra see W = weight^T
        want = torch.linalg.svdvals(w - w0)
        assert want[0] > 1e-4
        np.testing.assert_allclose(entry["singular_values"][:5], want[:5].numpy(), rtol=1e-4, atol=1e-7)


# ---- PEFT --------------------------------------------------------------------------------------------------
def _peft_logits(ckpt: Path, adapter: Path) -> tuple[torch.Tensor, torch.Tensor]:
    peft = pytest.importorskip("peft")
    loaded = checkpoint.load(ckpt)
    for name, layer in loaded.built.layers.items():  # the adapter is not a no-op, so equality can fail
        assert layer.link_B().abs().max() > 1e-3, name
    inputs = loaded.built.backbone.encode(loaded.task.test)
    ref = {k: v for k, v in loaded.manifest["base"].items() if k not in ("sha256", "head")}
    base = build(ref, loaded.task, "head", 2, 4, 1, loaded.manifest["seed"]).model
    model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        return logits(loaded.model, inputs), logits(model, inputs)


@pytest.mark.parametrize(("model", "method"), [("tiny-gpt2", "lora"), ("tiny-gpt2", "cla"), ("tiny-gpt2", "dora"),
                                               ("tiny-gpt2", "vera"), ("tiny-vit", "lora")])
def test_export_peft_gives_genbound_logits_and_imports_back(runs, tmp_path, model, method):
    ckpt = runs(model, method)
    adapter = export_peft(ckpt, tmp_path / "peft")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] == (model == "tiny-gpt2")
    assert config["task_type"] == ("SEQ_CLS" if model == "tiny-gpt2" else None)
    with _no_fan_in_warning():
        ours, theirs = _peft_logits(ckpt, adapter)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    data = checkpoint.read_manifest(ckpt)["config"]["data"]
    if model == "tiny-vit":
        return  # an import evaluates on the task's default sizes (70,000 images here); the path is the one above
    man = import_peft(adapter, tmp_path / "back", method=method, data=data, seed=0)
    assert man["metrics"] == checkpoint.read_manifest(ckpt)["metrics"]
    back, loaded = checkpoint.load(tmp_path / "back"), checkpoint.load(ckpt)
    with torch.no_grad():
        inputs = loaded.built.backbone.encode(loaded.task.test)
        assert torch.equal(logits(back.model, inputs), logits(loaded.model, inputs))


class _no_fan_in_warning:
    """PEFT warns and flips fan_in_fan_out when a config names it wrongly for the layer type: it must not."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.seen = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self.seen if "fan_in_fan_out" in str(w.message)]
        return False


# ---- a ViT base from `genbound pretrain` -----------------------------------------------------------------------
def test_pretrain_a_vit_then_fine_tune_from_its_folder_whose_weights_are_checked(tmp_path, one_thread, capsys):
    base = tmp_path / "base"
    assert main(["pretrain", "--model", "vit", "--data", "fashion-mnist@0-4", "--n-train", "64", "--n-test", "32",
                 "--steps", "2", "--batch-size", "16", "--quiet", "--out", str(base)]) == 0
    meta = json.loads((base / "genbound-base.json").read_text())
    assert meta["kind"] == "vit" and meta["vit"]["hidden_size"] == 192 and len(meta["sha256"]) == 64
    saved = load_file(str(base / "model.safetensors"))
    assert not any(k.startswith("classifier.") for k in saved)  # the head is the fine-tuning task's
    run = checkpoint.load(base / "pretrain-run")
    for k, t in saved.items():  # the base holds the pretrained weights themselves
        assert torch.equal(t, run.model.state_dict()[k]), k

    ck = tmp_path / "ft"
    assert main(["train", "--model", str(base), "--data", "fashion-mnist@5-9", "--n-train", "64", "--n-test", "32",
                 "--method", "lora", "--rank", "2", "--steps", "2", "--batch-size", "16", "--quiet",
                 "--out", str(ck)]) == 0
    loaded = checkpoint.load(ck)  # the base's sha256 verified
    assert loaded.manifest["base"]["name"] == str(base.resolve()) and loaded.built.backbone.head == ["classifier"]
    for k, t in saved.items():
        name = k.rsplit(".", 1)[0]
        if name not in loaded.built.layers:
            assert torch.equal(loaded.model.state_dict()[k], t), k

    # a changed weight: the base folder refuses it (its sha256), and so does the checkpoint when the record is
    # changed too (the base tensors' sha256 in the manifest)
    saved["vit.layers.0.attention.q_proj.weight"][0, 0] += 1.0
    save_file(saved, str(base / "model.safetensors"), {"format": "pt"})
    capsys.readouterr()
    assert main(["spectrum", "--ckpt", str(ck), "--no-intruders", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights were changed" in err
    meta["sha256"] = sha256_file(base / "model.safetensors")
    (base / "genbound-base.json").write_text(json.dumps(meta))
    assert main(["spectrum", "--ckpt", str(ck), "--no-intruders", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different base model" in err


# ---- any HF image classifier, with its image processor ------------------------------------------------------
def _saved_vit(folder: Path, num_labels: int, processor: bool) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(3)
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                        num_labels=num_labels)).save_pretrained(folder)
    if processor:
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                          image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("num_labels", [3, 10])
def test_an_hf_image_classifier_gets_its_processors_pixels_and_a_fresh_head(tmp_path, image_task, num_labels):
    """Oracle for the pixels: the processor called on PIL RGB images made from the grey ones. The head is
    replaced whether its size differs (3 labels) or not (10, the task's); every other weight is the folder's."""
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor

    folder = _saved_vit(tmp_path / "vit", num_labels, processor=True)
    built = build(resolve_ref(str(folder)), image_task, "lora", 2, 4.0, 1, 0)
    assert built.backbone.kind == "image" and built.backbone.head == ["classifier"]
    assert built.targets == [f"vit.layers.{i}.attention.{p}_proj" for i in range(2) for p in "qv"]
    pixels = built.backbone.encode(image_task.test)["pixel_values"]
    grey = (image_task.test.x * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()
    images = [Image.fromarray(g, mode="L").convert("RGB") for g in grey]
    want = ViTImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (60, 3, 32, 32)
    torch.testing.assert_close(pixels, want)
    saved = ViTForImageClassification.from_pretrained(folder).state_dict()  # transformers' own reading
    state = built.model.state_dict()
    assert state["classifier.weight"].shape == (10, 32)
    if num_labels == 10:
        assert not torch.equal(state["classifier.weight"], saved["classifier.weight"])
    for k, t in saved.items():
        if not k.startswith("classifier.") and k.rsplit(".", 1)[0] not in built.layers:
            assert torch.equal(state[k], t), k
    with torch.no_grad():
        assert logits(built.model.eval(), {"pixel_values": pixels}).shape == (60, 10)


def test_an_image_classifier_without_a_processor_takes_grey_pixels_on_every_channel(tmp_path, image_task):
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(image_size=28, patch_size=7, num_channels=3, hidden_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                        num_labels=4)).save_pretrained(tmp_path / "v")
    built = build(resolve_ref(str(tmp_path / "v")), image_task, "head", 2, 4.0, 1, 0)
    pixels = built.backbone.encode(image_task.test)["pixel_values"]
    for c in range(3):
        assert torch.equal(pixels[:, c].reshape(60, -1), image_task.test.x)


def test_an_hf_image_folder_trains_through_the_cli(tmp_path, one_thread):
    folder = _saved_vit(tmp_path / "vit", 3, processor=True)
    ck = tmp_path / "ck"
    assert main(["train", "--model", str(folder), *VISION, "--method", "cla", "--rank", "2", *FAST,
                 "--out", str(ck)]) == 0
    assert main(["compute", "--ckpt", str(ck), "--quiet"]) == 0


# ---- refusals -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["--model", "tiny-gpt2", "--data", "fashion-mnist"], "model tiny-gpt2 is a text model, but task fashion-mnist"),
    (["--model", "tiny-vit", "--data", "CSV"], "is an image classifier, but task"),
    (["--model", "vit", "--data", "digits"], "model vit takes 28 x 28 images (784 features), but task digits has 64"),
])
def test_a_model_given_the_other_kind_of_data_is_refused_in_one_line(tmp_path, capsys, args, words):
    args = [str(text_csv(tmp_path)) if a == "CSV" else a for a in args]
    assert main(["train", *args, "--steps", "1", "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "o" / checkpoint.MANIFEST).exists()


def test_pretrain_refuses_a_model_it_cannot_build(tmp_path, capsys):
    assert main(["pretrain", "--model", "tiny-gpt2", "--data", "digits", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "builds an MLP or ViT base" in err


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_all_linear_targets_every_linear_outside_the_head(model, text_task):
    """--targets all-linear adapts every nn.Linear / Conv1D of a decoder except the classification head."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from genbound.build import build
    from genbound.models import resolve_ref

    built = build(resolve_ref(model), text_task, "lora", 2, 4.0, 1, 0, ["all-linear"])
    plain = build(resolve_ref(model), text_task, "head", 2, 4.0, 1, 0)
    expected = sorted(n for n, m in plain.model.named_modules()
                      if isinstance(m, (nn.Linear, Conv1D)) and n not in plain.backbone.head)
    assert sorted(built.targets) == expected and len(expected) > 2

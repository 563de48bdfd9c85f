"""DoRA and VeRA against PEFT on the same weights (outputs and gradients), and every command on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genbound import checkpoint
from genbound.build import build
from genbound.cli import main
from genbound.data import load_task
from genbound.models import resolve_ref
from genbound.peft_io import export_peft, import_peft
from genbound.runtime import logits
from genbound.train import TrainConfig, train

peft = pytest.importorskip("peft")

METHODS = ["dora", "vera"]
TINY = dict(model="mlp", data="digits", hidden=[32, 24], rank=4, alpha=8, steps=25, lr=2e-2, eval_samples=100,
            device="cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dv")
    out = {}
    for method in METHODS:
        train(TrainConfig(**TINY, method=method), root / method, progress=False)
        out[method] = root / method
    return out


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


def peft_config(method: str, seed: int = 0):
    targets = ["hidden.0", "hidden.1"]
    if method == "dora":
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True, modules_to_save=["head"])
    return peft.VeraConfig(r=4, target_modules=targets, projection_prng_key=seed, save_projection=True,
                           modules_to_save=["head"])


def peft_model_on(digits, method: str, seed: int = 0):
    """PEFT's own DoRA / VeRA on genbound's base MLP, with random values in every trainable tensor."""
    base = build(resolve_ref("mlp", hidden=[32, 24]), digits, "head", 4, 8.0, 1, seed).model
    model = peft.get_peft_model(base, peft_config(method, seed))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "head" not in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_import_of_peft_weights_gives_peft_outputs_and_gradients(digits, tmp_path, method):
    """PEFT makes the adapter; genbound imports it: the same logits, and the same gradients for every trained
    tensor (DoRA: the row norm detached in both; VeRA: only d and b train)."""
    theirs = peft_model_on(digits, method)
    theirs.save_pretrained(tmp_path / "peft")
    import_peft(tmp_path / "peft", tmp_path / "ours", method=method, data="digits", model="mlp")
    ours = checkpoint.load(tmp_path / "ours")
    x, y = digits.test.x[:64], digits.test.y[:64]
    with torch.no_grad():
        torch.testing.assert_close(logits(ours.model, {"x": x}), theirs(x), rtol=1e-5, atol=1e-5)
    ours.model.train(), theirs.train()
    F.cross_entropy(logits(ours.model, {"x": x}), y).backward()
    F.cross_entropy(theirs(x), y).backward()
    names = {"dora": {"lora_A": "lora_A.default.weight", "lora_B": "lora_B.default.weight",
                      "magnitude": "lora_magnitude_vector.default.weight"},
             "vera": {"vera_d": "vera_lambda_d.default", "vera_b": "vera_lambda_b.default"}}[method]
    peft_params = dict(theirs.named_parameters())
    for layer_name, layer in ours.built.layers.items():
        for leaf, key in names.items():
            grad = peft_params[f"base_model.model.{layer_name}.{key}"].grad
            torch.testing.assert_close(getattr(layer, leaf).grad, grad, rtol=1e-4, atol=1e-6,
                                       msg=f"{layer_name}.{leaf}")


def test_vera_projections_are_drawn_as_peft_draws_them(digits):
    """With PEFT's projection_prng_key = the run seed, the shared vera_A / vera_B are the same bits."""
    seed = 5
    theirs = peft.get_peft_model(build(resolve_ref("mlp", hidden=[32, 24]), digits, "head", 4, 8.0, 1, seed).model,
                                 peft_config("vera", seed))
    ours = build(resolve_ref("mlp", hidden=[32, 24]), digits, "vera", 4, 8.0, 1, seed)
    shared_a, shared_b = theirs.base_model.vera_A["default"], theirs.base_model.vera_B["default"]
    for name, layer in ours.layers.items():
        assert torch.equal(layer.vera_A, shared_a[:, :layer.in_features]), name
        assert torch.equal(layer.vera_B, shared_b[:layer.out_features, :]), name
    assert torch.equal(ours.layers["hidden.1"].vera_A, shared_a[:, :32]) and shared_a.shape == (4, 64)


@pytest.mark.parametrize("method", METHODS)
def test_export_loads_in_peft_with_the_same_logits_and_round_trips(runs, tmp_path, method):
    ckpt = runs[method]
    loaded = checkpoint.load(ckpt)
    adapter = export_peft(ckpt, tmp_path / "peft")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == ("LORA" if method == "dora" else "VERA")
    assert config.get("use_dora", False) == (method == "dora")
    man = loaded.manifest
    ref = {k: v for k, v in man["base"].items() if k not in ("sha256", "head")}
    base = build(ref, loaded.task, "head", 4, 8, 1, man["seed"]).model
    theirs = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    x = loaded.task.test.x
    init = loaded.initial().model
    with torch.no_grad():
        ours_out, theirs_out = logits(loaded.model, {"x": x}), theirs(x)
        assert (ours_out - logits(init, {"x": x})).abs().max() > 1e-3  # the adapter moved the logits
    torch.testing.assert_close(theirs_out, ours_out, rtol=1e-5, atol=1e-5)
    back = import_peft(adapter, tmp_path / "back", method=method, data="digits")
    assert back["metrics"] == man["metrics"] and back["params"] == man["params"]


def test_dora_update_and_spectrum_against_peft_merged_weights(digits, tmp_path):
    """DoRA's dW = W - W0 is dense: its singular values (a dense SVD) equal those of PEFT's merged weight minus
    W0, and the manifest says training took the reference path."""
    theirs = peft_model_on(digits, "dora")
    theirs.save_pretrained(tmp_path / "peft")
    import_peft(tmp_path / "peft", tmp_path / "ours", method="dora", data="digits", model="mlp")
    ours = checkpoint.load(tmp_path / "ours")
    w0 = {n: theirs.base_model.model.get_submodule(n).base_layer.weight.detach().clone() for n in ours.built.layers}
    merged = theirs.merge_and_unload()
    for name, layer in ours.built.layers.items():
        oracle = torch.linalg.svdvals((merged.get_submodule(name).weight - w0[name]).double())
        got = layer.update().singular_values()
        assert layer.update().form == "dense" and len(got) == min(layer.weight.shape)
        torch.testing.assert_close(got, oracle, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_every_command_runs_on_them(runs, tmp_path, method, capsys):
    ckpt = str(runs[method])
    man = checkpoint.read_manifest(ckpt)
    assert man["method"]["training_path"] == "reference"
    assert main(["compute", "--ckpt", ckpt, "--compress", "--compress-bits", "2", "--json",
                 str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    n_outputs = 32 + 24
    assert c["params_paper"] == (4 * (64 + 32 + 32 + 24) + n_outputs if method == "dora" else 2 * 4 + n_outputs)
    assert c["compress"]["numbers"] == c["params_full"]  # every trained number is coded, nothing else
    assert main(["spectrum", "--ckpt", ckpt, "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert "dense SVD" in s["matrices"][0]["how"] if method == "dora" else "factors" in s["matrices"][0]["how"]
    assert main(["hessian", "--ckpt", ckpt, "--top-k", "1", "--samples", "32", "--params", "dw", "--quiet"]) == 0
    assert main(["hessian", "--ckpt", ckpt, "--top-k", "1", "--samples", "32", "--quiet"]) == 0
    for space, dirs in (("trainable", "random"), ("delta", "pca")):
        assert main(["landscape", "--ckpt", ckpt, "--grid", "3", "--samples", "32", "--space", space, "--dirs", dirs,
                     "--out", str(tmp_path / f"ls-{space}")]) == 0
    assert main(["compare", ckpt, "--out", str(tmp_path / "report")]) == 0
    assert "| " + method in (tmp_path / "report" / "README.md").read_text()


def test_dora_decoder_knows_the_magnitude_start(runs):
    """Before training, the magnitude is ||W0||_row: the compression bound codes only its change."""
    from genbound.occam import trained_deltas

    loaded = checkpoint.load(runs["dora"])
    pairs = trained_deltas(loaded, loaded.initial())
    for name, layer in loaded.built.layers.items():
        final, start = pairs[f"{name}.magnitude"]
        torch.testing.assert_close(start, torch.linalg.norm(layer.weight.detach(), dim=1))
        assert not torch.equal(final, start)


def test_the_new_methods_touch_no_other_module():
    """DoRA and VeRA are one module each: the only files naming them are their own (and the figures' palette,
    which held a colour for every planned method before they came; an unknown method gets one too)."""
    root = Path(__file__).resolve().parents[1] / "genbound"
    named = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if p.name != "plots.py" and any(w in p.read_text() for w in ('"dora"', '"vera"', "Dora(", "Vera(")))
    assert named == ["methods/dora.py", "methods/vera.py"], named

"""`genbound compute` on real (tiny) checkpoints: every number against an independent computation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genbound import bounds, checkpoint
from genbound.cli import main
from genbound.compute import ComputeOptions, compute, matrix_norms
from genbound.errors import GenboundError
from genbound.occam import trained_deltas
from genbound.train import TrainConfig, train

TINY = dict(model="mlp", data="digits", hidden=[24, 16], rank=4, alpha=8, eval_samples=50, steps=40, lr=1e-2)
METHODS = {"lora": 1, "cla": 1, "c3la": 3, "cola": 3, "paca": 1, "full": 1, "head": 1, "asym": 1}
REQUIRED = ("method rank alpha chain_k n_train n_test bits sigma sigma_source params_paper params_full mi_term_paper "
            "mi_term_full matrices phi_w0 phi_dw log10_phi_w0 log10_phi_dw theorem1_assumptions train_loss test_loss "
            "train_err test_err gap_ce gap_01").split()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    for method, k in METHODS.items():
        train(TrainConfig(**TINY, method=method, chain=k), root / method, progress=False)
    return root


def first_snapshot(ckpt) -> dict:
    return load_file(str(sorted((ckpt / "trajectory").glob("*.safetensors"))[0]))


@pytest.mark.parametrize("method", METHODS)
def test_update_norms_equal_dense_oracles(ckpts, method):
    loaded = checkpoint.load(ckpts / method)
    init = checkpoint.build_from_manifest(loaded.manifest, loaded.task)
    mats = {m["name"]: m for m in matrix_norms(loaded, init)}
    assert list(mats) == ["hidden.0", "hidden.1", "head"]
    snap0 = first_snapshot(ckpts / method)
    for name, mat in mats.items():
        mod, start = loaded.model.get_submodule(name), init.model.get_submodule(name)
        if hasattr(mod, "delta_weight"):
            w_now, b_now = (mod.weight + mod.delta_weight()).detach().double(), mod.bias.double()
            w_then, b_then = mod.weight.double(), mod.bias.double()
        else:
            w_now, b_now = mod.weight.double(), mod.bias.double()
            w_then = snap0.get(f"{name}.weight", start.weight).double()  # the step-0 snapshot where it was trained
            b_then = snap0.get(f"{name}.bias", start.bias).double()
        last = name == "head"
        aug = torch.cat([w_then, b_then[:, None]], 1)
        if not last:
            aug = torch.cat([aug, torch.eye(1, aug.shape[1]).roll(aug.shape[1] - 1, 1).double()], 0)
        assert mat["norm_w0"] == pytest.approx(float(torch.linalg.svdvals(aug)[0]), rel=1e-9)
        dw = torch.cat([w_now - w_then, (b_now - b_then)[:, None]], 1)
        assert mat["norm_dw"] == pytest.approx(float(torch.linalg.svdvals(dw)[0]), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", ["lora", "c3la", "full"])
def test_theorem1_bracket_holds_on_the_trained_network(ckpts, method):
    """max over inputs with ||[x;1]|| <= C of ||f_W(x) - f_W0(x)|| <= Phi_dW / (2 sqrt 2), and the CE difference
    per example <= sqrt(2) times the logit difference (the loss's Lipschitz constant)."""
    loaded = checkpoint.load(ckpts / method)
    r = compute(loaded, ComputeOptions(base_gap=False))
    init = checkpoint.build_from_manifest(loaded.manifest, loaded.task).model.eval()
    data = torch.cat([loaded.task.train.x, loaded.task.test.x])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, data.shape[1], generator=g)
    radius = math.sqrt(r["C"] ** 2 - 1)
    noise = radius * noise / noise.norm(dim=1, keepdim=True) * torch.rand(4000, 1, generator=g)
    with torch.no_grad():
        x = torch.cat([data, noise])
        diff = (loaded.model(x).double() - init(x).double()).norm(dim=1)
        y = torch.randint(0, 10, (len(x),), generator=g)
        ce_diff = (F.cross_entropy(loaded.model(x).double(), y, reduction="none")
                   - F.cross_entropy(init(x).double(), y, reduction="none")).abs()
    assert 0 < float(diff.max()) <= r["phi_dw"] / (2 * math.sqrt(2))
    assert bool((ce_diff <= math.sqrt(2) * diff + 1e-9).all())


def test_initial_values_equal_the_step0_snapshot(ckpts):
    for method in ("lora", "paca", "cola", "full"):
        loaded = checkpoint.load(ckpts / method)
        init = loaded.initial()  # made from the loaded model, not read from the base again
        same_as_a_fresh_build(init, checkpoint.build_from_manifest(loaded.manifest, loaded.task))
        pairs = trained_deltas(loaded, init)
        snap0 = first_snapshot(ckpts / method)
        chain = loaded.manifest["method"]["chain_k"] > 1
        for name, (_, start) in pairs.items():
            if name.endswith("lora_A") and chain:  # the last link's A is a later draw: not in snapshot 0
                assert not torch.equal(start, snap0[name])
            elif name in snap0:
                torch.testing.assert_close(start, snap0[name].float(), rtol=0, atol=0, msg=f"{method} {name}")
            elif name.endswith("frozen_A") and start.numel():  # cola: link 0's A = first rows = snapshot 0's lora_A
                r = loaded.manifest["method"]["rank"]
                torch.testing.assert_close(start[:r], snap0[name.replace("frozen_A", "lora_A")], rtol=0, atol=0)
        assert any((f != s).any() for f, s in pairs.values())


def same_as_a_fresh_build(init, fresh) -> None:
    """Every tensor of ``init`` (Loaded.initial) equals, bit for bit, a model rebuilt from the manifest."""
    a, b = init.model.state_dict(), fresh.model.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name].cpu(), b[name].cpu()), name
    assert [n for n, p in init.model.named_parameters() if p.requires_grad] == \
        [n for n, p in fresh.model.named_parameters() if p.requires_grad]
    assert init.targets == fresh.targets and init.backbone.model is init.model


@pytest.mark.parametrize("model,method,chain", [("tiny-bert", "lora", 1), ("tiny-bert", "full", 1),
                                                ("tiny-llama", "cla", 1), ("tiny-llama", "c3la", 3)])
def test_initial_model_of_text_models_equals_a_fresh_build(tmp_path, model, method, chain):
    """Loaded.initial() on the tiny text models, full fine-tuning and a chain included: the same tensors as a
    model rebuilt from the manifest (the base read again), the step-0 snapshot's values, and the same logits."""
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"{w} {w} x{i},{w}\n" for i in range(20) for w in ["aa", "bb", "cc"]))
    ck = tmp_path / "ck"
    train(TrainConfig(model=model, data=str(csv), method=method, rank=2, chain=chain, steps=6, lr=1e-2,
                      eval_samples=10), ck, progress=False)
    loaded = checkpoint.load(ck)
    init, fresh = loaded.initial(), checkpoint.build_from_manifest(loaded.manifest, loaded.task)
    same_as_a_fresh_build(init, fresh)
    assert loaded.initial() is init  # made once
    snap0, trained = first_snapshot(ck), dict(trained_deltas(loaded, init))
    assert any((f != s).any() for f, s in trained.values())  # the loaded model kept its trained values
    for name, (_, start) in trained.items():
        if name in snap0 and not (chain > 1 and name.endswith(("lora_A", "idx"))):
            torch.testing.assert_close(start, snap0[name].to(start.dtype), rtol=0, atol=0, msg=name)
    batch = loaded.built.backbone.encode(loaded.task.test)
    with torch.no_grad():
        torch.testing.assert_close(init.model(**batch).logits, fresh.model.eval()(**batch).logits, rtol=0, atol=0)


def test_a_load_without_the_step0_copy_rebuilds_the_same_initial_model(ckpts):
    """hessian and landscape load without the copy (USES_INITIAL = False): initial() then builds afresh, equal."""
    from genbound import hessian, landscape

    assert hessian.USES_INITIAL is False and landscape.USES_INITIAL is False
    for method in ("full", "cola"):
        loaded = checkpoint.load(ckpts / method, keep_initial=False)
        assert loaded._step0 is None
        same_as_a_fresh_build(loaded.initial(), checkpoint.build_from_manifest(loaded.manifest, loaded.task))


def test_measured_numbers_and_the_paper_term(ckpts):
    loaded = checkpoint.load(ckpts / "cla")
    r = compute(loaded, ComputeOptions(loss="ce", smoothing=0.1, bits=16))
    man = loaded.manifest
    assert r["matches_manifest"] and r["test_loss"] == pytest.approx(man["metrics"]["test_loss"], rel=1e-6)
    assert r["train_err"] == pytest.approx(1 - man["metrics"]["train_acc"], abs=1e-12)
    assert r["gap_ce"] == pytest.approx(r["test_loss"] - r["train_loss"])
    assert r["sigma"] == pytest.approx(math.log(10 / 0.1) / 2)
    assert r["params_paper"] == 4 * (24 + 16)
    n = r["n_train"]
    assert r["mi_term_paper"] == pytest.approx(math.sqrt(2 * 16 * r["sigma"] ** 2 * math.log(2) * 160 / n))
    assert r["theorem1_bound"] == pytest.approx(min(r["phi_dw"], r["mi_term_full"] + r["phi_w0"]), rel=1e-9)
    assert abs(r["gap_ce_base"]) < 0.5


def test_ce_without_a_bound_and_bad_bits_are_refused(ckpts):
    loaded = checkpoint.load(ckpts / "cla")
    with pytest.raises(GenboundError, match="unbounded"):
        compute(loaded, ComputeOptions(loss="ce"))
    with pytest.raises(GenboundError, match="--bits"):
        compute(loaded, ComputeOptions(bits=0))


def test_compression_bound_counts_and_evaluates_the_quantized_model(ckpts):
    loaded = checkpoint.load(ckpts / "cla")
    init = checkpoint.build_from_manifest(loaded.manifest, loaded.task)
    r = compute(loaded, ComputeOptions(compress=True, compress_bits=[2, 4], schemes=["kmeans"], base_gap=False))
    c = r["compress"]
    assert len(c["tried"]) == 2 and c["code_bits"] == min(c["tried"], key=lambda t: t["occam_bound"])["code_bits"]
    assert c["code_bits"] == c["payload_bits"] + c["header_bits"] + 32
    assert c["occam_bound"] == pytest.approx(bounds.occam_bound(c["train_err_q"], r["n_train"], c["code_bits"]))
    fresh = checkpoint.load(ckpts / "cla")
    with torch.no_grad():  # compute() put the trained numbers back
        torch.testing.assert_close(loaded.model(loaded.task.test.x), fresh.model(loaded.task.test.x), rtol=0, atol=0)
    # the quantized model, rebuilt here from the code, has the reported error
    from genbound.compress import encode

    pairs = trained_deltas(loaded, init)
    code = encode({k: f - s for k, (f, s) in pairs.items()}, c["bits"], c["scheme"])
    with torch.no_grad():
        for name, q in code.quantized.items():
            owner, _, leaf = name.rpartition(".")
            getattr(loaded.model.get_submodule(owner), leaf).copy_(pairs[name][1] + q)
        err = (loaded.model(loaded.task.train.x).argmax(-1) != loaded.task.train.y).double().mean().item()
    assert err == pytest.approx(c["train_err_q"], abs=1e-12)


def test_the_reported_code_is_the_lowest_bound_or_when_all_are_vacuous_the_lowest_train_error(ckpts):
    """Oracle: the candidates' own numbers. With a header so long that every bound is 1 (--seed-bits 10^6), the
    choice falls to the quantized train error (never the test error), and the text says so."""
    from genbound.compute import render
    from genbound.occam import choose

    rows = [{"occam_bound": 0.4, "train_err_q": 0.2, "code_bits": 9}, {"occam_bound": 0.4, "train_err_q": 0.1,
                                                                          "code_bits": 5},
            {"occam_bound": 0.5, "train_err_q": 0.0, "code_bits": 1}]
    assert choose(rows) == (rows[1], "the lowest bound")
    vacuous = [dict(r, occam_bound=1.0, test_err_q=t) for r, t in zip(rows, (0.0, 0.9, 0.9))]
    assert choose(vacuous)[0] is vacuous[2] and "vacuous" in choose(vacuous)[1]
    loaded = checkpoint.load(ckpts / "lora")
    r = compute(loaded, ComputeOptions(compress=True, compress_bits=[1, 2, 4], schemes=["uniform"], base_gap=False,
                                       seed_bits=10**6))
    c = r["compress"]
    assert all(t["occam_bound"] == 1.0 for t in c["tried"])
    assert c["train_err_q"] == min(t["train_err_q"] for t in c["tried"]) and "vacuous" in c["choice"]
    assert len({t["train_err_q"] for t in c["tried"]}) > 1  # the choice was not a tie
    assert "every bound vacuous" in render(r)


def test_cli_compute_writes_complete_finite_json(ckpts, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["compute", "--ckpt", str(ckpts / "c3la"), "--device", "cpu", "--loss", "ce", "--clip", "5",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Phi_dW" in text and "inf" not in text and "nan" not in text
    data = json.loads(out.read_text())
    json.dumps(data, allow_nan=False)
    assert all(k in data for k in REQUIRED) and data["schema"] == "genbound.compute/1"
    assert [m["name"] for m in data["matrices"]] == ["hidden.0", "hidden.1", "head"]
    assert main(["compute", "--ckpt", str(ckpts / "c3la"), "--loss", "ce"]) == 2
    assert "unbounded" in capsys.readouterr().err


def test_compute_on_a_peft_folder_and_on_missing_data(tmp_path, capsys):
    import shutil

    from genbound.peft_io import export_peft

    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"{w} {w} x,{w}\n" for w in ["aa", "bb", "cc"] * 20))
    ck = tmp_path / "ck"
    train(TrainConfig(model="tiny-bert", data=str(csv), method="lora", rank=2, steps=3, eval_samples=10), ck,
          progress=False)
    export_peft(ck, tmp_path / "peft")
    assert main(["compute", "--ckpt", str(tmp_path / "peft"), "--model", "tiny-bert", "--data", str(csv),
                 "--method", "lora", "--json", str(tmp_path / "p.json")]) == 0
    peft_r, ck_r = json.loads((tmp_path / "p.json").read_text()), compute(checkpoint.load(ck), ComputeOptions())
    assert peft_r["test_loss"] == pytest.approx(ck_r["test_loss"], rel=1e-5)
    assert peft_r["mi_term_paper"] == ck_r["mi_term_paper"]
    assert main(["compute", "--ckpt", str(tmp_path / "peft")]) == 0  # imported once, reused: no --data needed
    capsys.readouterr()  # (its progress bar went to stderr)
    moved = tmp_path / "moved.csv"
    shutil.move(csv, moved)
    assert main(["compute", "--ckpt", str(ck)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t.csv" in err[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_quantization_aware_fine_tune_runs_on_every_method_and_puts_the_numbers_back(ckpts, method):
    """What make demo runs (a short QAT before coding), on every kind of trained tensor, empty ones included."""
    loaded = checkpoint.load(ckpts / method)
    r = compute(loaded, ComputeOptions(compress=True, compress_bits=[2], qat_steps=3, base_gap=False))
    assert [(t["scheme"], t["qat_steps"]) for t in r["compress"]["tried"]] == [("uniform", 3), ("kmeans", 3)]
    assert all(0 <= t["occam_bound"] <= 1 for t in r["compress"]["tried"])
    fresh = checkpoint.load(ckpts / method)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(loaded.task.test.x), fresh.model(loaded.task.test.x), rtol=0, atol=0)


def test_majority_error_and_bounded_gaps_against_direct_computations(ckpts):
    """Oracles in float64 by hand: the majority-class error counts the test labels that differ from the most
    frequent training label; the smoothed CE is -log((1 - a) p_y + a / K), the clipped CE min(CE, M)."""
    loaded = checkpoint.load(ckpts / "lora")
    task = loaded.task
    counts = {}
    for label in task.train.y.tolist():
        counts[label] = counts.get(label, 0) + 1
    majority = max(sorted(counts), key=lambda c: counts[c])
    oracle = sum(1 for label in task.test.y.tolist() if label != majority) / len(task.test)
    enc = {s: loaded.built.backbone.encode(getattr(task, s)) for s in ("train", "test")}
    with torch.no_grad():
        probs = {s: loaded.model(**enc[s]).double().softmax(-1) for s in enc}
    ys = {"train": task.train.y, "test": task.test.y}
    for a in (0.1, 0.5):
        r = compute(loaded, ComputeOptions(loss="ce", smoothing=a, base_gap=False))
        assert r["majority_err"] == pytest.approx(oracle, abs=1e-12)
        mean = {s: float(-torch.log((1 - a) * probs[s][torch.arange(len(ys[s])), ys[s]] + a / 10).mean())
                for s in probs}
        assert r["gap_ce_bounded"] == pytest.approx(mean["test"] - mean["train"], rel=1e-4, abs=1e-7)
    r = compute(loaded, ComputeOptions(loss="ce", clip=0.5, base_gap=False))
    clipped = {s: float((-torch.log(probs[s][torch.arange(len(ys[s])), ys[s]])).clamp(max=0.5).mean()) for s in probs}
    assert r["gap_ce_bounded"] == pytest.approx(clipped["test"] - clipped["train"], rel=1e-4, abs=1e-7)

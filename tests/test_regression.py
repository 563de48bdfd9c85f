"""Regression tasks (one output, float targets, MSE) and classification tasks judged by F1 / Matthews through
every command: train (fused and reference paths), load, compute (numbers against numpy/scipy on the model's own
predictions), the Hessian (against a closed-form and a dense float64 MSE Hessian), the landscape, compare and the
report, and the one-line refusals of classification-only options.

The data loaders of regression tasks belong to another module; here tasks are built directly and
``load_task`` (which train and checkpoint call by name) is patched to return them."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from genbound import bounds, checkpoint
from genbound import train as train_module
from genbound.cli import main
from genbound.compute import ComputeOptions, compute
from genbound.data import Split, Task, load_task
from genbound.errors import CheckpointError, GenboundError
from genbound.hessian import HessianOptions, hessian_analysis, select_params, training_batches, working_model
from genbound.hessian.operator import HessianOperator, space_model
from genbound.landscape import LandscapeOptions, eval_subset, landscape_analysis
from genbound.train import TrainConfig, train

from test_docs import check, schema_tables

F64 = torch.float64
WORDS = ["good", "fine", "bad", "red", "cat", "sky", "run", "tree"]


def digits_value(seed=0, n_train=None, n_test=None, **_):
    """digits features -> the digit as a float (regression)."""
    t = load_task("digits", seed=seed, n_train=n_train, n_test=n_test)
    return Task("digits-value", "vision", 1, Split(t.train.x, t.train.y.float()), Split(t.test.x, t.test.y.float()),
                ["score"], {**t.info, "problem": "regression"}, "regression", ("pearson", "spearman"))


def digits_binary(seed=0, n_train=None, n_test=None, **_):
    """digits -> digit >= 5 (binary), judged by F1 and Matthews as well as accuracy."""
    t = load_task("digits", seed=seed, n_train=n_train, n_test=n_test)
    return Task("digits-binary", "vision", 2, Split(t.train.x, (t.train.y >= 5).long()),
                Split(t.test.x, (t.test.y >= 5).long()), ["low", "high"], dict(t.info), "classification",
                ("f1", "matthews", "accuracy"))


def text_score(seed=0, n_train=None, n_test=None, **_):
    """Short texts -> the number of times 'good' occurs, as a float (a text regression task)."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))) for _ in range(160)]
    y = torch.tensor([t.split().count("good") for t in texts], dtype=torch.float32)
    train_, test_ = Split(texts[:120], y[:120]), Split(texts[120:], y[120:])
    return Task("text-score", "text", 1, train_, test_, ["score"], {"source": "synthetic", "seed": seed},
                "regression", ("pearson", "spearman"))


TASKS = {"digits-value": digits_value, "digits-binary": digits_binary, "text-score": text_score}


@pytest.fixture(scope="module", autouse=True)
def patched_tasks():
    def patched(name, **kw):
        return TASKS[name](**kw) if name in TASKS else load_task(name, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "load_task", patched)
        mp.setattr(checkpoint, "load_task", patched)
        yield


MLP = dict(model="mlp", data="digits-value", hidden=[24, 16], rank=4, alpha=8, steps=60, lr=1e-2, eval_samples=50)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    train(TrainConfig(**MLP, method="lora"), root / "lora", progress=False)
    train(TrainConfig(**MLP, method="lora", fused=False), root / "lora-ref", progress=False)
    train(TrainConfig(**MLP, method="lora", seed=1), root / "lora-s1", progress=False)
    train(TrainConfig(**MLP, method="head"), root / "head", progress=False)
    train(TrainConfig(**{**MLP, "data": "digits-binary"}, method="lora"), root / "binary", progress=False)
    train(TrainConfig(model="tiny-bert", data="text-score", method="lora", rank=2, steps=30, lr=5e-3, batch_size=16,
                      eval_samples=20), root / "bert", progress=False)
    return root


def outputs(loaded, split):
    """The model's outputs on a split, float64 numpy (N,), computed here from the model itself."""
    enc = loaded.built.backbone.encode(getattr(loaded.task, split))
    with torch.no_grad():
        out = loaded.model(**enc)
    out = out if isinstance(out, torch.Tensor) else out.logits
    return out.double().numpy()


# ---- training and the manifest --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora", "lora-ref", "bert"])
def test_training_records_mse_and_the_task_metrics(ckpts, name):
    man = checkpoint.read_manifest(ckpts / name)
    assert man["task"]["problem"] == "regression" and man["task"]["metrics"] == ["pearson", "spearman"]
    assert man["task"]["num_classes"] == 1
    m = man["metrics"]
    assert "train_acc" not in m and "test_acc" not in m
    loaded = checkpoint.load(ckpts / name)
    assert loaded.task.regression
    for split in ("train", "test"):
        f, y = outputs(loaded, split)[:, 0], getattr(loaded.task, split).y.double().numpy()
        assert m[f"{split}_mse"] == m[f"{split}_loss"] == pytest.approx(np.mean((f - y) ** 2), rel=1e-5)
        assert m[f"{split}_pearson"] == pytest.approx(stats.pearsonr(f, y)[0], abs=1e-5)
        assert m[f"{split}_spearman"] == pytest.approx(stats.spearmanr(f, y)[0], abs=1e-5)
    rows = [json.loads(x) for x in (ckpts / name / "metrics.jsonl").read_text().splitlines()]
    assert "test_mse_subset" in rows[-1] and "test_acc_subset" not in rows[-1]
    if name.startswith("lora"):
        path = man["method"]["training_path"]
        assert path.startswith("fused") if name == "lora" else path == "reference"
        assert m["train_mse"] < float(loaded.task.train.y.double().var(correction=0))  # beats the mean predictor


def test_classification_metrics_are_recorded_and_equal_sklearn(ckpts):
    man = checkpoint.read_manifest(ckpts / "binary")
    assert man["task"]["problem"] == "classification" and man["task"]["metrics"] == ["f1", "matthews", "accuracy"]
    loaded = checkpoint.load(ckpts / "binary")
    for split in ("train", "test"):
        pred, y = outputs(loaded, split).argmax(1), getattr(loaded.task, split).y.numpy()
        assert man["metrics"][f"{split}_f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
        assert man["metrics"][f"{split}_matthews"] == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)
        assert man["metrics"][f"{split}_acc"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    r = compute(loaded, ComputeOptions(base_gap=False))
    assert r["test_f1"] == pytest.approx(man["metrics"]["test_f1"]) and "train_matthews" in r
    assert r["matches_manifest"] is True and r["problem"] == "classification"


# ---- compute --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora", "bert"])
def test_compute_equals_an_independent_recomputation(ckpts, name):
    loaded = checkpoint.load(ckpts / name)
    r = compute(loaded, ComputeOptions(loss="mse"))
    f = {s: outputs(loaded, s)[:, 0] for s in ("train", "test")}
    y = {s: getattr(loaded.task, s).y.double().numpy() for s in ("train", "test")}
    lo, hi = min(y["train"].min(), y["test"].min()), max(y["train"].max(), y["test"].max())
    mse = {s: np.mean((f[s] - y[s]) ** 2) for s in f}
    bounded = {s: np.mean((np.clip(f[s], lo, hi) - y[s]) ** 2) for s in f}
    assert r["problem"] == "regression" and r["loss"] == "mse" and r["matches_manifest"] is True
    assert r["train_mse"] == pytest.approx(mse["train"], rel=1e-5) and r["test_loss"] == r["test_mse"]
    assert r["gap_mse"] == pytest.approx(mse["test"] - mse["train"], abs=1e-5)
    assert r["gap_mse_bounded"] == pytest.approx(bounded["test"] - bounded["train"], abs=1e-5)
    assert r["test_pearson"] == pytest.approx(stats.pearsonr(f["test"], y["test"])[0], abs=1e-5)
    assert r["train_spearman"] == pytest.approx(stats.spearmanr(f["train"], y["train"])[0], abs=1e-5)
    assert r["mean_mse"] == pytest.approx(np.mean((y["test"] - y["train"].mean()) ** 2), rel=1e-12)
    assert r["target_range"] == [lo, hi]
    assert r["sigma"] == pytest.approx((hi - lo) ** 2 / 2)
    assert r["mi_term_full"] == pytest.approx(bounds.mi_term(r["params_full"], r["n_train"], 32, r["sigma"]))
    assert not {"train_err", "test_err", "gap_01", "gap_ce", "majority_err"} & set(r)
    assert f"L_loss = 2 (hi - lo) = {2 * (hi - lo):.4g}" in r["theorem1_assumptions"]
    assert r["theorem1_bound"] is not None or r["log10_theorem1_bound"] is not None
    clipped = compute(loaded, ComputeOptions(loss="mse", clip=2.0, base_gap=False))
    assert clipped["sigma"] == 1.0 and "clipped at M=2" in clipped["sigma_source"]
    assert clipped["gap_mse_bounded"] == pytest.approx(
        np.mean(np.minimum((f["test"] - y["test"]) ** 2, 2.0)) - np.mean(np.minimum((f["train"] - y["train"]) ** 2,
                                                                                      2.0)), abs=1e-5)
    # Phi scales with L_loss: 2 sqrt(M) with the clip, 2 (hi - lo) with clipped predictions
    shift = math.log10(2 * (hi - lo)) - math.log10(2 * math.sqrt(2.0))
    assert r["log10_phi_dw"] - clipped["log10_phi_dw"] == pytest.approx(shift, abs=1e-9)


def test_theorem1_bracket_holds_for_the_bounded_squared_error(ckpts):
    """Each example's bounded squared error moves by at most Phi_dW / 2 between the initial and the trained MLP
    (Phi_dW = 2 L_loss sup ||f_W - f_W0||, L_loss = 2 (hi - lo))."""
    loaded = checkpoint.load(ckpts / "lora")
    r = compute(loaded, ComputeOptions(loss="mse", base_gap=False))
    init = checkpoint.build_from_manifest(loaded.manifest, loaded.task).model.eval()
    lo, hi = r["target_range"]
    x = torch.cat([loaded.task.train.x, loaded.task.test.x])
    y = torch.cat([loaded.task.train.y, loaded.task.test.y]).double()
    with torch.no_grad():
        f1, f0 = loaded.model(x).double()[:, 0], init(x).double()[:, 0]
    change = ((f1.clamp(lo, hi) - y) ** 2 - (f0.clamp(lo, hi) - y) ** 2).abs()
    assert 0 < float(change.max()) <= r["phi_dw"] / 2


def test_a_tampered_metric_in_the_manifest_is_refused(ckpts, tmp_path):
    import shutil

    shutil.copytree(ckpts / "lora", tmp_path / "c")
    path = tmp_path / "c" / "genbound.json"
    man = json.loads(path.read_text())
    man["metrics"]["test_pearson"] += 0.05
    path.write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="not the model that was trained"):
        compute(checkpoint.load(tmp_path / "c"), ComputeOptions(loss="mse"))


def test_checkpoints_without_problem_or_metrics_read_as_classification_with_accuracy(ckpts):
    man = checkpoint.read_manifest(ckpts / "binary")
    del man["task"]["problem"], man["task"]["metrics"]
    assert checkpoint.problem_of(man) == "classification" and checkpoint.metrics_of(man) == ["accuracy"]
    reg = checkpoint.read_manifest(ckpts / "lora")
    del reg["task"]["problem"]  # a regression manifest without its problem would need train_acc
    with pytest.raises(CheckpointError, match="lacks 'metrics.train_acc'"):
        checkpoint.check_schema(reg, checkpoint.SCHEMA, "m")


# ---- the Hessian and the landscape ----------------------------------------------------------------------
def test_head_hessian_of_the_mse_is_the_closed_form(ckpts):
    """Head only: f = h w + b is linear in (w, b), so H = (2/N) sum_i [h_i; 1][h_i; 1]^T, exactly."""
    loaded = checkpoint.load(ckpts / "head")
    model = space_model(working_model(loaded.model, F64), "trainable")
    batches = training_batches(loaded, 80, 30, 0, F64)
    op = HessianOperator(model, select_params(model, loaded.built, "trainable"), batches, "auto", 64)
    assert op.names == ["head.weight", "head.bias"]
    x = torch.cat([b.inputs["x"] for b in batches])
    y = torch.cat([b.y for b in batches]).double()
    h = x
    for layer in loaded.model.hidden:  # frozen plain Linear layers, by hand in float64
        h = torch.relu(h @ layer.weight.detach().double().T + layer.bias.detach().double())
    z = torch.cat([h, torch.ones(len(h), 1, dtype=F64)], 1)
    assert float((op.dense() - 2 * z.T @ z / len(z)).abs().max()) <= 1e-10
    with torch.no_grad():
        f = working_model(loaded.model, F64)(x)[:, 0]
    assert op.loss() == pytest.approx(float(((f - y) ** 2).mean()), rel=1e-12)


def test_lora_hessian_equals_a_dense_float64_mse_hessian(ckpts):
    from torch.func import functional_call

    loaded = checkpoint.load(ckpts / "lora")
    model = space_model(working_model(loaded.model, F64), "trainable")
    batches = training_batches(loaded, 40, 15, 0, F64)
    params = select_params(model, loaded.built, "trainable")
    op = HessianOperator(model, params, batches, "auto", 64)
    x = torch.cat([b.inputs["x"] for b in batches])
    y = torch.cat([b.y for b in batches]).double()
    theta = op.flatten(op.params)

    def mse(flat):  # an independent loss: hand-written mean squared error of the one output
        out = functional_call(model, {**op.rest, **op.unflatten(flat)}, (x,))
        return ((out[:, 0] - y) ** 2).mean()

    exact = torch.autograd.functional.hessian(mse, theta, vectorize=True)
    assert float((op.dense() - exact).abs().max()) <= 1e-10 * max(1.0, float(exact.abs().max()))
    r = hessian_analysis(loaded, HessianOptions(top_k=1, samples=40, batch=15, dtype="float64", tol=1e-10))
    assert r["loss_kind"] == "mse" and r["loss"] == pytest.approx(float(mse(theta)), rel=1e-12)
    assert r["eigenvalues"][0] == pytest.approx(float(torch.linalg.eigvalsh(exact)[-1]), rel=1e-6)


def test_landscape_centre_is_the_mse_and_has_no_error_surface(ckpts):
    loaded = checkpoint.load(ckpts / "lora")
    opts = LandscapeOptions(grid=3, samples=64)
    r = landscape_analysis(loaded, opts)
    data = eval_subset(loaded, "train", 64, 0)
    with torch.no_grad():
        f = loaded.model(data.inputs["x"]).double()[:, 0]
    assert r["center_loss"] == pytest.approx(float(((f - data.y.double()) ** 2).mean()), rel=1e-5)
    assert r["loss_kind"] == "mse" and r["center_acc"] is None and r["accuracies"] is None
    assert np.asarray(r["losses"]).shape == (3, 3) and r["losses"][1][1] == pytest.approx(r["center_loss"])


# ---- compare, the report and the JSON schemas ------------------------------------------------------------
def test_compare_shows_the_metric_columns_and_ranks_the_mse_gap(ckpts, tmp_path):
    dirs = [str(ckpts / n) for n in ("lora", "lora-s1", "head")]
    for d in dirs:
        assert main(["compute", "--ckpt", d, "--loss", "mse", "--quiet", "--json", str(tmp_path / "c.json")]) == 0
    out = tmp_path / "report"
    assert main(["compare", *dirs, "--out", str(out), "--analyses", "compute", "spectrum", "--quiet",
                 "--json", str(tmp_path / "cmp.json")]) == 0
    res = json.loads((tmp_path / "cmp.json").read_text())
    for row in res["rows"]:
        man = checkpoint.read_manifest(row["checkpoint"])
        assert row["problem"] == "regression" and row["test_acc"] is None and row["gap_01"] is None
        assert row["gap_mse"] == pytest.approx(man["metrics"]["test_mse"] - man["metrics"]["train_mse"])
        assert row["test_pearson"] == man["metrics"]["test_pearson"] and "test_spearman" in row
        assert row["loss"] == "mse" and row["loss_range"] is not None and row["mean_mse"] is not None
    assert res["ranking"] and {t["gap"] for t in res["ranking"].values()} == {"gap_mse"}
    text = (out / "README.md").read_text()
    assert "test pearson" in text and "gap MSE" in text and "regression task" in text
    assert (out / "methods.png").is_file()
    tables = schema_tables()
    check(res, tables["genbound.compare/1"], "compare")
    check(json.loads((tmp_path / "c.json").read_text()), tables["genbound.compute/1"], "compute")


def test_compare_fills_a_regression_compute_with_the_squared_error(ckpts, tmp_path):
    import shutil

    shutil.copytree(ckpts / "lora-ref", tmp_path / "a")
    (tmp_path / "a" / "analysis").mkdir(exist_ok=True)
    assert main(["compare", str(tmp_path / "a"), "--out", str(tmp_path / "r"), "--analyses", "compute",
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "a" / "analysis" / "compute.json").read_text())["loss"] == "mse"


def test_classification_compare_shows_f1_and_matthews(ckpts, tmp_path):
    assert main(["compare", str(ckpts / "binary"), "--out", str(tmp_path / "r"), "--analyses", "none", "--quiet",
                 "--json", str(tmp_path / "cmp.json")]) == 0
    row = json.loads((tmp_path / "cmp.json").read_text())["rows"][0]
    man = checkpoint.read_manifest(ckpts / "binary")
    assert row["test_f1"] == man["metrics"]["test_f1"] and row["test_matthews"] == man["metrics"]["test_matthews"]
    assert row["problem"] == "classification" and "gap_mse" not in row


def test_regression_json_matches_the_documented_schemas(ckpts, tmp_path):
    tables = schema_tables()
    loaded = checkpoint.load(ckpts / "lora")
    check(checkpoint.read_manifest(ckpts / "lora"), tables["manifest (genbound-checkpoint, format 2)"], "manifest")
    assert main(["hessian", "--ckpt", str(ckpts / "lora"), "--top-k", "1", "--samples", "32", "--quiet",
                 "--json", str(tmp_path / "h.json")]) == 0
    check(json.loads((tmp_path / "h.json").read_text()), tables["genbound.hessian/1"], "hessian")
    r = landscape_analysis(loaded, LandscapeOptions(grid=3, samples=16))
    check({**r, "checkpoint": "x"}, tables["genbound.landscape/1"], "landscape")


# ---- refusals -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--loss", "01"], "--loss 01: a regression task has no 0-1 error"),
    ([], "--loss 01: a regression task"),  # the default loss
    (["--loss", "ce", "--clip", "3"], "--loss ce: a regression task"),
    (["--loss", "mse", "--smoothing", "0.1"], "--smoothing smooths class probabilities"),
    (["--loss", "mse", "--compress"], "--compress: the Occam bound bounds a 0-1 error"),
])
def test_classification_only_options_are_refused_in_one_line(ckpts, capsys, args, words):
    assert main(["compute", "--ckpt", str(ckpts / "lora"), *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_the_squared_error_is_refused_on_a_classification_task(ckpts, capsys):
    assert main(["compute", "--ckpt", str(ckpts / "binary"), "--loss", "mse", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--loss mse is for regression tasks" in err and len(err.splitlines()) == 1


def test_a_task_whose_metrics_do_not_fit_is_refused_before_training(tmp_path):
    TASKS["bad"] = lambda **kw: Task(**{**digits_value(**kw).__dict__, "name": "bad", "metrics": ("f1",)})
    try:
        with pytest.raises(GenboundError, match="metric 'f1' does not apply to a regression task"):
            train(TrainConfig(**{**MLP, "data": "bad"}, method="lora"), tmp_path / "x", progress=False)
    finally:
        del TASKS["bad"]
    assert not (tmp_path / "x").exists()


def test_a_regression_study_measures_the_squared_error_and_sees_no_drift(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "reg.toml"
    path.write_text(f"""
name = "reg"
model = "mlp"
data = "digits-value"
methods = ["lora", "head"]
seeds = [0]
ranks = [2]
runs = "{tmp_path / 'runs'}"
report = "{tmp_path / 'report'}"
[train]
steps = 10
hidden = [16, 12]
eval_samples = 20
[analyses.compute]
bits = 16
[analyses.landscape]
grid = 3
samples = 20
""")
    assert main(["study", str(path), "--quiet"]) == 0
    comp = json.loads((tmp_path / "runs" / "lora-r2-s0" / "analysis" / "compute.json").read_text())
    assert comp["loss"] == "mse" and comp["options"]["bits"] == 16  # the task's default under the file's options
    assert main(["study", str(path), "--quiet"]) == 0  # nothing drifted: all reused
    text = (tmp_path / "report" / "README.md").read_text()
    assert "regression task" in text and "mean squared error" in text  # the landscape caption names the MSE

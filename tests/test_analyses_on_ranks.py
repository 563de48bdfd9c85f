"""compute, hessian and landscape on 2 gloo processes (as torchrun starts them) against one process: the same
numbers (exactly where no sum is reordered; float64 sums in another order to rtol 1e-9, float32 to rtol 1e-5),
the same on every rank, and only rank 0 prints the table and writes files (docs/design.md section 8c)."""

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from genbound import checkpoint, distributed
from genbound import train as train_module
from genbound.cli import main
from genbound.data import load_task
from genbound.hessian import HessianOperator, select_params, training_batches, working_model
from genbound.train import TrainConfig, train
from ranks import run_ranks
from test_regression import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = dict(model="mlp", hidden=[16, 12], rank=2, alpha=4, steps=30, eval_samples=20, lr=1e-2, n_train=301, n_test=149)
TIMES = {"wall_seconds", "seconds", "timing", "phases", "peak_gpu_memory_bytes"}  # clocks and memory, not results


def patched_load_task(name, **kw):
    return TASKS[name](**kw) if name in TASKS else load_task(name, **kw)


def use_test_tasks(mp=None) -> None:
    """digits-binary (judged by F1 and Matthews) by name: in a rank (a fresh process) for good, else through
    the monkeypatch ``mp``."""
    for module in (train_module, checkpoint):
        if mp is None:
            module.load_task = patched_load_task
        else:
            mp.setattr(module, "load_task", patched_load_task)


@pytest.fixture(autouse=True)
def test_tasks(monkeypatch):
    use_test_tasks(monkeypatch)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    with pytest.MonkeyPatch.context() as mp:
        use_test_tasks(mp)
        train(TrainConfig(**MLP, data="digits-binary", method="lora"), root / "binary", progress=False)
        train(TrainConfig(**MLP, data="digits", method="cla"), root / "cla", progress=False)
        csv = root / "t.csv"
        csv.write_text("text,label\n" + "".join(f"{w} {w} x{'y' * (i % 5)},{w}\n"
                                                 for i, w in enumerate(["aa", "bb", "cc"] * 20)))
        train(TrainConfig(model="tiny-bert", data=str(csv), method="lora", rank=2, steps=3, eval_samples=10),
              root / "bert", progress=False)
    return root


def cli_on_ranks(commands: list[list[str]], folder: str) -> list[dict]:
    """On every rank: each command with ``{r}`` in its arguments replaced by the rank (so a file a rank wrote
    names it); its exit status and what it printed. The process group is joined here, once: the commands find
    it joined and leave it be (a group cannot be joined again on the same port)."""
    use_test_tasks()
    distributed.init(torch.device("cpu"))
    rank = os.environ["RANK"]
    out = []
    for argv in commands:
        text = io.StringIO()
        with redirect_stdout(text):
            rc = main([a.replace("{r}", rank) for a in argv])
        out.append({"rc": rc, "stdout": text.getvalue()})
    return out


def one_process(argv: list[str]) -> dict:
    """The command in this process (a world of one), its JSON."""
    assert main([a.replace("{r}", "single") for a in argv]) == 0
    return json.loads(Path(next(a for a in argv if a.endswith(".json")).replace("{r}", "single")).read_text())


def assert_same(a, b, rtol: float = 0.0, atol: float = 0.0, where: str = "") -> None:
    """Equal JSON, floats within rtol/atol (0: exactly), clocks skipped."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            if k not in TIMES:
                assert_same(a[k], b[k], rtol, atol, f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, rtol, atol, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == b if rtol == atol == 0 else abs(a - b) <= atol + rtol * abs(b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def check_rank0_alone(ranks: list[dict], files: list[str]) -> None:
    """Rank 0 printed and wrote; rank 1 printed nothing and wrote none of its files."""
    for i, (r0, r1) in enumerate(zip(*ranks)):
        assert r0["rc"] == r1["rc"] == 0
        assert r0["stdout"].strip() and r1["stdout"] == "", i
    for f in files:
        assert Path(f.replace("{r}", "0")).is_file() and not Path(f.replace("{r}", "1")).exists(), f


# ---- compute --------------------------------------------------------------------------------------------
def test_compute_on_two_ranks_equals_one_process(ckpts, tmp_path):
    """Evaluations split by batches (23 train / 10 test batches of 13 over 2 ranks; tiny-bert: the token-norm
    probe's maximum over ranks), --compress with QAT: every number equal to one process's exactly, F1 and
    Matthews of the whole split as sklearn gives them on the model's own predictions."""
    runs = {
        "binary": ["compute", "--ckpt", str(ckpts / "binary"), "--device", "cpu", "--batch-size", "13", "--loss", "ce",
                   "--clip", "5", "--compress", "--compress-bits", "2", "4", "--qat-steps", "3",
                   "--json", str(tmp_path / "binary-{r}.json")],
        "bert": ["compute", "--ckpt", str(ckpts / "bert"), "--device", "cpu", "--batch-size", "5",
                 "--json", str(tmp_path / "bert-{r}.json")],
        "spectrum": ["spectrum", "--ckpt", str(ckpts / "cla"), "--device", "cpu",
                     "--json", str(tmp_path / "spectrum-{r}.json")],  # an analysis that runs on rank 0 alone
    }
    ranks = run_ranks(cli_on_ranks, 2, list(runs.values()), str(tmp_path))
    check_rank0_alone(ranks, [a for argv in runs.values() for a in argv if a.endswith(".json")])
    for name, argv in runs.items():
        two = json.loads((tmp_path / f"{name}-0.json").read_text())
        assert_same(two, one_process(argv), where=name)
    two = json.loads((tmp_path / "binary-0.json").read_text())
    assert two["compress"]["tried"][0]["qat_steps"] == 3 and len(two["compress"]["tried"]) == 4
    loaded = checkpoint.load(ckpts / "binary")
    with torch.no_grad():
        pred = loaded.model(loaded.task.test.x).argmax(-1).numpy()
    y = loaded.task.test.y.numpy()
    assert two["test_f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert two["test_matthews"] == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)


# ---- hessian --------------------------------------------------------------------------------------------
def operators_on_ranks(ckpt: str, sizes: list[int], dtype: torch.dtype) -> list[dict]:
    """On every rank, for each subsample size: the dense Hessian, loss and gradient of the operator over this
    rank's share."""
    ctx = distributed.init(torch.device("cpu"))
    return [operator_numbers(checkpoint.load(ckpt), samples, dtype, ctx) for samples in sizes]


def operator_numbers(loaded, samples: int, dtype: torch.dtype, ranks=None) -> dict:
    model = working_model(loaded.model, dtype)
    batches = training_batches(loaded, samples, 16, 0, dtype, ranks=ranks)
    op = HessianOperator(model, select_params(model, loaded.built, "trainable"), batches, ranks=ranks)
    return {"dense": op.dense(), "loss": op.loss(), "grad": op.gradient(), "local": sum(len(b) for b in batches),
            "n": op.n_examples}


def test_hessian_products_on_two_ranks_are_the_mean_over_the_whole_sample(ckpts):
    """The dense float32 Hessian built from 2 ranks' summed HVPs equals one process's to rtol 1e-5, on both ranks
    alike (bit for bit: one all-reduce hands every rank the same sum), and so do the loss and the gradient; with
    a subsample of 1 rank 1 holds no example."""
    sizes = [101, 1]
    ranks = run_ranks(operators_on_ranks, 2, str(ckpts / "cla"), sizes, torch.float32)
    loaded = checkpoint.load(ckpts / "cla")
    for i, samples in enumerate(sizes):
        one, r0, r1 = operator_numbers(loaded, samples, torch.float32), ranks[0][i], ranks[1][i]
        assert [r0["local"], r1["local"]] == ([51, 50] if samples == 101 else [1, 0])
        assert r0["n"] == r1["n"] == samples
        for key in ("dense", "grad"):
            assert torch.equal(r0[key], r1[key])
            scale = float(one[key].abs().max())
            torch.testing.assert_close(r0[key], one[key], rtol=1e-5, atol=1e-6 * scale)
        assert r0["loss"] == r1["loss"] == pytest.approx(one["loss"], rel=1e-6)


def test_hessian_cli_on_two_ranks_equals_one_process(ckpts, tmp_path):
    """Lanczos top-3, Hutchinson / Hutch++ and the SLQ density in float64 (sums in another order: rtol 1e-9;
    numbers near 0, the residuals and the density's tails, to 1e-9 of their largest); the plot and the JSON from
    rank 0 alone."""
    argv = ["hessian", "--ckpt", str(ckpts / "cla"), "--device", "cpu", "--samples", "101", "--batch", "16",
            "--dtype", "float64", "--top-k", "3", "--trace", "--probes", "9", "--density", "--density-probes", "2",
            "--lanczos-steps", "20", "--density-grid", "50", "--plot", str(tmp_path / "h-{r}.png"),
            "--json", str(tmp_path / "h-{r}.json")]
    ranks = run_ranks(cli_on_ranks, 2, [argv], str(tmp_path))
    check_rank0_alone(ranks, [str(tmp_path / "h-{r}.png"), str(tmp_path / "h-{r}.json")])
    two, one = json.loads((tmp_path / "h-0.json").read_text()), one_process(argv)
    scale = abs(one["eigenvalues"][0])
    assert_same({k: v for k, v in two.items() if k not in ("residuals", "residual_estimates", "density")},
                {k: v for k, v in one.items() if k not in ("residuals", "residual_estimates", "density")}, rtol=1e-9)
    np.testing.assert_allclose(two["residuals"], one["residuals"], rtol=0, atol=1e-9 * scale)
    d2, d1 = two["density"], one["density"]
    assert set(d2) == set(d1)
    for key, value in d1.items():  # each array to 1e-9 of its largest entry (densities, nodes, weights, moments)
        flat = np.asarray(np.hstack(value) if key in ("nodes", "weights") else
                          list(value.values()) if isinstance(value, dict) else value, dtype=float)
        got = np.asarray(np.hstack(d2[key]) if key in ("nodes", "weights") else
                         list(d2[key].values()) if isinstance(d2[key], dict) else d2[key], dtype=float)
        np.testing.assert_allclose(got, flat, rtol=1e-9, atol=1e-9 * np.abs(flat).max(), err_msg=key)


# ---- landscape ------------------------------------------------------------------------------------------
def test_landscape_on_two_ranks_equals_one_process(ckpts, tmp_path):
    """50 points in 13 chunks of 4 over 2 ranks: every loss, accuracy and the sharpness exactly one process's
    (random directions; PCA's eigh/lstsq in another process may differ in the last bit: rtol 1e-12); the .npz and
    .png from rank 0 alone."""
    runs = {dirs: ["landscape", "--ckpt", str(ckpts / "cla"), "--device", "cpu", "--dirs", dirs, "--grid", "7",
                   "--chunk", "4", "--samples", "120", "--batch-size", "50", "--out", str(tmp_path / f"{dirs}-{{r}}"),
                   "--json", str(tmp_path / f"{dirs}-{{r}}.json")] for dirs in ("random", "pca")}
    ranks = run_ranks(cli_on_ranks, 2, list(runs.values()), str(tmp_path))
    check_rank0_alone(ranks, [str(tmp_path / f"{dirs}-{{r}}.{ext}") for dirs in runs for ext in ("npz", "png", "json")])
    for dirs, argv in runs.items():
        two, one = json.loads((tmp_path / f"{dirs}-0.json").read_text()), one_process(argv)
        tol = 0.0 if dirs == "random" else 1e-12
        assert_same(two, one, rtol=tol, atol=tol, where=dirs)
        np.testing.assert_allclose(np.load(tmp_path / f"{dirs}-0.npz")["losses"],
                                   np.load(tmp_path / f"{dirs}-single.npz")["losses"], rtol=tol, atol=0)

"""One run trained over 2 gloo processes (genbound/parallel.py, docs/design.md section 8b) against the oracle of
one process on the same global batch: weights, losses and metrics within TOL; only rank 0 writes; resume under 2
ranks; --fsdp (fully_shard on CPU) and its gathered checkpoint; bad combinations in one line.

Every 2-rank run is made in one spawn of 2 processes (a module fixture), since starting them costs most of the
time; each test then reads its own runs."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genbound import checkpoint
from genbound.cli import main
from genbound.train import TrainConfig, train
from ranks import run_ranks

# float32: the sum over 2 ranks adds the same numbers in another order than one process's mean; AdamW then
# divides by sqrt(v), so a step's relative error stays about that of the gradients (1e-7), grown over 12 steps
TOL = dict(rtol=1e-5, atol=1e-6)
TINY = dict(model="mlp", data="digits", hidden=[16, 16], rank=4, alpha=8, eval_samples=50, batch_size=32,
            n_train=200, n_test=60, eval_every=4, snapshot_every=4)
RUNS = {
    "lora": dict(TINY, method="lora", steps=12, clip=0.02),  # clipped at every step: it must see the whole gradient
    "c3la": dict(TINY, method="c3la", chain=3, steps=12),  # links start at steps 4 and 8
    "full": dict(TINY, method="full", steps=12),
    # 101 examples in batches of 25: shares of 13 and 12, and every 5th step a batch of 1 (rank 1's share empty)
    "odd": dict(TINY, method="lora", n_train=101, batch_size=25, steps=10),
    "fsdp": dict(TINY, method="full", steps=12, fsdp=True),
    "subspace": dict(TINY, method="lora", steps=8, subspace=40),  # z's gradient is the one summed
}
RESUMED = dict(TINY, method="c3la", chain=3, steps=12, save_every=3)  # cut by Ctrl-C at step 7
CUT_AT = 7
# under --fsdp Ctrl-C saves nothing: the resume state is step 4's (RUNS["fsdp"] saves every 4 steps too)
RESUMED_FSDP = dict(RUNS["fsdp"], save_every=4)


def _writes_under(root: str) -> list:
    """Every write, rename, removal or new folder under ``root`` this process makes from now on (audit hooks)."""
    seen = []
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, Path)) and isinstance(args[2], int):
            if args[2] & writing and str(args[0]).startswith(root):
                seen.append((event, str(args[0])))
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.chmod"):
            if args and isinstance(args[0], (str, Path)) and str(args[0]).startswith(root):
                seen.append((event, str(args[0])))

    sys.addaudithook(hook)
    return seen


def _two_ranks(root: str) -> dict:
    """Every 2-rank run (on each rank): the manifests, the interrupted-then-resumed run, and (rank 1) the
    writes it made under root."""
    from genbound import distributed
    from genbound.errors import Interrupted
    from genbound.train import _Run

    ctx = distributed.context()
    writes = _writes_under(root) if ctx.rank == 1 else []
    out = {"manifests": {name: train(TrainConfig(**kw), Path(root, name), progress=False, data_parallel=True)
                         for name, kw in RUNS.items()}}
    out["manifests"]["whole"] = train(TrainConfig(**RESUMED), Path(root, "whole"), progress=False,
                                      data_parallel=True)
    real = _Run.train_step

    def stop(self):  # Ctrl-C reaches every rank at the same step
        if self.step == CUT_AT:
            raise KeyboardInterrupt
        return real(self)

    for name, kw in (("cut", RESUMED), ("fsdp-cut", RESUMED_FSDP)):
        _Run.train_step = stop
        try:
            train(TrainConfig(**kw), Path(root, name), progress=False, data_parallel=True)
        except Interrupted as err:
            out["interrupted " + name] = str(err)
        finally:
            _Run.train_step = real
        out["manifests"][name] = train(None, Path(root, name), resume=True, progress=False, data_parallel=True)
    out["writes"] = list(writes)
    from genbound.errors import NonFinite, TrainingError

    try:
        train(TrainConfig(**{**RUNS["lora"], "lr": 1e30, "clip": 0.0}), Path(root, "nan"), progress=False,
              data_parallel=True)
    except NonFinite as err:
        out["nan"] = str(err)

    try:  # rank 1 loads other examples (as if its node held another data file)
        train(TrainConfig(**{**RUNS["lora"], "n_train": 150 if ctx.rank else 200}), Path(root, "mixed"),
              progress=False, data_parallel=True)
    except TrainingError as err:
        out["mixed"] = str(err)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    ranked = run_ranks(_two_ranks, 2, str(root / "two"))
    single = {name: train(TrainConfig(**kw), root / "one" / name, progress=False)
              for name, kw in RUNS.items() if name != "fsdp"}
    (root / "one" / "fsdp").symlink_to(root / "one" / "full")  # the same run in one process
    single["fsdp"] = single["full"]
    assert {k: v for k, v in RUNS["fsdp"].items() if k != "fsdp"} == RUNS["full"]
    return root, ranked, single


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / checkpoint.ADAPTER))


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(two: Path, one: Path, man2: dict, man1: dict) -> None:
    a, b = _weights(two), _weights(one)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)
    for x, y in zip(_rows(two), _rows(one), strict=True):
        assert (x["step"], x["link"]) == (y["step"], y["link"])
        for key in ("lr", "train_loss_running", "test_loss_subset", "test_acc_subset"):
            assert x[key] == pytest.approx(y[key], rel=TOL["rtol"], abs=TOL["atol"]), key
    assert man2["metrics"] == pytest.approx(man1["metrics"], rel=TOL["rtol"], abs=TOL["atol"])
    snaps = sorted(p.name for p in (two / "trajectory").iterdir())
    assert snaps == sorted(p.name for p in (one / "trajectory").iterdir())
    for name in snaps:
        x, y = load_file(str(two / "trajectory" / name)), load_file(str(one / "trajectory" / name))
        assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], **TOL) for k in x)


@pytest.mark.parametrize("name", ["lora", "c3la", "full", "subspace"])
def test_two_ranks_equal_one_process_on_the_same_global_batch(runs, name):
    root, ranked, single = runs
    _assert_same_run(root / "two" / name, root / "one" / name, ranked[0]["manifests"][name], single[name])
    man = ranked[0]["manifests"][name]
    assert man["timing"]["world_size"] == 2 and single[name]["timing"]["world_size"] == 1
    assert ranked[1]["manifests"][name] == man  # every rank returns rank 0's manifest
    if name == "c3la":
        assert man["timing"]["steps_per_link"] == [4, 8]


def test_two_ranks_mean_the_loss_over_unequal_shares(runs):
    """13 + 12 examples, and batches of 1 that leave rank 1 nothing: still one process's run."""
    root, ranked, single = runs
    _assert_same_run(root / "two" / "odd", root / "one" / "odd", ranked[0]["manifests"]["odd"], single["odd"])


def test_a_mean_of_unweighted_shares_would_differ(runs):
    """The oracle can fail: the odd run's shares of 13 and 12 averaged without weights is another gradient."""
    from genbound.distributed import Context, share

    parts = [share(25, Context(r, 2, r)) for r in range(2)]
    w = torch.randn(25, dtype=torch.float64)
    weighted = sum(len(p) / 25 * w[p.start:p.stop].mean() for p in parts)
    unweighted = sum(w[p.start:p.stop].mean() for p in parts) / 2
    assert float(weighted) == pytest.approx(float(w.mean()), rel=1e-12)
    assert abs(float(unweighted - w.mean())) > 1e-6


def test_only_rank_zero_writes(runs):
    root, ranked, single = runs
    assert ranked[1]["writes"] == []
    assert ranked[0]["manifests"]["lora"]["timing"]["cuda_graph_error"] is None  # CPU: no graphs asked for
    for name in RUNS:
        files = sorted(str(p.relative_to(root / "two" / name)) for p in (root / "two" / name).rglob("*"))
        assert files == sorted(str(p.relative_to(root / "one" / name)) for p in (root / "one" / name).rglob("*"))
        assert not any(Path(f).name.startswith(".") for f in files)  # no temporary file left


def test_resume_under_two_ranks_equals_an_uninterrupted_two_rank_run(runs):
    root, ranked, _ = runs
    assert f"interrupted at step {CUT_AT}/12" in ranked[0]["interrupted cut"]
    a, b = _weights(root / "two" / "whole"), _weights(root / "two" / "cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert ranked[0]["manifests"]["cut"]["metrics"] == ranked[0]["manifests"]["whole"]["metrics"]
    assert not (root / "two" / "cut" / "resume").exists()


def test_fsdp_full_fine_tuning_equals_one_process_and_saves_the_plain_format(runs):
    """fully_shard over 2 gloo ranks: the gathered checkpoint holds whole tensors, as one process's does."""
    root, ranked, single = runs
    _assert_same_run(root / "two" / "fsdp", root / "one" / "fsdp", ranked[0]["manifests"]["fsdp"], single["fsdp"])
    loaded = checkpoint.load(root / "two" / "fsdp")
    assert loaded.manifest["config"]["fsdp"] is True
    shapes = {k: tuple(v.shape) for k, v in _weights(root / "two" / "fsdp").items()}
    assert shapes == {"hidden.0.weight": (16, 64), "hidden.0.bias": (16,), "hidden.1.weight": (16, 16),
                      "hidden.1.bias": (16,), "head.weight": (10, 16), "head.bias": (10,)}


def test_fsdp_resumes_from_its_last_saved_state(runs):
    """Ctrl-C at step 7 under --fsdp: the resume state of step 4 (gathered), loaded into every rank's shards."""
    root, ranked, _ = runs
    assert "the last one saved" in ranked[0]["interrupted fsdp-cut"]
    a, b = _weights(root / "two" / "fsdp"), _weights(root / "two" / "fsdp-cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)
    assert ranked[0]["manifests"]["fsdp-cut"]["metrics"] == pytest.approx(
        ranked[0]["manifests"]["fsdp"]["metrics"], rel=TOL["rtol"], abs=TOL["atol"])


def test_a_non_finite_loss_stops_every_rank_and_keeps_nothing(runs):
    root, ranked, _ = runs
    assert all("loss became" in r["nan"] and "nothing was kept" in r["nan"] for r in ranked)
    assert not (root / "two" / "nan").exists()


def test_ranks_that_built_different_starting_points_stop_in_one_line(runs):
    root, ranked, _ = runs
    assert all("did not build the same starting point (their data differ)" in r["mixed"] for r in ranked)
    assert not (root / "two" / "mixed").exists()


@pytest.mark.parametrize("argv,words", [
    (["--method", "lora", "--fsdp"], "--fsdp shards the weights of full fine-tuning"),
    (["--method", "full", "--fsdp"], "start it with torchrun"),
    (["--method", "full", "--fsdp", "--subspace", "10"], "no --subspace"),
])
def test_bad_combinations_are_one_line(tmp_path, capsys, monkeypatch, argv, words):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    code = main(["train", "--model", "mlp", "--data", "digits", "--hidden", "8", "--steps", "2", "--quiet",
                 "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # about 35 s: torchrun starts 2 fresh interpreters
def test_torchrun_trains_one_run_and_rank_zero_reports(tmp_path):
    """The command as users start it: torchrun --nproc-per-node 2 -m genbound train; one summary line, the JSON
    from rank 0, the checkpoint equal to one process's (the CLI's own single-process run)."""
    import subprocess

    args = ["train", "--model", "mlp", "--data", "digits", "--hidden", "16", "--n-train", "100", "--n-test", "40",
            "--method", "lora", "--rank", "2", "--steps", "6", "--batch-size", "17", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "genbound", *args,
                           "--out", str(tmp_path / "two"), "--json", str(tmp_path / "two.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("params paper=") == 1, done.stdout
    man = json.loads((tmp_path / "two.json").read_text())
    assert man["timing"]["world_size"] == 2
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)


LLAMA = dict(model="tiny-llama", data="wordnet", method="full", steps=4, batch_size=9, n_train=60, n_test=20,
             eval_samples=10, max_length=16)  # no dropout: a split batch is the same computation


def _llama_fsdp(root: str) -> dict:
    return train(TrainConfig(**LLAMA, fsdp=True), Path(root, "two"), progress=False, data_parallel=True)


@pytest.mark.slow  # about 40 s
def test_fsdp_shards_a_transformer_per_block_and_equals_one_process(tmp_path):
    """tiny-llama: each decoder layer (a ModuleList member) sharded on its own, then the root; 9 = 5 + 4."""
    two = run_ranks(_llama_fsdp, 2, str(tmp_path))[0]
    one = train(TrainConfig(**LLAMA), tmp_path / "one", progress=False)
    _assert_same_run(tmp_path / "two", tmp_path / "one", two, one)

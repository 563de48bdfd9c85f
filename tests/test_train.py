"""Training loop: schedule, chain budget, resume, NaN handling, refusing to overwrite, pretrain."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genbound import checkpoint
from genbound.errors import TrainingError
from genbound.train import TrainConfig, _Run, link_boundaries, pretrain, schedule, train

TINY = dict(model="mlp", data="digits", hidden=[16, 16], rank=4, alpha=8, eval_samples=50, batch_size=32)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_schedule_warms_up_then_decays_to_zero():
    f = schedule(total=100, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == 0.0
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_links_share_the_budget_evenly():
    assert link_boundaries(90, 3) == [30, 60]
    assert link_boundaries(10, 1) == []
    b = link_boundaries(100, 3)
    sizes = [hi - lo for lo, hi in zip([0, *b], [*b, 100])]
    assert max(sizes) - min(sizes) <= 1


def test_schedule_runs_over_the_whole_chain(tmp_path):
    """The learning rate logged after each link boundary keeps decaying: no restart per link."""
    man = train(TrainConfig(**TINY, method="c3la", chain=3, steps=30, eval_every=5, warmup=0.0), tmp_path / "c",
                progress=False)
    rows = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows]
    assert [r["link"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert man["timing"]["steps_per_link"] == [10, 20]


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, interrupt_training):
    cfg = TrainConfig(**TINY, method="c3la", chain=3, steps=30, save_every=5)
    ref = train(cfg, tmp_path / "ref", progress=False)
    undo = interrupt_training(17)
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / checkpoint.MANIFEST).exists()
    with pytest.raises(TrainingError, match="interrupted run"):
        train(cfg, tmp_path / "cut", progress=False)
    undo()
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    a = load_file(str(tmp_path / "ref" / checkpoint.ADAPTER))
    b = load_file(str(tmp_path / "cut" / checkpoint.ADAPTER))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed["metrics"] == ref["metrics"]


def test_nan_loss_stops_with_a_clear_error_and_writes_no_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="loss became nan|loss became inf"):
        train(TrainConfig(**TINY, method="lora", steps=30, lr=1e30, clip=0.0), tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / checkpoint.MANIFEST).exists()


def test_an_existing_checkpoint_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**TINY, method="cla", steps=5), out, progress=False)
    before = tree_digest(out)
    with pytest.raises(TrainingError, match="already holds a checkpoint"):
        train(TrainConfig(**TINY, method="lora", steps=5), out, progress=False)
    assert tree_digest(out) == before


def test_manifest_records_what_a_run_depends_on(tmp_path):
    man = train(TrainConfig(**TINY, method="rcla", steps=8, seed=3), tmp_path / "r", progress=False)
    assert man["seed"] == 3 and man["task"]["n_train"] == 1438 and man["task"]["n_test"] == 359
    assert man["method"]["targets"] == ["hidden.0", "hidden.1"]
    assert [(m["n"], m["m"]) for m in man["matrices"]] == [(16, 64), (16, 16)]
    assert man["params"]["paper"] == 4 * (16 + 16) and man["params"]["full"] == 4 * 32 + 16 * 10 + 10
    assert len(man["base"]["sha256"]) == 64
    snaps = sorted((tmp_path / "r" / "trajectory").glob("*.safetensors"))
    assert snaps[0].name == "step_0000000.safetensors" and snaps[-1].name == "step_0000008.safetensors"
    first = load_file(str(snaps[0]))
    assert set(first) == {"hidden.0.lora_B", "hidden.1.lora_B", "head.weight", "head.bias"}
    assert json.loads(checkpoint.read_text(tmp_path / "r" / checkpoint.MANIFEST))["metrics"] == man["metrics"]


def test_pretrained_base_is_loadable_and_fixed_by_its_sha(tmp_path):
    base = tmp_path / "base"
    meta = pretrain(TrainConfig(model="mlp", data="digits", hidden=[16, 16], steps=120, lr=1e-2, eval_samples=50),
                    base, progress=False)
    assert meta["sizes"] == [64, 16, 16, 10] and meta["metrics"]["test_acc"] > 0.6
    man = train(TrainConfig(**{**TINY, "model": str(base)}, method="lora", steps=5), tmp_path / "ft", progress=False)
    assert man["base"]["kind"] == "mlp" and man["base"]["path"] == str(base.resolve())
    loaded = checkpoint.load(tmp_path / "ft")
    base_w = load_file(str(base / "model.safetensors"))["hidden.0.weight"]
    torch.testing.assert_close(loaded.model.hidden[0].weight, base_w, rtol=0, atol=0)
    with pytest.raises(TrainingError, match="already holds a pretrained base"):
        pretrain(TrainConfig(model="mlp", data="digits", hidden=[16, 16], steps=5), base, progress=False)


def test_periodic_evaluation_uses_a_seeded_subset_of_every_part_of_the_test_split(tmp_path):
    """A test split ordered by class (WordNet's is) must not be cut to its first classes."""
    import dataclasses

    from genbound.build import build
    from genbound.data import load_task
    from genbound.models import resolve_ref

    task = load_task("digits", seed=0)
    task = dataclasses.replace(task, test=task.test.take(torch.sort(task.test.y, stable=True).indices))
    cfg = TrainConfig(**{**TINY, "eval_samples": 60})
    built = build(resolve_ref("mlp", hidden=[16, 16]), task, "lora", 4, 8.0, 1, 0)
    runs = [_Run(cfg, tmp_path, task, built, torch.device("cpu")) for _ in range(2)]
    assert len(runs[0].eval_y) == 60 and torch.equal(runs[0].eval_y, runs[1].eval_y)  # seeded
    assert len(set(runs[0].eval_y.tolist())) == 10 > len(set(task.test.y[:60].tolist()))


class RecordingGraphedStep:
    """Stands in for genbound.graphs.GraphedStep on the CPU: runs the body eagerly and records what the loop
    asks of it (a step, or a reset); its own warm-up/capture/replay logic is GPU-tested (test_graphs_gpu)."""

    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def run(self, body, inputs, zero_grad):
        self.calls.append(len(inputs["y"]))
        zero_grad()
        return body(inputs)


def test_training_loop_drives_the_graph_per_link_and_runs_partial_batches_eagerly(tmp_path):
    """Full batches go through the graph, a chain boundary resets it (re-capture), a short batch runs eagerly."""
    from genbound.build import build
    from genbound.data import load_task
    from genbound.models import resolve_ref

    task = load_task("digits", seed=0, n_train=200)  # 200 = 6 x 32 + 8: every 7th batch is short
    cfg = TrainConfig(**{**TINY, "method": "c3la", "chain": 3, "steps": 21})
    built = build(resolve_ref("mlp", hidden=[16, 16]), task, "c3la", 4, 8.0, 3, 0)
    run = _Run(cfg, tmp_path, task, built, torch.device("cpu"))
    run.graphed = fake = RecordingGraphedStep()
    sizes = [len(run.batch_indices(s)) for s in range(21)]
    for _ in range(21):
        run.train_step()
    assert run.boundaries == [7, 14] and sizes.count(8) == 3
    # 7 steps per link: its 6 full batches through the graph, the short one (8 rows) eagerly; a reset
    # (re-capture) at each chain boundary
    assert fake.calls == [32] * 6 + ["reset"] + [32] * 6 + ["reset"] + [32] * 6

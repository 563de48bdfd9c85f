"""The training-step benchmark's variants (benchmarks/train_step.py) on the CPU: the same trainable counts
for the same r, alpha and targets (genbound's LoRA and PEFT's), the limit's gradient reaching the embeddings,
and the reference variants really on the reference path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_step  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return train_step.base_model("tiny")


def trainable(base, variant):
    model, params = train_step.prepare(base, variant, torch.device("cpu"))
    return model, sum(p.numel() for p in params)


def test_variants_train_what_they_should(base, one_thread):
    counts = {v: trainable(base, v)[1] for v in ("limit", "head", "lora", "asym", "cla", "c3la", "paca", "peft-lora")}
    assert counts["limit"] == counts["head"]
    assert counts["lora"] == counts["peft-lora"] > counts["cla"] == counts["asym"] == counts["c3la"] == counts["paca"]
    layers = base.config.num_hidden_layers
    d = base.config.hidden_size
    assert counts["cla"] - counts["head"] == layers * 2 * d * train_step.R  # B of query and value per layer
    assert counts["lora"] - counts["cla"] == layers * 2 * train_step.R * d  # plus A


def test_limit_sends_the_gradient_to_the_embeddings_and_ref_is_the_reference_path(base, one_thread):
    from genbound.layers import adapter_layers

    model, _ = trainable(base, "limit")
    seen = []
    model.base_model.embeddings.register_forward_hook(lambda m, i, out: seen.append(out))
    ids = torch.randint(5, base.config.vocab_size, (2, 8))
    F.cross_entropy(model(input_ids=ids).logits, torch.tensor([0, 1])).backward()
    assert seen[0].grad is not None and seen[0].grad.abs().sum() > 0  # backward reaches the embeddings
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("classifier"))
    fast, ref = trainable(base, "cla")[0], trainable(base, "cla:ref")[0]
    assert all(layer.fused for layer in adapter_layers(fast).values())
    assert not any(layer.fused for layer in adapter_layers(ref).values())


@pytest.mark.parametrize("stop", ["residual", "gap"])
def test_hessian_benchmark_compares_both_tools(tmp_path, monkeypatch, one_thread, stop):
    """The Hessian benchmark end to end on a tiny checkpoint: genbound's rows reach its summary under either
    stopping rule (their label carries the rule) and a ratio against PyHessian comes out."""
    import json

    import hessian_speed

    from genbound.train import TrainConfig, train

    ck = tmp_path / "ck"
    train(TrainConfig(model="mlp", data="digits", hidden=[24, 16], method="lora", rank=4, alpha=8, steps=40,
                      lr=1e-2, eval_samples=50), ck, progress=False)
    monkeypatch.setattr(sys, "argv", ["hessian_speed.py", "--ckpt", str(ck), "--device", "cpu", "--samples", "64",
                                      "--batch", "64", "--seeds", "1", "--repeats", "1", "--probe-batch", "2",
                                      "--stop", stop, "--out", str(tmp_path)])
    hessian_speed.main()
    info = json.loads((tmp_path / "hessian_speed.json").read_text())
    ours = [t for t in info["summary"] if t["tool"] == "genbound"]
    assert ours and all(t["algorithm"].endswith(f"stop={stop})") for t in ours)
    assert info["ratios"]["genbound"] in {t["algorithm"] for t in ours}
    assert "| genbound |" in (tmp_path / "hessian_speed.md").read_text()


def test_hessian_benchmark_top_k_mode(tmp_path, monkeypatch, one_thread):
    """The top-k mode end to end on a tiny checkpoint: block Lanczos and Hutch++ against PyHessian's
    eigenvalues(top_n=3) and trace(), every eigenvalue judged against the reference, ratios once both reach it."""
    import json

    import hessian_speed

    from genbound.train import TrainConfig, train

    ck = tmp_path / "ck"
    train(TrainConfig(model="mlp", data="digits", hidden=[24, 16], method="lora", rank=4, alpha=8, steps=40,
                      lr=1e-2, eval_samples=50), ck, progress=False)
    monkeypatch.setattr(sys, "argv", ["hessian_speed.py", "--ckpt", str(ck), "--device", "cpu", "--samples", "64",
                                      "--batch", "32", "--seeds", "1", "--topk", "3", "--trace", "--block", "4",
                                      "--probe-batch", "4", "--trace-probes", "9", "--pyhessian-trace-iter", "20",
                                      "--pyhessian-tols", "1e-3", "1e-4", "1e-5", "--out", str(tmp_path)])
    hessian_speed.main()
    info = json.loads((tmp_path / "hessian_speed_top3_trainable.json").read_text())
    assert info["mode"] == "top-k" and info["block"] == 4 and len(info["reference"]["eigenvalues"]) == 3
    assert info["reference"]["converged"]
    ours = [r for r in info["runs"] if r["tool"] == "genbound"]
    assert ours and all(len(r["rel_errors"]) == 3 and r["passes_eigen"] <= r["n_hvp_eigen"] for r in ours)
    assert all(r["trace_stderr"] is not None for r in info["runs"])
    assert info["ratios"] is not None and info["ratios"]["passes_ratio_eigen"] > 0
    assert "| genbound |" in (tmp_path / "hessian_speed_top3_trainable.md").read_text()


@pytest.mark.slow
def test_user_flow_runs_every_command_and_prints_where_the_time_went(tmp_path):
    """benchmarks/user_flow.sh with SMOKE=1 (tiny-bert, a few steps, on the CPU): every command of the flow runs,
    and each row's wall time is its work (from the command's JSON phases) plus the fixed cost."""
    import json
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "flow"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PYTHON": sys.executable,
           "GENBOUND_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(root / "benchmarks" / "user_flow.sh")], cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in (out / "table.md").read_text().splitlines()[2:]]
    names = [r[0].strip() for r in rows]
    assert names == ["train-lora", "train-cla", "spectrum", "compute", "hessian", "landscape", "compare"]
    for name, wall, work, fixed in rows:
        if name.strip() == "compare":
            assert work.strip() == fixed.strip() == "-"
            continue
        phases = json.loads((out / f"{name.strip()}.json").read_text())["phases"]
        assert float(work) == pytest.approx(phases["work"], abs=0.051)
        assert float(wall) == pytest.approx(float(work) + float(fixed), abs=0.11)
    assert "timing: import" in (out / "spectrum.err").read_text()  # GENBOUND_TIMING=1 is on

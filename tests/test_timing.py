"""Phase timing (genbound/timing.py): the phases add up as they should and reach the JSON and, with
GENBOUND_TIMING=1, stderr. No assertion on how long anything takes."""

import json

from genbound import timing
from genbound.cli import main


def test_phases_nest_and_are_cleared_when_taken():
    timing.take("a", "b")
    with timing.phase("a"):
        with timing.phase("b"):
            sum(range(1000))
    assert timing.seconds("a") >= timing.seconds("b") > 0
    timing.add("c", 1.5)
    timing.add("c", 0.25)
    got = timing.take("a", "b", "c", "never")
    assert got["c"] == 1.75 and got["never"] == 0
    assert timing.take("a", "b", "c") == {"a": 0, "b": 0, "c": 0}


def test_analysis_and_train_json_carry_their_phases(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENBOUND_TIMING", "1")
    cfg = ["--model", "mlp", "--data", "digits", "--hidden", "24", "16", "--rank", "4", "--steps", "10",
           "--eval-samples", "20", "--quiet"]
    assert main(["train", *cfg, "--method", "lora", "--out", str(tmp_path / "lora"),
                 "--json", str(tmp_path / "t.json")]) == 0
    t = json.loads((tmp_path / "t.json").read_text())
    assert set(t["phases"]) == {"import", "work", "setup", "wall"}
    assert t["phases"]["work"] == round(t["timing"]["train_seconds"], 4)
    assert "genbound train timing: import" in capsys.readouterr().err
    assert main(["spectrum", "--ckpt", str(tmp_path / "lora"), "--json", str(tmp_path / "s.json")]) == 0
    p = json.loads((tmp_path / "s.json").read_text())["phases"]
    assert set(p) == {"import", "data", "model", "checkpoint", "initial_model", "work", "wall"}
    assert p["model"] > 0 and p["initial_model"] > 0 and p["work"] > 0
    parts = sum(v for k, v in p.items() if k != "wall")
    assert parts <= p["wall"] + 1e-3  # the phases do not overlap
    err = capsys.readouterr().err
    assert "genbound spectrum timing:" in err and " work " in err
    assert json.loads((tmp_path / "s.json").read_text())["peak_gpu_memory_bytes"] is None  # CPU: none to count


def test_the_gpu_peak_is_none_on_the_cpu_and_counts_a_tensor_on_cuda():
    import pytest
    import torch

    assert timing.gpu_peak(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        pytest.skip("the CUDA half needs a CUDA device")
    dev = torch.device("cuda")
    timing.reset_gpu_peak(dev)
    x = torch.empty(2**20, dtype=torch.float32, device=dev)  # 4 MiB
    assert timing.gpu_peak(dev) >= x.numel() * 4

"""`genbound study` over several processes: torchrun ranks (gloo, 2 CPU processes) claim runs, so every run is
done once, finished runs are left alone, a killed rank's run is taken over on restart, and rank 0 alone writes
the report; --shard under torchrun is one line."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from genbound import files
from genbound.cli import main
from genbound.study import grid, load_study, run_study
from ranks import run_ranks

STUDY = """
name = "ranks"
model = "mlp"
data = "digits"
methods = ["lora", "cla", "head"]
seeds = [0, 1]
ranks = [2]
runs = "{runs}"
report = "{report}"
[train]
steps = 12
save_every = 4
hidden = [16, 12]
eval_samples = 20
[analyses.compute]
"""
NAMES = ["lora-r2-s0", "lora-r2-s1", "cla-r2-s0", "cla-r2-s1", "head-s0", "head-s1"]


def write_study(folder: Path, name: str = "ranks") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(STUDY.format(runs=folder / "runs" / name, report=folder / "report" / name))
    return path


def _study(path: str, die_at_step: int | None = None):
    """One rank of `genbound study PATH`: its exit status, its stdout, and how often it wrote the report. With
    ``die_at_step`` rank 1 dies (os._exit, no clean-up) at that training step of the first run it trains."""
    from genbound import report
    from genbound.train import _Run

    calls = []
    real = report.write_comparison
    report.write_comparison = lambda *a, **k: (calls.append(a[1]), real(*a, **k))
    if die_at_step is not None and os.environ["RANK"] == "1":
        step = _Run.train_step

        def die(self):
            if self.step == die_at_step:
                sys.stdout.flush()
                os._exit(1)
            return step(self)

        _Run.train_step = die
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["study", path, "--quiet", "--device", "cpu"])
    return code, out.getvalue(), len(calls)


def _lines(text: str, what: str) -> Counter:
    """How often each run says ``NAME: what`` in a log."""
    return Counter(m.group(1) for m in re.finditer(rf"^(?:\[rank \d\] )?(\S+): {what}", text, re.M))


def _stamps(runs: Path) -> dict:
    return {p.parent.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs.glob("*/genbound.json")}


def _metrics(runs: Path) -> dict:
    """Each run's final metrics and its compute result (less the folder it names)."""
    return {p.parent.name: (json.loads(p.read_text())["metrics"],
                            {k: v for k, v in json.loads((p.parent / "analysis" / "compute.json").read_text()).items()
                             if k != "checkpoint"})
            for p in runs.glob("*/genbound.json")}


def test_two_ranks_do_each_run_once_leave_finished_runs_and_match_one_process(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    one = load_study(write_study(tmp_path, "one"))
    assert [r["name"] for r in grid(one)] == NAMES
    run_study(one, device="cpu", progress=False, log=lambda *a: None)  # the single-process reference
    path = write_study(tmp_path)
    runs = tmp_path / "runs" / "ranks"
    for name in ("lora-r2-s0", "head-s1"):  # finished beforehand
        shutil.copytree(tmp_path / "runs" / "one" / name, runs / name)
    before = _stamps(runs)
    out = run_ranks(_study, 2, str(path))
    assert [o[0] for o in out] == [0, 0], out
    assert [o[2] for o in out] == [1, 0]  # rank 0 alone wrote the report, once
    logs = [o[1] for o in out]
    for rank, log in enumerate(logs):  # each rank's lines start with its rank; rank 0 also says what it wrote
        assert log and all(line.startswith(f"[rank {rank}] ") for line in log.splitlines()
                           if not (rank == 0 and line.startswith("wrote "))), log
    assert "wrote " in logs[0] and "wrote " not in logs[1]
    trained = _lines("".join(logs), r"trained \(")
    assert trained == Counter({n: 1 for n in NAMES if n not in before}), logs  # every other run once
    assert all(_lines(log, "training") for log in logs), logs  # both ranks trained something
    assert {n: v for n, v in _stamps(runs).items() if n in before} == before  # bytes and mtime unchanged
    assert _metrics(runs) == _metrics(tmp_path / "runs" / "one")  # CPU training is deterministic
    result = json.loads((tmp_path / "report" / "ranks" / "results.json").read_text())
    assert sorted(Path(r["checkpoint"]).name for r in result["rows"]) == sorted(NAMES)


def test_a_killed_rank_s_run_is_taken_over_when_the_job_is_restarted(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    path = write_study(tmp_path)
    runs = tmp_path / "runs" / "ranks"
    with pytest.raises(Exception, match="exit"):  # rank 1 dies at step 6 (after a resume state at step 4)
        run_ranks(_study, 2, str(path), 6)
    cut = [d.name for d in runs.iterdir() if (d / "resume" / "state.pt").is_file()]
    assert cut, "the dead rank's run keeps its resume state"
    study = load_study(path)
    from genbound.study import finished

    done = {r["name"] for r in grid(study) if finished(study, r)}
    before = _stamps(runs)
    out = run_ranks(_study, 2, str(path))
    assert [o[0] for o in out] == [0, 0], out
    log = "".join(o[1] for o in out)
    assert all(n in _lines(log, "resuming") for n in cut), log
    assert _lines(log, r"trained \(") == Counter({n: 1 for n in NAMES if n not in done}), log
    assert {n: v for n, v in _stamps(runs).items() if n in before and n in done} == \
        {n: v for n, v in before.items() if n in done}
    assert all(finished(study, r) for r in grid(study))
    assert (tmp_path / "report" / "ranks" / "results.json").is_file()


def test_shard_under_torchrun_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["study", str(write_study(tmp_path)), "--shard", "0/2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shard 0/2" in err and "torchrun" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_run_killed_before_its_first_resume_state_starts_again(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    study = load_study(write_study(tmp_path))
    study.methods, study.seeds = ["head"], [0]
    out = tmp_path / "runs" / "ranks" / "head-s0"
    (out / "resume").mkdir(parents=True)
    from dataclasses import asdict

    from genbound.config import TrainConfig, normalized

    cfg = normalized(TrainConfig(**{**grid(study)[0]["config"], "device": "cpu"}))
    (out / "resume" / "config.json").write_text(json.dumps(asdict(cfg)))  # what a run killed after starting leaves
    (out / "metrics.jsonl").write_text("")
    said = []
    assert run_study(study, device="cpu", progress=False, log=said.append) == [out]
    assert said[:2] == ["head-s0: starting again (it stopped before its first resume state)",
                        "head-s0: training " + said[1].split("training ", 1)[1]]
    assert (out / "genbound.json").is_file() and not (out / "resume").exists()


def test_a_claim_is_exclusive_and_dropped_when_its_process_dies(tmp_path):
    path = tmp_path / ".claims" / "a.lock"
    path.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with files.lock(path, wait=False) as held:
            assert held is False
    finally:
        holder.kill()
        holder.wait()
    with files.lock(path, wait=False) as held:
        assert held is True
        with files.lock(path, wait=False) as again:  # another open file: excluded within one process too
            assert again is False


def test_torchrun_runs_a_study_on_two_ranks(tmp_path, monkeypatch):
    """The real launcher: `python -m torch.distributed.run --nproc-per-node 2 -m genbound study FILE`."""
    path = write_study(tmp_path)
    path.write_text(path.read_text().replace('["lora", "cla", "head"]', '["head"]').replace("[analyses.compute]", ""))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENBOUND_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(__import__("ranks").free_port()), "-m", "genbound", "study", str(path), "--quiet",
                           "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _lines(proc.stdout, r"trained \(") == Counter({"head-s0": 1, "head-s1": 1}), proc.stdout
    assert all(line[:8] in ("[rank 0]", "[rank 1]") for line in proc.stdout.splitlines()
               if not line.startswith("wrote ")), proc.stdout
    assert proc.stdout.count("wrote ") == 1, proc.stdout
    assert (tmp_path / "report" / "ranks" / "results.json").is_file()

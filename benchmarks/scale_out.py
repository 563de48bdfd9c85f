"""Scale-out: wall time of genbound's commands on 1, 2, 4, ... processes started by torchrun, as ratios to one
process measured in the same call, and the equality of their numbers with one process's.

    python benchmarks/scale_out.py --procs 1 2 --device cpu                  # gloo, CPU processes
    python benchmarks/scale_out.py --procs 1 2 4 8 --device cuda \\
        --model .carry/minilm16 --data wordnet --samples 8000 --study-runs 36  # one process per GPU (NCCL)

Four workloads, each launched as a user would (`python -m torch.distributed.run --nproc-per-node N -m genbound
...`), wall time from launch to exit:
- study: a fixed study (methods x seeds on the model and data given; train + compute per run), its runs claimed
  by the ranks; the comparison written by rank 0;
- hessian: top-5 eigenvalues and the trace of one checkpoint over --samples training examples;
- landscape: a 21 x 21 random-direction grid of one checkpoint over --samples examples;
- train: one run, data-parallel over the ranks (the global batch split).
Each workload's numbers at N processes are compared with N = 1's (largest relative difference). Results:
--out PREFIX.md and PREFIX.json (default reports/performance/scale_out_<device>).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = """name = "scale-out"
model = "{model}"
data = "{data}"
methods = {methods}
seeds = {seeds}
ranks = [{rank}]
runs = "{runs}"
report = "{report}"
[train]
epochs = 1
batch_size = {batch}
lr = 5e-4
n_train = {n_train}
[lr]
head = 5e-3
[analyses.compute]
"""


def genbound(nprocs: int, args: list[str], env: dict, log: Path) -> float:
    """Wall seconds of `torchrun --nproc-per-node N -m genbound ARGS`; a failure stops the benchmark."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
           "-m", "genbound", *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"scale_out: {' '.join(args[:1])} on {nprocs} processes failed (exit {rc}); see {log}")
    return seconds


def numbers(obj, prefix: str = "") -> dict[str, float]:
    """Every finite number in a JSON tree, by path (timings and memory left out: they are meant to differ)."""
    skip = ("time", "seconds", "peak", "memory", "wall", "_s", "environment", "created", "world", "phases")
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not any(s in str(k) for s in skip):
                out.update(numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


def max_rel_diff(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Largest |a - b| / max(|a|, 1e-12) over the paths both hold (None when they share none)."""
    common = [k for k in a if k in b]
    if not common:
        return None
    return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in common)


def study_numbers(runs: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for run in sorted(p for p in runs.iterdir() if (p / "genbound.json").is_file()):
        man = json.loads((run / "genbound.json").read_text())
        out.update(numbers(man.get("metrics", {}), f"{run.name}.metrics."))
        comp = run / "analysis" / "compute.json"
        if comp.is_file():
            out.update(numbers(json.loads(comp.read_text()), f"{run.name}.compute."))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (1 is always measured)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="tiny-bert")
    p.add_argument("--data", default="wordnet")
    p.add_argument("--samples", type=int, default=256, help="training examples of the Hessian and the landscape")
    p.add_argument("--n-train", type=int, default=512, help="training examples of every run")
    p.add_argument("--batch", type=int, default=32, help="global batch of the training runs")
    p.add_argument("--study-runs", type=int, default=4, help="runs of the fixed study (methods x seeds)")
    p.add_argument("--hessian-params", default="trainable", help="the Hessian's parameter set (all: the whole model)")
    p.add_argument("--work", default="runs/scale_out")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    procs = sorted(set([1] + a.procs))
    work = Path(a.work) / a.device
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "NCCL_NVLS_ENABLE": "0"}
    methods = ["lora", "cla", "asym", "c3la", "rcla", "full", "head", "cola", "rac", "rc3la", "lora_plus", "paca"]
    per = min(len(methods), a.study_runs)
    seeds = list(range(-(-a.study_runs // per)))
    train = ["--model", a.model, "--data", a.data, "--rank", "8", "--epochs", "1", "--batch-size", str(a.batch),
             "--n-train", str(a.n_train), "--device", a.device, "--quiet"]
    ck = work / "ckpt"
    print(f"scale_out: training the checkpoint the analyses read ({a.model}, {a.data})", flush=True)
    genbound(1, ["train", *train, "--method", "lora", "--out", str(ck)], env, work / "setup.log")
    rows, results = [], {}
    for n in procs:
        tag = f"n{n}"
        study = work / f"study-{tag}.toml"
        study.write_text(STUDY.format(model=a.model, data=a.data, methods=json.dumps(methods[:per]),
                                      seeds=json.dumps(seeds), rank=8, runs=work / f"runs-{tag}",
                                      report=work / f"report-{tag}", batch=a.batch, n_train=a.n_train))
        jobs = {
            "study": (["study", str(study), "--device", a.device, "--quiet"],
                      lambda t=tag: study_numbers(work / f"runs-{t}")),
            "hessian": (["hessian", "--ckpt", str(ck), "--top-k", "5", "--trace", "--samples", str(a.samples),
                         "--params", a.hessian_params,
                         "--device", a.device, "--quiet", "--json", str(work / f"hessian-{tag}.json")],
                        lambda t=tag: numbers(json.loads((work / f"hessian-{t}.json").read_text()))),
            "landscape": (["landscape", "--ckpt", str(ck), "--grid", "21", "--samples", str(a.samples),
                           "--device", a.device, "--out", str(work / f"landscape-{tag}"), "--quiet",
                           "--json", str(work / f"landscape-{tag}.json")],
                          lambda t=tag: numbers(json.loads((work / f"landscape-{t}.json").read_text()))),
            "train": (["train", *train, "--method", "lora", "--out", str(work / f"train-{tag}")],
                      lambda t=tag: numbers(json.loads((work / f"train-{t}" / "genbound.json").read_text())
                                            .get("metrics", {}))),
        }
        for name, (args, read) in jobs.items():
            print(f"scale_out: {name} on {n} process(es)", flush=True)
            seconds = genbound(n, args, env, work / f"{name}-{tag}.log")
            results.setdefault(name, {})[n] = {"seconds": seconds, "numbers": read()}
    for name, by_n in results.items():
        one = by_n[1]
        for n, r in by_n.items():
            speed = one["seconds"] / r["seconds"]
            rows.append({"workload": name, "processes": n, "seconds": round(r["seconds"], 2),
                         "speedup": round(speed, 3), "efficiency": round(speed / n, 3),
                         "max_rel_diff_vs_1": max_rel_diff(one["numbers"], r["numbers"])})
    out = Path(a.out or ROOT / "reports" / "performance" / f"scale_out_{a.device}")
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    env_info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                "device": torch.cuda.get_device_name(0) if a.device == "cuda" else platform.processor() or "cpu",
                "gpus": torch.cuda.device_count() if a.device == "cuda" else 0}
    setup = {k: getattr(a, k) for k in ("model", "data", "samples", "n_train", "batch", "study_runs", "hessian_params",
                                       "device")}
    out.with_suffix(".json").write_text(json.dumps({"setup": setup, "environment": env_info, "rows": rows}, indent=1))
    lines = [f"# Scale-out on {a.device} ({env_info['device']}, {env_info['cpus']} CPUs"
             + (f", {env_info['gpus']} GPUs" if a.device == "cuda" else "") + ")", "",
             f"`python benchmarks/scale_out.py --procs {' '.join(map(str, procs))} --device {a.device} --model "
             f"{a.model} --data {a.data} --samples {a.samples} --n-train {a.n_train} --study-runs {a.study_runs} "
             f"--hessian-params {a.hessian_params}`"
             ": each workload launched by torchrun, wall time from launch to exit (start-up included); speed-up = "
             "one process's time / N processes' time, measured in the same call; efficiency = speed-up / N; the "
             "last column compares every number of the N-process result with one process's.", "",
             "| workload | processes | wall s | speed-up | efficiency | max relative difference vs 1 process |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r["max_rel_diff_vs_1"] is None else f"{r['max_rel_diff_vs_1']:.2e}"
        lines.append(f"| {r['workload']} | {r['processes']} | {r['seconds']:.1f} | {r['speedup']:.2f} | "
                     f"{r['efficiency']:.2f} | {diff} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

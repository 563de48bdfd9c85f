"""Kendall tau and Psi against scipy and brute force; compare and study on tiny checkpoints."""

import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from genbound.cli import main
from genbound.compare import bootstrap_tau, granulated_psi, kendall_tau
from genbound.errors import GenboundError
from genbound.report import render_report
from genbound.compare import compare
from genbound.study import grid, load_study, run_study


def brute_force_tau(mu, gap):
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    pairs = list(itertools.combinations(range(len(mu)), 2))
    return sum(sign(mu[i] - mu[j]) * sign(gap[i] - gap[j]) for i, j in pairs) / len(pairs)


@pytest.mark.parametrize("mu, gap", [
    ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
    ([0.3, 0.1, 0.9, 0.4, 0.2, 0.8], [1, 5, 2, 6, 4, 3]),
    ([1, 1, 2, 2, 3], [1, 2, 2, 3, 3]),  # ties on both sides
    ([5, 5, 5, 1], [1, 2, 3, 4]),
])
def test_kendall_tau_against_brute_force_and_scipy(mu, gap):
    assert kendall_tau(mu, gap) == pytest.approx(brute_force_tau(mu, gap), abs=1e-12)
    if len(set(mu)) == len(mu) and len(set(gap)) == len(gap):  # without ties tau-a is scipy's tau-b
        assert kendall_tau(mu, gap) == pytest.approx(kendalltau(mu, gap).statistic, abs=1e-12)
    else:  # with ties tau-a is smaller in size than tau-b: n_pairs >= sqrt((n0 - n1)(n0 - n2))
        assert abs(kendall_tau(mu, gap)) <= abs(kendalltau(mu, gap).statistic) + 1e-12
    assert math.isnan(kendall_tau([1], [2]))


def test_granulated_psi_by_hand():
    rows = [{"method": m, "rank": r, "seed": 0, "mu": mu, "g": g}
            for (m, r, mu, g) in [("a", 4, 1, 1), ("b", 4, 2, 2), ("c", 4, 3, 1.5),
                                  ("a", 8, 1, 3), ("b", 8, 2, 1)]]
    out = granulated_psi(rows, "mu", "g", ("method", "rank", "seed"))
    # method axis: group r=4 has tau (1 - 1 + 1)/3 = 1/3... pairs (a,b)+, (a,c)+, (b,c)- -> 1/3; group r=8: -1
    assert out["per_axis"]["method"] == pytest.approx((1 / 3 - 1) / 2)
    # rank axis: method a (mu equal) -> 0; method b -> mu equal -> 0; method c alone -> no group
    assert out["per_axis"]["rank"] == 0.0 and out["groups"]["rank"] == 2
    assert math.isnan(out["per_axis"]["seed"]) and out["groups"]["seed"] == 0
    assert out["psi"] == pytest.approx(((1 / 3 - 1) / 2 + 0) / 2)


def test_granulated_psi_on_a_grid_against_brute_force():
    """3 methods x 2 ranks x 3 seeds of random numbers, one row missing: every axis's groups written out and
    each group's tau by brute force (and by scipy where nothing ties)."""
    rng = np.random.default_rng(7)
    rows = [{"method": m, "rank": r, "seed": s, "mu": float(rng.normal()), "g": float(rng.normal())}
            for m in "abc" for r in (4, 16) for s in range(3)][1:]
    axes = ("method", "rank", "seed")
    out = granulated_psi(rows, "mu", "g", axes)
    expected = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        keys = {tuple(r[a] for a in others) for r in rows}
        taus = []
        for key in keys:
            group = [r for r in rows if tuple(r[a] for a in others) == key]
            if len({r[axis] for r in group}) >= 2:
                mu, g = [r["mu"] for r in group], [r["g"] for r in group]
                taus.append(brute_force_tau(mu, g))
                if len(group) > 2:
                    assert taus[-1] == pytest.approx(kendalltau(mu, g).statistic, abs=1e-12)
        expected[axis] = (np.mean(taus), len(taus))
    for a in axes:
        assert out["per_axis"][a] == pytest.approx(expected[a][0], abs=1e-12) and out["groups"][a] == expected[a][1]
    assert out["groups"] == {"method": 6, "rank": 8, "seed": 6}  # the missing row removes one rank group
    assert out["psi"] == pytest.approx(np.mean([v[0] for v in expected.values()]))


def test_bootstrap_resamples_whole_seeds():
    """Against the procedure written out with the brute-force tau: 1000 draws of 3 seeds with replacement
    (random.Random(0)), every row of a drawn seed kept, the 2.5% and 97.5% quantiles. Seeds disagree here, so
    the interval is wide, and a row-level bootstrap or a (tau, tau) stub would not match."""
    rng = np.random.default_rng(3)
    rows = [{"seed": s, "mu": float(rng.normal()), "g": i + float(rng.normal()) * (1 + s)}
            for s in range(3) for i in range(6)]
    lo, hi = bootstrap_tau(rows, "mu", "g")
    draw = random.Random(0)
    taus = []
    for _ in range(1000):
        sample = [r for s in draw.choices([0, 1, 2], k=3) for r in rows if r["seed"] == s]
        taus.append(brute_force_tau([r["mu"] for r in sample], [r["g"] for r in sample]))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(taus, [0.025, 0.975])), abs=1e-12)
    assert hi - lo > 0.2


def test_bootstrap_interval_contains_tau_for_consistent_seeds():
    rows = [{"seed": s, "mu": i + 0.1 * s, "g": i} for s in range(4) for i in range(5)]
    lo, hi = bootstrap_tau(rows, "mu", "g")
    t = kendall_tau([r["mu"] for r in rows], [r["g"] for r in rows])
    assert lo <= t <= hi and hi <= 1.0
    one_seed = bootstrap_tau([r for r in rows if r["seed"] == 0], "mu", "g")
    assert all(math.isnan(x) for x in one_seed)  # one seed: nothing to resample


STUDY = """
name = "tiny"
model = "mlp"
data = "digits"
methods = ["lora", "cla", "c3la", "head"]
seeds = [0, 1]
ranks = [2]
chain = 2
runs = "{runs}"
report = "{report}"
[train]
steps = 12
hidden = [16, 12]
eval_samples = 20
[analyses.compute]
compress = true
compress_bits = [2]
schemes = ["uniform"]
[analyses.spectrum]
intruders = true
[analyses.landscape]
grid = 3
samples = 20
[analyses.certify]
prior = "data"
prior_epochs = 1
epochs = 1
samples = 2
sigma_prior = [0.01]
"""


def write_study(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY.format(runs=tmp_path / "runs", report=tmp_path / "report"))
    return path


def test_study_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    path = write_study(tmp_path)
    study = load_study(path)
    names = [r["name"] for r in grid(study)]
    assert names == ["lora-r2-s0", "lora-r2-s1", "cla-r2-s0", "cla-r2-s1", "c3la-r2-s0", "c3la-r2-s1",
                     "head-s0", "head-s1"]
    assert main(["study", str(path), "--quiet"]) == 0
    report = tmp_path / "report"
    for f in ("README.md", "results.json", "methods.png", "measures-gap_01.png", "intruders.png", "landscapes.png",
              "certificate.png"):
        assert (report / f).is_file(), f
    result = json.loads((report / "results.json").read_text())
    assert len(result["rows"]) == 8 and "compression_bound|gap_01" in result["ranking"]
    assert "pac_bayes_certificate|gap_01" in result["ranking"] and "pac_bayes_certificate|gap_ce" in result["ranking"]
    assert all(r["stochastic_test_err"] is not None for r in result["rows"])
    for t in result["ranking"].values():  # every tau of the report, by brute force over its rows
        pts = [r for r in result["rows"] if r[t["measure"]] is not None]
        assert t["n"] == len(pts) >= 6
        assert t["tau"] == pytest.approx(brute_force_tau([r[t["measure"]] for r in pts],
                                                         [r[t["gap"]] for r in pts]), abs=1e-12)
    from genbound.report import landscapes_of

    assert sorted(landscapes_of(result["rows"])) == ["c3la-r2-s0", "cla-r2-s0", "head-s0", "lora-r2-s0"]
    text = (report / "README.md").read_text()
    assert "| train s | peak MiB |" in text and "| head-s0 | head | - | 1 | 0 |" in text  # no rank for head-only
    assert "No Theorem-1 bound" in text  # the tiny study computes with the 0-1 loss
    # resumed: nothing is trained or analysed again
    import genbound.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("analysis/*.json")}
    run_study(study, progress=False, log=lambda *a: None)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("analysis/*.json")} == stamps
    assert run_study(study, progress=False, log=lambda *a: None, shard=(0, 2)) == []  # finished runs: no share
    (tmp_path / "runs" / "cla-r2-s1" / "analysis" / "spectrum.json").unlink()
    assert [p.name for p in run_study(study, progress=False, log=lambda *a: None, shard=(0, 2))] == ["cla-r2-s1"]


def test_compare_ranks_the_theorem1_bound_when_computed_for_ce(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    path = write_study(tmp_path)
    path.write_text(path.read_text().replace("compress = true", 'loss = "ce"\nsmoothing = 0.1')
                    .replace('methods = ["lora", "cla", "c3la", "head"]', 'methods = ["lora", "cla"]'))
    study = load_study(path)
    study.analyses = {"compute": study.analyses["compute"]}
    dirs = run_study(study, progress=False, log=lambda *a: None)
    result = compare(dirs)
    for r, d in zip(result["rows"], dirs):
        assert r["log10_theorem1"] == json.loads((d / "analysis" / "compute.json").read_text())["log10_theorem1_bound"]
    assert result["ranking"]["log10_theorem1|gap_ce"]["n"] == 4
    assert "No Theorem-1 bound" not in render_report(result, "t")


def test_an_interrupted_run_is_resumed(tmp_path, interrupt_training):
    study = load_study(write_study(tmp_path))
    study.methods, study.seeds, study.analyses = ["cla"], [0], {}
    undo = interrupt_training(5)
    with pytest.raises(GenboundError, match="--resume"):
        run_study(study, progress=False, log=lambda *a: None)
    undo()
    said = []
    run_study(study, progress=False, log=said.append)
    assert said[0] == "cla-r2-s0: resuming" and said[1].startswith("cla-r2-s0: trained (") and len(said) == 2
    assert (tmp_path / "runs" / "cla-r2-s0" / "genbound.json").is_file()


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.replace('methods = ["lora", "cla", "c3la", "head"]', 'methods = ["lora", "qlora"]'), "unknown method"),
    (lambda s: s.replace("[train]", "[train]\nlearning_rate = 3"), "unknown option(s) ['learning_rate']"),
    (lambda s: s.replace("[train]", "[train]\nmethod = 'x'"), "may not set"),
    (lambda s: s + "\n[analyses.curvature]\n", "unknown analysis"),
    (lambda s: s.replace("seeds = [0, 1]", "seeds = 0"), "seeds must be a non-empty list"),
    (lambda s: s.replace("chain = 2", "chain = 2\nchains = 3"), "unknown key(s) ['chains']"),
    (lambda s: s.replace('name = "tiny"', "name = "), "not valid TOML"),
    (lambda s: s.replace("[analyses.compute]", "[analyses.compute]\nbits_per_number = 3"), "unknown option"),
])
def test_malformed_study_files_are_refused(tmp_path, edit, words):
    path = write_study(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(GenboundError) as err:
        load_study(path)
    assert words in str(err.value)


def test_compare_refuses_mixed_bases_and_tasks(tmp_path):
    from genbound.train import TrainConfig, train

    for name, hidden in (("a", [16, 12]), ("b", [12, 12])):
        train(TrainConfig(model="mlp", data="digits", hidden=hidden, method="cla", rank=2, steps=3, eval_samples=10),
              tmp_path / name, progress=False)
    with pytest.raises(GenboundError, match="mix 2"):
        compare([tmp_path / "a", tmp_path / "b"])


def test_compare_computes_missing_analyses(tmp_path, monkeypatch, capsys):
    from genbound.train import TrainConfig, train

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    dirs = []
    for method, seed in (("lora", 0), ("lora", 1), ("head", 0)):
        dirs.append(tmp_path / f"{method}{seed}")
        train(TrainConfig(model="mlp", data="digits", hidden=[16, 12], method=method, rank=2, steps=5, seed=seed,
                          eval_samples=10), dirs[-1], progress=False)
    args = [str(d) for d in dirs]
    assert main(["compare", *args, "--out", str(tmp_path / "r0"), "--analyses", "none", "--quiet"]) == 0
    assert not any((d / "analysis").exists() for d in dirs)  # none: read only
    assert main(["compare", *args, "--out", str(tmp_path / "r1"), "--analyses", "curvature"]) == 2
    assert "unknown analysis" in capsys.readouterr().err
    assert main(["compare", *args, "--out", str(tmp_path / "r2")]) == 0  # default: compute and spectrum
    assert sorted(p.name for p in (dirs[0] / "analysis").iterdir()) == ["compute.json", "spectrum.json"]
    assert sorted(p.name for p in (dirs[2] / "analysis").iterdir()) == ["compute.json"]  # head: no spectrum
    result = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert all(r["paper_bound"] is not None for r in result["rows"])
    assert main(["compare", args[0], "--out", str(tmp_path / "r3"), "--quiet"]) == 0  # one checkpoint
    assert "nothing to rank" in (tmp_path / "r3" / "README.md").read_text()


def test_every_shipped_study_file_is_valid():
    files = sorted(Path(__file__).resolve().parents[1].joinpath("analysis").glob("*.toml"))
    assert files
    for f in files:
        study = load_study(f)
        assert grid(study) and study.report.startswith("reports/")


def test_shards_split_the_grid_seed_first_and_cover_it_once(tmp_path):
    from genbound.study import shard_of

    runs = grid(load_study(write_study(tmp_path)))
    shards = [shard_of(runs, (i, 3)) for i in range(3)]
    names = sorted(r["name"] for s in shards for r in s)
    assert names == sorted(r["name"] for r in runs)
    assert [s[0]["name"] for s in shards] == ["lora-r2-s0", "cla-r2-s0", "c3la-r2-s0"]  # seed 0 first
    left = [shard_of(runs, (i, 3), lambda r: r["name"] != "c3la-r2-s1") for i in range(3)]
    assert [[r["name"] for r in s] for s in left] == [["c3la-r2-s1"], [], []]  # what is left is dealt afresh
    with pytest.raises(GenboundError, match="shard"):
        shard_of(runs, (3, 3))
    assert main(["study", str(tmp_path / "tiny.toml"), "--shard", "x"]) == 2


def test_shards_started_together_pretrain_the_base_once(tmp_path):
    """Two processes on one study with [pretrain] (as gpu-study.sh or a job array starts them): one pretrains, the
    other waits for the base and uses it; both runs are fine-tuned from that one base."""
    import subprocess
    import sys

    (tmp_path / "s.toml").write_text(
        'name = "two"\nmodel = "runs/base"\ndata = "digits"\nmethods = ["lora"]\nseeds = [0, 1]\nranks = [2]\n'
        '[pretrain]\nmodel = "mlp"\ndata = "digits@0-4"\nhidden = [16]\nsteps = 40\nbatch_size = 32\n'
        '[train]\nsteps = 3\nbatch_size = 32\n')
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "genbound", "study", "s.toml", "--shard", f"{i}/2",
                               "--device", "cpu"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum("pretraining the base" in log for log in logs) == 1, logs
    shas = {json.loads(p.read_text())["base"]["sha256"] for p in (tmp_path / "runs/two").glob("*/genbound.json")}
    assert len(shas) == 1 and len(list((tmp_path / "runs/two").glob("*/genbound.json"))) == 2


def test_runs_from_another_base_are_drift(tmp_path, monkeypatch):
    """A study's base pretrained again (other weights) under finished runs: the runs are refused as
    made from another base instead of being mixed with runs from the new one."""
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(
        'name = "b"\nmodel = "runs/base"\ndata = "digits"\nmethods = ["lora"]\nseeds = [0]\nranks = [2]\n'
        '[pretrain]\nmodel = "mlp"\ndata = "digits@0-4"\nhidden = [16]\nsteps = 20\nbatch_size = 32\n'
        '[train]\nsteps = 2\nbatch_size = 32\n')
    study = load_study(tmp_path / "s.toml")
    run_study(study, device="cpu", progress=False, log=lambda *a: None)
    from genbound.study import drift

    assert drift(study, grid(study)) == []
    meta = json.loads((tmp_path / "runs/base/genbound-base.json").read_text())
    run = json.loads((tmp_path / "runs/b/lora-r2-s0/genbound.json").read_text())
    assert meta["state_sha256"] == run["base"]["sha256"]  # what a run records of its base, recorded by pretrain
    shutil.rmtree(tmp_path / "runs/base")
    from genbound.config import TrainConfig
    from genbound.train import pretrain

    pretrain(TrainConfig(**{**study.pretrain, "seed": 1}), "runs/base", progress=False)  # other weights
    found = drift(study, grid(study))
    assert any(d.startswith("lora-r2-s0 (") and "another base" in d for d in found), found

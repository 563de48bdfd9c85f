"""`genbound certify` end to end on tiny MLP checkpoints (docs/theory.md section 5d): the certificate's numbers
recomputed independently from its JSON (scipy), its relation to the measured errors, the data-dependent prior's
split, determinism, random labels, the command line, and the measures in compare and its report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy import optimize, stats

import genbound
from genbound.cli import main

FAST = {"samples": 8, "epochs": 1, "sigma_prior": [0.01, 0.03], "batch_size": 256, "eval_batch_size": 2048}


def kl_inverse_brentq(q: float, c: float) -> float:
    kl = lambda p: float(stats.entropy([q, 1 - q], [p, 1 - p]))  # noqa: E731
    return 1.0 if kl(1 - 1e-15) <= c else optimize.brentq(lambda p: kl(p) - c, q, 1 - 1e-15, xtol=1e-14)


def train(out, *extra):
    args = ["train", "--model", "mlp", "--data", "digits", "--hidden", "32", "--method", "full", "--lr", "1e-2",
            "--n-train", "400", "--n-test", "300", "--quiet", "--out", str(out), *extra]
    assert main(args) == 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("certify") / "full"
    train(out, "--steps", "150")
    return out


@pytest.fixture(scope="module")
def loaded(ckpt):
    return genbound.load(ckpt)


def test_certificate_recomputed_from_its_json(loaded):
    r = genbound.analyse(loaded, "certify", **FAST).data
    assert r["schema"] == "genbound.certify/1" and r["method"] == "full" and r["prior"] == "init"
    assert r["n"] == r["n_train"] == 400 and r["n_prior"] == 0 and r["n_test"] == 300
    assert r["numbers"] == sum(p.numel() for p in loaded.model.parameters())  # full: every weight is in Q
    assert r["priors_tried"] == 2 and r["delta_each"] == 0.025 / 2 and r["delta_prime_each"] == 0.01 / 2
    assert r["confidence"] == pytest.approx(1 - 0.025 - 0.01)
    # a predictor a batch of 32: 400 examples are 13 batches a pass, 12 full and one of 16 (416 places, 400 filled)
    assert r["draw_batch"] == 32 and r["sample_units"] == r["samples"] * 13
    units, fill = r["samples"] * 13, 400 / 416
    for t in r["tried"]:  # each tried posterior, recomputed with scipy from its own numbers
        stage1 = min(1.0, kl_inverse_brentq(fill * t["stochastic_train_err"],
                                            math.log(2 / r["delta_prime_each"]) / units) / fill)
        budget = (t["kl"] + math.log(2 * math.sqrt(r["n"]) / r["delta_each"])) / r["n"]
        assert t["train_err_bound"] == pytest.approx(stage1, abs=1e-9)
        assert t["certificate"] == pytest.approx(kl_inverse_brentq(stage1, budget), abs=1e-9)
        assert 0 <= t["stochastic_train_err"] <= t["train_err_bound"] <= t["certificate"] <= 1
        assert t["kl"] > 0 and t["kl_over_n"] == pytest.approx(t["kl"] / r["n"])
    best = min(r["tried"], key=lambda t: t["certificate"])
    assert r["certificate"] == best["certificate"] and r["sigma_prior"] == best["sigma_prior"]
    assert 0 <= r["stochastic_test_err"] <= 1 and 0 <= r["mean_test_err"] <= 1
    # the checkpoint's own test error as its manifest records it
    assert r["checkpoint_test_err"] == pytest.approx(1 - loaded.manifest["metrics"]["test_acc"], abs=1e-9)
    res = genbound.analyse(loaded, "certify", **FAST)
    assert res.measures()["pac_bayes_certificate"] == r["certificate"]
    # deterministic given the seed; another seed draws other predictors
    assert res.data["tried"] == r["tried"]
    other = genbound.analyse(loaded, "certify", **{**FAST, "seed": 1}).data
    assert other["tried"] != r["tried"]


def test_one_draw_a_pass_is_the_per_pass_bound(loaded):
    """--draw-batch at least n: one predictor a pass, K = m units, c = 1, the bound of Langford & Caruana with m."""
    r = genbound.analyse(loaded, "certify", **{**FAST, "sigma_prior": [0.01], "draw_batch": 400}).data
    assert r["sample_units"] == r["samples"] == 8 and r["draw_fill"] == 1.0
    t = r["tried"][0]
    assert t["train_err_bound"] == pytest.approx(
        kl_inverse_brentq(t["stochastic_train_err"], math.log(2 / 0.01) / 8), abs=1e-9)


def test_kl_is_the_gaussian_kl_of_the_posterior_it_reports(loaded):
    """With no training the posterior is N(checkpoint, sigma_P^2): KL = ||theta - theta_0||^2 / (2 sigma_P^2),
    recomputed from the checkpoint and the model before training (float64)."""
    r = genbound.analyse(loaded, "certify", **{**FAST, "epochs": 0, "sigma_prior": [0.05]}).data
    init = dict(loaded.initial().model.named_parameters())
    sq = sum(float(((p.detach().double() - init[n].detach().double()) ** 2).sum())
             for n, p in loaded.model.named_parameters())
    assert r["kl"] == pytest.approx(sq / (2 * 0.05**2), rel=1e-9)
    assert r["tried"][0]["kl_start"] == r["kl"] and r["tried"][0]["objective_last"] is None


def test_data_prior_uses_only_the_rest(loaded):
    opts = {**FAST, "prior": "data", "prior_fraction": 0.25, "prior_epochs": 20, "prior_lr": 1e-2,
            "epochs": 0}
    r = genbound.analyse(loaded, "certify", **opts).data
    assert r["n_prior"] == 100 and r["n"] == 300 and r["n_prior"] + r["n"] == r["n_train"]
    ex = r["examples"]
    perm = torch.randperm(400, generator=genbound.runtime.generator(0, "pac-bayes", "prior split"))
    cert = sorted(perm[100:].tolist())
    import hashlib
    assert ex["certificate_sha256"] == hashlib.sha256(",".join(map(str, cert)).encode()).hexdigest()
    assert r["prior_mean_test_err"] < 0.85  # the prior learned something from its 100 examples
    # the prior does not depend on the certificate's examples: relabel them, the prior is unchanged
    y = loaded.task.train.y
    saved = y.clone()
    try:
        idx = torch.tensor(cert)
        y[idx] = y[idx.flip(0)]
        again = genbound.analyse(loaded, "certify", **opts).data
    finally:
        y.copy_(saved)
    assert again["prior_mean_test_err"] == r["prior_mean_test_err"]
    assert again["stochastic_train_err"] != r["stochastic_train_err"]  # the certificate's examples did change


def test_trained_posterior_and_the_kl_objective(loaded):
    """Both objectives move the posterior. Started at the prior (KL 0), the kl^-1 objective is far from
    saturated, so its gradient through the inversion is not zero (at the checkpoint, with KL / n large, kl^-1 is
    about 1 and flat)."""
    for objective, start in (("kl", "prior"), ("fquad", "checkpoint"), ("fclassic", "checkpoint")):
        r = genbound.analyse(loaded, "certify", **{**FAST, "objective": objective, "epochs": 2, "start": start,
                                                   "variance": "tensor", "lr": 1e-2}).data
        assert all(math.isfinite(t["objective_last"]) for t in r["tried"])
        assert all(t["kl"] != t["kl_start"] for t in r["tried"]), objective  # the posterior moved
        assert r["stochastic_train_err"] <= r["certificate"] <= 1


def test_random_labels_are_not_certified(tmp_path, one_thread):
    """Labels permuted at random: the network fits some of them, but the certificate must stay near chance."""
    from genbound.data import load_task as real

    def shuffled(*args, **kwargs):
        task = real(*args, **kwargs)
        for split in (task.train, task.test):
            split.y = split.y[torch.randperm(len(split.y), generator=torch.Generator().manual_seed(7))]
        return task

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("genbound.train.load_task", shuffled)
        mp.setattr("genbound.checkpoint.load_task", shuffled)
        train(tmp_path / "rnd", "--steps", "400", "--hidden", "128", "--n-train", "200")
        loaded = genbound.load(tmp_path / "rnd")
        r = genbound.analyse(loaded, "certify", **FAST).data
    train_err = 1 - loaded.manifest["metrics"]["train_acc"]
    assert train_err < 0.5  # memorised a good part of the random labels
    assert r["checkpoint_test_err"] > 0.75  # and learned nothing
    assert r["certificate"] > 0.8, r  # chance is 0.9


def test_command_line_and_bad_options(ckpt, tmp_path, capsys):
    out = tmp_path / "c.json"
    args = ["certify", "--ckpt", str(ckpt), "--samples", "4", "--epochs", "1", "--sigma-prior", "0.02",
            "--quiet", "--json", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["schema"] == "genbound.certify/1" and r["options"]["sigma_prior"] == [0.02] and r["draw_batch"] == 32
    assert "certified test error of the stochastic predictor" in capsys.readouterr().out
    for bad, words in ((["--prior", "posterior"], "--prior posterior"), (["--prior-fraction", "1"], "prior-fraction"),
                       (["--delta", "0.6", "--delta-prime", "0.5"], "no confidence"),
                       (["--sigma-prior", "0.01", "0.01"], "twice"), (["--objective", "mse"], "--objective"),
                       (["--kind", "occam"], "--kind"), (["--samples", "0"], "--samples"),
                       (["--draw-batch", "0"], "--draw-batch")):
        assert main([*args[:3], *bad, "--quiet"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and words in err[0], err


def test_compare_ranks_the_certificate_and_the_report_draws_it(ckpt, tmp_path):
    from genbound import compare, report

    runs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        train(out, "--steps", "60", "--seed", str(seed))
        (out / "analysis").mkdir()
        r = genbound.analyse(genbound.load(out), "certify", **FAST)
        (out / "analysis" / "certify.json").write_text(json.dumps(r.data))
        runs.append(out)
    res = compare.compare(runs)
    for row in res["rows"]:
        stored = json.loads((tmp_path / row["checkpoint"] / "analysis" / "certify.json").read_text())
        assert row["pac_bayes_certificate"] == stored["certificate"]
        assert row["pac_bayes_kl_over_n"] == pytest.approx(stored["kl"] / stored["n"])
    t = res["ranking"]["pac_bayes_certificate|gap_01"]
    assert t["n"] == 2 and t["tau"] in (-1.0, 0.0, 1.0) and len(t["tau_ci95_seed_bootstrap"]) == 2
    assert "pac_bayes_certificate|gap_ce" in res["ranking"]
    report.write_comparison(res, tmp_path / "report", "t")
    text = (tmp_path / "report" / "README.md").read_text()
    assert "PAC-Bayes certificate" in text and (tmp_path / "report" / "certificate.png").is_file()
    assert "certificate.png" in text
    # a certificate at or above the majority-class error is marked vacuous, below it not
    for row, value in zip(res["rows"], (0.95, 0.5)):
        row.update(pac_bayes_certificate=value, majority_err=0.9)
    text = report.render_report(res, "t")
    every = text[text.index("## Every checkpoint"):]
    lines = [line for line in every.splitlines() if line.startswith("| s")]
    assert "0.950 (vacuous)" in lines[0] and "0.500 |" in lines[1] and "vacuous" not in lines[1]

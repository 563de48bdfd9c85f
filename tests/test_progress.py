"""Progress bars of the analyses: each bar's total is the work the analysis then does (compute's evaluation batches
and quantization-aware steps, the landscape's grid points, certify's draws), or at least it (the Hessian's data
passes: Lanczos may stop early); no bar without progress (--quiet, other ranks, the Python API)."""

from __future__ import annotations

import pytest
import tqdm

from genbound import checkpoint, compute, certify, landscape, progress
from genbound.hessian import analysis as hessian
from genbound.train import TrainConfig, train

TINY = dict(model="mlp", data="digits", hidden=[24, 16], rank=4, alpha=8, eval_samples=50, steps=20, lr=1e-2)


class Bar:
    made: list[Bar] = []

    def __init__(self, total=None, **_):
        self.total, self.n = total, 0
        Bar.made.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        pass


@pytest.fixture
def bars(monkeypatch):
    Bar.made = []
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    monkeypatch.setattr(hessian, "tqdm", Bar)
    return Bar.made


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    ck = tmp_path_factory.mktemp("prog") / "lora"
    train(TrainConfig(**TINY, method="lora"), ck, progress=False)
    return checkpoint.load(ck)


def test_compute_counts_every_evaluation_batch_and_qat_step(loaded, bars):
    opts = compute.ComputeOptions(compress=True, compress_bits=[2, 3], schemes=["uniform"], qat_steps=4,
                                  batch_size=100)
    compute.run(loaded, opts, progress=True)
    passes = -(-len(loaded.task.train) // 100) + -(-len(loaded.task.test) // 100)
    assert [b.total for b in bars] == [passes * 2 + 2 * (4 + passes)]  # the model, the base, 2 codes
    assert bars[0].n == bars[0].total


def test_landscape_counts_its_grid_points_and_certify_its_draws(loaded, bars):
    landscape.run(loaded, landscape.LandscapeOptions(grid=5, samples=40, chunk=7), progress=True)
    assert bars[0].total == bars[0].n == 1 + 25
    opts = certify.CertifyOptions(prior="data", prior_epochs=1, epochs=0, sigma_prior=[0.01, 0.03], samples=2,
                                  draw_batch=64)
    certify.run(loaded, opts, progress=True)
    n = len(loaded.task.train) - round(0.5 * len(loaded.task.train))
    assert bars[1].total == bars[1].n == 2 * 2 * (-(-n // 64) + -(-len(loaded.task.test) // 64))


@pytest.mark.parametrize("block", [1, 3])
def test_the_hessian_bar_bounds_its_data_passes(loaded, bars, block):
    opts = hessian.HessianOptions(top_k=3, trace=True, samples=64, batch=32, probes=9, probe_batch=2, block=block,
                                  lanczos_steps=20)
    hessian.run(loaded, opts, progress=True)
    assert 1 <= bars[0].n <= bars[0].total == hessian.pass_bound(opts)


def test_no_bar_without_progress_and_ticks_without_a_bar_do_nothing(loaded, bars):
    compute.run(loaded, compute.ComputeOptions(), progress=False)
    landscape.run(loaded, landscape.LandscapeOptions(grid=3, samples=20), progress=False)
    assert bars == [] and not progress.is_open()
    progress.tick(5)  # no bar open: nothing happens
    with progress.work(3, "x", enabled=True):
        with progress.work(9, "inner", enabled=True):  # one bar at a time: the inner one adds none
            progress.tick(3)
    assert len(bars) == 1 and bars[0].n == 3

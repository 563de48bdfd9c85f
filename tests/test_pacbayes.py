"""The PAC-Bayes formulas (genbound/pacbayes.py, docs/theory.md section 5d) against independent oracles: scipy's
root finding for kl^-1, finite differences for its implicit gradient, the exact binomial tail for the sample
convergence bound, Monte Carlo and torch.distributions for the Gaussian KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from genbound import pacbayes
from genbound.errors import GenboundError


def kl_scipy(q: float, p: float) -> float:
    return float(stats.entropy([q, 1 - q], [p, 1 - p]))


def kl_inverse_brentq(q: float, c: float) -> float:
    """The largest p in [q, 1) with kl(q || p) = c, by scipy's brentq on the entropy of scipy.stats."""
    if kl_scipy(q, 1 - 1e-15) <= c:
        return 1.0
    return optimize.brentq(lambda p: kl_scipy(q, p) - c, q, 1 - 1e-15, xtol=1e-14)


@pytest.mark.parametrize("q", [0.0, 0.01, 0.1, 0.37, 0.8, 0.99])
@pytest.mark.parametrize("c", [1e-4, 0.01, 0.2, 1.5])
def test_kl_inverse_against_brentq(q, c):
    p = pacbayes.kl_inverse(q, c)
    oracle = kl_inverse_brentq(q, c)
    assert p >= oracle - 1e-12 and p - oracle < 1e-9  # rounded up, never below
    t = pacbayes.kl_inverse_t(torch.tensor(q, dtype=torch.float64), torch.tensor(c, dtype=torch.float64))
    assert float(t) == pytest.approx(oracle, abs=1e-9)


@pytest.mark.parametrize("q,c", [(0.05, 0.01), (0.2, 0.05), (0.4, 0.3), (0.7, 0.02), (0.0, 0.1)])
def test_kl_inverse_gradient_against_finite_differences(q, c):
    qt = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    ct = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    pacbayes.kl_inverse_t(qt, ct).backward()
    h = 1e-6
    dc = (kl_inverse_brentq(q, c + h) - kl_inverse_brentq(q, c - h)) / (2 * h)
    assert float(ct.grad) == pytest.approx(dc, rel=1e-4)
    if q > 0:
        dq = (kl_inverse_brentq(q + h, c) - kl_inverse_brentq(q - h, c)) / (2 * h)
        assert float(qt.grad) == pytest.approx(dq, rel=1e-4)
    # a saturated inverse (p = 1) has no slope
    qs, cs = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.5, 50.0))
    pacbayes.kl_inverse_t(qs, cs).backward()
    assert float(qs.grad) == 0 and float(cs.grad) == 0


def test_sample_convergence_bound_against_the_exact_binomial_tail():
    """For m Bernoulli draws with k errors, the Clopper-Pearson upper limit at level delta' is the p with
    P(Bin(m, p) <= k) = delta'. The Chernoff form kl^-1(k/m, ln(2/delta')/m) must lie above it (it is valid) and
    close to it."""
    dp = 0.01
    for m in (100, 1000, 10000):
        for k in {0, 1, m // 20, m // 4, m // 2, m - 1}:
            bound = pacbayes.sample_convergence_bound(k / m, m, dp)
            cp = 1.0 if k == m else float(stats.beta.ppf(1 - dp, k + 1, m - k))
            assert bound >= cp - 1e-12, (m, k)
            assert stats.binom.cdf(k, m, bound) <= dp  # the exact tail at the bound is below delta'
            assert bound - cp < 0.5 / math.sqrt(m), (m, k, bound, cp)  # measured: at most 0.40 / sqrt(m)


def test_gaussian_kl_against_torch_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    s_q = torch.rand(50, generator=g, dtype=torch.float64) + 0.2
    for s_p in (0.5, 1.3):
        ours = pacbayes.gaussian_kl(mu_q, s_q, mu_p, s_p)
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, s_q),
                                                torch.distributions.Normal(mu_p, torch.full_like(mu_p, s_p))).sum()
        assert float(ours) == pytest.approx(float(ref), rel=1e-12)
        # Monte Carlo: E_q[log q(x) - log p(x)] over 40,000 draws, within 5 standard errors
        x = mu_q + s_q * torch.randn(40_000, 50, generator=g, dtype=torch.float64)
        q, p = torch.distributions.Normal(mu_q, s_q), torch.distributions.Normal(mu_p, s_p)
        diff = (q.log_prob(x) - p.log_prob(x)).sum(1)
        se = float(diff.std()) / math.sqrt(len(diff))
        assert abs(float(diff.mean()) - float(ours)) < 5 * se
    # one sigma per tensor: a scalar broadcast equals the full tensor
    s = torch.tensor(0.7, dtype=torch.float64)
    assert float(pacbayes.gaussian_kl(mu_q, s, mu_p, 0.5)) == pytest.approx(
        float(pacbayes.gaussian_kl(mu_q, s.expand(50), mu_p, 0.5)), rel=1e-14)
    assert float(pacbayes.gaussian_kl(mu_p, torch.full_like(mu_p, 0.5), mu_p, 0.5)) == 0.0


def test_objectives_against_their_formulas():
    n, delta = 1000, 0.025
    loss, kl = torch.tensor(0.12, dtype=torch.float64), torch.tensor(37.5, dtype=torch.float64)
    b = (37.5 + math.log(2 * math.sqrt(n) / delta)) / n
    assert float(pacbayes.pac_bayes_budget(kl, n, delta)) == pytest.approx(b, rel=1e-14)
    assert float(pacbayes.objective("fquad", loss, kl, n, delta)) == pytest.approx(
        (math.sqrt(0.12 + b / 2) + math.sqrt(b / 2)) ** 2, rel=1e-14)
    assert float(pacbayes.objective("fclassic", loss, kl, n, delta)) == pytest.approx(0.12 + math.sqrt(b / 2),
                                                                                      rel=1e-14)
    assert float(pacbayes.objective("kl", loss, kl, n, delta)) == pytest.approx(kl_inverse_brentq(0.12, b), abs=1e-9)
    # kl^-1 is the bound itself; both relaxations lie above it
    exact = float(pacbayes.objective("kl", loss, kl, n, delta))
    assert all(float(pacbayes.objective(o, loss, kl, n, delta)) > exact for o in ("fquad", "fclassic"))
    with pytest.raises(GenboundError):
        pacbayes.objective("mcallester", loss, kl, n, delta)


def test_bounded_cross_entropy():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-30.0, 30.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    p_min = 1e-4
    got = pacbayes.bounded_ce(logits, y, p_min)
    p = torch.softmax(logits.double(), -1)[torch.arange(3), y].clamp(min=p_min)
    assert torch.allclose(got.double(), -p.log() / math.log(1 / p_min), atol=1e-6)
    assert float(got[2]) == pytest.approx(1.0) and (got >= 0).all() and (got <= 1).all()


def test_certificate_and_the_union_bound_split():
    d, dp = pacbayes.union_deltas(0.025, 0.01, 5)
    assert (d, dp) == (0.025 / 5, 0.01 / 5)
    with pytest.raises(GenboundError):
        pacbayes.union_deltas(0.025, 0.01, 0)
    n, m, err, kl = 2000, 150, 0.083, 120.0
    got = pacbayes.certificate(err, m, kl, n, d, dp)
    stage1 = kl_inverse_brentq(err, math.log(2 * 5 / 0.01) / m)
    budget = (kl + math.log(2 * math.sqrt(n) * 5 / 0.025)) / n
    assert got["train_err_bound"] == pytest.approx(stage1, abs=1e-9)
    assert got["budget"] == pytest.approx(budget, rel=1e-14)
    assert got["certificate"] == pytest.approx(kl_inverse_brentq(stage1, budget), abs=1e-9)
    # more priors tried costs: the certificate with J = 5 is above the one with J = 1
    assert got["certificate"] > pacbayes.certificate(err, m, kl, n, 0.025, 0.01)["certificate"]
    assert np.isfinite(got["certificate"]) and err < got["certificate"] < 1


# ---- predictors drawn a batch at a time (certify --draw-batch) ------------------------------------------------
def test_batch_draws_with_full_batches_are_the_bound_with_k_units():
    """b divides n (c = 1): the bound over K = m n / b batch draws is the per-pass bound with K in place of m:
    brentq's kl^-1 at ln(2/delta') / K, above the Clopper-Pearson limit of K Bernoulli units (the worst case of
    [0, 1] units) and within 0.5 / sqrt(K) of it."""
    dp = 0.01
    assert pacbayes.draw_layout(100, 32) == (4, 100 / 128) and pacbayes.draw_layout(96, 32) == (3, 1.0)
    assert pacbayes.draw_layout(10, 50) == (1, 1.0)  # a batch above n is one predictor a pass
    for n, b, m in ((1000, 10, 30), (4096, 32, 5), (64, 64, 300)):
        batches, fill = pacbayes.draw_layout(n, b)
        assert (batches, fill) == (n // b, 1.0)
        units = m * batches
        for k in {0, 1, units // 20, units // 4, units - 1}:
            got = pacbayes.sample_convergence_bound(k / units, units, dp, fill)
            assert got == pytest.approx(kl_inverse_brentq(k / units, math.log(2 / dp) / units), abs=1e-9)
            cp = float(stats.beta.ppf(1 - dp, k + 1, units - k))
            assert cp - 1e-12 <= got < cp + 0.5 / math.sqrt(units), (n, b, m, k)
    for bad in ((0.1, 0, 0.01, 1.0), (0.1, 10, 0.01, 0.0), (0.1, 10, 0.01, 1.5)):
        with pytest.raises(GenboundError):
            pacbayes.sample_convergence_bound(*bad)


def _batch_rates(n: int, b: int, rates: list[float]) -> np.ndarray:
    """(T, b) error probabilities of the examples in batch order, one rate a batch, 0 in the unfilled places."""
    t, _ = pacbayes.draw_layout(n, b)
    p = np.zeros(t * b)
    p[:n] = np.repeat(rates, b)[:n]
    return p.reshape(t, b)


def test_batch_draws_cover_unequal_units_and_beat_one_draw_a_pass():
    """Simulated draws (seeded numpy): batches of unequal error rates with a short last batch (c < 1), the
    examples of a batch sharing one predictor (all wrong or all right together: the units are as spread as
    [0, 1] variables get). The bound must lie at or above the true L_S in all but delta'/2 of the trials (the
    two-sided ln(2/delta') leaves delta'/2 to the upper side; 3 binomial standard errors of slack), lie below
    the bound from one draw a pass (m units) on average, and the test must be able to fail: counting the
    m n examples as independent units (they are not: a batch shares its predictor) misses far more often."""
    rng = np.random.default_rng(0)
    dp, trials = 0.2, 2000
    for n, b, m, rates in ((50, 16, 6, [0.1, 0.5, 0.3, 0.9]), (100, 32, 20, [0.1, 0.2, 0.15, 0.8]),
                           (40, 16, 30, [0.05, 0.6, 0.2])):
        t, fill = pacbayes.draw_layout(n, b)
        assert fill < 1
        p = _batch_rates(n, b, rates)
        truth = p.sum() / n
        shared = rng.random((trials, m, t, 1))  # one uniform a drawn predictor: it errs where shared < p
        err = (shared < p).sum((1, 2, 3)) / (m * n)
        ours = np.array([pacbayes.sample_convergence_bound(e, m * t, dp, fill) for e in err])
        per_pass = np.array([pacbayes.sample_convergence_bound(e, m, dp) for e in err])
        examples = np.array([pacbayes.sample_convergence_bound(e, m * n, dp) for e in err])
        limit = dp / 2 + 3 * math.sqrt(dp / 2 * (1 - dp / 2) / trials)
        assert np.mean(ours < truth) <= limit, (n, b, m)
        assert ours.mean() < per_pass.mean()
        assert np.mean(examples < truth) > dp, (n, b, m)


def test_short_last_batch_bound_holds_exactly():
    """c < 1, against an exact (dense) oracle: Q a finite mixture of predictors (each a 0-1 error pattern over
    the n examples, with weights), the layout with a short last batch. Each batch draw's error count then has an
    exact distribution (a predictor picked by weight, its errors in that batch counted), the draws are
    independent, so the total count over the m passes is the convolution of those distributions, exactly; the
    probability that the bound falls below L_S(Q) = sum_h w_h err_h is summed over it. It must be <= delta'/2
    (the upper side of the two-sided ln(2/delta')). Dropping the division by c, or counting examples as units,
    must fail for some of these Q (the oracle can tell)."""
    rng = np.random.default_rng(1)
    dp = 0.1
    wrong_c, wrong_units = 0.0, 0.0
    for n, b, m in ((5, 2, 200), (7, 3, 60), (11, 4, 40)):
        t, fill = pacbayes.draw_layout(n, b)
        assert fill < 1
        rates = np.arange(m * n + 1) / (m * n)  # every possible mean error of the m passes
        ours = np.array([pacbayes.sample_convergence_bound(e, m * t, dp, fill) for e in rates])
        no_c = np.array([pacbayes.kl_inverse(fill * e, math.log(2 / dp) / (m * t)) for e in rates])
        examples = np.array([pacbayes.sample_convergence_bound(e, m * n, dp) for e in rates])
        for trial in range(12):
            h = 2 + trial % 3
            if trial % 3 == 0:  # the predictors' errors only in the short last batch
                patterns = np.zeros((h, n), dtype=int)
                patterns[:, (t - 1) * b:] = rng.random((h, 1)) < 0.7
            elif trial % 3 == 1:  # each predictor wrong everywhere or nowhere: a batch errs all at once
                patterns = np.repeat(np.arange(h)[:, None] % 2, n, axis=1)
            else:
                patterns = (rng.random((h, n)) < rng.uniform(0.05, 0.9)).astype(int)
            w = rng.dirichlet(np.ones(h))
            truth = float(w @ patterns.mean(1))
            total = np.array([1.0])
            for lo in range(0, n, b):  # one batch: P(count = k) = sum of w over the predictors with k errors there
                batch = patterns[:, lo:lo + b]
                dist = np.bincount(batch.sum(1), weights=w, minlength=batch.shape[1] + 1)
                for _ in range(m):
                    total = np.convolve(total, dist)
            assert len(total) == m * n + 1 and total.sum() == pytest.approx(1.0)
            assert float(total[ours < truth].sum()) <= dp / 2, (n, b, m, trial)
            wrong_c = max(wrong_c, float(total[no_c < truth].sum()))
            wrong_units = max(wrong_units, float(total[examples < truth].sum()))
    assert wrong_c > dp / 2 and wrong_units > dp / 2, (wrong_c, wrong_units)

"""The bound formulas against independent oracles: hand values, 2^L enumeration, sampled networks, scipy."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from genbound import bounds
from genbound.errors import GenboundError


def test_mi_term_hand_values_and_the_papers_roberta_numbers():
    # sqrt(2 * 32 * 0.25 * ln2 * 1000 / 500) = sqrt(16 ln2 * 2)
    assert bounds.mi_term(1000, 500, 32, 0.5) == pytest.approx(math.sqrt(32 * math.log(2)), rel=1e-12)
    # docs/theory.md section 3: RoBERTa-base, q and v of 12 layers (24 matrices of 768 x 768), r = 16, q = 32, MRPC
    lora = 16 * 24 * (768 + 768)
    cla = 16 * 24 * 768
    assert bounds.mi_term(lora, 3668, 32, 1.0) == pytest.approx(84.46, abs=0.01)
    assert bounds.mi_term(cla, 3668, 32, 1.0) == pytest.approx(59.72, abs=0.01)


@pytest.mark.parametrize("n, m, r, k", [(384, 384, 16, 1), (256, 784, 4, 3), (10, 7, 2, 5)])
def test_mi_term_ratios(n, m, r, k):
    lora, cla = r * (m + n), r * n
    assert bounds.mi_term(lora, 1000, 32, 1) / bounds.mi_term(cla, 1000, 32, 1) == pytest.approx(
        math.sqrt((m + n) / n), rel=1e-12)
    assert bounds.mi_term(k * cla, 1000, 32, 1) / bounds.mi_term(cla, 1000, 32, 1) == pytest.approx(
        math.sqrt(k), rel=1e-12)


def test_sigma_sources_and_bad_input():
    assert bounds.sigma_of("01", 10)[0] == 0.5
    assert bounds.sigma_of("ce", 10, smoothing=0.1)[0] == pytest.approx(math.log(100) / 2)
    assert bounds.sigma_of("ce", 10, clip=4.0)[0] == 2.0
    assert bounds.sigma_of("ce", 10, sigma=3.0) == (3.0, "given by the user (--sigma)")
    with pytest.raises(GenboundError, match="unbounded"):
        bounds.sigma_of("ce", 10)
    with pytest.raises(GenboundError, match="--bits must be >= 1"):
        bounds.mi_term(10, 10, 0.5, 0.5)
    with pytest.raises(GenboundError, match="smoothing"):
        bounds.sigma_of("ce", 10, smoothing=1.5)


def phi_by_enumeration(a, d, C, lips, offsets, l_loss):
    """The printed form: every pattern choosing W0 (a) or dW (d) per layer, all-W0 excluded, with P(i, j) over
    the 2^(L-j) patterns of the layers after activation j for the offset terms."""
    L = len(a)
    total = 0.0
    for pattern in itertools.product((0, 1), repeat=L):
        if any(pattern):
            total += C * math.prod(lips) * math.prod(d[j] if p else a[j] for j, p in enumerate(pattern))
    for s in range(1, L):
        for pattern in itertools.product((0, 1), repeat=L - s):
            if any(pattern):
                total += offsets[s - 1] * math.prod(lips[s:]) * math.prod(
                    d[s + j] if p else a[s + j] for j, p in enumerate(pattern))
    return 2 * l_loss * total


@pytest.mark.parametrize("L", range(1, 11))
def test_closed_form_phi_equals_enumeration_over_all_patterns(L):
    rng = np.random.default_rng(L)
    a, d = rng.uniform(0.1, 3, L).tolist(), rng.uniform(0, 2, L).tolist()
    lips, offsets = rng.uniform(0.5, 2, L).tolist(), rng.uniform(0, 1, L - 1).tolist()
    C = float(rng.uniform(0.5, 5))
    for x, y in ((a, d), (d, a)):  # Phi_dW and Phi_W0
        want = phi_by_enumeration(x, y, C, lips, offsets, math.sqrt(2))
        got = 10 ** bounds.log10_phi(x, y, C, lips, offsets)
        assert got == pytest.approx(want, rel=1e-10)


def test_phi_handles_zero_norms_and_huge_products():
    assert bounds.log10_phi([1.0, 2.0], [0.0, 0.0], 1.0, [1, 1], [0.0]) == -math.inf
    assert bounds.finite_or_none(-math.inf) == 0.0
    big = bounds.log10_phi([1e6] * 80, [1e5] * 80, 10.0, [1] * 80, [0.0] * 79)
    assert math.isfinite(big) and big > 300 and bounds.finite_or_none(big) is None
    want = math.log10(2 * math.sqrt(2) * 10) + 80 * 6 + math.log10(1.1**80 - 1)
    assert big == pytest.approx(want, rel=1e-12)


def relu_net(weights, biases, x):
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = x @ w.T + b
        if i < len(weights) - 1:
            x = torch.relu(x)
    return x


@pytest.mark.parametrize("seed", range(5))
def test_sampled_output_differences_never_exceed_the_bracket(seed):
    """sup_{||x|| <= C} ||f_{W0+dW}(x) - f_W0(x)|| <= Phi_dW / (2 L_loss), and likewise for f_dW (Phi_W0);
    biases enter as offsets c_s = ||b_s|| through the generic form (ReLU(b) bounded by ||b||)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [6, 9, 7, 4]
    w0 = [torch.randn(o, i, generator=g, dtype=torch.float64) / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]
    dw = [0.3 * torch.randn(o, i, generator=g, dtype=torch.float64) / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]
    zero_b = [torch.zeros(o, dtype=torch.float64) for o in sizes[1:]]
    x = torch.randn(4000, sizes[0], generator=g, dtype=torch.float64)
    x = 2.0 * x / x.norm(dim=1, keepdim=True) * torch.rand(4000, 1, generator=g, dtype=torch.float64) ** 0.2
    C = 2.0
    a = [float(torch.linalg.matrix_norm(w, 2)) for w in w0]
    d = [float(torch.linalg.matrix_norm(w, 2)) for w in dw]
    diff = (relu_net([p + q for p, q in zip(w0, dw)], zero_b, x) - relu_net(w0, zero_b, x)).norm(dim=1).max()
    bracket = 10 ** bounds.log10_phi(a, d, C, [1] * 3, [0, 0]) / (2 * math.sqrt(2))
    assert 0 < float(diff) <= bracket
    diff_w0 = (relu_net([p + q for p, q in zip(w0, dw)], zero_b, x) - relu_net(dw, zero_b, x)).norm(dim=1).max()
    assert float(diff_w0) <= 10 ** bounds.log10_phi(d, a, C, [1] * 3, [0, 0]) / (2 * math.sqrt(2))


def test_kl_and_its_inverse_against_scipy_and_closed_forms():
    assert bounds.kl_bernoulli(0.5, 0.5) == 0
    assert bounds.kl_bernoulli(0.1, 0.3) == pytest.approx(0.1 * math.log(1 / 3) + 0.9 * math.log(0.9 / 0.7))
    for budget in (1e-4, 0.01, 0.3, 2.0):  # kl(0 || p) = -ln(1 - p)
        assert bounds.kl_inverse(0.0, budget) == pytest.approx(1 - math.exp(-budget), abs=1e-10)
    for q, budget in ((0.05, 0.02), (0.2, 0.1), (0.5, 0.01), (0.01, 1.0)):
        want = brentq(lambda p, q=q, b=budget: bounds.kl_bernoulli(q, p) - b, q, 1 - 1e-15, xtol=1e-14)
        assert bounds.kl_inverse(q, budget) == pytest.approx(want, abs=1e-10)
    assert bounds.kl_inverse(0.3, 50.0) == pytest.approx(1.0, abs=1e-9)
    assert bounds.kl_inverse(0.3, 0.5) >= brentq(lambda p: bounds.kl_bernoulli(0.3, p) - 0.5, 0.3, 1 - 1e-15)
    assert bounds.kl_inverse(0.3, 0.0) == pytest.approx(0.3, abs=1e-8)


def test_occam_bound_budget():
    n, k, delta = 10_000, 2_000, 0.05
    p = bounds.occam_bound(0.1, n, k, delta)
    assert bounds.kl_bernoulli(0.1, p) == pytest.approx((k * math.log(2) + math.log(1 / delta)) / n, rel=1e-6)
    assert bounds.occam_bound(0.1, n, 2 * k, delta) > p > 0.1
    with pytest.raises(GenboundError, match="--delta"):
        bounds.occam_bound(0.1, n, k, 0)

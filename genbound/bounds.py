"""The formulas of the bounds (docs/theory.md sections 3-5), as plain functions of numbers.

- Section 3 (Xu & Raginsky 2017): |E gen| <= sqrt(2 sigma^2 I(S;W) / N), I(S;W) <= D q ln 2 nats.
- Section 4 (Theorem 1 of the paper, in its O(L) closed form): Phi_dW and Phi_W0.
- Section 5a (Occam bound, Langford 2005): kl(err_train || err) <= (K ln 2 + ln(1/delta)) / N.
Huge values are carried as log10 so nothing overflows; ``finite_or_none`` turns them into JSON numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import GenboundError

LN2 = math.log(2.0)
SQRT2 = math.sqrt(2.0)


# ---- section 3 -----------------------------------------------------------------------------------------
def sigma_of(loss: str, num_classes: int, smoothing: float | None = None, clip: float | None = None,
             sigma: float | None = None, span: tuple[float, float] | None = None) -> tuple[float, str]:
    """Sub-Gaussian parameter of the loss and how it was obtained. A loss in [a, b] is (b - a)/2-sub-Gaussian:
    0-1 loss: 1/2; cross-entropy clipped at M: M/2; smoothed p' = (1 - a) p + a/K: CE <= ln(K/a), so ln(K/a)/2."""
    if sigma is not None:
        if not sigma > 0:
            raise GenboundError(f"--sigma must be positive, got {sigma}")
        return sigma, "given by the user (--sigma)"
    if loss == "01":
        return 0.5, "0-1 loss lies in [0, 1]"
    if loss == "mse":
        return squared_error_sigma(clip, span)
    if loss != "ce":
        raise GenboundError(f"--loss must be 01 or ce (classification) or mse (regression), got {loss!r}")
    if smoothing is not None:
        if not 0 < smoothing < 1:
            raise GenboundError(f"--smoothing must lie in (0, 1), got {smoothing}")
        return math.log(num_classes / smoothing) / 2, f"prediction smoothing a={smoothing:g}: CE in [0, ln(K/a)]"
    if clip is not None:
        if not clip > 0:
            raise GenboundError(f"--clip must be positive, got {clip}")
        return clip / 2, f"cross-entropy clipped at M={clip:g}: loss in [0, M]"
    raise GenboundError("cross-entropy is unbounded, so it is not sub-Gaussian: give --smoothing A or --clip M "
                        "(or --sigma VALUE)")


def squared_error_sigma(clip: float | None, span: tuple[float, float] | None) -> tuple[float, str]:
    """Regression (``--loss mse``): the squared error clipped at M lies in [0, M] (sigma M/2); without a clip,
    the squared error of the prediction clipped into the target range [lo, hi] lies in [0, (hi - lo)^2]
    (sigma (hi - lo)^2 / 2) for targets in that range."""
    if clip is not None:
        if not clip > 0:
            raise GenboundError(f"--clip must be positive, got {clip}")
        return clip / 2, f"squared error clipped at M={clip:g}: loss in [0, M]"
    lo, hi = span
    if not hi > lo:
        raise GenboundError(f"every target is {lo:g}: the squared error has no range to bound (give --clip M)")
    return (hi - lo) ** 2 / 2, (f"squared error of the prediction clipped into the target range [{lo:g}, {hi:g}] "
                                f"(targets assumed to lie in it): loss in [0, {(hi - lo) ** 2:g}]")


def squared_error_lipschitz(clip: float | None, span: tuple[float, float]) -> float:
    """The Lipschitz constant in the one output of the bounded squared error: 2 sqrt(M) for min((f - y)^2, M),
    2 (hi - lo) for (clamp(f, lo, hi) - y)^2 with y in [lo, hi]."""
    return 2 * math.sqrt(clip) if clip is not None else 2 * (span[1] - span[0])


def mi_term(params: int, n_train: int, bits: float, sigma: float) -> float:
    """sqrt(2 q sigma^2 ln2 D / N): the paper's bound on |E gen| with I(S;W) <= D q ln 2 (THEORY section 3)."""
    if bits < 1:
        raise GenboundError(f"--bits must be >= 1, got {bits}")
    if n_train < 1:
        raise GenboundError("the bound needs at least one training example")
    return math.sqrt(2 * bits * sigma**2 * LN2 * params / n_train)


# ---- section 4 -----------------------------------------------------------------------------------------
def log10_prod_diff(a: Sequence[float], d: Sequence[float]) -> float:
    """log10( prod(a_j + d_j) - prod(a_j) ), stable for d << a and exact when some a_j = 0 (-inf when 0)."""
    if not a:
        return -math.inf
    if any(x == 0 for x in a):
        return sum(math.log10(x + y) for x, y in zip(a, d)) if all(x + y > 0 for x, y in zip(a, d)) else -math.inf
    growth = math.fsum(math.log1p(y / x) for x, y in zip(a, d))
    if growth == 0:
        return -math.inf
    return math.fsum(math.log10(x) for x in a) + math.log10(math.expm1(growth))


def log10_sum(logs: Sequence[float]) -> float:
    """log10(sum 10**x) without overflow; -inf entries are zeros."""
    finite = [x for x in logs if x > -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log10(math.fsum(10 ** (x - top) for x in finite))


def log10_phi(a: Sequence[float], d: Sequence[float], C: float, lips: Sequence[float], offsets: Sequence[float],
              l_loss: float = SQRT2) -> float:
    """log10 of Phi_dW of Theorem 1 (closed form, THEORY section 4), layers 1..L in order:

        Phi_dW = 2 L_loss [ C prod_l L_l (prod_l (a_l + d_l) - prod_l a_l)
                            + sum_{s=1}^{L-1} c_s prod_{j>s} L_j (prod_{j>s} (a_j + d_j) - prod_{j>s} a_j) ]

    a_l = ||W0^l||_2, d_l = ||dW^l||_2, L_l the activations' Lipschitz constants, offsets c_s = ||s_s(0)||
    (s = 1..L-1). Phi_W0 is the same with a and d swapped."""
    L = len(a)
    if not (len(d) == len(lips) == L and len(offsets) == L - 1):
        raise ValueError("a, d, lips need one entry per layer and offsets one per inner activation")
    terms = [_safe_log10(C) + math.fsum(_safe_log10(x) for x in lips) + log10_prod_diff(a, d)]
    for s in range(1, L):  # offset of activation s feeds layers s+1..L (0-based: a[s:])
        terms.append(_safe_log10(offsets[s - 1]) + math.fsum(_safe_log10(x) for x in lips[s:])
                     + log10_prod_diff(a[s:], d[s:]))
    return math.log10(2 * l_loss) + log10_sum(terms)


def _safe_log10(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf


def finite_or_none(log10_value: float) -> float | None:
    """10**x as a float when it is representable, else None (JSON never gets inf or nan)."""
    if log10_value == -math.inf:
        return 0.0
    return 10**log10_value if log10_value < 300 else None


# ---- section 5 -----------------------------------------------------------------------------------------
def kl_bernoulli(q: float, p: float) -> float:
    """Binary relative entropy kl(q || p) in nats (0 log 0 = 0; +inf where p is 0 or 1 and q is not)."""
    def term(x: float, y: float) -> float:
        if x == 0:
            return 0.0
        return math.inf if y == 0 else x * math.log(x / y)
    return term(q, p) + term(1 - q, 1 - p)


def kl_inverse(q: float, budget: float, tol: float = 1e-12) -> float:
    """The largest p in [q, 1] with kl(q || p) <= budget, by bisection in float64; the upper end of the final
    bracket is returned, so the result never falls below the true value (it is used as an upper bound)."""
    if not 0 <= q <= 1:
        raise ValueError(f"error rate {q} outside [0, 1]")
    if budget < 0:
        raise ValueError("budget must be >= 0")
    lo, hi = q, 1.0
    if kl_bernoulli(q, hi) <= budget:
        return 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if kl_bernoulli(q, mid) <= budget:
            lo = mid
        else:
            hi = mid
    return hi


def occam_bound(train_err: float, n_train: int, code_bits: float, delta: float = 0.05) -> float:
    """Upper bound on the true 0-1 error of a hypothesis described by ``code_bits`` bits of a prefix-free code,
    holding with probability >= 1 - delta: kl(err_train || err) <= (K ln 2 + ln(1/delta)) / N."""
    if not 0 < delta < 1:
        raise GenboundError(f"--delta must lie in (0, 1), got {delta}")
    return kl_inverse(train_err, (code_bits * LN2 + math.log(1 / delta)) / n_train)


def mi_estimate_from_code(code_bits: float, n_train: int, sigma: float) -> float:
    """sqrt(2 sigma^2 K ln2 / N) with the measured code length K in place of D q (section 5b): an ESTIMATE,
    since the MI bound needs the expected code length over training runs and one run gives one sample."""
    return math.sqrt(2 * sigma**2 * code_bits * LN2 / n_train)

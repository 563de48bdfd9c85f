"""The formulas of PAC-Bayes certificates (docs/theory.md section 5d), as functions of numbers and tensors.

With probability >= 1 - delta over the n examples the certificate uses, for every posterior Q at once and a
prior P fixed before those examples were seen (Maurer 2004, the PAC-Bayes-kl bound):

    kl( L_S(Q) || L(Q) ) <= B,   B = ( KL(Q||P) + ln(2 sqrt(n) / delta) ) / n

Its relaxations that serve as training objectives (Perez-Ortiz, Rivasplata, Shawe-Taylor, Szepesvari 2021):
f-classic L_S + sqrt(B / 2), f-quad (sqrt(L_S + B / 2) + sqrt(B / 2))^2, and the bound itself, kl^-1(L_S, B),
differentiated through the inversion (``kl_inverse_t``). L_S(Q) is estimated from predictors drawn from Q,
a fresh one for every batch of b examples in each of m passes over the n examples, and bounded by the sample
convergence bound (Langford & Caruana 2001; Hoeffding 1963 for independent, not identically distributed units
in [0, 1]): the K = m ceil(n / b) batch error counts divided by b are independent given S, their mean is
c err_hat with c = n / (ceil(n / b) b) <= 1 (a short last batch), so with probability >= 1 - delta',
L_S(Q) <= kl^-1( c err_hat, ln(2 / delta') / K ) / c, clamped to 1 (b >= n: one predictor a pass, K = m, c = 1).
kl and kl^-1 are ``bounds.kl_bernoulli`` and ``bounds.kl_inverse`` (bisection in float64, rounded up).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .bounds import kl_bernoulli, kl_inverse
from .errors import GenboundError

OBJECTIVES = ("fquad", "fclassic", "kl")


def pac_bayes_budget(kl: float | torch.Tensor, n: int, delta: float):
    """B = (KL + ln(2 sqrt(n) / delta)) / n, the right-hand side of the PAC-Bayes-kl bound (a float or a tensor)."""
    if n < 1:
        raise GenboundError("the certificate needs at least one example")
    if not 0 < delta < 1:
        raise GenboundError(f"delta must lie in (0, 1), got {delta}")
    return (kl + math.log(2 * math.sqrt(n) / delta)) / n


def draw_layout(n: int, draw_batch: int) -> tuple[int, float]:
    """(T, c) of n examples split in order into batches of b = min(``draw_batch``, n), each with its own
    predictor: T = ceil(n / b) batches a pass (the last one short unless b divides n) and c = n / (T b) <= 1,
    the mean share of a batch that holds examples."""
    if n < 1 or draw_batch < 1:
        raise GenboundError(f"cannot split {n} examples into batches of {draw_batch}")
    size = min(draw_batch, n)
    batches = -(-n // size)
    return batches, n / (batches * size)


def sample_convergence_bound(err_hat: float, units: int, delta_prime: float, fill: float = 1.0) -> float:
    """Upper bound on L_S(Q), holding with probability >= 1 - delta' over the draws, from the mean 0-1 error
    ``err_hat`` of predictors drawn from Q: kl^-1(c err_hat, ln(2 / delta') / K) / c, clamped to 1, with K =
    ``units`` independent draws, each counting its errors on one batch divided by the full batch size, and c =
    ``fill`` the share of the K batches' places that hold examples (``draw_layout``). One predictor a pass over
    the examples: K = m, c = 1, the bound of Langford & Caruana (2001)."""
    if units < 1:
        raise GenboundError("the sample convergence bound needs at least one sampled predictor")
    if not 0 < delta_prime < 1:
        raise GenboundError(f"delta' must lie in (0, 1), got {delta_prime}")
    if not 0 < fill <= 1:
        raise GenboundError(f"the batches' fill must lie in (0, 1], got {fill}")
    return min(1.0, kl_inverse(fill * err_hat, math.log(2 / delta_prime) / units) / fill)


def certificate(err_hat: float, units: int, kl: float, n: int, delta: float, delta_prime: float,
                fill: float = 1.0) -> dict:
    """The final certificate on the stochastic predictor's error, at confidence 1 - delta - delta':
    kl^-1( sample_convergence_bound(err_hat, K, delta', c), (KL + ln(2 sqrt(n)/delta)) / n ). ``delta`` and
    ``delta_prime`` are the shares of one posterior (already divided by the number of priors tried)."""
    train_bound = sample_convergence_bound(err_hat, units, delta_prime, fill)
    budget = pac_bayes_budget(kl, n, delta)
    return {"train_err_bound": train_bound, "budget": budget, "certificate": kl_inverse(train_bound, budget)}


def union_deltas(delta: float, delta_prime: float, tried: int) -> tuple[float, float]:
    """The confidence each of ``tried`` certified posteriors (one per prior scale) gets, so that the best of
    them holds at 1 - delta - delta' overall (a union bound over the choice): (delta / J, delta' / J)."""
    if tried < 1:
        raise GenboundError("at least one prior scale must be tried")
    return delta / tried, delta_prime / tried


# ---- tensors ----------------------------------------------------------------------------------------------
def gaussian_kl(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor,
                sigma_p: torch.Tensor | float) -> torch.Tensor:
    """KL(N(mu_q, diag sigma_q^2) || N(mu_p, diag sigma_p^2)) summed over the numbers:
    1/2 sum[ sigma_q^2 / sigma_p^2 + (mu_q - mu_p)^2 / sigma_p^2 - 1 + ln(sigma_p^2 / sigma_q^2) ].
    sigma_q may be a scalar tensor broadcast over mu_q (one variance per tensor)."""
    sigma_p = torch.as_tensor(sigma_p, dtype=mu_q.dtype, device=mu_q.device)
    sigma_q = torch.broadcast_to(sigma_q, mu_q.shape)
    ratio = (sigma_q / sigma_p) ** 2
    return 0.5 * (ratio + ((mu_q - mu_p) / sigma_p) ** 2 - 1 - torch.log(ratio)).sum()


def bounded_ce(logits: torch.Tensor, y: torch.Tensor, p_min: float) -> torch.Tensor:
    """Per example: the cross-entropy of the probabilities clamped below at p_min, divided by ln(1/p_min), so it
    lies in [0, 1] (Perez-Ortiz et al. 2021): a bounded surrogate to train the posterior on; the certificate
    itself is on the 0-1 error."""
    logp = F.log_softmax(logits.float(), -1).gather(1, y[:, None]).squeeze(1)
    return -logp.clamp(min=math.log(p_min)) / math.log(1 / p_min)


class _KLInverse(torch.autograd.Function):
    """p = kl^-1(q, c): the largest p >= q with kl(q || p) = c. By implicit differentiation of kl(q || p) = c:
    dp/dc = 1 / d_p kl, dp/dq = -d_q kl / d_p kl, with d_p kl = (p - q) / (p (1 - p)) and
    d_q kl = ln(q (1 - p) / (p (1 - q))). Where p = 1 (budget too large) the gradient is 0."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        qf = min(max(float(q), 0.0), 1.0)
        p = kl_inverse(qf, max(float(c), 0.0))
        ctx.save_for_backward(q, torch.tensor(p, dtype=torch.float64))
        return torch.tensor(p, dtype=q.dtype, device=q.device)

    @staticmethod
    def backward(ctx, grad):
        q, p = ctx.saved_tensors
        qf, pf = min(max(float(q), 1e-12), 1 - 1e-12), float(p)
        if pf >= 1 - 1e-12 or pf - qf <= 1e-12:
            return torch.zeros_like(q), torch.zeros_like(q)
        dkl_dp = (pf - qf) / (pf * (1 - pf))
        dkl_dq = math.log(qf * (1 - pf) / (pf * (1 - qf)))
        return grad * (-dkl_dq / dkl_dp), grad * (1 / dkl_dp)


def kl_inverse_t(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """kl^-1(q, c) of scalar tensors, differentiable in both (``_KLInverse``)."""
    return _KLInverse.apply(q, c)


def objective(name: str, loss: torch.Tensor, kl: torch.Tensor, n: int, delta: float) -> torch.Tensor:
    """A PAC-Bayes training objective of a bounded empirical loss (in [0, 1]) and KL(Q||P):
    fquad (sqrt(L + B/2) + sqrt(B/2))^2, fclassic L + sqrt(B/2), kl kl^-1(L, B); B = pac_bayes_budget."""
    b = pac_bayes_budget(kl, n, delta)
    if name == "fquad":
        return (torch.sqrt(loss + b / 2) + torch.sqrt(b / 2)) ** 2
    if name == "fclassic":
        return loss + torch.sqrt(b / 2)
    if name == "kl":
        return kl_inverse_t(loss, b)
    raise GenboundError(f"--objective {name}: choose from {', '.join(OBJECTIVES)}")


__all__ = ["OBJECTIVES", "bounded_ce", "certificate", "draw_layout", "gaussian_kl", "kl_bernoulli", "kl_inverse",
           "kl_inverse_t", "objective", "pac_bayes_budget", "sample_convergence_bound", "union_deltas"]

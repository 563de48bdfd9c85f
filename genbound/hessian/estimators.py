"""Spectral estimators over a symmetric operator (``dim``, ``dtype``, ``device``, ``matmat``).

- ``lanczos_top``: top-k (largest algebraic) eigenpairs by Lanczos with full reorthogonalization;
- ``lanczos_block_top``: the same by block Lanczos (several vectors per data pass);
- ``power_iteration``: the reference (largest-magnitude eigenpairs by deflated power iteration);
- ``hutchinson``, ``hutchpp``: trace estimators with standard errors;
- ``slq_density``: spectral density by stochastic Lanczos quadrature with Gaussian broadening.
Vectors stay in torch on the operator's device; only the small tridiagonal problems go to numpy/scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ..errors import GenboundError
from ..runtime import device_generator


SLQ_BASIS_BYTES = 4 * 2**30  # SLQ runs as many probes in lockstep as fit their Krylov bases in this (>= 1)


def rademacher(count: int, dim: int, gen: torch.Generator, op) -> torch.Tensor:
    """``count`` x ``dim`` independent signs +-1 in the operator's dtype and device."""
    z = torch.randint(0, 2, (count, dim), generator=gen, device=op.device)
    return z.to(op.dtype).mul_(2).sub_(1)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w minus its projection on the orthonormal rows of ``basis``, twice (Kahan/Parlett: twice is enough)."""
    for _ in range(2):
        if w.dim() == 1:  # one vector, basis j x n
            w = w - (basis @ w) @ basis
        else:  # P vectors, each with its own basis: P x j x n
            w = w - torch.einsum("pj,pjn->pn", torch.einsum("pjn,pn->pj", basis, w), basis)
    return w


@dataclass
class Eigen:
    """Eigenvalue estimates (descending), their Ritz vectors (k x n) and residuals ||H v - lambda v||_2."""

    eigenvalues: list[float]
    residuals: list[float]
    n_hvp: int
    steps: int
    converged: bool
    eigenvectors: torch.Tensor | None = None
    residual_estimates: list[float] | None = None  # from the recurrence: beta_m |s_mi|
    n_passes: int | None = None  # data passes of the operator's matmat calls (probe_batch vectors per pass)


def _breakdown(dtype: torch.dtype) -> float:
    """beta below this times ||T|| counts as a breakdown (dropping it moves Ritz values by ~ beta^2 / gap)."""
    return math.sqrt(torch.finfo(dtype).eps)


def _check_k(k: int, dim: int) -> None:
    if k < 1:
        raise GenboundError(f"--top-k must be at least 1; got {k}")
    if k > dim:
        raise GenboundError(f"--top-k {k} is larger than the dimension of the parameter set ({dim})")


def _error_bounds(theta: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Error estimates of Ritz values (ascending ``theta``): min(r, r^2 / gap) with gap the distance to the
    nearest other Ritz value (Parlett, The Symmetric Eigenvalue Problem, sec. 11.7: |lambda - theta| <= r
    always, and <= r^2 / gap once theta is separated from the rest of the spectrum by gap)."""
    if len(theta) == 1:
        return residuals
    gaps = np.full(len(theta), np.inf)
    diffs = np.diff(theta)
    gaps[:-1] = np.minimum(gaps[:-1], diffs)
    gaps[1:] = np.minimum(gaps[1:], diffs)
    with np.errstate(divide="ignore"):
        return np.minimum(residuals, residuals**2 / gaps)


def _errors(theta: np.ndarray, residuals: np.ndarray, stop: str) -> np.ndarray:
    return residuals if stop == "residual" else _error_bounds(theta, residuals)


WHICH = ("largest", "magnitude")


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the k wanted Ritz values, in descending order of value (largest) or of |value| (magnitude)."""
    return np.argsort(theta if which == "largest" else np.abs(theta), kind="stable")[::-1][:k]


STOPS = ("residual", "gap")


def _check_lanczos(which: str, stop: str) -> None:
    if which not in WHICH:
        raise GenboundError(f"--which must be one of {', '.join(WHICH)}; got {which!r}")
    if stop not in STOPS:
        raise GenboundError(f"--stop must be one of {', '.join(STOPS)}; got {stop!r}")


def lanczos_top(op, k: int, max_steps: int = 100, tol: float = 1e-3, seed: int = 0,
                vectors: bool = False, which: str = "largest", stop: str = "residual") -> Eigen:
    """Top-k eigenpairs of the symmetric operator H by Lanczos with full reorthogonalization: the k largest
    eigenvalues (``which="largest"``) or the k largest in magnitude (``"magnitude"``: what power iteration,
    and so PyHessian, converges to; a negative one when the most negative eigenvalue dominates).

    Builds an orthonormal Krylov basis Q_m of span{q, Hq, ..., H^(m-1) q} (q random) with
    H Q_m = Q_m T_m + beta_m q_(m+1) e_m^T, T_m tridiagonal (alpha on, beta off the diagonal); each new
    vector is reorthogonalized against all of Q_m (twice), so no ghost eigenvalues appear. The Ritz pairs
    (theta_i, y_i = Q_m s_i) of T_m s_i = theta_i s_i have residual ||H y_i - theta_i y_i|| = beta_m |s_mi|
    (exact arithmetic), and every such theta_i lies within r_i of an eigenvalue of H, within r_i^2 / gap_i
    once separated by gap_i from the rest of H's spectrum. Stops when the k wanted Ritz values all have
    r_i <= tol * max_j |theta_j| (``stop="residual"``, the default: a rigorous bound, so the top eigenvalue
    is within ~tol relative of an eigenvalue of H) or, with ``stop="gap"``, min(r_i, r_i^2 / gap_i) <= tol *
    max_j |theta_j| with gap_i measured to the other Ritz values: fewer steps, but only an estimate, since
    an eigenvalue not yet resolved can sit inside that gap (on clustered spectra it stopped at 10-20 times
    the asked error in tests), or after min(max_steps, n) steps; a breakdown (beta ~ 0:
    an invariant subspace) restarts from a random vector orthogonal to Q, without stopping. The returned
    residuals are recomputed explicitly with k more HVPs. Limitation of any single-vector Krylov method:
    a repeated eigenvalue appears once until rounding (or a restart) brings in its other copies.
    """
    n = op.dim
    _check_k(k, n)
    _check_lanczos(which, stop)
    steps_max = min(n, max(max_steps, k))
    gen = device_generator(op.device, seed, "lanczos")
    start_hvp = op.n_hvp
    Q = torch.empty(min(steps_max, 32), n, dtype=op.dtype, device=op.device)  # grown by doubling
    q = torch.randn(n, generator=gen, device=op.device, dtype=op.dtype)
    q = q / q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    converged, beta, m = False, 0.0, 0
    theta = S = None
    for j in range(steps_max):
        if j == Q.shape[0]:
            Q = torch.cat([Q, torch.empty(min(Q.shape[0], steps_max - j), n, dtype=op.dtype, device=op.device)])
        Q[j] = q
        m = j + 1
        w = op.matvec(q)
        alpha = float(q @ w)
        w = w - alpha * q - (beta * Q[j - 1] if j else 0.0)
        w = _orthogonalize(w, Q[:m])
        beta = float(w.norm())
        alphas.append(alpha)
        theta, S = eigh_tridiagonal(np.array(alphas), np.array(betas)) if m > 1 else (np.array(alphas), np.ones((1, 1)))
        scale = max(float(np.abs(theta).max()), np.finfo(float).tiny)
        if m == steps_max:
            break
        if beta <= _breakdown(op.dtype) * scale:  # Q spans an invariant subspace: a larger eigenvalue (another
            q = torch.randn(n, generator=gen, device=op.device, dtype=op.dtype)  # copy of one found) may hide in
            q = _orthogonalize(q, Q[:m])  # its complement, so restart there and do not stop at this step
            q = q / q.norm()
            beta = 0.0
        elif m >= k and (_errors(theta, beta * np.abs(S[-1]), stop)[_wanted(theta, k, which)] <= tol * scale).all():
            converged = True
            break
        else:
            q = w / beta
        betas.append(beta)
    converged = converged or m == n
    top = _wanted(theta, k, which)
    Y, res, passes = _ritz_vectors(op, Q[:m], S[:, top], theta[top])
    return Eigen([float(t) for t in theta[top]], res, op.n_hvp - start_hvp, m, converged,
                 Y if vectors else None, [float(beta * abs(S[-1, i])) for i in top], m + passes)


def _orthogonalize_rows(W: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The rows of W minus their projection on the orthonormal rows of ``basis`` (m x n), twice."""
    for _ in range(2):
        W = W - (W @ basis.T) @ basis
    return W


def _passes(op, rows: int) -> int:
    """Data passes of one ``op.matmat`` of ``rows`` vectors (an operator serves ``probe_batch`` per pass)."""
    return -(-rows // getattr(op, "probe_batch", rows))


def _random_rows(op, count: int, basis: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``count`` orthonormal random rows orthogonal to ``basis`` (fresh directions after a deflation)."""
    X = torch.randn(count, op.dim, generator=gen, device=op.device, dtype=op.dtype)
    X = _orthogonalize_rows(X, basis)
    return torch.linalg.qr(X.T).Q.T


def _next_block(op, W: torch.Tensor, basis: torch.Tensor, scale: float, gen: torch.Generator, fill: bool):
    """W = C Q_new for the reorthogonalized residual block W (b x n): Q_new orthonormal rows, C (b x b).
    Thin QR W^T = Q R and the SVD R = U S V^T give W = (V S) (Q U)^T; a direction with singular value below
    sqrt(eps) * scale is dropped (a deflation, the block form of a breakdown) and, with ``fill``, replaced by
    a random one orthogonal to the basis, with zero coupling. Returns (Q_new, C)."""
    Qt, R = torch.linalg.qr(W.T)
    U, S, Vh = torch.linalg.svd(R)
    Q_new = (Qt @ U).T
    C = Vh.T * S[None, :]
    weak = S <= _breakdown(op.dtype) * scale
    if bool(weak.any()):
        C[:, weak] = 0
        if fill:
            Q_new[weak] = _random_rows(op, int(weak.sum()), torch.cat([basis, Q_new[~weak]]), gen)
    return Q_new, C


def check_block(block: int, k: int, n: int) -> None:
    """One line for a block size that does not fit the dimension n (or leaves no room for k Ritz values)."""
    if not 1 <= block <= n:
        raise GenboundError(f"--block must be between 1 and the dimension of the parameter set ({n}); got {block}")
    if k > n // block * block:
        raise GenboundError(f"--top-k {k} with --block {block}: at most {n // block * block} Ritz values fit in "
                            f"dimension {n}; use a smaller --block")


def lanczos_block_top(op, k: int, block: int = 4, max_steps: int = 100, tol: float = 1e-3, seed: int = 0,
                      vectors: bool = False, which: str = "largest", stop: str = "residual") -> Eigen:
    """Top-k eigenpairs by block Lanczos with full reorthogonalization: ``block`` seeded random start vectors
    (``block_start``), each step one ``op.matmat`` of a block (one data pass when block <= probe_batch).

    With Q_j (b x n, orthonormal rows) the j-th block, W = H Q_j - A_j Q_j - C_(j-1)^T Q_(j-1),
    A_j = Q_j H Q_j^T, reorthogonalized twice against every block so far, then W = C_j Q_(j+1)
    (``_next_block``). The Ritz pairs (theta_i, y_i) of the block tridiagonal T_m = Q^T H Q (A_j on the
    diagonal, C_j^T below it) have residuals ||H y_i - theta_i y_i|| = ||C_m^T s_i'||, s_i' the last b
    entries of the eigenvector s_i of T_m (exact arithmetic). Stopping rules as ``lanczos_top``: the k
    wanted values all have r_i <= tol * max_j |theta_j| (``residual``: each theta_i within r_i of an
    eigenvalue of H) or the Ritz-gap estimate (``gap``); else after max(max_steps, ceil(k / b)) blocks or
    when the basis would pass n. Deflated directions (rank-deficient W) are replaced by random ones, so an
    eigenvalue repeated up to b times shows all its copies. Residuals are recomputed explicitly (k more
    HVPs); ``steps`` counts blocks, ``n_passes`` the data passes of every matmat.
    """
    n = op.dim
    _check_k(k, n)
    _check_lanczos(which, stop)
    check_block(block, k, n)
    gen = device_generator(op.device, seed, "lanczos-block")
    start_hvp, passes = op.n_hvp, 0
    steps_max = min(max(max_steps, -(-k // block)), n // block)
    basis = torch.empty(min(steps_max, 8) * block, n, dtype=op.dtype, device=op.device)  # grown by doubling
    Q, C, T = block_start(op, block, seed), None, np.zeros((0, 0))
    converged = False
    for j in range(steps_max):
        m = (j + 1) * block
        if m > basis.shape[0]:
            basis = torch.cat([basis, torch.empty(min(basis.shape[0], steps_max * block - m + block), n,
                                                  dtype=op.dtype, device=op.device)])
        basis[m - block:m] = Q
        W = op.matmat(Q)
        passes += _passes(op, block)
        A = Q @ W.T
        A = (A + A.T) / 2
        W = W - A @ Q - (C.T @ basis[m - 2 * block:m - block] if j else 0.0)
        W = _orthogonalize_rows(W, basis[:m])
        T = _grow(T, A.double().cpu().numpy(), None if C is None else C.double().cpu().numpy())
        theta, S = np.linalg.eigh(T)
        scale = max(float(np.abs(theta).max()), np.finfo(float).tiny)
        Q, C = _next_block(op, W, basis[:m], scale, gen, fill=j + 1 < steps_max)
        residuals = np.linalg.norm(C.double().cpu().numpy().T @ S[-block:], axis=0)
        if m >= k and (_errors(theta, residuals, stop)[_wanted(theta, k, which)] <= tol * scale).all():
            converged = True
            break
    top = _wanted(theta, k, which)
    Y, res, p = _ritz_vectors(op, basis[:m], S[:, top], theta[top])
    return Eigen([float(t) for t in theta[top]], res, op.n_hvp - start_hvp, j + 1, converged or m == n,
                 Y if vectors else None, [float(residuals[i]) for i in top], passes + p)


def block_start(op, block: int, seed: int) -> torch.Tensor:
    """The seeded orthonormal start block of ``lanczos_block_top`` (block x n)."""
    gen = device_generator(op.device, seed, "lanczos-block-start")
    return _random_rows(op, block, torch.empty(0, op.dim, dtype=op.dtype, device=op.device), gen)


def _ritz_vectors(op, basis: torch.Tensor, coeffs: np.ndarray, theta: np.ndarray):
    """Ritz vectors Y = coeffs^T basis (normalized), their explicit residuals ||H y - theta y|| (one matmat)
    and the data passes that took."""
    Y = torch.as_tensor(coeffs.T.copy(), dtype=op.dtype, device=op.device) @ basis
    Y = Y / Y.norm(dim=1, keepdim=True)
    lam = torch.as_tensor(theta.copy(), dtype=op.dtype, device=op.device)
    res = (op.matmat(Y) - lam[:, None] * Y).norm(dim=1)
    return Y, res.double().cpu().tolist(), _passes(op, len(theta))


def _grow(T: np.ndarray, A: np.ndarray, C: np.ndarray | None) -> np.ndarray:
    """The block tridiagonal T with one more diagonal block A, coupled to the last one by C (W_prev = C Q)."""
    m, b = T.shape[0], A.shape[0]
    out = np.zeros((m + b, m + b))
    out[:m, :m] = T
    out[m:, m:] = A
    if C is not None:
        out[m:, m - b:m] = C.T
        out[m - b:m, m:] = C
    return out


def power_iteration(op, k: int = 1, max_iter: int = 1000, tol: float = 1e-6, seed: int = 0) -> Eigen:
    """Reference: the k largest-magnitude eigenpairs by power iteration with deflation (v <- H v / ||H v||,
    orthogonal to the pairs found), each stopped when ||H v - lambda v|| <= tol |lambda|, lambda = v^T H v."""
    n = op.dim
    _check_k(k, n)
    gen = device_generator(op.device, seed, "power")
    start_hvp = op.n_hvp
    found = torch.empty(0, n, dtype=op.dtype, device=op.device)
    values, residuals, done, steps = [], [], True, 0
    for _ in range(k):
        v = _orthogonalize(torch.randn(n, generator=gen, device=op.device, dtype=op.dtype), found)
        v = v / v.norm()
        ok = False
        for _ in range(max_iter):
            steps += 1
            w = op.matvec(v)
            lam = float(v @ w)
            res = float((w - lam * v).norm())
            if res <= tol * abs(lam):
                ok = True
                break
            w = _orthogonalize(w, found)
            v = w / w.norm()
        done &= ok
        values.append(lam)
        residuals.append(res)
        found = torch.cat([found, v[None]])
    order = np.argsort(values)[::-1]
    return Eigen([values[i] for i in order], [residuals[i] for i in order], op.n_hvp - start_hvp, steps, done,
                 found[torch.as_tensor(order.copy())])


def hutchinson(op, probes: int, seed: int = 0) -> dict:
    """tr(H) ~ (1/m) sum_i z_i^T H z_i with m Rademacher probes z_i (Hutchinson 1989): unbiased, variance
    2 ||H||_F^2 - 2 sum_i H_ii^2 per probe; stderr = sample std / sqrt(m)."""
    if probes < 1:
        raise GenboundError(f"--probes must be at least 1; got {probes}")
    gen = device_generator(op.device, seed, "hutchinson")
    chunk = getattr(op, "probe_batch", probes)
    vals = []
    for lo in range(0, probes, chunk):  # probes drawn and used a group at a time: memory chunk x n
        Z = rademacher(min(chunk, probes - lo), op.dim, gen, op)
        vals.append((Z * op.matmat(Z)).sum(1).double().cpu())
    vals = torch.cat(vals)
    stderr = float(vals.std(correction=1) / math.sqrt(probes)) if probes > 1 else None
    return {"trace": float(vals.mean()), "stderr": stderr, "probes": probes, "n_hvp": probes}


def hutchpp(op, probes: int, seed: int = 0) -> dict:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with m = ``probes`` HVPs: s = floor(m/3) sketch
    probes S, Q = orth(H S); the top of the spectrum is taken exactly, tr(Q^T H Q) (s more HVPs), and the
    remainder by Hutchinson on the deflated operator with g = m - 2s probes G:
        tr(H) ~ tr(Q^T H Q) + (1/g) sum_i g_i^T (I - QQ^T) H (I - QQ^T) g_i.
    Error O(1/m) instead of O(1/sqrt m) for a decaying spectrum; exact when s >= rank(H).
    stderr: the sample std of the g residual terms / sqrt(g), i.e. conditional on the sketch Q (the low-rank
    part given Q carries no further noise); None when g < 2."""
    if probes < 3:
        raise GenboundError(f"Hutch++ needs --probes >= 3 (a third each: sketch, projection, residual); got {probes}")
    gen = device_generator(op.device, seed, "hutchpp")
    s = probes // 3
    g = probes - 2 * s
    S = rademacher(s, op.dim, gen, op)
    Q = torch.linalg.qr(op.matmat(S).T).Q  # n x min(s, n), orthonormal columns spanning H S
    low = float((Q.T * op.matmat(Q.T)).sum())
    G = rademacher(g, op.dim, gen, op)
    G = G - (G @ Q) @ Q.T
    vals = (G * op.matmat(G)).sum(1).double().cpu()
    stderr = float(vals.std(correction=1) / math.sqrt(g)) if g > 1 else None
    return {"trace": low + float(vals.mean()), "stderr": stderr, "sketch": s, "residual_probes": g,
            "low_rank_part": low, "n_hvp": 2 * s + g,
            "stderr_note": "sample std of the residual Hutchinson terms / sqrt(g), conditional on the sketch"}


def lanczos_quadrature(op, starts: torch.Tensor, steps: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gauss quadrature nodes and weights of each start vector v (rows of ``starts``, normalized here):
    m-step Lanczos from v gives T_m = S diag(theta) S^T, and v^T f(H) v / ||v||^2 ~ sum_j S_1j^2 f(theta_j),
    exact for polynomials f of degree < 2m. The probes run in lockstep (one batched HVP per step);
    a probe whose Krylov space closes (beta ~ 0) stops early with an exact quadrature."""
    P, n = starts.shape
    m_max = min(steps, n)
    V = starts.to(op.device, op.dtype)
    V = V / V.norm(dim=1, keepdim=True)
    Q = torch.zeros(P, m_max, n, dtype=op.dtype, device=op.device)
    alphas = [[] for _ in range(P)]
    betas = [[] for _ in range(P)]
    active = list(range(P))
    prev_beta = torch.zeros(P, dtype=op.dtype, device=op.device)
    for j in range(m_max):
        Q[active, j] = V[active]
        W = op.matmat(V[active])
        a = (V[active] * W).sum(1)
        W = W - a[:, None] * V[active]
        if j:
            W = W - prev_beta[active, None] * Q[active, j - 1]
        W = _orthogonalize(W, Q[active, : j + 1])
        b = W.norm(dim=1)
        still = []
        for row, p in enumerate(active):
            alphas[p].append(float(a[row]))
            scale = max(abs(x) for x in alphas[p]) + max(betas[p], default=0.0)
            if j + 1 < m_max and float(b[row]) > _breakdown(op.dtype) * max(scale, np.finfo(float).tiny):
                betas[p].append(float(b[row]))
                V[p] = W[row] / b[row]
                prev_beta[p] = b[row]
                still.append(p)
        active = still
        if not active:
            break
    nodes, weights = [], []
    for p in range(P):
        al, be = np.array(alphas[p]), np.array(betas[p][: len(alphas[p]) - 1])
        theta, S = eigh_tridiagonal(al, be) if len(al) > 1 else (al, np.ones((1, 1)))
        nodes.append(theta)
        weights.append(S[0] ** 2)
    return nodes, weights


def slq_density(op, probes: int, steps: int, seed: int = 0, sigma: float | None = None, grid_points: int = 1000,
                starts: torch.Tensor | None = None, rel_floor: float = 1e-12) -> dict:
    """Spectral density phi(t) = (1/n) sum_i delta(t - lambda_i) by stochastic Lanczos quadrature (Lin, Saad &
    Yang 2016; Ghorbani et al. 2019), broadened by a Gaussian of standard deviation sigma:
        phi_sigma(t) ~ (1/P) sum_p sum_j w_pj N(t; theta_pj, sigma^2),
    with (theta_pj, w_pj) the quadrature of Rademacher probe p (sum_j w_pj = 1). Unbiased for
    tr(f(H))/n since E[z z^T] / ||z||^2 = I/n for Rademacher z. ``sigma`` None: 1% of the Ritz-value range.
    The grid spans the nodes +- 8 sigma with spacing <= sigma/2, so the trapezoid integral of ``values`` is 1
    up to ~1e-12 (reported as ``integral``, computed on ``values_unfloored``); ``values`` =
    max(phi_sigma, rel_floor * max(phi_sigma)), positive for log-scale plots. ``moments``: (1/P) sum w theta
    and (1/P) sum w theta^2, estimates of tr(H)/n and tr(H^2)/n (the broadened density's second moment is
    that plus sigma^2). ``starts`` replaces the random probes (e.g. the basis vectors, for which the moments
    are exact). Probes run ``op.probe_batch`` at a time, fewer when their bases would pass SLQ_BASIS_BYTES."""
    if starts is None:
        if probes < 1:
            raise GenboundError(f"--density-probes must be at least 1; got {probes}")
        starts = rademacher(probes, op.dim, device_generator(op.device, seed, "slq"), op)
    if steps < 1:
        raise GenboundError(f"--lanczos-steps must be at least 1; got {steps}")
    start_hvp = op.n_hvp
    nodes, weights = [], []
    per_probe = max(1, min(steps, op.dim) * op.dim * starts.element_size())
    chunk = max(1, min(getattr(op, "probe_batch", len(starts)), SLQ_BASIS_BYTES // per_probe))
    for lo in range(0, len(starts), chunk):  # the Krylov bases of a group of probes: chunk x steps x n numbers
        t, w = lanczos_quadrature(op, starts[lo:lo + chunk], steps)
        nodes += t
        weights += w
    P = len(nodes)
    allnodes = np.concatenate(nodes)
    lo, hi = float(allnodes.min()), float(allnodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    if sigma <= 0:
        raise GenboundError(f"--density-sigma must be positive; got {sigma}")
    lo, hi = lo - 8 * sigma, hi + 8 * sigma
    points = int(min(max(grid_points, math.ceil((hi - lo) / (0.5 * sigma)) + 1), 200_000))
    grid = np.linspace(lo, hi, points)
    values = np.zeros(points)
    for theta, w in zip(nodes, weights):
        z = (grid[:, None] - theta[None, :]) / sigma
        values += (np.exp(-0.5 * z * z) * w[None, :]).sum(1)
    values /= P * sigma * math.sqrt(2 * math.pi)
    floor = rel_floor * float(values.max())
    m1 = float(np.mean([(w * t).sum() for t, w in zip(nodes, weights)]))
    m2 = float(np.mean([(w * t * t).sum() for t, w in zip(nodes, weights)]))
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return {"grid": grid.tolist(), "values": np.maximum(values, floor).tolist(), "values_unfloored": values.tolist(),
            "floor": floor, "sigma": float(sigma), "probes": P, "steps": steps,
            "integral": float(trapezoid(values, grid)), "moments": {"mean": m1, "second": m2},
            "nodes": [t.tolist() for t in nodes], "weights": [w.tolist() for w in weights],
            "n_hvp": op.n_hvp - start_hvp}

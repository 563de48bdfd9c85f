"""How well each measure ranks the measured generalization gap across checkpoints (THEORY.md section 6).

Kendall tau (Jiang et al. 2020): tau = mean over pairs i < j of sign(mu_i - mu_j) * sign(g_i - g_j) (tau-a:
a tie in either counts 0). Granulated Psi: for each axis (method, rank, seed, ...), tau within every group
of checkpoints that agree on all the other axes, averaged over the groups of that axis; Psi = the mean
over the axes that have such a group. A bootstrap over seeds (whole seeds resampled with replacement)
gives an interval for tau.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np


def kendall_tau(mu: Sequence[float], gap: Sequence[float]) -> float:
    """tau-a of THEORY.md section 6; nan when there are fewer than two points."""
    mu, gap = np.asarray(mu, dtype=float), np.asarray(gap, dtype=float)
    if len(mu) != len(gap):
        raise ValueError("measure and gap need the same length")
    n = len(mu)
    if n < 2:
        return math.nan
    i, j = np.triu_indices(n, 1)
    return float(np.mean(np.sign(mu[i] - mu[j]) * np.sign(gap[i] - gap[j])))


def granulated_psi(rows: list[dict], measure: str, gap: str, axes: Sequence[str]) -> dict:
    """{"per_axis": {axis: mean tau over groups or nan}, "psi": mean over axes with groups, "groups": counts}.
    A group is a set of rows equal on every axis but one and with at least two distinct values on it."""
    per_axis, groups = {}, {}
    usable = [r for r in rows if _finite(r.get(measure)) and _finite(r.get(gap))]
    for axis in axes:
        others = [a for a in axes if a != axis]
        buckets: dict[tuple, list[dict]] = {}
        for r in usable:
            buckets.setdefault(tuple(r.get(a) for a in others), []).append(r)
        taus = [kendall_tau([r[measure] for r in b], [r[gap] for r in b]) for b in buckets.values()
                if len({r.get(axis) for r in b}) >= 2]
        taus = [t for t in taus if not math.isnan(t)]
        per_axis[axis] = float(np.mean(taus)) if taus else math.nan
        groups[axis] = len(taus)
    found = [v for v in per_axis.values() if not math.isnan(v)]
    return {"per_axis": per_axis, "psi": float(np.mean(found)) if found else math.nan, "groups": groups}


def bootstrap_tau(rows: list[dict], measure: str, gap: str, cluster: str = "seed", draws: int = 1000,
                  seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of tau when whole ``cluster`` values (seeds) are resampled with replacement."""
    usable = [r for r in rows if _finite(r.get(measure)) and _finite(r.get(gap))]
    clusters = sorted({r.get(cluster) for r in usable}, key=str)
    if len(clusters) < 2:
        return (math.nan, math.nan)
    by = {c: [r for r in usable if r.get(cluster) == c] for c in clusters}
    rng = random.Random(seed)
    taus = []
    for _ in range(draws):
        sample = [r for c in rng.choices(clusters, k=len(clusters)) for r in by[c]]
        t = kendall_tau([r[measure] for r in sample], [r[gap] for r in sample])
        if not math.isnan(t):
            taus.append(t)
    if not taus:
        return (math.nan, math.nan)
    lo, hi = np.quantile(taus, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

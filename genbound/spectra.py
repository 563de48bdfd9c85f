"""Spectra of learned updates and intruder dimensions (THEORY.md section 7).

dW = B A with B (n x K) and A (K x m) stacked over the links: with thin QR B = Q_B R_B and
A^T = Q_A R_A, dW = Q_B (R_B R_A^T) Q_A^T, so svd(R_B R_A^T) (K x K) gives the singular values at
cost O((m + n) K^2) without forming dW. Selector updates are column-sparse: their singular values are those
of the n x K' block of nonzero columns (repeated indices add up). Full fine-tuning falls back to the dense
SVD of W - W0. ``update_singular_values`` is also what the bounds use for ||dW||_2.

Intruder dimensions (Shuttleworth et al. 2024): with U0, U the left singular vectors of W0 and W0 + dW,
u_j (one of the top-k of U) is an intruder at threshold eps when max_i |<u_j, u0_i>| < eps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .layers import AdapterLinear, LowRank

EPS_GRID = [round(0.05 * i, 2) for i in range(1, 21)]  # thresholds in (0, 1]


def lowrank_singular_values(factors: LowRank) -> torch.Tensor:
    """Singular values (descending, float64) of the update held by ``factors``, without forming it."""
    B = factors.B.detach().double()
    if factors.A is not None:
        _, r_b = torch.linalg.qr(B)
        _, r_a = torch.linalg.qr(factors.A.detach().double().T)
        return torch.linalg.svdvals(r_b @ r_a.T)
    return torch.linalg.svdvals(_selector_block(factors))


def _selector_block(factors: LowRank) -> torch.Tensor:
    """The n x K' block of nonzero columns of a selector update (repeated indices added up)."""
    B = factors.B.detach().double()
    uniq, inverse = torch.unique(factors.idx, return_inverse=True)
    return B.new_zeros(B.shape[0], len(uniq)).index_add_(1, inverse.to(B.device), B)


def batched_singular_values(items: list[Update]) -> list[torch.Tensor]:
    """Singular values of many updates, batched over those whose shapes agree (one QR / SVD call per group)."""
    keyed: list[tuple[str, tuple, torch.Tensor, torch.Tensor | None]] = []
    for up in items:
        f = up.factors
        if f is None:
            keyed.append(("dense", tuple(up.dense.shape), up.dense.detach().double(), None))
        elif f.A is not None:
            keyed.append(("lowrank", (tuple(f.B.shape), tuple(f.A.shape)), f.B.detach().double(),
                          f.A.detach().double().T))
        else:
            block = _selector_block(f)
            keyed.append(("dense", tuple(block.shape), block, None))
    out: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (kind, shape, _, _) in enumerate(keyed):
        groups.setdefault((kind, shape), []).append(i)
    for (kind, _), idx in groups.items():
        first = torch.stack([keyed[i][2] for i in idx])
        if kind == "lowrank":
            r_b = torch.linalg.qr(first)[1]
            r_a = torch.linalg.qr(torch.stack([keyed[i][3] for i in idx]))[1]
            first = r_b @ r_a.transpose(1, 2)
        for i, sv in zip(idx, torch.linalg.svdvals(first)):
            out[i] = sv
    return out


def update_singular_values(layer: AdapterLinear) -> torch.Tensor:
    """Singular values of an adapter layer's whole update s * sum_t B_t A_t (every link)."""
    return lowrank_singular_values(layer.factors())


def spectral_norm(matrix: torch.Tensor) -> float:
    """||M||_2, exact (largest singular value, float64)."""
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2)) if matrix.numel() else 0.0


def spectrum_stats(s: torch.Tensor) -> dict:
    """||dW||_2, ||dW||_F, stable rank ||dW||_F^2 / ||dW||_2^2 and effective rank exp(H(s / sum s))
    (Roy & Vetterli 2007) from singular values; ranks are 0 for a zero update."""
    s = s.detach().double().cpu().clamp(min=0)
    top, fro2, total = float(s.max()) if s.numel() else 0.0, float((s**2).sum()), float(s.sum())
    if top == 0:
        return {"norm_2": 0.0, "norm_fro": 0.0, "stable_rank": 0.0, "effective_rank": 0.0}
    p = s[s > 0] / total
    return {"norm_2": top, "norm_fro": math.sqrt(fro2), "stable_rank": fro2 / top**2,
            "effective_rank": math.exp(float(-(p * p.log()).sum()))}


@dataclass
class Update:
    """One adapted matrix: the weight before fine-tuning and its learned update (factors, or dense)."""

    name: str
    w0: torch.Tensor
    factors: LowRank | None = None
    dense: torch.Tensor | None = None

    def singular_values(self) -> torch.Tensor:
        if self.factors is not None:
            return lowrank_singular_values(self.factors)
        return torch.linalg.svdvals(self.dense.detach().double())

    def delta(self) -> torch.Tensor:
        m = self.w0.shape[1]
        return (self.factors.dense(m) if self.factors is not None else self.dense).detach().double()


def updates(model: torch.nn.Module, init: torch.nn.Module, names: list[str]) -> list[Update]:
    """The updates of the named matrices: from the adapter factors, or W - W_init for plain Linears."""
    out = []
    for name in names:
        mod = model.get_submodule(name)
        if isinstance(mod, AdapterLinear):
            out.append(Update(name, mod.weight.detach(), factors=mod.factors()))
        else:
            w0 = init.get_submodule(name).weight.detach().to(mod.weight.device)
            out.append(Update(name, w0, dense=mod.weight.detach() - w0))
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("GENBOUND_CACHE") or Path.home() / ".cache" / "genbound")


class SvdCache:
    """Left singular vectors and values of each W0, on disk under <cache>/svd/<base sha256>/, so a base's
    SVDs are computed once; a different base (another sha256) never reads them."""

    def __init__(self, base_sha256: str, root: Path | None = None):
        self.folder = (root or cache_dir()) / "svd" / base_sha256
        self.computed = 0

    def get(self, name: str, w0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from .checkpoint import atomic_save_tensors

        path = self.folder / f"{name}.safetensors"
        if path.is_file():
            saved = load_file(str(path))
            if tuple(saved["U"].shape[:1]) == (w0.shape[0],):
                return saved["U"].to(w0.device), saved["S"].to(w0.device)
        u, s, _ = torch.linalg.svd(w0.detach().double(), full_matrices=False)
        self.computed += 1
        atomic_save_tensors({"U": u, "S": s}, path)
        return u, s


def intruder_counts(u0: torch.Tensor, w: torch.Tensor, top_k: int | None, eps: list[float]) -> list[int]:
    """For each eps: how many of the top-k left singular vectors u_j of ``w`` (all when top_k is None) have
    max_i |<u_j, u0_i>| < eps."""
    return _counts(left_vectors(w), u0, top_k, eps)


def left_vectors(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svd(w.detach().double(), full_matrices=False)[0]


def _counts(u: torch.Tensor, u0: torch.Tensor, top_k: int | None, eps: list[float]) -> list[int]:
    k = u.shape[1] if top_k is None else min(top_k, u.shape[1])
    best = (u[:, :k].T @ u0.to(u)).abs().max(dim=1).values
    return [int((best < e).sum()) for e in eps]


def spectrum(model: torch.nn.Module, init: torch.nn.Module, names: list[str], base_sha256: str,
             intruders: bool = False, top_k: int = 10, eps: list[float] | None = None,
             cache: SvdCache | None = None) -> dict:
    """Per matrix: singular values of dW and their summary numbers; with ``intruders``, the counts for the
    top-k and for all singular vectors of W0 + dW over the eps grid, per matrix and averaged per layer type."""
    eps = eps or EPS_GRID
    mats, counts_k, counts_all = [], {}, {}
    cache = cache or SvdCache(base_sha256)
    items = updates(model, init, names)
    for up, s in zip(items, batched_singular_values(items)):
        n, m = up.w0.shape
        mats.append({"name": up.name, "n": n, "m": m, "singular_values": s.cpu().tolist(), **spectrum_stats(s)})
        if intruders:
            u0, _ = cache.get(up.name, up.w0)
            u = left_vectors(up.w0.double() + up.delta())  # one SVD for both counts
            counts_k[up.name], counts_all[up.name] = _counts(u, u0, top_k, eps), _counts(u, u0, None, eps)
    out = {"schema": "genbound.spectrum/1", "matrices": mats}
    if intruders:
        out["intruders"] = {"eps": eps, "top_k": top_k, "counts_per_matrix": counts_k,
                            "counts_all_per_matrix": counts_all,
                            "mean_counts": _mean(counts_k.values(), len(eps)),
                            "mean_counts_all": _mean(counts_all.values(), len(eps)),
                            "mean_counts_per_type": _per_type(counts_k, len(eps)),
                            "svd_computed": cache.computed}
    return out


def _mean(rows, width: int) -> list[float]:
    rows = list(rows)
    return [sum(r[i] for r in rows) / len(rows) for i in range(width)] if rows else [0.0] * width


def layer_kind(name: str) -> str:
    """The layer type of a module name: its last part (query, value), or hidden for hidden.N."""
    leaf = name.rpartition(".")[2]
    return name.rpartition(".")[0].rpartition(".")[2] if leaf.isdigit() else leaf


def _per_type(counts: dict[str, list[int]], width: int) -> dict[str, list[float]]:
    """Average per layer type (``layer_kind``)."""
    groups: dict[str, list[list[int]]] = {}
    for name, row in counts.items():
        groups.setdefault(layer_kind(name), []).append(row)
    return {k: _mean(v, width) for k, v in groups.items()}


def checkpoint_spectrum(loaded, intruders: bool = False, top_k: int = 10) -> dict:
    """``spectrum`` of a loaded checkpoint's adapted matrices (full fine-tuning: the default targets)."""
    from .errors import GenboundError

    built = loaded.built
    names = built.targets or (built.backbone.targets if built.method.scope == "full" else [])
    if not names:
        raise GenboundError(f"method {built.method.name} adapts no matrix (nothing to take a spectrum of)")
    out = spectrum(loaded.model, loaded.initial().model, names, built.backbone.sha256, intruders=intruders, top_k=top_k)
    out.update(method=built.method.name, rank=built.rank, chain_k=built.chain)
    return out

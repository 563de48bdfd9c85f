"""Spectra of learned updates and intruder dimensions (docs/theory.md section 7).

The singular values of each adapted matrix's update come from its ``Update`` (genbound/update.py): from the
factors without forming dW for low-rank links, from the nonzero columns for column updates, a dense SVD for
updates that are not low-rank (DoRA) and for full fine-tuning's W - W0. The bounds use the same values for
||dW||_2.

Intruder dimensions (Shuttleworth et al. 2024): with U0, U the left singular vectors of W0 and W0 + dW,
u_j (one of the top-k of U) is an intruder at threshold eps when max_i |<u_j, u0_i>| < eps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .layers import AdapterLinear
from .models import layer_kind
from .update import Update, batched_singular_values, spectrum_stats

EPS_GRID = [round(0.05 * i, 2) for i in range(1, 21)]  # thresholds in (0, 1]


@dataclass
class Matrix:
    """One adapted matrix: the weight before fine-tuning and its learned update."""

    name: str
    w0: torch.Tensor
    update: Update


def updates(model: torch.nn.Module, init: torch.nn.Module, names: list[str]) -> list[Matrix]:
    """The updates of the named matrices: the adapter layers' own, or W - W_init (dense) for plain Linears."""
    out = []
    for name in names:
        mod = model.get_submodule(name)
        if isinstance(mod, AdapterLinear):
            out.append(Matrix(name, mod.weight.detach(), mod.update()))
        else:
            w0 = init.get_submodule(name).weight.detach().to(mod.weight.device)
            out.append(Matrix(name, w0, Update.dense(mod.weight.detach() - w0)))
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
        from .files import atomic_save_tensors

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
    for up, s in zip(items, batched_singular_values([i.update for i in items])):
        n, m = up.w0.shape
        mats.append({"name": up.name, "n": n, "m": m, "singular_values": s.cpu().tolist(), "how": up.update.how,
                     **spectrum_stats(s)})
        if intruders:
            u0, _ = cache.get(up.name, up.w0)
            u = left_vectors(up.w0.double() + up.update.to_dense().detach().double())  # one SVD for both counts
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

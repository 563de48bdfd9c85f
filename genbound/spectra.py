"""Spectra of learned updates and intruder dimensions (docs/theory.md section 7).

The singular values of each adapted matrix's update come from its ``Update`` (genbound/update.py): from the
factors without forming dW for low-rank links, from the nonzero columns for column updates, a dense SVD for
updates that are not low-rank (DoRA) and for full fine-tuning's W - W0. The bounds use the same values for
||dW||_2.

Intruder dimensions (Shuttleworth et al. 2024): with U0, U the left singular vectors of W0 and W0 + dW,
u_j (one of the top-k of U) is an intruder at threshold eps when max_i |<u_j, u0_i>| < eps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import result
from .files import cache_dir
from .layers import AdapterLinear, weight_matrix
from .models import layer_kind
from .options import opt
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
            w0 = weight_matrix(init.get_submodule(name)).detach().to(mod.weight.device)  # n x m (Conv1D: W^T)
            out.append(Matrix(name, w0, Update.dense(weight_matrix(mod).detach() - w0)))
    return out


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


# ---- the analysis contract (genbound/analyses.py) -------------------------------------------------------
NEEDS_EXAMPLES = False  # the trained and the initial weights alone: the command line loads no data for it


@dataclass
class Options:
    intruders: bool = opt(True, "count intruder dimensions (Shuttleworth et al. 2024)")
    top_k: int = opt(10, "intruders among the top-k singular vectors")


def check_options(options: Options) -> None:
    from .errors import GenboundError

    if options.top_k < 1:
        raise GenboundError(f"--top-k {options.top_k}: must be at least 1")


def applies(scope: str) -> bool:
    """Every scope but head-only, which adapts no matrix."""
    return scope != "head"


def _mean_stable_rank(a: dict) -> float | None:
    ranks = [m["stable_rank"] for m in a["matrices"] if isinstance(m["stable_rank"], (int, float))
             and math.isfinite(m["stable_rank"])]
    return sum(ranks) / len(ranks) if ranks else None


class Result(result.Result):
    SCHEMA = "genbound.spectrum/1"
    MEASURES = {
        "intruders": (lambda a: a["intruders"]["mean_counts"][a["intruders"]["eps"].index(0.5)],
                      "mean intruder count among the top-k at eps = 0.5"),
        "stable_rank": (_mean_stable_rank, "mean stable rank"),
    }

    def render(self) -> str:
        r = self.data
        lines = [f"{r['method']} r={r['rank']} k={r['chain_k']}  ({r.get('checkpoint', '')})",
                 f"  {'matrix':<44}{'n x m':>12}{'||dW||_2':>11}{'||dW||_F':>11}{'stable':>8}{'effective':>10}"]
        for m in r["matrices"]:
            lines.append(f"  {m['name']:<44}{str(m['n']) + ' x ' + str(m['m']):>12}{m['norm_2']:>11.4g}"
                         f"{m['norm_fro']:>11.4g}{m['stable_rank']:>8.2f}{m['effective_rank']:>10.2f}")
        hows = sorted({m["how"] for m in r["matrices"] if "how" in m})
        if hows:
            lines.append(f"  singular values: {'; '.join(hows)}")
        if "intruders" in r:
            it = r["intruders"]
            pick = [i for i, e in enumerate(it["eps"]) if e in (0.3, 0.5, 0.7, 0.9)]
            head = "  ".join(f"eps={it['eps'][i]:.1f}: {it['mean_counts'][i]:.2f} / {it['mean_counts_all'][i]:.1f}"
                             for i in pick)
            lines.append(f"  intruders, mean per matrix (top {it['top_k']} / all): {head}")
        return "\n".join(lines)


def run(loaded, options: Options, progress: bool = False) -> Result:
    return Result({**checkpoint_spectrum(loaded, options.intruders, options.top_k), "options": asdict(options),
                   "data_loaded": loaded.data.get("loaded", True)})


OUTPUTS = [("plot", "--plot", "file")]


def add_arguments(parser) -> None:
    parser.add_argument("--plot", metavar="FILE.png", help="spectra plot of the first checkpoint (and "
                                                           "FILE-intruders.png with every checkpoint's curves)")


def write_outputs(results: dict[str, Result], args) -> None:
    if not args.plot:
        return
    from . import plots

    first_label, first = next(iter(results.items()))
    plots.save(plots.spectra_figure(first.data, first_label), args.plot)
    if "intruders" in first:
        stem = Path(args.plot)
        plots.save(plots.intruder_figure({k: r.data for k, r in results.items()}),
                   str(stem.with_name(stem.stem + "-intruders" + stem.suffix)))

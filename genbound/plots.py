"""Figures from analysis results. The only module that imports matplotlib; it draws, the CLI saves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .spectra import layer_kind  # noqa: E402


def spectra_figure(result: dict, title: str) -> Figure:
    """Singular values of dW per adapted matrix (log scale), one panel per layer type, darker = deeper."""
    kinds: dict[str, list[dict]] = {}
    for m in result["matrices"]:
        kinds.setdefault(layer_kind(m["name"]), []).append(m)
    fig, axes = plt.subplots(1, len(kinds) or 1, figsize=(5 * max(1, len(kinds)), 3.8), squeeze=False)
    for ax, (kind, mats) in zip(axes[0], kinds.items()):
        for i, m in enumerate(mats):
            s = [v for v in m["singular_values"] if v > 0]
            if s:
                ax.semilogy(range(1, len(s) + 1), s, color=plt.cm.viridis(i / max(1, len(mats) - 1)),
                            label=m["name"], lw=1.2)
        ax.set(title=f"{title}: {kind}", xlabel="index", ylabel="singular value of dW")
        ax.grid(alpha=0.3)
        if len(mats) <= 8:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def intruder_figure(results: dict[str, dict]) -> Figure:
    """Mean intruder count over eps for several checkpoints: top-k panel and all-vectors panel."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, r in results.items():
        intr = r["intruders"]
        axes[0].plot(intr["eps"], intr["mean_counts"], marker="o", ms=3, label=label)
        axes[1].plot(intr["eps"], intr["mean_counts_all"], marker="o", ms=3, label=label)
    k = next(iter(results.values()))["intruders"]["top_k"] if results else 10
    axes[0].set(title=f"intruders among the top {k} singular vectors", xlabel="eps", ylabel="mean count per matrix")
    axes[1].set(title="intruders among all singular vectors", xlabel="eps", ylabel="mean count per matrix")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def measure_scatter_figure(result: dict, gap: str = "gap_01") -> Figure | None:
    """One panel per measure: measure against the measured gap, one colour per method, tau in the title."""
    items = [t for t in result["ranking"].values() if t["gap"] == gap]
    if not items:
        return None
    cols = min(3, len(items))
    rows_n = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    methods = sorted({r["method"] for r in result["rows"]})
    colour = {m: plt.cm.tab20(i % 20) for i, m in enumerate(methods)}
    for ax, t in zip(axes.flat, items):
        for m in methods:
            pts = [(r[t["measure"]], r[gap]) for r in result["rows"] if r["method"] == m
                   and isinstance(r[t["measure"]], (int, float))]
            if pts:
                ax.scatter(*zip(*pts), s=18, color=colour[m], label=m)
        ax.set(title=f"{t['measure']}: tau = {t['tau']:+.2f}", xlabel=t["measure"], ylabel=gap)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def method_figure(result: dict) -> Figure:
    """Test accuracy and the 0-1 gap per method (and rank), mean over seeds with std error bars."""
    groups: dict[str, list[dict]] = {}
    for r in result["rows"]:
        label = f"{r['method']} r{r['rank']}" if r["scope"] == "adapter" else r["method"]
        groups.setdefault(label, []).append(r)
    labels = sorted(groups)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(labels) + 4), 3.8))
    for ax, key, name in ((axes[0], "test_acc", "test accuracy"), (axes[1], "gap_01", "gap (0-1)")):
        means = [sum(r[key] for r in groups[g]) / len(groups[g]) for g in labels]
        stds = [(sum((r[key] - mu) ** 2 for r in groups[g]) / max(1, len(groups[g]) - 1)) ** 0.5
                for g, mu in zip(labels, means)]
        ax.bar(range(len(labels)), means, yerr=stds, capsize=3, color="tab:blue" if key == "test_acc" else "tab:red")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel=name)
        ax.grid(alpha=0.3, axis="y")
        if key == "test_acc":
            lo = min(m - s for m, s in zip(means, stds))
            ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(m + s for m, s in zip(means, stds)) + 0.02))
    fig.tight_layout()
    return fig


def landscape_figure(results: dict[str, dict], surface: bool = False, columns: int | None = None) -> Figure:
    """Loss landscapes side by side on one colour scale (2-D: contours, pca path overlaid; 1-D: curves),
    ``columns`` panels per row (all in one row by default)."""
    items = list(results.items())
    if items[0][1]["one_d"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, r in items:
            ax.plot(r["coords"]["a"], r["losses"], label=label)
        ax.set(xlabel="alpha (along d1)", ylabel=f"{items[0][1]['split']} loss", title="1-D loss slices")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
    lo = min(min(map(min, r["losses"])) for _, r in items)
    hi = max(max(map(max, r["losses"])) for _, r in items)
    if lo > 0 and hi > lo:  # log-spaced levels: the valley stays visible next to a steep wall
        levels = [lo * (hi / lo) ** (i / 30) for i in range(31)]
    else:
        levels = [lo + (hi - lo) * (i / 30) ** 2 for i in range(31)]
    kw = {"subplot_kw": {"projection": "3d"}} if surface else {}
    ncols = min(columns or len(items), len(items))
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.2 * nrows), squeeze=False, layout="constrained",
                             **kw)
    for ax in axes.flat[len(items):]:
        ax.set_axis_off()
    mappable = None
    for ax, (label, r) in zip(axes.flat, items):
        a, b = r["coords"]["a"], r["coords"]["b"]
        if surface:
            import numpy as np

            A, B = np.meshgrid(a, b)
            mappable = ax.plot_surface(A, B, np.asarray(r["losses"]), cmap="viridis", vmin=lo, vmax=hi)
        else:
            from matplotlib.colors import BoundaryNorm

            mappable = ax.contourf(a, b, r["losses"], levels=levels, cmap="viridis",
                                   norm=BoundaryNorm(levels, ncolors=256))
            ax.contour(a, b, r["losses"], levels=levels[::3], colors="white", linewidths=0.4)
            traj = r.get("trajectory")
            if traj and traj.get("a"):
                ax.plot(traj["a"], traj["b"], "r.-", ms=3, lw=0.8, label="training path")
                ax.legend(fontsize=6, loc="upper right")
            ax.plot([0], [0], "w*", ms=8)
        ax.set(title=f"{label}\nsharpness {r['sharpness']['increase']:.3g}", xlabel="d1", ylabel="d2")
    fig.colorbar(mappable, ax=list(axes.flat), shrink=0.8, label=f"{items[0][1]['split']} loss")
    return fig


def hessian_figure(results: dict[str, dict]) -> Figure:
    """SLQ spectral densities on a log scale (one line per checkpoint), top eigenvalues marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, (label, r) in enumerate(results.items()):
        colour = plt.cm.tab10(i % 10)
        if "density" in r:
            ax.semilogy(r["density"]["grid"], r["density"]["values"], color=colour, lw=1, label=label)
        for ev in r.get("eigenvalues") or []:
            ax.axvline(ev, color=colour, ls=":", lw=0.8)
    ax.set(xlabel="eigenvalue", ylabel="density (SLQ, Gaussian broadening)", title="Hessian spectrum")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Figures from analysis results. The only module that imports matplotlib; it draws, the CLI saves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _layer_kind(name: str) -> str:
    leaf = name.rpartition(".")[2]
    return name.rpartition(".")[0].rpartition(".")[2] if leaf.isdigit() else leaf


def spectra_figure(result: dict, title: str) -> Figure:
    """Singular values of dW per adapted matrix (log scale), one panel per layer type, darker = deeper."""
    kinds: dict[str, list[dict]] = {}
    for m in result["matrices"]:
        kinds.setdefault(_layer_kind(m["name"]), []).append(m)
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


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)

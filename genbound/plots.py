"""Figures from analysis results. The only module that imports matplotlib; it draws, the CLI saves.

Every figure colours a method the same way (``method_colour``, one fixed colour per method name), labels
every axis with what it shows, and puts a legend that many panels share outside the panels.
"""

from __future__ import annotations

import colorsys
import math
import zlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm, Normalize, to_hex, to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .models import layer_kind  # noqa: E402

# One fixed colour per method, in every figure. Hand-picked: related methods share a hue family and differ
# in lightness (lora / lora_plus blues; cola / rac greens, the chain methods; cla / rcla reds, the sparse
# one-link methods; c3la / rc3la purples, their chains); every pair is at least 25 apart in CIELAB (delta E 76).
METHOD_COLOURS: dict[str, str] = {
    "full": "#222222",       # near black: everything trained
    "head": "#8c8c8c",       # grey: head only
    "lora": "#1f5fbf",       # blue
    "lora_plus": "#6fa8dc",  # light blue
    "dora": "#d01c8b",       # magenta
    "vera": "#17becf",       # cyan
    "asym": "#ff7f0e",       # orange
    "cola": "#1b7837",       # dark green
    "rac": "#8fcf6f",        # light green
    "cla": "#c51b1b",        # red
    "rcla": "#fb9a99",       # light red
    "c3la": "#6a3d9a",       # purple
    "rc3la": "#b39ddb",      # light purple
    "paca": "#8c564b",       # brown
}
METHOD_ORDER = tuple(METHOD_COLOURS)
LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))  # not ":", which marks eigenvalues
RANK_MARKERS = ("o", "^", "D", "v", "P", "X")

# Short axis labels of the measures compare ranks (the analyses' Result.MEASURES); unknown ones show their key.
MEASURE_LABELS = {
    "paper_bound": "paper's bound on the gap (MI term, paper's D)",
    "paper_bound_full": "MI bound on the gap (D = every trained number)",
    "log10_phi_dw": "log10 Phi_dW (Theorem 1's dW term)",
    "log10_theorem1": "log10 Theorem 1 bound on the CE gap",
    "compression_bound": "Occam bound on the test error (quantized)",
    "pac_bayes_certificate": "PAC-Bayes certificate on the test error (stochastic)",
    "pac_bayes_kl_over_n": "KL(Q||P) / n of the certified posterior",
    "hessian_top": "largest Hessian eigenvalue",
    "hessian_trace": "Hessian trace",
    "sharpness": "sharpness: loss increase within rho",
    "intruders": "mean intruder count (top-k, eps = 0.5)",
    "stable_rank": "mean stable rank of dW",
}
GAP_LABELS = {"gap_01": "gap 0-1 (train acc - test acc)", "gap_ce": "gap CE (test CE - train CE)",
              "gap_mse": "gap MSE (test MSE - train MSE)"}


def method_colour(method: str) -> str:
    """The colour of a method in every figure; an unknown name gets a colour from a hash of the name (the same
    in every run and process, unlike Python's salted hash())."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    hue = zlib.crc32(method.encode()) % 360 / 360
    return to_hex(colorsys.hls_to_rgb(hue, 0.42, 0.6))


def method_sort_key(method: str) -> tuple:
    """The palette's order first (related methods side by side), unknown names after it, alphabetically."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def method_of(label: str, result: dict | None = None) -> str:
    """A result's method: its "method" key, else the folder label's first word ("lora-r8-s0" -> lora)."""
    if result and isinstance(result.get("method"), str):
        return result["method"]
    return label.split(" ")[0].split("-")[0]


def _styles(labels_methods: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """label -> (colour, linestyle): the method's colour; a second curve of the same method is dashed, etc."""
    seen: dict[str, int] = {}
    out = {}
    for label, method in labels_methods:
        i = seen.get(method, 0)
        seen[method] = i + 1
        out[label] = (method_colour(method), LINESTYLES[i % len(LINESTYLES)])
    return out


def _shade(colour: str, t: float) -> tuple:
    """``colour`` blended towards white by t in [0, 1] (0: the colour itself)."""
    return tuple(c + (1 - c) * t for c in to_rgb(colour))


def spectra_figure(result: dict, title: str) -> Figure:
    """Singular values of dW per adapted matrix (log scale), one panel per layer type; the method's colour,
    lighter = shallower, darker = deeper."""
    kinds: dict[str, list[dict]] = {}
    for m in result["matrices"]:
        kinds.setdefault(layer_kind(m["name"]), []).append(m)
    colour = method_colour(method_of(title, result))
    fig, axes = plt.subplots(1, len(kinds) or 1, figsize=(5 * max(1, len(kinds)), 3.8), squeeze=False,
                             layout="constrained")
    for ax, (kind, mats) in zip(axes[0], kinds.items()):
        for i, m in enumerate(mats):
            s = [v for v in m["singular_values"] if v > 0]
            if s:
                ax.semilogy(range(1, len(s) + 1), s, color=_shade(colour, 0.75 * (1 - i / max(1, len(mats) - 1))),
                            label=m["name"], lw=1.2)
        ax.set(title=f"{title}: {kind}", xlabel="index i (largest first)", ylabel="singular value s_i of dW (log)")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(mats) <= 8:
            ax.legend(fontsize=6, title="darker = deeper", title_fontsize=6)
        else:
            ax.text(0.98, 0.98, f"{len(mats)} matrices; darker = deeper", transform=ax.transAxes, ha="right",
                    va="top", fontsize=7)
    return fig


def intruder_figure(results: dict[str, dict]) -> Figure:
    """Mean intruder count over eps for several checkpoints: top-k panel and all-vectors panel, one colour per
    method, one legend for both panels."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    styles = _styles([(label, method_of(label, r)) for label, r in results.items()])
    for label, r in results.items():
        intr = r["intruders"]
        colour, ls = styles[label]
        axes[0].plot(intr["eps"], intr["mean_counts"], marker="o", ms=3, color=colour, ls=ls, label=label)
        axes[1].plot(intr["eps"], intr["mean_counts_all"], marker="o", ms=3, color=colour, ls=ls, label=label)
    k = next(iter(results.values()))["intruders"]["top_k"] if results else 10
    axes[0].set(title=f"among the top {k} singular vectors")
    axes[1].set(title="among all singular vectors")
    for ax in axes:
        ax.set(xlabel="eps", ylabel="mean intruder count per matrix")
        ax.grid(alpha=0.3)
    fig.supxlabel("eps: a singular vector of W0+dW is an intruder when its largest |cosine| with W0's singular "
                  "vectors is below eps", fontsize=9)
    if results:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8, frameon=False)
    return fig


def _ranks_of(rows: list[dict]) -> list:
    return sorted({r["rank"] for r in rows if r.get("scope") == "adapter"})


def _marker(row: dict, ranks: list) -> str:
    if len(ranks) < 2:
        return "o"
    return RANK_MARKERS[ranks.index(row["rank"]) % len(RANK_MARKERS)] if row.get("scope") == "adapter" else "s"


def _legend_handles(methods: list[str], ranks: list) -> list[Line2D]:
    handles = [Line2D([], [], ls="", marker="o", ms=6, color=method_colour(m), label=m) for m in methods]
    if len(ranks) >= 2:
        handles += [Line2D([], [], ls="", marker=RANK_MARKERS[i % len(RANK_MARKERS)], ms=6, color="0.4",
                           label=f"r = {r}") for i, r in enumerate(ranks)]
        handles.append(Line2D([], [], ls="", marker="s", ms=6, color="0.4", label="no rank (full, head)"))
    return handles


def measure_scatter_figure(result: dict, gap: str = "gap_01", show_tau: bool = True) -> Figure | None:
    """One panel per measure: measure against the measured gap, one point per checkpoint in its method's colour
    (marker = rank when there are several), tau and its seed-bootstrap interval in the title (``show_tau``:
    too few checkpoints make tau meaningless), one legend."""
    items = [t for t in result["ranking"].values() if t["gap"] == gap]
    if not items:
        return None
    rows = result["rows"]
    cols = min(3, len(items))
    rows_n = (len(items) + cols - 1) // cols
    methods = sorted({r["method"] for r in rows}, key=method_sort_key)
    ranks = _ranks_of(rows)
    handles = _legend_handles(methods, ranks)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.3 * cols, 3.4 * rows_n + 0.5 + 0.25 * (len(handles) // 8)),
                             squeeze=False, layout="constrained")
    for ax, t in zip(axes.flat, items):
        measure = t["measure"]
        pts = [r for r in rows if _number(r.get(measure)) and _number(r.get(gap))]
        for r in pts:
            ax.scatter(r[measure], r[gap], s=20, color=method_colour(r["method"]), marker=_marker(r, ranks),
                       edgecolors="none")
        xs = [r[measure] for r in pts]
        log = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 100  # spans decades: log axis
        if log:
            ax.set_xscale("log")
        lo, hi = t.get("tau_ci95_seed_bootstrap") or (None, None)
        interval = f" [{lo:+.2f}, {hi:+.2f}]" if _number(lo) and _number(hi) else ""
        ax.set(title=f"{measure}: tau {t['tau']:+.2f}{interval}" if show_tau else measure,
               xlabel=MEASURE_LABELS.get(measure, measure) + (" (log)" if log else ""), ylabel=GAP_LABELS.get(gap, gap))
        ax.title.set_fontsize(10)
        ax.xaxis.label.set_fontsize(8.5)
        ax.yaxis.label.set_fontsize(8.5)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    return fig


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def certificate_figure(result: dict) -> Figure | None:
    """The PAC-Bayes certificate (y) against the measured test error of the stochastic predictor it bounds (x),
    one point per checkpoint in its method's colour (marker = rank when there are several); the line y = x (a
    certificate never lies below it but by chance) and, dashed, the majority-class error (a certificate above it
    is vacuous). Both axes start at 0 and share one scale. None when no checkpoint has a certificate."""
    rows = [r for r in result["rows"]
            if _number(r.get("pac_bayes_certificate")) and _number(r.get("stochastic_test_err"))]
    if not rows:
        return None
    methods = sorted({r["method"] for r in rows}, key=method_sort_key)
    ranks = _ranks_of(rows)
    fig, ax = plt.subplots(figsize=(5.6, 5.0), layout="constrained")
    for r in rows:
        ax.scatter(r["stochastic_test_err"], r["pac_bayes_certificate"], s=30, color=method_colour(r["method"]),
                   marker=_marker(r, ranks), edgecolors="black", linewidths=0.4, zorder=3)
    majority = [r["majority_err"] for r in rows if _number(r.get("majority_err"))]
    top = min(1.0, 1.08 * max([r["pac_bayes_certificate"] for r in rows] + [r["stochastic_test_err"] for r in rows]
                              + majority))
    ax.plot([0, top], [0, top], color="black", lw=0.8, label="y = x")
    handles = _legend_handles(methods, ranks) + [Line2D([], [], color="black", lw=0.8, label="y = x")]
    if majority:
        level = min(majority)
        ax.axhline(level, color="0.4", ls="--", lw=0.8)
        handles.append(Line2D([], [], color="0.4", ls="--", lw=0.8, label="majority-class error"))
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured test error of the stochastic predictor",
           ylabel="PAC-Bayes certificate on its test error", title="Certificate vs measured test error")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="lower right", frameon=False)  # below y = x: empty but by chance
    return fig


def _group_label(r: dict) -> str:
    return f"{r['method']} r{r['rank']}" if r["scope"] == "adapter" else r["method"]


def method_figure(result: dict) -> Figure:
    """Test accuracy and the 0-1 gap (regression: test MSE and the MSE gap) per method (and rank): bars from 0
    at the mean over seeds in the method's colour; where a group has 2 or more seeds, an error bar of +-1 sample
    std over seeds and its seeds as dots
    (a one-seed group gets neither)."""
    groups: dict[str, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault(_group_label(r), []).append(r)
    labels = sorted(groups, key=lambda g: (method_sort_key(groups[g][0]["method"]), groups[g][0]["rank"]))
    counts = [len(groups[g]) for g in labels]
    if min(counts) >= 2:
        spread = (f"mean of {min(counts)} seeds" if min(counts) == max(counts) else "mean over seeds") + \
            " ± sample std; dots: seeds"
    elif max(counts) >= 2:
        spread = "mean over seeds; ± sample std and dots\nonly where a group has >= 2 seeds"
    else:
        spread = "one seed: no error bars"
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 0.55 * len(labels) + 4.5), 4.4), layout="constrained")
    x = list(range(len(labels)))
    colours = [method_colour(groups[g][0]["method"]) for g in labels]
    regression = any(r.get("problem") == "regression" for r in result["rows"])
    panels = ((("test_mse", "test MSE", "Test MSE"), ("gap_mse", "gap MSE (test - train)", "Generalization gap (MSE)"))
              if regression else (("test_acc", "test accuracy", "Test accuracy"),
                                  ("gap_01", "gap 0-1 (train - test acc)", "Generalization gap (0-1 loss)")))
    for ax, (key, name, title) in zip(axes, panels):
        ax.set_title(title)
        values = [[r[key] for r in groups[g]] for g in labels]
        means = [sum(v) / len(v) for v in values]
        ax.bar(x, means, color=colours, edgecolor="black", linewidth=0.5, width=0.7)
        multi = [i for i, v in enumerate(values) if len(v) >= 2]
        stds = {i: math.sqrt(sum((y - means[i]) ** 2 for y in values[i]) / (len(values[i]) - 1)) for i in multi}
        if multi:
            ax.errorbar(multi, [means[i] for i in multi], yerr=[stds[i] for i in multi], fmt="none", ecolor="black",
                        capsize=3, lw=1)
            ax.scatter([i + 0.18 for i in multi for _ in values[i]], [y for i in multi for y in values[i]], s=6,
                       color="black", zorder=3)
        ax.set_xticks(x, labels, rotation=55, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set(ylabel=f"{name}\n({spread})", xlabel="method, rank r")
        ax.grid(alpha=0.3, axis="y")
        ends = [y for v in values for y in v] + [means[i] + s for i, s in stds.items()] + \
            [means[i] - s for i, s in stds.items()]
        if key == "test_acc":  # accuracy lies in [0, 1]: the whole scale, so no difference is magnified
            ax.set_ylim(0.0, 1.0)
        else:  # from 0 (or below it when a gap or an error bar is negative) to just above the highest end
            top, bottom = max(0.0, *ends), min(0.0, *ends)
            pad = 0.06 * ((top - bottom) or 1.0)
            ax.set_ylim(bottom - pad if bottom < 0 else 0.0, top + pad)
            ax.axhline(0.0, color="black", lw=0.6)
    return fig


def _nice_ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Round tick values in [lo, hi]: on a log scale 1-2-5 (denser when the range is short), else 1-2-2.5-5."""
    if not (hi > lo):
        return [lo]
    if log:
        for subs in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)):
            ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                     for m in subs if lo <= m * 10.0 ** e <= hi]
            if len(ticks) >= 4:
                return ticks
        if len(ticks) >= 3:
            return ticks
    # linear, or a log range too short for the mantissas above: evenly spaced round values
    span = hi - lo
    for step_m in (5, 2.5, 2, 1):
        step = step_m * 10.0 ** math.floor(math.log10(span / 4))
        ticks = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
        if len(ticks) >= 4:
            return ticks
    return ticks


def direction_labels(r: dict) -> tuple[str, str]:
    """What d1 and d2 of a landscape are: the random filter-normalized directions in their parameter space, or
    the trajectory's principal directions with their share of its variance."""
    if r.get("dirs") == "pca":
        ev = r.get("explained_variance") or []
        return tuple(f"PC{i + 1} of the training trajectory"
                     + (f" ({100 * ev[i]:.0f}% of variance)" if i < len(ev) and _number(ev[i]) else "")
                     for i in range(2))
    space = {"trainable": "trainable params", "delta": "dW space", "all": "all params"}.get(r.get("space"),
                                                                                           r.get("space") or "")
    return tuple(f"d{i + 1}: filter-normalized random direction ({space})" for i in range(2))


def landscape_figure(results: dict[str, dict], surface: bool = False, columns: int | None = None) -> Figure:
    """Loss landscapes side by side on one colour scale (2-D: filled contours, log-spaced, pca path overlaid;
    1-D: curves), ``columns`` panels per row (all in one row by default); the colour bar next to the panels."""
    items = list(results.items())
    if items[0][1]["one_d"]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        styles = _styles([(label, method_of(label, r)) for label, r in items])
        for label, r in items:
            ax.plot(r["coords"]["a"], r["losses"], label=label, color=styles[label][0], ls=styles[label][1])
        ax.set(xlabel="a along " + direction_labels(items[0][1])[0], ylabel=f"{items[0][1]['split']} loss (CE)",
               title="1-D loss slices")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return fig
    lo = min(min(map(min, r["losses"])) for _, r in items)
    hi = max(max(map(max, r["losses"])) for _, r in items)
    log = lo > 0 and hi > lo
    if log:  # log-spaced levels: the valley stays visible next to a steep wall
        levels = [lo * (hi / lo) ** (i / 30) for i in range(31)]
        norm = LogNorm(lo, hi)
    else:
        hi = hi if hi > lo else lo + 1.0
        levels = [lo + (hi - lo) * (i / 30) ** 2 for i in range(31)]
        norm = Normalize(lo, hi)
    kw = {"subplot_kw": {"projection": "3d"}} if surface else {}
    ncols = min(columns or len(items), len(items))
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.2, 3.9 * nrows), squeeze=False,
                             layout="constrained", **kw)
    for ax in axes.flat[len(items):]:
        ax.set_axis_off()
    labels = [direction_labels(r) for _, r in items]
    shared = len(set(labels)) == 1  # the same directions' description everywhere: label the outer panels only
    mappable = None
    for i, (ax, (label, r)) in enumerate(zip(axes.flat, items)):
        a, b = r["coords"]["a"], r["coords"]["b"]
        if surface:
            import numpy as np

            A, B = np.meshgrid(a, b)
            mappable = ax.plot_surface(A, B, np.asarray(r["losses"]), cmap="viridis", norm=norm)
        else:
            mappable = ax.contourf(a, b, r["losses"], levels=levels, cmap="viridis", norm=norm)
            ax.contour(a, b, r["losses"], levels=levels[::3], colors="white", linewidths=0.4)
            traj = r.get("trajectory")
            if traj and traj.get("a"):
                ax.plot(traj["a"], traj["b"], "r.-", ms=3, lw=0.8, label="training path")
                ax.legend(fontsize=7, loc="upper right")
            ax.plot([0], [0], "w*", ms=9, mec="black", mew=0.4)
            ax.set_aspect("equal")
        ax.set_title(f"{label}: sharpness {r['sharpness']['increase']:.2g}", fontsize=10)
        if not surface:  # the frame in the method's colour, as in the other figures
            for spine in ax.spines.values():
                spine.set(edgecolor=method_colour(method_of(label, r)), linewidth=2.5)
        row, col = divmod(i, ncols)
        bottom = i + ncols >= len(items)  # nothing below this panel
        if surface:  # a 3-D panel has no room for the long labels: they go under the figure
            ax.set(xlabel="a (along d1)", ylabel="b (along d2)")
            ax.set_zlabel("loss", labelpad=12)
        else:
            if not shared or bottom:
                ax.set_xlabel(labels[i][0], fontsize=8)
            if not shared or col == 0:
                ax.set_ylabel(labels[i][1], fontsize=8)
    if surface:
        words = [f"{x.replace('d1: ', 'd1, d2: ').replace('direction', 'directions')}" if x[3:] == y[3:] else
                 f"{x}; {y}" for x, y in labels]
        fig.supxlabel(" | ".join(dict.fromkeys(words)), fontsize=9)
    cb = fig.colorbar(mappable, ax=axes[:, -1].tolist() if not surface else list(axes.flat), location="right",
                      shrink=0.9 if nrows > 1 else 1.0, aspect=25 * nrows, pad=0.02)
    ticks = _nice_ticks(lo, hi, log)
    cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    cb.minorticks_off()
    cb.set_label(f"{items[0][1]['split']} loss (cross-entropy{', log colour scale' if log else ''})")
    return fig


def hessian_figure(results: dict[str, dict]) -> Figure:
    """SLQ spectral densities on a log scale (one line per checkpoint, its method's colour), top eigenvalues
    as dotted lines of the same colour."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2), layout="constrained")
    styles = _styles([(label, method_of(label, r)) for label, r in results.items()])
    marked = False
    for label, r in results.items():
        colour, ls = styles[label]
        if "density" in r:
            ax.semilogy(r["density"]["grid"], r["density"]["values"], color=colour, ls=ls, lw=1.2, label=label)
        else:  # no density: the legend still names the checkpoint its eigenvalue lines belong to
            ax.plot([], [], color=colour, ls=ls, label=label)
        for ev in r.get("eigenvalues") or []:
            ax.axvline(ev, color=colour, ls=":", lw=0.9)
            marked = True
    ax.set(xlabel="eigenvalue of the training-loss Hessian", ylabel="spectral density (SLQ, Gaussian broadening)",
           title="Hessian spectrum")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if marked:
        handles.append(Line2D([], [], color="0.4", ls=":", lw=0.9))
        labels.append("top eigenvalues (Lanczos)")
    if len(handles) > 5:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    elif handles:
        ax.legend(handles, labels, fontsize=8, loc="upper right")
    return fig


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)

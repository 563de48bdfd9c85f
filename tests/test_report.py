"""The report's markdown (vacuous bounds marked, test-error and gap bounds apart, the tau table only with enough
checkpoints, captions) and the figures (one colour per method everywhere, bars from 0, error bars only over
two or more seeds, labelled landscape axes), on hand-built results: no training, CPU, fast."""

import re
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer

from genbound import plots
from genbound.compare import bootstrap_tau, granulated_psi, kendall_tau
from genbound.report import TAU_MIN_CHECKPOINTS, render_report, write_comparison
from genbound.compare import AXES, GAPS

ALL_METHODS = ["full", "head", "lora", "lora_plus", "asym", "cola", "rac", "cla", "rcla", "c3la", "rc3la", "paca",
               "dora", "vera"]


def row(method: str, seed: int = 0, *, rank: int = 8, test_acc: float = 0.8, gap_01: float = 0.02,
        gap_ce: float = 0.05, paper: float | None = 0.5, comp: float | None = 0.3, majority: float | None = 0.6,
        ckpt: str | None = None, **extra) -> dict:
    """One compare row with every key render_report reads (the checkpoint folder need not exist)."""
    scope = "adapter" if method not in ("full", "head") else method
    r = {"checkpoint": ckpt or f"/nonexistent/{method}-r{rank}-s{seed}", "base": "b", "model": "mlp", "data": "digits",
         "method": method, "scope": scope, "rank": rank, "chain_k": 1, "seed": seed, "params_paper": 1000,
         "params_full": 1200, "test_acc": test_acc, "train_loss": 0.5, "test_loss": 0.5 + gap_ce, "gap_ce": gap_ce,
         "gap_01": gap_01, "train_seconds": 1.0, "peak_gpu_memory_bytes": None, "majority_err": majority,
         "paper_bound": paper, "paper_bound_full": paper, "log10_phi_dw": 3.0, "log10_theorem1": None,
         "compression_bound": comp, "hessian_top": None, "hessian_trace": None, "sharpness": 0.01 * (seed + 1),
         "intruders": None, "stable_rank": None}
    r.update(extra)
    return r


def result_of(rows: list[dict]) -> dict:
    """The comparison result as study.compare builds it from rows."""
    ranking = {}
    for measure in ("paper_bound", "compression_bound", "sharpness"):
        for gap in GAPS:
            pts = [r for r in rows if r.get(measure) is not None]
            if len(pts) < 2:
                continue
            ranking[f"{measure}|{gap}"] = {
                "measure": measure, "gap": gap, "n": len(pts),
                "tau": kendall_tau([r[measure] for r in pts], [r[gap] for r in pts]),
                "tau_ci95_seed_bootstrap": bootstrap_tau(pts, measure, gap), **granulated_psi(pts, measure, gap, AXES)}
    return {"schema": "genbound.compare/1", "rows": rows, "ranking": ranking,
            "measures": {"paper_bound": "the paper's MI term", "compression_bound": "Occam bound",
                         "sharpness": "loss increase at radius rho"}}


def section(text: str, title_start: str) -> str:
    """The markdown from the heading that starts with ``title_start`` to the next heading."""
    start = text.index("## " + title_start)
    end = text.find("\n## ", start + 3)
    return text[start:] if end < 0 else text[start:end]


def table_line(block: str, first_cell: str) -> str:
    lines = [ln for ln in block.splitlines() if ln.startswith(f"| {first_cell} |")]
    assert len(lines) == 1, (first_cell, lines)
    return lines[0]


# ---- the markdown ------------------------------------------------------------------------------------------
def test_compression_bound_is_vacuous_above_the_majority_error_and_not_below():
    rows = [row("lora", comp=0.65, majority=0.6), row("cla", comp=0.55, majority=0.6), row("rcla", comp=1.2)]
    text = render_report(result_of(rows), "t")
    test_err = section(text, "Test error")
    assert table_line(test_err, "lora").endswith("0.650 (vacuous) |")
    assert "vacuous" not in table_line(test_err, "cla")
    assert table_line(test_err, "rcla").endswith("1.200 (vacuous) |")  # above 1 as well
    every = section(text, "Every checkpoint")
    assert "0.650 (vacuous)" in table_line(every, "lora-r8-s0") and "vacuous" not in table_line(every, "cla-r8-s0")
    assert "majority-class err" in test_err and "judged by >= 1 only" not in text


def test_without_majority_error_the_test_error_bound_is_judged_by_one_only_and_said_once():
    rows = [row("lora", comp=0.95, majority=None), row("cla", comp=1.0, majority=None), row("rcla", majority=None)]
    text = render_report(result_of(rows), "t")
    test_err = section(text, "Test error")
    assert "vacuous" not in table_line(test_err, "lora")  # 0.95 < 1 and nothing else to judge by
    assert table_line(test_err, "cla").endswith("(vacuous) |")
    assert text.count("judged by >= 1 only") == 1


def test_a_bound_below_one_never_reads_as_one():
    text = render_report(result_of([row("lora", comp=0.9999998, majority=None), row("cla")]), "t")
    assert "0.9999 |" in table_line(section(text, "Test error"), "lora")


def test_paper_bound_bounds_the_gap_and_is_vacuous_above_one_for_the_01_loss():
    rows = [row("lora", paper=1.5), row("cla", paper=0.4), row("rcla", paper=None)]
    text = render_report(result_of(rows), "t")
    gap = section(text, "Gap and the bound")
    assert table_line(gap, "lora").endswith("1.500 (vacuous) |")
    assert "vacuous" not in table_line(gap, "cla")
    assert table_line(gap, "rcla").endswith("| - |")
    # kept apart: the gap bound's table has no test-error bound and the other way round, and each bound stands
    # right after the measured quantity it bounds, under a header that says what it bounds
    test_err = section(text, "Test error")
    assert "paper bound" not in test_err and "Occam" not in gap
    assert "| test err | majority-class err | Occam bound on test err |" in test_err
    assert "| gap 0-1 | paper bound on the gap (0-1 loss) |" in gap
    assert "15.5 (vacuous)" not in text and "1.5 (vacuous)" in table_line(section(text, "Every checkpoint"),
                                                                          "lora-r8-s0")
    header = table_line(section(text, "Every checkpoint"), "checkpoint")
    assert "| test err | majority err | Occam bound on test err |" in header
    assert "| gap 0-1 | paper bound on the gap (0-1 loss) |" in header


def test_paper_bound_for_a_bounded_ce_is_judged_by_that_loss_range():
    """A compute with CE smoothed by a = 0.1 over 10 classes bounds a gap of at most ln(K / a) = ln(100) = 4.6
    (oracle: math.log): 3 is not vacuous, 5 is; the header names the loss and the CE gap stands next to it."""
    import math

    from genbound.compare import bounded_loss

    comp = {"loss": "ce", "sigma": math.log(100) / 2, "options": {"smoothing": 0.1, "clip": None, "sigma": None}}
    loss = bounded_loss(comp)
    assert loss == {"loss": "ce", "loss_label": "CE smoothed by a=0.1", "loss_range": pytest.approx(math.log(100))}
    assert bounded_loss({**comp, "options": {**comp["options"], "sigma": 3.0}})["loss_range"] is None
    assert bounded_loss({"loss": "01"})["loss_range"] == 1.0 and bounded_loss({})["loss"] is None
    rows = [row("lora", paper=3.0, **loss), row("cla", paper=5.0, **loss)]
    gap = section(render_report(result_of(rows), "t"), "Gap and the bound")
    assert "vacuous" not in table_line(gap, "lora") and table_line(gap, "cla").endswith("(vacuous) |")
    assert "| gap CE | paper bound on the gap (CE smoothed by a=0.1) |" in gap and "4.605" in gap
    # rows that say only which loss was bounded are judged by their range
    rows = [row("lora", paper=3.0, loss="ce", loss_range=2.0), row("cla", paper=3.0, loss="ce", loss_range=4.0)]
    gap = section(render_report(result_of(rows), "t"), "Gap and the bound")
    assert table_line(gap, "lora").endswith("(vacuous) |") and "vacuous" not in table_line(gap, "cla")


def test_partly_vacuous_groups_say_for_how_many_seeds():
    rows = [row("lora", s, paper=p) for s, p in ((0, 0.9), (1, 1.1), (2, 1.2))] + [row("cla")]
    gap = section(render_report(result_of(rows), "t"), "Gap and the bound")
    assert table_line(gap, "lora").endswith("(vacuous for 2 of 3 seeds) |")


def test_too_few_checkpoints_give_a_note_instead_of_the_tau_table():
    rows = [row(m) for m in ("lora", "cla", "rcla", "c3la")]
    ranking = section(render_report(result_of(rows), "t"), "How well")
    assert "Too few checkpoints to rank measures: 4" in ranking and str(TAU_MIN_CHECKPOINTS) in ranking
    assert "| measure | gap | n | tau |" not in ranking


def test_enough_checkpoints_keep_the_tau_table():
    rows = [row(m, s, gap_01=0.01 * i + 0.001 * s) for i, m in enumerate(("lora", "cla", "rcla", "c3la"))
            for s in range(3)]
    assert len(rows) >= TAU_MIN_CHECKPOINTS
    ranking = section(render_report(result_of(rows), "t"), "How well")
    assert "Too few" not in ranking and "| measure | gap | n | tau |" in ranking
    assert len([ln for ln in ranking.splitlines() if ln.startswith("| sharpness |")]) == 2  # both gaps


def test_every_figure_has_a_caption(tmp_path):
    rows = [row(m, s) for m in ("lora", "cla") for s in range(2)]
    write_comparison(result_of(rows), tmp_path / "r", "t")
    text = (tmp_path / "r" / "README.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    images = [i for i, ln in enumerate(lines) if ln.startswith("![")]
    assert [re.search(r"\((.*)\)", lines[i]).group(1) for i in images] == \
        ["methods.png", "measures-gap_01.png", "measures-gap_ce.png"]
    for i in images:
        assert lines[i + 1].startswith("**Figure") and len(lines[i + 1]) > 150
    assert "sample standard deviation over seeds" in text
    assert "No tau in the titles: 4 checkpoints are too few" in text  # and none drawn into the scatter titles
    fig = plots.measure_scatter_figure(result_of(rows), "gap_01", show_tau=False)
    assert not any("tau" in ax.get_title() for ax in fig.axes)


# ---- the figures -------------------------------------------------------------------------------------------
def test_the_palette_gives_each_known_method_its_own_colour():
    colours = [to_hex(plots.method_colour(m)) for m in ALL_METHODS]
    assert len(set(colours)) == len(ALL_METHODS) == 14
    assert set(ALL_METHODS) == set(plots.METHOD_COLOURS)
    assert plots.method_colour("newmethod") == plots.method_colour("newmethod")  # deterministic fallback
    to_hex(plots.method_colour("newmethod"))  # a valid colour


def _bars(ax) -> list:
    return [p for c in ax.containers if not isinstance(c, ErrorbarContainer) for p in c.patches]


def test_method_figure_bars_start_at_zero_with_error_bars_only_over_two_seeds_or_more():
    rows = [row("lora", s, test_acc=0.9 + 0.01 * s, gap_01=0.02 + 0.005 * s) for s in range(3)] + \
        [row("cla", 0, test_acc=0.7, gap_01=0.01)]
    fig = plots.method_figure(result_of(rows))
    bar_axes = fig.axes[:2]
    labels = [t.get_text() for t in bar_axes[0].get_xticklabels()]
    for ax in bar_axes:
        assert ax.get_ylim()[0] == 0.0
        assert all(p.get_y() == 0.0 for p in _bars(ax))  # bars grow from 0
        errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(errs) == 1
        segments = errs[0].lines[2][0].get_segments()
        assert len(segments) == 1 and segments[0][0][0] == labels.index("lora r8")  # none for cla's one seed
    one_seed = plots.method_figure(result_of([row("lora"), row("cla")]))
    assert not any(isinstance(c, ErrorbarContainer) for ax in one_seed.axes for c in ax.containers)
    assert "one seed" in one_seed.axes[0].get_ylabel()


def _landscape(method: str, dirs: str = "random", space: str = "trainable") -> dict:
    losses = [[1.3, 1.1, 1.4], [1.05, 0.71, 1.2], [1.6, 1.25, 3.9]]
    r = {"method": method, "dirs": dirs, "space": space, "one_d": False, "split": "train", "samples": 10,
         "range": 1.0, "coords": {"a": [-1.0, 0.0, 1.0], "b": [-1.0, 0.0, 1.0]}, "losses": losses,
         "sharpness": {"increase": 0.01, "rho": 0.25}, "explained_variance": None, "trajectory": None}
    if dirs == "pca":
        r.update(explained_variance=[0.625, 0.25], trajectory={"a": [-1.0, -0.5, 0.0], "b": [0.2, 0.1, 0.0]})
    return r


def _spectrum(method: str) -> dict:
    return {"method": method, "intruders": {"eps": [0.1, 0.5, 1.0], "top_k": 10, "mean_counts": [0, 1, 10],
                                            "mean_counts_all": [0, 5, 64]}}


def test_a_method_has_the_same_colour_in_every_figure():
    rows = [row(m, s, gap_01=0.01 * i + 0.002 * s) for i, m in enumerate(("lora", "cla", "c3la")) for s in range(2)]
    result = result_of(rows)
    want = to_hex(plots.method_colour("cla"))
    bars = plots.method_figure(result).axes[0]
    labels = [t.get_text() for t in bars.get_xticklabels()]
    assert to_hex(_bars(bars)[labels.index("cla r8")].get_facecolor()) == want
    scatter = plots.measure_scatter_figure(result, "gap_01")
    cla_points = [c for ax in scatter.axes for c in ax.collections
                  if list(c.get_offsets()[0]) in [[r["sharpness"], r["gap_01"]] for r in rows if r["method"] == "cla"]]
    assert cla_points and {to_hex(c.get_facecolor()[0]) for c in cla_points} == {want}
    legend = scatter.legends[0]  # one legend for all panels, outside them
    assert not any(ax.get_legend() for ax in scatter.axes)
    handles = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles))
    assert to_hex(handles["cla"].get_color()) == want
    intruders = plots.intruder_figure({"lora-r8-s0": _spectrum("lora"), "cla (run7)": _spectrum("cla")})
    lines = {ln.get_label(): to_hex(ln.get_color()) for ln in intruders.axes[0].get_lines()}
    assert lines["cla (run7)"] == want and lines["lora-r8-s0"] == to_hex(plots.method_colour("lora"))
    hess = plots.hessian_figure({"x-s0": {"method": "cla", "density": {"grid": [0, 1], "values": [1, 0.1]},
                                          "eigenvalues": [0.8]}})
    assert to_hex(hess.axes[0].get_lines()[0].get_color()) == want
    land = plots.landscape_figure({"cla-r8-s0": _landscape("cla"), "lora-r8-s0": _landscape("lora")})
    assert to_hex(land.axes[0].spines["left"].get_edgecolor()) == want


def test_intruder_figure_says_what_eps_is():
    fig = plots.intruder_figure({"lora-r8-s0": _spectrum("lora")})
    assert "intruder when its largest |cosine| with W0's singular vectors is below eps" in fig.get_supxlabel()
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)


@pytest.mark.parametrize("dirs, space, want", [
    ("random", "delta", ("d1: filter-normalized random direction (dW space)",
                         "d2: filter-normalized random direction (dW space)")),
    ("pca", "trainable", ("PC1 of the training trajectory (62% of variance)",
                          "PC2 of the training trajectory (25% of variance)")),
])
def test_landscape_axes_say_what_the_directions_are_and_the_colour_bar_has_round_ticks(dirs, space, want):
    fig = plots.landscape_figure({"lora-r8-s0": _landscape("lora", dirs, space)})
    fig.canvas.draw()  # constrained layout places the axes when drawn
    ax, bar = fig.axes[0], fig.axes[-1]
    assert (ax.get_xlabel(), ax.get_ylabel()) == want
    ticks = [float(t.get_text()) for t in bar.get_yticklabels() if t.get_text()]
    assert len(ticks) >= 3 and all(len(f"{t:g}".replace(".", "").strip("0")) <= 2 for t in ticks)  # 0.7, 1.5, 2
    assert "loss" in bar.get_ylabel()
    # the colour bar sits just right of the panel
    pos, bpos = ax.get_position(), bar.get_position()
    assert 0 < bpos.x0 - pos.x1 < 0.15 and bpos.y0 < pos.y1 and bpos.y1 > pos.y0


def test_figures_save_at_the_report_size(tmp_path):
    rows = [row(m, s) for m in ("lora", "cla") for s in range(2)]
    path = tmp_path / "m.png"
    plots.save(plots.method_figure(result_of(rows)), str(path))
    assert path.stat().st_size > 1000 and Path(path).read_bytes()[:4] == b"\x89PNG"

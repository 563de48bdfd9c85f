"""The report folder of a comparison (`genbound compare`, `genbound study`): README.md, results.json and figures.

``render_report`` writes the markdown from a comparison result (``study.compare``); ``write_comparison`` writes
the folder. Figures come from plots.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import plots
from .checkpoint import atomic_write_text
from .study import finite_json


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def per_method(rows: list[dict], key: str) -> dict[tuple, tuple[float, float, int]]:
    """(method, rank) -> (mean, sample std, count) of ``key`` over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if isinstance(r.get(key), (int, float)):
            groups.setdefault((r["method"], r["rank"] if r["scope"] == "adapter" else "-"), []).append(r[key])
    out = {}
    for k, v in groups.items():
        mean = sum(v) / len(v)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        out[k] = (mean, std, len(v))
    return out


def render_report(result: dict, title: str) -> str:
    """README.md of a comparison: per-method table over seeds, every checkpoint, and the measure ranking."""
    rows = result["rows"]
    model = rows[0]["model"]
    model = Path(model).name if "/" in model else model
    lines = [f"# {title}", "", f"{len(rows)} checkpoints of {model} on {rows[0]['data']}.", "",
             "## Accuracy and gap per method (mean +- std over seeds)", "",
             "| method | r | seeds | D paper | test acc | gap 0-1 | gap CE | paper bound | compression bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    stats = {k: per_method(rows, k) for k in ("test_acc", "gap_01", "gap_ce", "paper_bound", "compression_bound",
                                               "params_paper")}
    for key in sorted(stats["test_acc"], key=lambda k: (k[0], str(k[1]))):
        cell = {k: stats[k].get(key) for k in stats}
        pm = lambda c, d=4: ("-" if c is None else f"{c[0]:.{d}f}" if c[2] == 1  # noqa: E731
                             else f"{c[0]:.{d}f} +- {c[1]:.{d}f}")
        lines.append(f"| {key[0]} | {key[1]} | {cell['test_acc'][2]} | {_fmt(int(cell['params_paper'][0]))} | "
                     f"{pm(cell['test_acc'])} | {pm(cell['gap_01'])} | {pm(cell['gap_ce'])} | "
                     f"{pm(cell['paper_bound'], 3)} | {pm(cell['compression_bound'], 3)} |")
    lines += ["", "## How well each measure ranks the gap (Kendall tau; granulated Psi over method, rank, seed)", ""]
    if len(rows) < 2:
        lines += ["One checkpoint: nothing to rank.", ""]
    elif len(rows) < 10:
        lines += [f"Only {len(rows)} checkpoints: tau moves in steps of {2 / (len(rows) * (len(rows) - 1) / 2):.2f} "
                  "and says little; the bootstrap needs two seeds or more.", ""]
    lines += ["| measure | gap | n | tau | 95% seed-bootstrap interval | Psi | per axis (groups) |",
              "|---|---|---|---|---|---|---|"]
    for t in sorted(result["ranking"].values(), key=lambda t: -abs(t["tau"])):
        lo, hi = t["tau_ci95_seed_bootstrap"]
        axes = ", ".join(f"{a} {_fmt(v, 2)} ({t['groups'][a]})" for a, v in t["per_axis"].items())
        lines.append(f"| {t['measure']} | {t['gap']} | {t['n']} | {t['tau']:+.3f} | "
                     f"[{_fmt(lo, 2)}, {_fmt(hi, 2)}] | {_fmt(t['psi'], 3)} | {axes} |")
    lines += ["", "Measures: " + "; ".join(f"`{k}` = {v}" for k, v in result["measures"].items()) + "."]
    if all(r.get("log10_theorem1") is None for r in rows) and any(r.get("paper_bound") is not None for r in rows):
        lines += ["", "No Theorem-1 bound: these computes ran with the 0-1 loss, which is not Lipschitz; "
                      "Theorem 1's data-dependent term Phi_dW (`log10_phi_dw`) stands in for it."]
    lines += ["", "## Every checkpoint", "",
              "| checkpoint | method | r | k | seed | D paper | test acc | train CE | test CE | gap 0-1 | gap CE | "
              "paper | log10 Thm 1 | compression | H top | H trace | sharpness | intruders | stable rank | "
              "train s | peak MiB |", "|" + "---|" * 21]
    for r in sorted(rows, key=lambda r: (r["method"], r["rank"], r["seed"])):
        measures = " | ".join(_fmt(r.get(k), 3) for k in (
            "paper_bound", "log10_theorem1", "compression_bound", "hessian_top", "hessian_trace", "sharpness",
            "intruders", "stable_rank"))
        rank = r["rank"] if r["scope"] == "adapter" else "-"
        peak = r.get("peak_gpu_memory_bytes")
        lines.append(f"| {Path(r['checkpoint']).name} | {r['method']} | {rank} | {r['chain_k']} | {r['seed']} | "
                     f"{r['params_paper']:,} | {r['test_acc']:.4f} | {r['train_loss']:.4f} | {r['test_loss']:.4f} | "
                     f"{r['gap_01']:+.4f} | {r['gap_ce']:+.4f} | {measures} | "
                     f"{r['train_seconds']:.1f} | {'-' if peak is None else f'{peak / 2**20:.0f}'} |")
    return "\n".join(lines) + "\n"


def landscapes_of(rows: list[dict]) -> dict[str, dict]:
    """One landscape per method for the side-by-side figure: its lowest seed and rank; only when all of them
    are slices of one kind (all 2-D or all 1-D), as the figure draws them on one scale."""
    chosen: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r["seed"], r["rank"])):
        path = Path(r["checkpoint"]) / "analysis" / "landscape.json"
        if r["method"] not in chosen and path.is_file():
            chosen[r["method"]] = {"name": Path(r["checkpoint"]).name, **json.loads(path.read_text())}
    if len({c["one_d"] for c in chosen.values()}) != 1:
        return {}
    return {c.pop("name"): c for c in chosen.values()}


def write_comparison(result: dict, out: Path, title: str) -> None:
    """The report folder: README.md, results.json and the figures."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(finite_json(result), indent=1, allow_nan=False))
    plots.save(plots.method_figure(result), str(out / "methods.png"))
    for gap in ("gap_01", "gap_ce"):
        fig = plots.measure_scatter_figure(result, gap)
        if fig is not None:
            plots.save(fig, str(out / f"measures-{gap}.png"))
    spectra = {}
    for r in result["rows"]:
        path = Path(r["checkpoint"]) / "analysis" / "spectrum.json"
        if path.is_file() and r["seed"] == min(x["seed"] for x in result["rows"]):
            data = json.loads(path.read_text())
            if "intruders" in data:
                spectra[Path(r["checkpoint"]).name] = data
    if spectra:
        plots.save(plots.intruder_figure(spectra), str(out / "intruders.png"))
    landscapes = landscapes_of(result["rows"])
    if landscapes:
        plots.save(plots.landscape_figure(landscapes, columns=4), str(out / "landscapes.png"))
    text = render_report(result, title)
    figures = [p.name for p in sorted(out.glob("*.png"))]
    text += "\n## Figures\n\n" + "\n".join(f"![{f}]({f})" for f in figures) + "\n"
    atomic_write_text(out / "README.md", text)
    print(f"wrote {out}/README.md, results.json and {len(figures)} figures ({len(result['rows'])} checkpoints)")

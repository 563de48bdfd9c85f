"""`genbound compare`: one row per checkpoint and how well each measure ranks the measured generalization gap
across checkpoints (docs/theory.md section 6).

The measures are those the registered analyses declare (``Result.MEASURES``), read from each checkpoint's
stored analysis JSON: DIR/analysis/<name>.json, the latest, or the stored result with the options compare was
asked for (``stored_analyses``); each row says which it used.

Kendall tau (Jiang et al. 2020): tau = mean over pairs i < j of sign(mu_i - mu_j) * sign(g_i - g_j) (tau-a:
a tie in either counts 0). Granulated Psi: for each axis (method, rank, seed, ...), tau within every group
of checkpoints that agree on all the other axes, averaged over the groups of that axis; Psi = the mean
over the axes that have such a group. A bootstrap over seeds (whole seeds resampled with replacement)
gives an interval for tau.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from . import checkpoint
from .analyses import ANALYSES, comparable, find_stored, get_analysis
from .errors import GenboundError

AXES = ("method", "rank", "seed")
GAPS = ("gap_01", "gap_ce")
REGRESSION_GAPS = ("gap_mse",)  # a regression row has neither of GAPS


def kendall_tau(mu: Sequence[float], gap: Sequence[float]) -> float:
    """tau-a of docs/theory.md section 6; nan when there are fewer than two points."""
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


# ---- the comparison -----------------------------------------------------------------------------------
def measures() -> dict[str, tuple[str, object]]:
    """measure name -> (analysis name, its Result class), in registration order."""
    out = {}
    for name, analysis in ANALYSES.items():
        result_cls = analysis.load().Result
        out.update({m: (name, result_cls) for m in result_cls.MEASURES})
    return out


def bounded_loss(comp: dict) -> dict:
    """The loss a compute result's MI bound speaks of: ``loss`` ("01", "ce", "mse" or None without a compute),
    ``loss_label`` (words, naming the smoothing or clip), ``loss_range`` (the largest gap that loss allows: 1 for
    the 0-1 loss, b = 2 sigma for a CE or squared error bounded in [0, b]; None when the user set sigma, so the
    range is not known)."""
    loss, opts = comp.get("loss"), comp.get("options") or {}
    if loss == "01":
        return {"loss": "01", "loss_label": "0-1 loss", "loss_range": 1.0}
    known = opts.get("sigma") is None and isinstance(comp.get("sigma"), (int, float))
    if loss == "mse":  # a bounded squared error in [0, 2 sigma]
        label = (f"squared error clipped at {opts['clip']:g}" if opts.get("clip") is not None
                 else "squared error of predictions clipped into the target range")
        return {"loss": "mse", "loss_label": label, "loss_range": 2 * comp["sigma"] if known else None}
    if loss != "ce":
        return {"loss": None, "loss_label": None, "loss_range": None}
    label = (f"CE smoothed by a={opts['smoothing']:g}" if opts.get("smoothing") is not None
             else f"CE clipped at {opts['clip']:g}" if opts.get("clip") is not None else "CE")
    return {"loss": "ce", "loss_label": label, "loss_range": 2 * comp["sigma"] if known else None}


def _shown_options(name: str, options: dict | None) -> str:
    """The options of a stored result that differ from the analysis's defaults, e.g. 'top_k 5, samples 512'."""
    defaults = dataclasses.asdict(get_analysis(name).load().Options())

    def text(v) -> str:
        if isinstance(v, bool):
            return "on" if v else "off"
        return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    differ = [f"{k} {text(v)}" for k, v in (options or {}).items()
              if k in defaults and comparable(v) != comparable(defaults[k])]
    return ", ".join(differ) or "default options"


def stored_analyses(ckpt: Path, manifest: dict, options: dict | None = None) -> dict[str, tuple[Path, dict, str]]:
    """name -> (path, result, how it was picked) of the stored analyses compare uses for a checkpoint: for an
    analysis ``options`` names (name -> its options over the task's defaults, as a study section), the result with
    exactly those options ("options asked"; none when none is stored); for any other, the latest ("latest")."""
    from .study import _options, for_task

    out = {}
    for name in ANALYSES:
        if options and options.get(name) is not None:
            asked = _options(name, for_task(name, options[name], manifest), "compare")
            found, how = find_stored(ckpt, name, asked), "options asked"
        else:
            found, how = find_stored(ckpt, name), "latest"
        if found is not None:
            out[name] = (*found, how)
    return out


def row_of(ckpt: Path, options: dict | None = None) -> dict:
    """One table row: the manifest's facts and every measure whose analysis is on disk (``stored_analyses``);
    ``analyses`` says, per analysis shown, its file, its options and when it was stored."""
    man = checkpoint.read_manifest(ckpt)
    m = man["metrics"]
    row = {"checkpoint": str(ckpt), "base": man["base"]["sha256"], "model": man["base"].get("name") or
           man["base"].get("path") or man["base"]["kind"], "data": man["task"]["name"],
           "method": man["method"]["name"], "scope": man["method"]["scope"], "rank": man["method"]["rank"],
           "chain_k": man["method"]["chain_k"],
           "seed": man["seed"], "params_paper": man["params"]["paper"], "params_full": man["params"]["full"],
           "test_acc": m.get("test_acc"), "train_loss": m["train_loss"], "test_loss": m["test_loss"],
           "gap_ce": m["test_loss"] - m["train_loss"], "gap_01": None,
           "train_seconds": man["timing"]["train_seconds"], "peak_gpu_memory_bytes": man["timing"].get(
               "peak_gpu_memory_bytes"), "problem": checkpoint.problem_of(man)}
    if row["problem"] == "regression":  # the loss is the MSE; there is no 0-1 error nor CE
        row.update(gap_ce=None, gap_mse=m["test_loss"] - m["train_loss"], test_mse=m["test_loss"])
    else:
        row["gap_01"] = m["train_acc"] - m["test_acc"]
    for name in checkpoint.metrics_of(man):  # the task's metrics beside accuracy: test_f1, test_pearson, ...
        if name != "accuracy":
            row[f"test_{name}"] = m.get(f"test_{name}")
    picked = stored_analyses(ckpt, man, options)
    stored = {n: data for n, (_, data, _) in picked.items()}
    row["analyses"] = {n: {"file": str(path), "options": data.get("options"), "shown": _shown_options(n, data.get(
        "options")), "stored": datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M"),
                           "picked": how} for n, (path, data, how) in picked.items()}
    comp = stored.get("compute", {})
    # the trivial classifier's test error (certify records it too)
    row["majority_err"] = comp.get("majority_err", stored.get("certify", {}).get("majority_err"))
    if row["problem"] == "regression":
        row["mean_mse"] = comp.get("mean_mse")  # the trivial regressor's test MSE
    row.update(bounded_loss(comp))
    # the test error the PAC-Bayes certificate bounds: that of the stochastic predictor, not of the checkpoint
    row["stochastic_test_err"] = stored.get("certify", {}).get("stochastic_test_err")
    values: dict[str, float | None] = {}
    for name, (source, result_cls) in measures().items():
        if source in stored and name not in values:
            values.update(result_cls(stored[source]).measures())
        row[name] = values.get(name)
    return row


def compare(dirs: list[str | Path], options: dict | None = None) -> dict:
    """Rows for every checkpoint and, per measure and gap, Kendall tau, its seed-bootstrap interval and the
    granulated Psi. All checkpoints must share one base model and one task. ``options``: analysis name -> the
    options (over the task's defaults) whose stored result to use; any other analysis: its latest result."""
    ckpts = [Path(d) for d in dirs]
    if not ckpts:
        raise GenboundError("compare needs at least one checkpoint directory")
    rows = [row_of(c, options) for c in ckpts]
    bases = {(r["base"], r["data"]) for r in rows}
    if len(bases) > 1:
        raise GenboundError(f"the checkpoints mix {len(bases)} (base model, task) pairs; compare one at a time: "
                            + ", ".join(sorted({f"{r['model']} on {r['data']}" for r in rows})))
    ranking = {}
    all_measures = measures()
    for measure in all_measures:
        for gap in (*GAPS, *REGRESSION_GAPS):
            pts = [r for r in rows if _finite(r[measure]) and _finite(r.get(gap))]
            if len(pts) < 2:
                continue
            ranking[f"{measure}|{gap}"] = {
                "measure": measure, "gap": gap, "n": len(pts),
                "tau": kendall_tau([r[measure] for r in pts], [r[gap] for r in pts]),
                "tau_ci95_seed_bootstrap": bootstrap_tau(pts, measure, gap),
                **granulated_psi(pts, measure, gap, AXES)}
    return {"schema": "genbound.compare/1", "rows": rows, "ranking": ranking,
            "measures": {k: cls.MEASURES[k][1] for k, (_, cls) in all_measures.items()}}

"""The report folder of a comparison (`genbound compare`, `genbound study`): README.md, results.json and figures.

``render_report`` writes the markdown from a comparison result (``study.compare``); ``write_comparison`` writes
the folder, a caption under every figure. Figures come from plots.py.

Bounds on the test error and bounds on the gap are kept apart, each next to the measured quantity it bounds,
and every vacuous bound is marked " (vacuous)":
- a bound on the test error (the compression / Occam bound, the PAC-Bayes certificate) is vacuous when it is at
  least 1 or at least the majority-class error (``majority_err``: the test error of always predicting the most
  frequent training class), since then it says no more than the trivial classifier does;
- a bound on the gap (the paper's MI bound) is vacuous when it is at least the largest gap the bounded loss
  allows: 1 for the 0-1 loss, the width of the loss's range for a bounded cross-entropy.
A bound equal to the limit is marked too: it excludes nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import plots
from .files import atomic_write_text, write_json

# Below this many checkpoints the report gives a one-line note instead of the Kendall tau table: tau moves in
# steps of 2 / (n (n - 1) / 2) (1/3 at n = 4, 2/21 at n = 7), and under the exact permutation null only
# |tau| >= 0.71 (n = 7), 0.87 (n = 6), 1.0 (n = 5) or nothing at all (n = 4) differs from "no association"
# at the 5% level; 8 is where a tau short of 1 that differs from 0 (0.64) starts to be common.
TAU_MIN_CHECKPOINTS = 8
VACUOUS = " (vacuous)"


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt_bound(x, digits: int = 3) -> str:
    """A bound with ``digits`` decimals; a value below 1 that would round to 1 is cut (not rounded) to one more
    decimal, so 0.9999998 reads 0.9999, not 1.000 (1 is where a bound on an error becomes vacuous)."""
    if not _number(x):
        return "-"
    text = f"{x:.{digits}f}"
    if x < 1 and float(text) >= 1:
        scale = 10 ** (digits + 1)
        text = f"{math.floor(x * scale) / scale:.{digits + 1}f}"
    return text


def per_method(rows: list[dict], key: str) -> dict[tuple, tuple[float, float, int]]:
    """(method, rank) -> (mean, sample std, count) of ``key`` over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if _number(r.get(key)):
            groups.setdefault(_group(r), []).append(r[key])
    out = {}
    for k, v in groups.items():
        mean = sum(v) / len(v)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        out[k] = (mean, std, len(v))
    return out


def _group(r: dict) -> tuple:
    return r["method"], r["rank"] if r["scope"] == "adapter" else "-"


# ---- vacuity -------------------------------------------------------------------------------------------
def bound_loss(row: dict) -> dict:
    """The loss the compute analysis bounded (the paper's bound is on that loss's gap) and the largest gap it
    allows, from the row (``compare.bounded_loss``): {"loss": "01" | "ce" | None, "label": words, "max_gap":
    float | None}; without a compute, loss None with the 0-1 loss's limit (the caller says so)."""
    loss = row.get("loss")
    if loss is None:
        return {"loss": None, "label": "0-1 loss", "max_gap": 1.0}
    return {"loss": loss, "label": row.get("loss_label") or ("0-1 loss" if loss == "01" else "bounded CE"),
            "max_gap": row.get("loss_range", 1.0 if loss == "01" else None)}


def vacuous_test_error_bound(bound, majority_err) -> bool | None:
    """A bound on the test error is vacuous at >= 1 or >= the majority-class error (when known); None: no bound."""
    if not _number(bound):
        return None
    return bound >= 1 or (_number(majority_err) and bound >= majority_err)


def vacuous_gap_bound(bound, max_gap) -> bool | None:
    """A bound on the gap is vacuous at >= the largest gap the loss allows; None: no bound or no known limit."""
    if not _number(bound) or not _number(max_gap):
        return None
    return bound >= max_gap


def _mark(flags: list) -> str:
    """The vacuity note of a cell over its seeds' flags (None: not judged)."""
    judged = [f for f in flags if f is not None]
    hits = sum(judged)
    if not judged or not hits:
        return ""
    return VACUOUS if hits == len(judged) else f" (vacuous for {hits} of {len(judged)} seeds)"


def _present(result: dict) -> dict[str, str]:
    """The measures (name: description) that some row of the comparison has a number for."""
    return {k: v for k, v in result.get("measures", {}).items() if any(_number(r.get(k)) for r in result["rows"])}


def _by_group(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The rows of each (method, rank) group."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group(r), []).append(r)
    return groups


# ---- the markdown ------------------------------------------------------------------------------------------
def _marked(c, flags: list, digits: int = 3, fmt=None) -> str:
    """A per_method bound cell with its vacuity note ('-' when missing)."""
    text = _pm(c, digits, fmt)
    return text + (_mark(flags) if text != "-" else "")


def _test_error_bound_cell(cell: dict, group: list[dict], key: str) -> str:
    """A bound on the test error (Occam, PAC-Bayes), vacuous at or above the majority-class error."""
    flags = [vacuous_test_error_bound(r.get(key), r.get("majority_err")) for r in group]
    return _marked(cell[key], flags, 3, _fmt_bound)


def _gap_bound_cell(cell: dict, group: list[dict], losses: dict) -> str:
    """The paper's bound on the gap, vacuous at or above the largest gap of its loss."""
    return _marked(cell["paper_bound"], [vacuous_gap_bound(r.get("paper_bound"), losses[id(r)]["max_gap"])
                                        for r in group])


def _pm(c, digits: int = 4, fmt=None) -> str:
    """mean (+- std over seeds when there are two or more) of a per_method cell."""
    if c is None:
        return "-"
    f = fmt or (lambda x: f"{x:.{digits}f}")
    return f(c[0]) if c[2] == 1 else f"{f(c[0])} +- {c[1]:.{digits}f}"


# measures with a place of their own in the per-checkpoint table (beside what they bound, or not shown there)
PLACED = {"paper_bound", "paper_bound_full", "log10_phi_dw", "log10_theorem1", "compression_bound",
          "pac_bayes_certificate"}
SHORT = {"hessian_top": "H top", "hessian_trace": "H trace", "intruders": "intruders", "stable_rank": "stable rank"}


def render_report(result: dict, title: str) -> str:
    """README.md of a comparison: the test error next to its bound and the gap next to its bound per method
    (over seeds), the measure ranking, and every checkpoint."""
    if any(r.get("problem") == "regression" for r in result["rows"]):
        return render_regression_report(result, title)
    rows = [{**r, "test_err": 1 - r["test_acc"]} for r in result["rows"]]
    model = rows[0]["model"]
    model = Path(model).name if "/" in model else model
    losses = {id(r): bound_loss(r) for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# {title}", "", f"{len(rows)} checkpoints of {model} on {rows[0]['data']} "
             f"({len({_group(r) for r in rows})} method/rank groups, {len(seeds)} seed{'s' * (len(seeds) != 1)}).", ""]
    metric_keys = _metric_keys(rows)  # F1 (MRPC, QQP), Matthews (CoLA), ... beside the accuracy
    stats = {k: per_method(rows, k) for k in ("test_acc", "test_err", "majority_err", "gap_01", "gap_ce",
                                               "paper_bound", "compression_bound", "params_paper", *metric_keys,
                                               "pac_bayes_certificate", "stochastic_test_err")}
    certified = any(_number(r.get("pac_bayes_certificate")) for r in rows)  # the PAC-Bayes columns, when present
    keys = sorted(stats["test_acc"], key=lambda k: (plots.method_sort_key(k[0]), str(k[1])))
    by_group = _by_group(rows)

    # -- the test error and its bound
    majority_missing = sum(not _number(r.get("majority_err")) for r in rows)
    lines += ["## Test error and the bound on it, per method (mean +- std over seeds)", "",
              "| method | r | seeds | test acc |" + "".join(f" {k.replace('_', ' ')} |" for k in metric_keys)
              + " test err | majority-class err | Occam bound on test err |"
              + (" stochastic test err | PAC-Bayes certificate on it |" if certified else ""),
              "|" + "---|" * (7 + len(metric_keys) + 2 * certified)]
    for key in keys:
        cell = {k: stats[k].get(key) for k in stats}
        lines.append(f"| {key[0]} | {key[1]} | {cell['test_acc'][2]} | {_pm(cell['test_acc'])} | "
                     + "".join(f"{_pm(cell[k])} | " for k in metric_keys)
                     + f"{_pm(cell['test_err'])} | {_pm(cell['majority_err'])} | "
                     f"{_test_error_bound_cell(cell, by_group[key], 'compression_bound')} |"
                     + (_certificate_cells(cell, by_group[key]) if certified else ""))
    lines += ["", "test err = 1 - test acc. The Occam bound (`compute --compress`) bounds the test error of the "
              "quantized model with probability 1 - delta. A bound on the test error is marked vacuous when it is at "
              "least 1 or at least the majority-class error (the test error of always predicting the most frequent "
              "training class): it then says no more than that trivial classifier does."]
    if certified:
        lines[-1] += (" The PAC-Bayes certificate (`certify`) bounds, with probability 1 - delta - delta', the test "
                      "error of the stochastic predictor (a Gaussian posterior over the trained numbers), whose "
                      "measured test error stands beside it; it is marked vacuous by the same rule.")
    if majority_missing:
        lines[-1] += (f" The majority-class error is missing from {majority_missing} of {len(rows)} checkpoints "
                      "(their compute ran before it was recorded): their bounds are judged by >= 1 only.")

    # -- the gap and its bound
    labels = sorted({losses[id(r)]["label"] for r in rows if _number(r.get("paper_bound"))})
    loss_label = labels[0] if len(labels) == 1 else "each checkpoint's compute loss"
    kinds = {losses[id(r)]["loss"] for r in rows if _number(r.get("paper_bound"))}
    ce_first = kinds == {"ce"}  # the bounded gap stands next to the bound
    gap_cols = ("gap_01", "gap_ce") if ce_first else ("gap_ce", "gap_01")
    gap_names = {"gap_01": "gap 0-1", "gap_ce": "gap CE"}
    lines += ["", "## Gap and the bound on it, per method (mean +- std over seeds)", "",
              f"| method | r | seeds | D paper | {gap_names[gap_cols[0]]} | {gap_names[gap_cols[1]]} | "
              f"paper bound on the gap ({loss_label}) |", "|---|---|---|---|---|---|---|"]
    for key in keys:
        cell = {k: stats[k].get(key) for k in stats}
        params = cell["params_paper"]
        lines.append(f"| {key[0]} | {key[1]} | {cell['test_acc'][2]} | "
                     f"{_fmt(int(params[0])) if params else '-'} | {_pm(cell[gap_cols[0]])} | "
                     f"{_pm(cell[gap_cols[1]])} | {_gap_bound_cell(cell, by_group[key], losses)} |")
    max_gaps = sorted({losses[id(r)]["max_gap"] for r in rows if _number(r.get("paper_bound"))}, key=str)
    limit = ("1 for the 0-1 loss, as an error difference never exceeds 1" if max_gaps == [1.0] else
             ", ".join("unknown (sigma given by hand)" if m is None else f"{m:.4g}" for m in max_gaps)
             + " here, the width of the bounded loss's range")
    lines += ["", "gap 0-1 = train acc - test acc, gap CE = test CE - train CE. The paper's bound sqrt(2 q sigma^2 "
              f"ln2 D / N) bounds the expected gap of the {loss_label}, not the test error; it is marked vacuous when "
              f"it is at least the largest gap that loss allows ({limit})."]
    if "ce" in kinds:
        lines[-1] += (" The gap CE column is the gap of the plain cross-entropy; the gap of the bounded loss itself is "
                      "`gap_ce_bounded` in each checkpoint's analysis/compute.json.")
    if any(losses[id(r)]["loss"] is None for r in rows if _number(r.get("paper_bound"))):
        lines[-1] += (" The compute analysis of some checkpoints is not on disk and their rows do not say which loss "
                      "was bounded: the 0-1 loss (largest gap 1) is assumed for them.")

    # -- the ranking
    lines += ["", "## How well each measure ranks the gap (Kendall tau; granulated Psi over method, rank, seed)", ""]
    if len(rows) < 2:
        lines += ["One checkpoint: nothing to rank.", ""]
    elif len(rows) < TAU_MIN_CHECKPOINTS:
        lines += [f"Too few checkpoints to rank measures: {len(rows)} (tau moves in steps of "
                  f"{2 / (len(rows) * (len(rows) - 1) / 2):.2f}; this report ranks from {TAU_MIN_CHECKPOINTS} "
                  "checkpoints on); the taus are in results.json.", ""]
    if len(rows) >= TAU_MIN_CHECKPOINTS:
        if len(seeds) < 2:
            lines += ["One seed: no seed-bootstrap interval.", ""]
        lines += ["| measure | gap | n | tau | 95% seed-bootstrap interval | Psi | per axis (groups) |",
                  "|---|---|---|---|---|---|---|"]
        for t in sorted(result["ranking"].values(), key=lambda t: -abs(t["tau"])):
            lo, hi = t["tau_ci95_seed_bootstrap"]
            axes = ", ".join(f"{a} {_fmt(v, 2)} ({t['groups'][a]})" for a, v in t["per_axis"].items())
            lines.append(f"| {t['measure']} | {t['gap']} | {t['n']} | {t['tau']:+.3f} | "
                         f"[{_fmt(lo, 2)}, {_fmt(hi, 2)}] | {_fmt(t['psi'], 3)} | {axes} |")
        lines.append("")
    lines += ["Measures: " + "; ".join(f"`{k}` = {v}" for k, v in _present(result).items()) + "."]
    if all(r.get("log10_theorem1") is None for r in rows) and any(r.get("paper_bound") is not None for r in rows):
        lines += ["", "No Theorem-1 bound: these computes ran with the 0-1 loss, which is not Lipschitz; "
                      "Theorem 1's data-dependent term Phi_dW (`log10_phi_dw`) stands in for it."]

    # -- every checkpoint: the bounds in their own columns, then every other measure the analyses declare
    others_keys = [k for k in _present(result) if k not in PLACED]
    others_head = "".join(f"| {SHORT.get(k, k)} " for k in others_keys)
    lines += ["", "## Every checkpoint", "",
              "| checkpoint | method | r | k | seed | D paper | test acc | train CE | test CE "
              "| test err | majority err | Occam bound on test err "
              f"| {gap_names[gap_cols[0]]} | {gap_names[gap_cols[1]]} | paper bound on the gap ({loss_label}) "
              "| log10 Thm 1 bound on the CE gap "
              + ("| stochastic test err | PAC-Bayes certificate " if certified else "")
              + f"{others_head}| train s | peak MiB |", "|" + "---|" * (18 + len(others_keys) + 2 * certified)]
    for r in sorted(rows, key=lambda r: (plots.method_sort_key(r["method"]), r["rank"], r["seed"])):
        comp = _fmt_bound(r.get("compression_bound"))
        comp += _mark([vacuous_test_error_bound(r.get("compression_bound"), r.get("majority_err"))])
        paper = _fmt(r.get("paper_bound"), 3)
        paper += _mark([vacuous_gap_bound(r.get("paper_bound"), losses[id(r)]["max_gap"])])
        others = "".join(f"{_fmt(r.get(k), 3)} | " for k in others_keys)
        if certified:
            others = (f"{_fmt(r.get('stochastic_test_err'), 4)} | {_fmt_bound(r.get('pac_bayes_certificate'))}"
                      + _mark([vacuous_test_error_bound(r.get("pac_bayes_certificate"), r.get("majority_err"))])
                      + " | " + others)
        rank = r["rank"] if r["scope"] == "adapter" else "-"
        peak = r.get("peak_gpu_memory_bytes")
        lines.append(f"| {Path(r['checkpoint']).name} | {r['method']} | {rank} | {r['chain_k']} | {r['seed']} | "
                     f"{r['params_paper']:,} | {r['test_acc']:.4f} | {r['train_loss']:.4f} | {r['test_loss']:.4f} | "
                     f"{1 - r['test_acc']:.4f} | {_fmt(r.get('majority_err'), 4)} | {comp} | "
                     f"{r[gap_cols[0]]:+.4f} | {r[gap_cols[1]]:+.4f} | {paper} | {_fmt(r.get('log10_theorem1'), 3)} | "
                     f"{others}{r['train_seconds']:.1f} | {'-' if peak is None else f'{peak / 2**20:.0f}'} |")
    lines += ["", "Vacuous bounds are marked as in the tables above. Theorem 1's bound is on the gap of the unbounded "
              "cross-entropy, which has no largest value, so it is never marked; compare it with gap CE."]
    lines += analyses_lines(rows)
    for r in rows:
        r.pop("test_err", None)
    return "\n".join(lines) + "\n"


def _certificate_cells(cell: dict, group: list[dict]) -> str:
    """The stochastic predictor's test error and the PAC-Bayes certificate on it, marked vacuous by the rule of
    the Occam bound."""
    return f" {_pm(cell['stochastic_test_err'])} | {_test_error_bound_cell(cell, group, 'pac_bayes_certificate')} |"


def _metric_keys(rows: list[dict]) -> list[str]:
    """The task-metric columns of the rows (test_f1, test_matthews, test_pearson, test_spearman), in order."""
    from .metrics import CLASSIFICATION, REGRESSION

    known = [f"test_{m}" for m in (*CLASSIFICATION, *REGRESSION) if m != "accuracy"]
    return [k for k in known if any(k in r for r in rows)]


def render_regression_report(result: dict, title: str) -> str:
    """README.md of a comparison of regression checkpoints: test MSE, the task's metrics and the MSE gap next to
    the paper's bound on the gap of the bounded squared error, the ranking, every checkpoint. No 0-1 error, so
    no Occam bound; a gap bound is marked vacuous at >= the width of the bounded loss's range."""
    rows = result["rows"]
    model = rows[0]["model"]
    model = Path(model).name if "/" in model else model
    losses = {id(r): bound_loss(r) for r in rows}
    metric_keys = _metric_keys(rows)
    seeds = sorted({r["seed"] for r in rows})
    stats = {k: per_method(rows, k) for k in ("test_mse", "mean_mse", "gap_mse", "paper_bound", "params_paper",
                                               *metric_keys)}
    keys = sorted(stats["test_mse"], key=lambda k: (plots.method_sort_key(k[0]), str(k[1])))
    by_group = _by_group(rows)
    labels = sorted({losses[id(r)]["label"] for r in rows if _number(r.get("paper_bound"))})
    loss_label = labels[0] if len(labels) == 1 else "each checkpoint's compute loss"
    mhead = "".join(f" {k.replace('_', ' ')} |" for k in metric_keys)
    lines = [f"# {title}", "", f"{len(rows)} checkpoints of {model} on {rows[0]['data']}, a regression task "
             f"({len(keys)} method/rank groups, {len(seeds)} seed{'s' * (len(seeds) != 1)}).", "",
             "## Test MSE, the task's metrics, and the gap with the bound on it, per method (mean +- std over seeds)",
             "", f"| method | r | seeds | D paper | test MSE | mean-predictor MSE |{mhead} gap MSE | paper bound on "
             f"the gap ({loss_label}) |", "|" + "---|" * (8 + len(metric_keys))]
    for key in keys:
        cell = {k: stats[k].get(key) for k in stats}
        params = cell["params_paper"]
        lines.append(f"| {key[0]} | {key[1]} | {cell['test_mse'][2]} | {_fmt(int(params[0])) if params else '-'} | "
                     f"{_pm(cell['test_mse'])} | {_pm(cell['mean_mse'])} |"
                     + "".join(f" {_pm(cell[k])} |" for k in metric_keys)
                     + f" {_pm(cell['gap_mse'])} | {_gap_bound_cell(cell, by_group[key], losses)} |")
    lines += ["", "gap MSE = test MSE - train MSE (of the unbounded squared error); mean-predictor MSE = the test MSE "
              "of always predicting the mean training target. The paper's bound sqrt(2 q sigma^2 ln2 D / N) bounds "
              f"the expected gap of the {loss_label} (its gap is `gap_mse_bounded` in analysis/compute.json); it is "
              "marked vacuous when it is at least the width of that loss's range. Correlations undefined for a "
              "constant prediction show as -."]
    lines += ["", "## How well each measure ranks the MSE gap (Kendall tau; granulated Psi over method, rank, seed)",
              ""]
    if len(rows) < TAU_MIN_CHECKPOINTS:
        lines += [f"Too few checkpoints to rank measures: {len(rows)} (this report ranks from "
                  f"{TAU_MIN_CHECKPOINTS} checkpoints on); the taus are in results.json.", ""]
    else:
        lines += ["| measure | gap | n | tau | 95% seed-bootstrap interval | Psi |", "|---|---|---|---|---|---|"]
        for t in sorted(result["ranking"].values(), key=lambda t: -abs(t["tau"])):
            lo, hi = t["tau_ci95_seed_bootstrap"]
            lines.append(f"| {t['measure']} | {t['gap']} | {t['n']} | {t['tau']:+.3f} | [{_fmt(lo, 2)}, "
                         f"{_fmt(hi, 2)}] | {_fmt(t['psi'], 3)} |")
        lines.append("")
    lines += ["Measures: " + "; ".join(f"`{k}` = {v}" for k, v in _present(result).items()) + "."]
    lines += ["", "## Every checkpoint", "",
              f"| checkpoint | method | r | k | seed | D paper | train MSE | test MSE |{mhead} gap MSE | paper bound "
              "| log10 Thm 1 bound | train s |", "|" + "---|" * (12 + len(metric_keys))]
    for r in sorted(rows, key=lambda r: (plots.method_sort_key(r["method"]), r["rank"], r["seed"])):
        paper = _fmt(r.get("paper_bound"), 3) + _mark([vacuous_gap_bound(r.get("paper_bound"),
                                                                          losses[id(r)]["max_gap"])])
        rank = r["rank"] if r["scope"] == "adapter" else "-"
        lines.append(f"| {Path(r['checkpoint']).name} | {r['method']} | {rank} | {r['chain_k']} | {r['seed']} | "
                     f"{r['params_paper']:,} | {r['train_loss']:.4f} | {r['test_loss']:.4f} |"
                     + "".join(f" {_fmt(r.get(k), 4)} |" for k in metric_keys)
                     + f" {r['gap_mse']:+.4f} | {paper} | {_fmt(r.get('log10_theorem1'), 3)} | "
                     f"{r['train_seconds']:.1f} |")
    lines += analyses_lines(rows)
    return "\n".join(lines) + "\n"


def analyses_lines(rows: list[dict]) -> list[str]:
    """The "Analyses shown" section: per analysis, the options of the stored results the rows use (those that
    differ from its defaults), on how many checkpoints, how compare picked them and when they were stored."""
    names = list(dict.fromkeys(n for r in rows for n in r.get("analyses", {})))
    if not names:
        return []
    lines = ["", "## Analyses shown", ""]
    for name in names:
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            a = r.get("analyses", {}).get(name)
            if a is not None:
                groups.setdefault((a["shown"], a["picked"]), []).append(r)
        parts = []
        for (shown, picked), group in groups.items():
            days = sorted({r["analyses"][name]["stored"][:10] for r in group})
            when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
            which = (f"all {len(group)} checkpoints" if len(group) == len(rows) and len(groups) == 1
                     else ", ".join(Path(r["checkpoint"]).name for r in group))
            parts.append(f"{shown} ({which}; {'the latest' if picked == 'latest' else 'the options asked'}, "
                         f"stored {when})")
        missing = len(rows) - sum(len(g) for g in groups.values())
        lines.append(f"- {name}: " + "; ".join(parts) + (f"; none stored for {missing} checkpoint(s)" if missing
                                                          else ""))
    lines += ["", "Each checkpoint's analysis/ folder keeps one result per set of options (NAME.json the latest); "
              "compare shows the latest unless `--analyses NAME:OPTION=VALUE,...` asks for the one with those "
              "options."]
    return lines


def stored_file(row: dict, name: str) -> Path:
    """The stored result of analysis ``name`` that the row shows (DIR/analysis/NAME.json for rows of before)."""
    shown = row.get("analyses", {}).get(name)
    return Path(shown["file"]) if shown else Path(row["checkpoint"]) / "analysis" / f"{name}.json"


# ---- figures -------------------------------------------------------------------------------------------
def landscapes_of(rows: list[dict]) -> dict[str, dict]:
    """One landscape per method for the side-by-side figure: its lowest seed and rank; only when all of them
    are slices of one kind (all 2-D or all 1-D), as the figure draws them on one scale. In the palette's
    method order."""
    chosen: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r["seed"], r["rank"])):
        path = stored_file(r, "landscape")
        if r["method"] not in chosen and path.is_file():
            chosen[r["method"]] = {"name": Path(r["checkpoint"]).name, **json.loads(path.read_text())}
    if len({c["one_d"] for c in chosen.values()}) != 1:
        return {}
    return {c.pop("name"): c for _, c in sorted(chosen.items(), key=lambda kv: plots.method_sort_key(kv[0]))}


def _seed_words(counts: list[int]) -> str:
    if min(counts) == max(counts):
        return "one seed each" if counts[0] == 1 else f"{counts[0]} seeds each"
    return f"{min(counts)} to {max(counts)} seeds"


def figure_captions(result: dict, spectra: dict[str, dict], landscapes: dict[str, dict]) -> dict[str, str]:
    """A caption per figure file: what is plotted, the axes, the colours, over which checkpoints and seeds."""
    rows = result["rows"]
    n = len(rows)
    groups: dict[tuple, int] = {}
    for r in rows:
        groups[_group(r)] = groups.get(_group(r), 0) + 1
    counts = list(groups.values())
    seeds = sorted({r["seed"] for r in rows})
    ranks = sorted({r["rank"] for r in rows if r["scope"] == "adapter"})
    colours = "Colours are the methods' fixed colours, the same in every figure of genbound."
    if max(counts) >= 2:
        bars = ("error bars are +-1 sample standard deviation over seeds and black dots the single seeds"
                + (", shown only for groups with two or more seeds" if min(counts) < 2 else ""))
    else:
        bars = "one seed per group, so there are no error bars"
    height = "mean over seeds" if max(counts) >= 2 else "value of the single seed"
    regression = any(r.get("problem") == "regression" for r in rows)
    what = ("Test MSE (left) and the MSE generalization gap, test MSE minus train MSE (right)" if regression else
            "Test accuracy (left) and the 0-1 generalization gap, train accuracy minus test accuracy (right)")
    axis = ("Both axes start at 0 (below it only where a gap or an error bar is negative; black line: 0)." if regression
            else "The accuracy axis spans 0 to 1; the gap axis starts at 0 (below it only where a gap or an error bar "
                 "is negative; black line: 0).")
    caps = {"methods.png": (
        f"{what}, per method "
        f"and rank (x axis) over all {n} checkpoints ({_seed_words(counts)}). Bar height is the {height}; {bars}. "
        f"{axis} {colours}")}
    marker = f"; marker shape = rank r ({', '.join(map(str, ranks))}; squares: full and head)" if len(ranks) > 1 else ""
    interval = (" and, in brackets, its 95% interval from resampling whole seeds" if len(seeds) >= 2 else
                " (one seed: no interval)")
    titles = (f"Panel titles give Kendall tau over all checkpoints{interval}." if n >= TAU_MIN_CHECKPOINTS else
              f"No tau in the titles: {n} checkpoints are too few to rank measures.")
    for gap, words in (("gap_01", "0-1 gap (train accuracy minus test accuracy)"),
                       ("gap_ce", "cross-entropy gap (test CE minus train CE)"),
                       ("gap_mse", "squared-error gap (test MSE minus train MSE)")):
        caps[f"measures-{gap}.png"] = (
            f"Each measure that compare ranks (one panel each; x axis, log scale where marked) against the measured "
            f"{words} (y axis), one point per checkpoint ({n} checkpoints, {_seed_words(counts)}), colour = method"
            f"{marker}. {titles} {colours}")
    certified = [r for r in rows if _number(r.get("pac_bayes_certificate")) and _number(r.get("stochastic_test_err"))]
    if certified:
        caps["certificate.png"] = (
            f"The PAC-Bayes certificate (`certify`, y axis) against the measured test error of the stochastic "
            f"predictor it bounds (x axis), one point per checkpoint ({len(certified)} of {n}), colour = method"
            f"{marker}. The black line is y = x; the dashed line is the majority-class test error, at or above which "
            f"a certificate is vacuous. Both axes start at 0 and share one scale. {colours}")
    if spectra:
        first = next(iter(spectra.values()))["intruders"]
        heads = " Head-only training adapts no matrix and has no curve." if any(
            r["scope"] != "adapter" and r["method"] == "head" for r in rows) else ""
        caps["intruders.png"] = (
            f"Intruder dimensions (Shuttleworth et al. 2024) of one checkpoint per method and rank (seed {seeds[0]}): "
            "the mean number, per adapted matrix, of left singular vectors of W0 + dW whose largest |cosine| with "
            f"W0's left singular vectors is below eps (x axis), among the top {first['top_k']} singular vectors "
            f"(left) and among all of them (right).{heads} {colours}")
    if landscapes:
        r0 = next(iter(landscapes.values()))
        loss_words = "mean squared error" if r0.get("loss_kind") == "mse" else "cross-entropy"
        if r0["one_d"]:
            caps["landscapes.png"] = (
                f"{r0['split'].capitalize()} loss ({loss_words} on {r0['samples']} examples) along d1 through the "
                f"trained weights, one curve per method (its lowest seed and rank). {colours}")
        else:
            if r0["dirs"] == "pca":
                dirs = ("the top two principal directions of each checkpoint's training trajectory (axis labels: their "
                        "share of its variance); red: the training path projected onto the plane")
            else:
                dirs = (f"two filter-normalized Gaussian random directions (Li et al. 2018) in the {r0['space']} "
                        f"parameter space, seed {r0.get('seed', 0)}")
            caps["landscapes.png"] = (
                f"{r0['split'].capitalize()} loss ({loss_words} on {r0['samples']} examples) on the plane "
                f"theta* + a d1 + b d2 around the trained weights theta* (white star), a and b in "
                f"[-{r0['range']:g}, {r0['range']:g}] (x and y axes), for one checkpoint per method (its lowest seed "
                f"and rank); d1 and d2 are {dirs}. One log colour scale for all panels (colour bar); white lines are "
                f"contours. Titles give the sharpness, the largest loss increase within radius rho = "
                f"{r0['sharpness']['rho']:g} of the centre; each frame has its method's colour.")
    return caps


def write_comparison(result: dict, out: Path, title: str) -> None:
    """The report folder: README.md, results.json and the figures, each with a caption."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    written = ["methods.png"]
    plots.save(plots.method_figure(result), str(out / "methods.png"))
    for gap in ("gap_01", "gap_ce", "gap_mse"):
        fig = plots.measure_scatter_figure(result, gap, show_tau=len(result["rows"]) >= TAU_MIN_CHECKPOINTS)
        if fig is not None:
            plots.save(fig, str(out / f"measures-{gap}.png"))
            written.append(f"measures-{gap}.png")
    fig = plots.certificate_figure(result)
    if fig is not None:
        plots.save(fig, str(out / "certificate.png"))
        written.append("certificate.png")
    spectra = {}
    first_seed = min(x["seed"] for x in result["rows"])
    for r in sorted(result["rows"], key=lambda r: (plots.method_sort_key(r["method"]), r["rank"])):
        path = stored_file(r, "spectrum")
        if path.is_file() and r["seed"] == first_seed:
            data = json.loads(path.read_text())
            if "intruders" in data:
                spectra[Path(r["checkpoint"]).name] = data
    if spectra:
        plots.save(plots.intruder_figure(spectra), str(out / "intruders.png"))
        written.append("intruders.png")
    landscapes = landscapes_of(result["rows"])
    if landscapes:
        plots.save(plots.landscape_figure(landscapes, columns=4), str(out / "landscapes.png"))
        written.append("landscapes.png")
    captions = figure_captions(result, spectra, landscapes)
    text = render_report(result, title) + "\n## Figures\n"
    for i, f in enumerate(written, 1):
        text += f"\n![{f}]({f})\n\n**Figure {i}.** {captions[f]}\n"
    atomic_write_text(out / "README.md", text)
    print(f"wrote {out}/README.md, results.json and {len(written)} figures ({len(result['rows'])} checkpoints)")

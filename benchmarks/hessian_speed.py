"""Top Hessian eigenvalue: genbound's Lanczos against PyHessian's power iteration, and the cost of one HVP.

    python benchmarks/hessian_speed.py --ckpt runs/minilm-lora [--params trainable] [--samples 512] [--batch 128]
        [--accuracy 1e-3] [--pyhessian-tols 1e-3 1e-4 1e-5] [--seeds 3] [--device auto] [--out reports/performance]

Same model, data subsample and parameter set for both (genbound.hessian's operator; PyHessian through
genbound.hessian.pyhessian_backend, which switches requires_grad on exactly that set). The target is the
eigenvalue of largest magnitude (power iteration's; genbound's Lanczos runs with which="magnitude"), its
reference from Lanczos run to a tight tolerance; each method is then run at its own stopping rule
and judged by its actual relative error against the reference: genbound at each of --genbound-tols (default:
the accuracy, then 10x and 100x tighter), PyHessian at each of --pyhessian-tols; for each, the largest tol
whose runs all reach the accuracy is the one compared. Tols run loosest first and stop at the first that
reaches the accuracy (--all-tols runs every one).
genbound runs with each HVP implementation: forward-over-reverse, double backward, and double backward with
every batch's gradient graph cached (an HVP without forward passes; PyHessian caches likewise only when the
subsample is one batch). HVPs are counted per probe vector over the whole subsample. Times are synchronized
wall-clock (CUDA events for the per-call costs) after warm-up, medians over --seeds runs, both tools in the
same process. Writes <name>.json and <name>.md under --out after every stage,
so a run cut short keeps what it measured (commit them to reports/performance/ when run on the GPU). On CPU
it runs too (a smoke test with small --samples; --threads to pin torch's threads).

Top-k mode (--topk K > 1, --trace or --block B):

    python benchmarks/hessian_speed.py --ckpt runs/minilm-lora --params all --samples 8000 --batch 250 \\
        --topk 5 --trace --block 8 --probe-batch 8 [--genbound-tols ...] [--pyhessian-tols ...] [--autocast]

genbound's block Lanczos (which="magnitude", --block vectors per data pass) then, with --trace, Hutch++
(--trace-probes HVPs) against PyHessian's eigenvalues(top_n=K) then trace() (its own stopping rule,
--pyhessian-trace-iter and --pyhessian-trace-tol); the reference is the K largest-magnitude eigenvalues
from float32 block Lanczos at --ref-tol. A setting reaches the target when every run's relative error on
EACH of the K eigenvalues is <= --accuracy (--autocast: genbound's HVPs in bf16); the ratios (wall time and
data passes, eigenvalues alone and with the trace) compare each tool's loosest tol that reaches it. A data
pass is one sweep over the subsample's batches (genbound: up to --probe-batch vectors; PyHessian: one
vector). The traces are stochastic: the table gives each one's standard error beside it. Writes
hessian_speed_top<K>_<params>.json/.md (or --name).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from benchlib import add_output_options, median_seconds, setup_device, wall

from genbound import checkpoint
from genbound.hessian import (HessianOperator, hutchpp, lanczos_block_top, lanczos_top, select_params,
                              training_batches, working_model)
from genbound.hessian.pyhessian_backend import PyHessianRun


def costs(ops: dict[str, HessianOperator], device: torch.device, repeats: int, probe_batch: int) -> dict:
    """Seconds per gradient (default and math attention kernels) and per HVP for each implementation."""
    op = next(iter(ops.values()))
    gen = torch.Generator(device=device).manual_seed(0)
    v = torch.randn(op.dim, generator=gen, device=device, dtype=op.dtype)
    V = torch.randn(probe_batch, op.dim, generator=gen, device=device, dtype=op.dtype)
    out = {"grad": median_seconds(lambda: op.gradient(math_kernels=False), device, repeats),
           "grad_math_attention": median_seconds(op.gradient, device, repeats)}
    for name, o in ops.items():
        out[f"hvp_{name}"] = median_seconds(lambda o=o: o.matvec(v), device, repeats)
        out[f"hvp_{name}_batched_per_probe"] = median_seconds(lambda o=o: o.matmat(V), device, repeats) / probe_batch
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint directory (e.g. minilm with lora adapters)")
    ap.add_argument("--params", default="trainable", help="trainable | adapters | all | dw")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--accuracy", type=float, default=1e-3, help="relative accuracy of the top eigenvalue")
    ap.add_argument("--genbound-tols", type=float, nargs="+", default=None,
                    help="Lanczos tolerances (default: accuracy, accuracy/10, accuracy/100)")
    ap.add_argument("--stop", default="residual", help="Lanczos stopping rule: residual | gap (see lanczos_top)")
    ap.add_argument("--pyhessian-tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
    ap.add_argument("--max-iter", type=int, default=1000, help="PyHessian power iterations")
    ap.add_argument("--seeds", type=int, default=3, help="runs per method (medians)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per cost")
    ap.add_argument("--probe-batch", type=int, default=8)
    ap.add_argument("--no-cache", action="store_true", help="skip the cached-graph variant (it keeps all activations)")
    ap.add_argument("--all-tols", action="store_true",
                    help="run every --pyhessian-tols value, not only up to the first that reaches the accuracy")
    ap.add_argument("--topk", type=int, default=1,
                    help="top-k mode when > 1 (or with --trace or --block): block Lanczos top-k (+ Hutch++) "
                         "against PyHessian's eigenvalues(top_n=k) (+ trace()), every eigenvalue to --accuracy")
    ap.add_argument("--trace", action="store_true", help="top-k mode: also the trace (Hutch++ against PyHessian's)")
    ap.add_argument("--block", type=int, default=None,
                    help="top-k mode: block size of genbound's block Lanczos (default 8; giving it selects the mode)")
    ap.add_argument("--trace-probes", type=int, default=30, help="top-k mode: Hutch++ HVPs")
    ap.add_argument("--pyhessian-trace-iter", type=int, default=100, help="top-k mode: PyHessian trace() maxIter")
    ap.add_argument("--pyhessian-trace-tol", type=float, default=1e-3, help="top-k mode: PyHessian trace() tol")
    ap.add_argument("--ref-tol", type=float, default=1e-6, help="top-k mode: tol of the reference block Lanczos")
    ap.add_argument("--autocast", action="store_true",
                    help="top-k mode: genbound's HVPs under bf16 autocast (the reference stays float32)")
    ap.add_argument("--hvp", default="auto", help="top-k mode: genbound's HVP (auto | forward-over-reverse | "
                                                  "double-backward)")
    add_output_options(ap, "hessian_speed")
    args = ap.parse_args()
    if args.genbound_tols is None:
        args.genbound_tols = [args.accuracy, args.accuracy / 10, args.accuracy / 100]
    device, loaded, model, params, batches = setup(args)
    if args.topk > 1 or args.trace or args.block is not None:
        args.block = args.block or 8
        topk_main(args, device, loaded, model, params, batches)
        return
    variants = {"forward-over-reverse": ("forward-over-reverse", False), "double-backward": ("double-backward", False)}
    if not args.no_cache:
        variants["double-backward, cached graphs"] = ("double-backward", True)
    make = {name: (lambda h=h, c=c: HessianOperator(model, params, batches, h, args.probe_batch, c))
            for name, (h, c) in variants.items()}  # a fresh operator per run: no graph survives between runs
    op = make["double-backward"]()
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "ckpt": str(args.ckpt), "method": loaded.manifest["method"]["name"],
            "base": loaded.manifest["base"].get("name") or loaded.manifest["base"].get("kind"),
            "params": args.params, "n_params": op.dim, "samples": op.n_examples, "batch": args.batch,
            "n_batches": len(batches), "accuracy": args.accuracy, "seeds": args.seeds}
    print(json.dumps(info))
    out = Path(args.out)
    c = costs({name: factory() for name, factory in make.items()}, device, args.repeats, args.probe_batch)
    info["seconds_per_call"] = c
    info["hvp_over_grad"] = {k: v / c["grad"] for k, v in c.items() if k.startswith("hvp")}
    print(json.dumps({"hvp_over_grad": info["hvp_over_grad"]}))
    write(info, out, args.name)

    ref_name = "double-backward, cached graphs" if "double-backward, cached graphs" in make else "double-backward"
    ref_op = make[ref_name]()
    ref, ref_s = wall(lambda: lanczos_top(ref_op, 2, max_steps=400, tol=1e-7, seed=12345, which="magnitude"), device)
    lam = ref.eigenvalues[0]
    # a positive eigenvalue of largest magnitude is also the largest one: no second run needed then
    top = ref if lam > 0 else lanczos_top(ref_op, 1, max_steps=400, tol=1e-7, seed=12345)
    ref_op = None  # frees its cached graphs
    info["reference"] = {"lambda_1": lam, "lambda_2": ref.eigenvalues[1], "residual": ref.residuals[0],
                         "n_hvp": ref.n_hvp, "steps": ref.steps, "converged": ref.converged, "seconds": ref_s,
                         "lambda_max": top.eigenvalues[0], "lambda_max_residual": top.residuals[0],
                         "how": f"Lanczos ({ref_name}), tol 1e-7, 400 steps at most; lambda_1, lambda_2 = the "
                                "largest in magnitude (power iteration's target), lambda_max = the largest"}
    print(json.dumps(info["reference"]))
    write(info, out, args.name)

    rows = []
    info["runs"] = rows
    todo = dict(make)
    for tol in sorted(args.genbound_tols, reverse=True):
        for h, factory in todo.items():
            for seed in range(args.seeds):
                o = factory()
                eig, sec = wall(lambda o=o, seed=seed, tol=tol: lanczos_top(
                    o, 1, max_steps=400, tol=tol, seed=seed, which="magnitude", stop=args.stop), device)
                del o
                rows.append({"tool": "genbound", "algorithm": lanczos_label(h, args.stop), "tol": tol,
                             "seed": seed,
                             "n_hvp": eig.n_hvp, "seconds": sec, "lambda_1": eig.eigenvalues[0],
                             "rel_error": abs(eig.eigenvalues[0] - lam) / abs(lam), "residual": eig.residuals[0],
                             "converged": eig.converged})
                print(json.dumps(rows[-1]))
        summarize(info, rows, make, args)
        write(info, out, args.name)
        if not args.all_tols:  # a variant whose runs all reach the accuracy at this tol needs no tighter one
            todo = {h: f for h, f in todo.items() if not any(
                t["algorithm"] == lanczos_label(h, args.stop) and t["tol"] == tol and t["reaches_accuracy"]
                for t in info["summary"])}
            if not todo:
                break
    for tol in sorted(args.pyhessian_tols, reverse=True):
        for seed in range(args.seeds):
            e = PyHessianRun(op, seed).eigenvalues(1, tol, args.max_iter)
            rows.append({"tool": "pyhessian", "algorithm": "power iteration", "tol": tol, "seed": seed,
                         "n_hvp": e["n_hvp"], "seconds": e["seconds"], "lambda_1": e["eigenvalues"][0],
                         "rel_error": abs(e["eigenvalues"][0] - lam) / abs(lam)})
            print(json.dumps(rows[-1]))
        pyh = [r for r in rows if r["tool"] == "pyhessian"]
        c["hvp_pyhessian_in_power_iteration"] = statistics.median(r["seconds"] / r["n_hvp"] for r in pyh)
        info["hvp_over_grad"]["hvp_pyhessian_in_power_iteration"] = c["hvp_pyhessian_in_power_iteration"] / c["grad"]
        summarize(info, rows, make, args)
        write(info, out, args.name)
        if "ratios" in info and not args.all_tols:
            break
    print(json.dumps({"ratios": info.get("ratios"), "hvp_over_grad": info["hvp_over_grad"]}))


def setup(args: argparse.Namespace):
    """The device, checkpoint, float32 working model, parameter set and batches of the subsample."""
    device = setup_device(args)
    loaded = checkpoint.load(args.ckpt, device)
    model = working_model(loaded.model, torch.float32)
    params = select_params(model, loaded.built, args.params)
    return device, loaded, model, params, training_batches(loaded, args.samples, args.batch, 0, torch.float32)


def lanczos_label(hvp: str, stop: str) -> str:
    """The algorithm column of genbound's rows: the HVP variant and the stopping rule."""
    return f"Lanczos ({hvp}, stop={stop})"


def summarize(info: dict, rows: list[dict], make: dict, args: argparse.Namespace) -> None:
    """Per-setting medians, and the ratios once both tools have a setting that reaches the accuracy."""
    def summary(tool: str, algorithm: str, tol: float) -> dict:
        sel = [r for r in rows if r["tool"] == tool and r["algorithm"] == algorithm and r["tol"] == tol]
        return {"tool": tool, "algorithm": algorithm, "tol": tol,
                "n_hvp_median": statistics.median(r["n_hvp"] for r in sel),
                "seconds_median": statistics.median(r["seconds"] for r in sel),
                "rel_error_max": max(r["rel_error"] for r in sel),
                "reaches_accuracy": all(r["rel_error"] <= args.accuracy for r in sel)}

    names = [lanczos_label(h, args.stop) for h in make]
    table = [summary("genbound", a, t) for a in names for t in sorted(args.genbound_tols, reverse=True)
             if any(r["algorithm"] == a and r["tol"] == t for r in rows)]
    table += [summary("pyhessian", "power iteration", t) for t in sorted(args.pyhessian_tols, reverse=True)
              if any(r["tool"] == "pyhessian" and r["tol"] == t for r in rows)]
    info["summary"] = table
    loosest = {}  # per genbound variant, its loosest tol whose runs all reach the accuracy
    for t in table:
        if t["tool"] == "genbound" and t["reaches_accuracy"] and t["algorithm"] not in loosest:
            loosest[t["algorithm"]] = t
    ours = min(loosest.values(), key=lambda t: t["seconds_median"], default=None)
    theirs = next((t for t in sorted(table, key=lambda t: -t["tol"]) if t["tool"] == "pyhessian"
                   and t["reaches_accuracy"]), None)
    if ours and theirs:
        info["ratios"] = {"genbound": ours["algorithm"], "genbound_tol": ours["tol"], "pyhessian_tol": theirs["tol"],
                          "hvp_ratio": theirs["n_hvp_median"] / ours["n_hvp_median"],
                          "wall_ratio": theirs["seconds_median"] / ours["seconds_median"]}


def write(info: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
    lines = [f"# Top Hessian eigenvalue, {info['device']}, torch {info['torch']}", "",
             f"{info['base']} / {info['method']}, --params {info['params']} (n = {info['n_params']:,}), "
             f"{info['samples']} training examples in {info['n_batches']} batches of {info['batch']}, float32."]
    if "reference" in info:
        ref = info["reference"]
        lines[-1] += (f" Target: the eigenvalue of largest magnitude (what power iteration finds), reference "
                      f"lambda_1 = {ref['lambda_1']:.6g} (next in magnitude {ref['lambda_2']:.6g}; residual "
                      f"{ref['residual']:.1e}; the largest eigenvalue is {ref['lambda_max']:.6g}), to relative "
                      f"accuracy {info['accuracy']:g}; medians over {info['seeds']} seeds.")
    if info.get("summary"):
        lines += ["", "| tool | algorithm | tol | HVPs | wall (s) | max rel. error | reaches target |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {t['tool']} | {t['algorithm']} | {t['tol']:g} | {t['n_hvp_median']:g} | "
                  f"{t['seconds_median']:.3g} | {t['rel_error_max']:.1e} | {'yes' if t['reaches_accuracy'] else 'no'} |"
                  for t in info["summary"]]
    if "ratios" in info:
        r = info["ratios"]
        lines += ["", f"PyHessian (tol {r['pyhessian_tol']:g}, the loosest reaching the target) / genbound "
                      f"({r['genbound']}, tol {r['genbound_tol']:g}, the fastest variant at its loosest tol reaching "
                      f"the target): **{r['hvp_ratio']:.1f}x the HVPs, {r['wall_ratio']:.1f}x the wall time**."]
    elif info.get("summary"):
        lines += ["", "No ratio: not both tools have a tol whose runs all reach the target (see the table)."]
    c = info["seconds_per_call"]
    lines += ["", "Cost of one call over the whole subsample (median seconds; ratio to one gradient with the default "
                  "attention kernels):", "", "| call | seconds | x gradient |", "|---|---|---|"]
    lines += [f"| {k} | {v:.4g} | {v / c['grad']:.2f} |" for k, v in c.items()]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")



# ---- top-k mode: block Lanczos top-k and Hutch++ against PyHessian's eigenvalues(top_n=k) and trace() ---------
def topk_main(args: argparse.Namespace, device: torch.device, loaded, model, params: dict, batches: list) -> None:
    """Reference top-k (block Lanczos at --ref-tol), then each tool at each of its tols, loosest first, until
    its runs reach --accuracy on every one of the k eigenvalues (--all-tols: every tol)."""
    make = lambda autocast=args.autocast: HessianOperator(  # noqa: E731
        model, params, batches, args.hvp, args.probe_batch, autocast=autocast)
    op = make(False)
    name = args.name if args.name != "hessian_speed" else f"hessian_speed_top{args.topk}_{args.params}"
    info = {"mode": "top-k", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "ckpt": str(args.ckpt), "method": loaded.manifest["method"]["name"],
            "params": args.params, "n_params": op.dim, "samples": op.n_examples, "batch": args.batch,
            "n_batches": len(batches), "top_k": args.topk, "block": args.block, "probe_batch": args.probe_batch,
            "hvp": args.hvp, "autocast": args.autocast, "trace": args.trace, "accuracy": args.accuracy,
            "seeds": args.seeds, "dtype": "float32"}
    ref, sec = wall(lambda: lanczos_block_top(make(False), args.topk, args.block, max_steps=400, tol=args.ref_tol,
                                              seed=12345, which="magnitude"), device)
    info["reference"] = {"eigenvalues": ref.eigenvalues, "residuals": ref.residuals, "converged": ref.converged,
                         "steps": ref.steps, "n_passes": ref.n_passes, "seconds": sec,
                         "how": f"block Lanczos (block {args.block}), tol {args.ref_tol:g}, 400 blocks at most; "
                                "the k largest in magnitude (power iteration's target)"}
    print(json.dumps(info["reference"]))
    rows = info["runs"] = []
    tools = {"genbound": (args.genbound_tols, lambda tol, seed: topk_genbound(make(), args, tol, seed, device)),
             "pyhessian": (args.pyhessian_tols, lambda tol, seed: topk_pyhessian(op, args, tol, seed))}
    for tool, (tols, run) in tools.items():
        for tol in sorted(tols, reverse=True):
            for seed in range(args.seeds):
                row = {"tool": tool, "tol": tol, "seed": seed, **run(tol, seed)}
                row["rel_errors"] = [abs(a - b) / abs(b) for a, b in zip(row["eigenvalues"], ref.eigenvalues)]
                row["rel_error_max"] = max(row["rel_errors"])
                rows.append(row)
                print(json.dumps(row))
            info["summary"], info["ratios"] = topk_summary(rows, args.accuracy)
            write_topk(info, Path(args.out), name)
            if not args.all_tols and any(t["tool"] == tool and t["tol"] == tol and t["reaches_accuracy"]
                                         for t in info["summary"]):
                break
    print(json.dumps({"ratios": info["ratios"]}))


def topk_genbound(op: HessianOperator, args: argparse.Namespace, tol: float, seed: int, device) -> dict:
    """One genbound run on a fresh operator: block Lanczos top-k, then (with --trace) Hutch++."""
    eig, sec = wall(lambda: lanczos_block_top(op, args.topk, args.block, max_steps=400, tol=tol, seed=seed,
                                              which="magnitude", stop=args.stop), device)
    out = {"eigenvalues": eig.eigenvalues, "seconds_eigen": sec, "passes_eigen": op.n_passes,
           "n_hvp_eigen": eig.n_hvp, "converged": eig.converged, "seconds_trace": 0.0, "passes_trace": 0}
    if args.trace:
        t, sec = wall(lambda: hutchpp(op, args.trace_probes, seed), device)
        out.update(trace=t["trace"], trace_stderr=t["stderr"], seconds_trace=sec,
                   passes_trace=op.n_passes - out["passes_eigen"], trace_estimator=f"Hutch++ ({args.trace_probes})")
    return out


def topk_pyhessian(op: HessianOperator, args: argparse.Namespace, tol: float, seed: int) -> dict:
    """PyHessian's eigenvalues(top_n=k) (sorted by magnitude) and trace(): one HVP = one data pass."""
    run = PyHessianRun(op, seed)
    e = run.eigenvalues(args.topk, tol, args.max_iter)
    values = sorted(e["eigenvalues"], key=abs, reverse=True)
    out = {"eigenvalues": values, "seconds_eigen": e["seconds"], "passes_eigen": e["n_hvp"], "n_hvp_eigen": e["n_hvp"],
           "seconds_trace": 0.0, "passes_trace": 0}
    if args.trace:
        t = run.trace(args.pyhessian_trace_iter, args.pyhessian_trace_tol)
        out.update(trace=t["trace"], trace_stderr=t["stderr"], seconds_trace=t["seconds"], passes_trace=t["n_hvp"],
                   trace_estimator=f"Hutchinson (maxIter {args.pyhessian_trace_iter}, "
                                   f"tol {args.pyhessian_trace_tol:g})")
    return out


def topk_summary(rows: list[dict], accuracy: float) -> tuple[list[dict], dict | None]:
    """Medians per (tool, tol) and, once both tools reach the accuracy, the ratios PyHessian / genbound at
    each tool's loosest tol that reaches it (wall time and data passes: eigenvalues, and with the trace)."""
    table = []
    for tool, tol in dict.fromkeys((r["tool"], r["tol"]) for r in rows):
        sel = [{**r, "seconds_total": r["seconds_eigen"] + r["seconds_trace"],
                "passes_total": r["passes_eigen"] + r["passes_trace"]}
               for r in rows if r["tool"] == tool and r["tol"] == tol]
        keys = ("seconds_eigen", "seconds_total", "passes_eigen", "passes_total", "trace", "trace_stderr")
        table.append({"tool": tool, "tol": tol,
                      **{k: statistics.median(r[k] for r in sel) if sel[0].get(k) is not None else None for k in keys},
                      "rel_error_max": max(r["rel_error_max"] for r in sel),
                      "reaches_accuracy": all(r["rel_error_max"] <= accuracy for r in sel)})
    best = {}
    for t in table:
        if t["reaches_accuracy"]:
            best.setdefault(t["tool"], t)
    if len(best) < 2:
        return table, None
    ours, theirs = best["genbound"], best["pyhessian"]
    return table, {"genbound_tol": ours["tol"], "pyhessian_tol": theirs["tol"],
                   **{f"{what}_ratio_{part}": theirs[f"{what}_{part}"] / ours[f"{what}_{part}"]
                      for what in ("seconds", "passes") for part in ("eigen", "total")}}


def write_topk(info: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
    ref = info["reference"]
    lines = [f"# Top-{info['top_k']} Hessian eigenvalues{' and trace' if info['trace'] else ''}, {info['device']}, "
             f"torch {info['torch']}", "",
             f"{info['method']}, --params {info['params']} (n = {info['n_params']:,}), {info['samples']} training "
             f"examples in {info['n_batches']} batches of {info['batch']}, float32. genbound: block Lanczos (block "
             f"{info['block']}, {info['probe_batch']} vectors per pass, HVP {info['hvp']}"
             f"{', bf16 autocast' if info['autocast'] else ''}); PyHessian: "
             f"eigenvalues(top_n={info['top_k']}){' and trace()' if info['trace'] else ''}. Reference: {ref['how']}: "
             f"{', '.join(f'{v:.6g}' for v in ref['eigenvalues'])}. Target: relative error <= {info['accuracy']:g} "
             f"on each of the {info['top_k']} eigenvalues; medians over {info['seeds']} seeds.", "",
             "| tool | tol | passes (eig.) | passes (all) | wall eig. (s) | wall all (s) | max rel. error | "
             "trace +- stderr | reaches |", "|---|---|---|---|---|---|---|---|---|"]
    for t in info["summary"]:
        trace = f"{t['trace']:.5g} +- {t['trace_stderr'] or float('nan'):.2g}" if t["trace"] is not None else "-"
        lines.append(f"| {t['tool']} | {t['tol']:g} | {t['passes_eigen']:g} | {t['passes_total']:g} | "
                     f"{t['seconds_eigen']:.3g} | {t['seconds_total']:.3g} | {t['rel_error_max']:.1e} | {trace} | "
                     f"{'yes' if t['reaches_accuracy'] else 'no'} |")
    r = info.get("ratios")
    lines += ["", f"PyHessian (tol {r['pyhessian_tol']:g}) / genbound (tol {r['genbound_tol']:g}), each at its "
                  f"loosest tol reaching the target: eigenvalues **{r['seconds_ratio_eigen']:.1f}x the wall time, "
                  f"{r['passes_ratio_eigen']:.1f}x the data passes**; with the trace {r['seconds_ratio_total']:.1f}x "
                  f"and {r['passes_ratio_total']:.1f}x (compare the trace standard errors in the table)." if r else
              "No ratio: not both tools have a tol whose runs all reach the target."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()

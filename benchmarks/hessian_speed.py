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
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from benchlib import add_output_options, median_seconds, setup_device, wall

from genbound import checkpoint
from genbound.hessian import HessianOperator, lanczos_top, select_params, training_batches, working_model
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
    add_output_options(ap, "hessian_speed")
    args = ap.parse_args()
    if args.genbound_tols is None:
        args.genbound_tols = [args.accuracy, args.accuracy / 10, args.accuracy / 100]
    device = setup_device(args)
    loaded = checkpoint.load(args.ckpt, device)
    model = working_model(loaded.model, torch.float32)
    params = select_params(model, loaded.built, args.params)
    batches = training_batches(loaded, args.samples, args.batch, 0, torch.float32)
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


if __name__ == "__main__":
    main()

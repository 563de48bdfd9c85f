"""Top Hessian eigenvalue: genbound's Lanczos against PyHessian's power iteration, and the cost of one HVP.

    python benchmarks/hessian_speed.py --ckpt runs/minilm-lora [--params trainable] [--samples 512] [--batch 128]
        [--accuracy 1e-3] [--pyhessian-tols 1e-3 1e-4 1e-5] [--seeds 3] [--device auto] [--out reports/performance]

Same model, data subsample and parameter set for both (genbound.hessian's operator; PyHessian through
genbound.hessian.pyhessian_backend, which switches requires_grad on exactly that set). The target is the
eigenvalue of largest magnitude (power iteration's; genbound's Lanczos runs with which="magnitude"), its
reference from Lanczos run to a tight tolerance; each method is then run at its own stopping rule
and judged by its actual relative error against the reference: genbound at --tol = accuracy; PyHessian at
each of --pyhessian-tols, and the largest tol whose runs all reach the accuracy is the one compared.
genbound runs with each HVP implementation: forward-over-reverse, double backward, and double backward with
every batch's gradient graph cached (an HVP without forward passes; PyHessian caches likewise only when the
subsample is one batch). HVPs are counted per probe vector over the whole subsample. Times are synchronized
wall-clock (CUDA events for the per-call costs) after warm-up, medians over --seeds runs, both tools in the
same process. Writes <name>.json and <name>.md under --out (commit them to reports/performance/ when run on
the GPU). On CPU it runs too (a smoke test with small --samples; --threads to pin torch's threads).
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
    ap.add_argument("--pyhessian-tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
    ap.add_argument("--max-iter", type=int, default=1000, help="PyHessian power iterations")
    ap.add_argument("--seeds", type=int, default=3, help="runs per method (medians)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per cost")
    ap.add_argument("--probe-batch", type=int, default=8)
    ap.add_argument("--no-cache", action="store_true", help="skip the cached-graph variant (it keeps all activations)")
    add_output_options(ap, "hessian_speed")
    args = ap.parse_args()
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

    ref, ref_s = wall(lambda: lanczos_top(op, 2, max_steps=400, tol=1e-7, seed=12345, which="magnitude"), device)
    lam = ref.eigenvalues[0]
    top = lanczos_top(op, 1, max_steps=400, tol=1e-7, seed=12345)
    info["reference"] = {"lambda_1": lam, "lambda_2": ref.eigenvalues[1], "residual": ref.residuals[0],
                         "n_hvp": ref.n_hvp, "converged": ref.converged, "seconds": ref_s,
                         "lambda_max": top.eigenvalues[0], "lambda_max_residual": top.residuals[0],
                         "how": "Lanczos (double backward), tol 1e-7, 400 steps at most; lambda_1, lambda_2 = the "
                                "largest in magnitude (power iteration's target), lambda_max = the largest"}
    print(json.dumps(info["reference"]))

    rows = []
    for h, factory in make.items():
        for seed in range(args.seeds):
            o = factory()
            eig, sec = wall(lambda o=o, seed=seed: lanczos_top(o, 1, max_steps=400, tol=args.accuracy, seed=seed,
                                                               which="magnitude"), device)
            del o
            rows.append({"tool": "genbound", "algorithm": f"Lanczos ({h})", "tol": args.accuracy, "seed": seed,
                         "n_hvp": eig.n_hvp, "seconds": sec, "lambda_1": eig.eigenvalues[0],
                         "rel_error": abs(eig.eigenvalues[0] - lam) / abs(lam), "residual": eig.residuals[0]})
            print(json.dumps(rows[-1]))
    for tol in args.pyhessian_tols:
        for seed in range(args.seeds):
            e = PyHessianRun(op, seed).eigenvalues(1, tol, args.max_iter)
            rows.append({"tool": "pyhessian", "algorithm": "power iteration", "tol": tol, "seed": seed,
                         "n_hvp": e["n_hvp"], "seconds": e["seconds"], "lambda_1": e["eigenvalues"][0],
                         "rel_error": abs(e["eigenvalues"][0] - lam) / abs(lam)})
            print(json.dumps(rows[-1]))
    info["runs"] = rows

    def summary(tool: str, algorithm: str, tol: float) -> dict:
        sel = [r for r in rows if r["tool"] == tool and r["algorithm"] == algorithm and r["tol"] == tol]
        return {"tool": tool, "algorithm": algorithm, "tol": tol,
                "n_hvp_median": statistics.median(r["n_hvp"] for r in sel),
                "seconds_median": statistics.median(r["seconds"] for r in sel),
                "rel_error_max": max(r["rel_error"] for r in sel),
                "reaches_accuracy": all(r["rel_error"] <= args.accuracy for r in sel)}

    table = [summary("genbound", f"Lanczos ({h})", args.accuracy) for h in make]
    table += [summary("pyhessian", "power iteration", t) for t in args.pyhessian_tols]
    info["summary"] = table
    ours = min((t for t in table if t["tool"] == "genbound" and t["reaches_accuracy"]),
               key=lambda t: t["seconds_median"], default=None)
    theirs = next((t for t in sorted(table, key=lambda t: -t["tol"]) if t["tool"] == "pyhessian"
                   and t["reaches_accuracy"]), None)
    if ours and theirs:
        info["ratios"] = {"genbound": ours["algorithm"], "pyhessian_tol": theirs["tol"],
                          "hvp_ratio": theirs["n_hvp_median"] / ours["n_hvp_median"],
                          "wall_ratio": theirs["seconds_median"] / ours["seconds_median"]}
    c = costs({name: factory() for name, factory in make.items()}, device, args.repeats, args.probe_batch)
    c["hvp_pyhessian_in_power_iteration"] = statistics.median(
        r["seconds"] / r["n_hvp"] for r in rows if r["tool"] == "pyhessian")
    info["seconds_per_call"] = c
    info["hvp_over_grad"] = {k: v / c["grad"] for k, v in c.items() if k.startswith("hvp")}
    print(json.dumps({"ratios": info.get("ratios"), "hvp_over_grad": info["hvp_over_grad"]}))
    write(info, Path(args.out), args.name)


def write(info: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
    ref = info["reference"]
    lines = [f"# Top Hessian eigenvalue, {info['device']}, torch {info['torch']}", "",
             f"{info['base']} / {info['method']}, --params {info['params']} (n = {info['n_params']:,}), "
             f"{info['samples']} training examples in {info['n_batches']} batches of {info['batch']}, float32. "
             f"Target: the eigenvalue of largest magnitude (what power iteration finds), reference lambda_1 = "
             f"{ref['lambda_1']:.6g} (next in magnitude {ref['lambda_2']:.6g}; residual {ref['residual']:.1e}; the "
             f"largest eigenvalue is {ref['lambda_max']:.6g}), to relative accuracy {info['accuracy']:g}; medians "
             f"over {info['seeds']} seeds.", "",
             "| tool | algorithm | tol | HVPs | wall (s) | max rel. error | reaches target |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {t['tool']} | {t['algorithm']} | {t['tol']:g} | {t['n_hvp_median']:g} | {t['seconds_median']:.3g} | "
              f"{t['rel_error_max']:.1e} | {'yes' if t['reaches_accuracy'] else 'no'} |" for t in info["summary"]]
    if "ratios" in info:
        r = info["ratios"]
        lines += ["", f"PyHessian (tol {r['pyhessian_tol']:g}, the loosest reaching the target) / genbound "
                      f"({r['genbound']}): **{r['hvp_ratio']:.1f}x the HVPs, {r['wall_ratio']:.1f}x the wall time**."]
    c = info["seconds_per_call"]
    lines += ["", "Cost of one call over the whole subsample (median seconds; ratio to one gradient with the default "
                  "attention kernels):", "", "| call | seconds | x gradient |", "|---|---|---|"]
    lines += [f"| {k} | {v:.4g} | {v / c['grad']:.2f} |" for k, v in c.items()]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

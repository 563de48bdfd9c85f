"""Loss-landscape grid: genbound's batched evaluation against a one-point-at-a-time loop.

    python benchmarks/landscape_speed.py --ckpt runs/minilm-lora [--grid 41] [--samples 64 256] [--chunk 8 16 32]
        [--batch-size 256] [--space trainable] [--dirs random] [--device auto] [--out reports/performance]

Both paths evaluate the same grid points (theta* + a d1 + b d2, the same directions) on the same seeded
evaluation subset in eval mode. Loop: genbound.landscape.evaluate_points_loop, which copies each point's
parameters into the model and runs it batch by batch (as the loss-landscape scripts and the PyPI
loss-landscapes package do). Batched: genbound.landscape.evaluate_points, ``chunk`` points per vmapped
functional_call. Wall-clock times after a warm-up, CUDA-synchronized; the max absolute difference of the two
loss surfaces is reported. Writes <name>.json and <name>.md under --out after every --samples setting (commit
them under reports/performance/).
Every --samples value is a setting (the loop once, the batched path per chunk): the batched path does the same
float32 work per point, so its speed-up comes from the loop's per-point overhead and is largest for small
subsets. Smoke test on CPU: --grid 5 --samples 32 --chunk 4 --device cpu on a tiny checkpoint.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from benchlib import add_output_options, setup_device, wall

from genbound import checkpoint
from genbound.landscape import (build_space, eval_subset, evaluate_points, evaluate_points_loop, grid_axis,
                                random_directions, read_trajectory, trajectory_directions)


def run_setting(space, dirs, pts, data, args, device: torch.device) -> list[dict]:
    """The loop once, then the batched path for each chunk (and with TF32 when asked), on one subset."""
    evaluate_points_loop(space, dirs, pts[:2], data, args.batch_size)  # warm-up (kernels, allocator)
    (loop_loss, loop_acc), loop_s = wall(lambda: evaluate_points_loop(space, dirs, pts, data, args.batch_size),
                                         device)
    tokens = int(data.inputs["attention_mask"].sum()) if "attention_mask" in data.inputs else None
    print(f"samples {len(data.y)}: loop, {len(pts)} points in {loop_s:.3f} s")
    rows = []
    modes = ["fp32"] + (["tf32"] if args.tf32 and device.type == "cuda" else [])
    for mode, chunk in itertools.product(modes, args.chunk):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        evaluate_points(space, dirs, pts[:chunk], data, chunk, args.batch_size)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        (loss, acc, info), sec = wall(lambda c=chunk: evaluate_points(space, dirs, pts, data, c, args.batch_size),
                                      device)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        torch.backends.cuda.matmul.allow_tf32 = False
        rows.append({"samples": len(data.y), "tokens": tokens, "chunk": chunk, "matmul": mode, "batched_s": sec,
                     "loop_s": loop_s, "loop_ms_per_point": 1e3 * loop_s / len(pts), "speedup": loop_s / sec,
                     "max_abs_diff_loss": float(np.abs(loss - loop_loss).max()),
                     "max_abs_diff_acc": float(np.abs(acc - loop_acc).max()), "points_per_s": len(pts) / sec,
                     "path": info["path"], "vmap_fallback_ops": info["vmap_fallback_ops"],
                     "peak_gpu_memory_bytes": peak})
        print(json.dumps(rows[-1]))
    return rows


def markdown(info: dict) -> str:
    rows = info["rows"]
    lines = [f"# Loss-landscape grid, batched vs point-by-point: {info['device']}, torch {info['torch']}", "",
             f"{info['model']} / {info['method']} r={info['rank']}, {info['space']} space ({info['n_params_space']:,} "
             f"numbers), {info['dirs']} directions, {info['grid']} x {info['grid']} = {info['points']} points, "
             f"{info['split']} examples in batches of {info['batch_size']}, float32, attention {info['attention']}. "
             f"Loop: copy each point into the model and evaluate it; batched: `chunk` points per vmapped "
             f"functional_call. Timing: {info['timing']}.", "",
             "| examples (tokens) | loop (s) | loop ms/point | chunk | matmuls | batched (s) | speed-up "
             "| max abs diff, loss | max abs diff, acc | peak GPU memory (GiB) | path |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = f"{r['peak_gpu_memory_bytes'] / 2**30:.2f}" if r["peak_gpu_memory_bytes"] else "-"
        path = r["path"] + (f" (no vmap rule: {', '.join(r['vmap_fallback_ops'])})" if r["vmap_fallback_ops"] else "")
        lines.append(f"| {r['samples']}" + (f" ({r['tokens']:,})" if r["tokens"] else "")
                     + f" | {r['loop_s']:.3f} | {r['loop_ms_per_point']:.2f} | {r['chunk']} | {r['matmul']} "
                     f"| {r['batched_s']:.3f} | {r['speedup']:.1f}x | {r['max_abs_diff_loss']:.1e} "
                     f"| {r['max_abs_diff_acc']:.1e} | {mem} | {path} |")
    lines.append("")
    for n in sorted({r["samples"] for r in rows}):
        best = max((r for r in rows if r["samples"] == n and r["matmul"] == "fp32"), key=lambda r: r["speedup"])
        lines.append(f"- {n} examples: best exact (float32) speed-up {best['speedup']:.1f}x at chunk {best['chunk']}.")
    if any(r["matmul"] == "tf32" for r in rows):
        lines.append("- TF32 rows use reduced-precision matmuls in the batched path only: faster, not identical.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--grid", type=int, default=41)
    ap.add_argument("--range", type=float, default=1.0)
    ap.add_argument("--samples", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--space", default="trainable", choices=["trainable", "delta", "all"])
    ap.add_argument("--dirs", default="random", choices=["random", "pca"])
    ap.add_argument("--attention", default="auto", choices=["auto", "model", "eager"],
                    help="as genbound.landscape.build_space: auto = HF eager attention (vmap fails over SDPA), "
                         "model = the model's own; eager = auto (the name the first GPU runs used)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tf32", action="store_true",
                    help="CUDA: also time the batched path with TF32 matmuls (not identical; labelled rows)")
    add_output_options(ap, "landscape_speed")
    args = ap.parse_args()
    device = setup_device(args)
    loaded = checkpoint.load(args.ckpt, device)
    space = build_space(loaded, args.space, "auto" if args.attention == "eager" else args.attention)
    if args.dirs == "random":
        dirs = random_directions(space.coords, args.seed, 2, False)
    else:
        dirs = trajectory_directions(space, loaded, read_trajectory(args.ckpt), args.ckpt)[0]
    axis = grid_axis(args.grid, args.range)
    pts = torch.tensor([[x, y] for y in axis for x in axis])
    man = loaded.manifest
    rows: list[dict] = []
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "ckpt": str(args.ckpt),
            "model": man["config"]["model"], "method": man["method"]["name"], "rank": man["method"]["rank"],
            "space": args.space, "dirs": args.dirs, "n_params_space": space.n_params, "grid": args.grid,
            "points": len(pts), "split": args.split, "batch_size": args.batch_size, "dtype": "float32",
            "attention": getattr(getattr(space.model, "config", None), "_attn_implementation", None),
            "timing": "wall clock after a warm-up, CUDA-synchronized, one run each", "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n in args.samples:  # written after every setting: a run cut short keeps what it measured
        rows += run_setting(space, dirs, pts, eval_subset(loaded, args.split, n, args.seed), args, device)
        (out / f"{args.name}.json").write_text(json.dumps(info, indent=1))
        (out / f"{args.name}.md").write_text(markdown(info))


if __name__ == "__main__":
    main()

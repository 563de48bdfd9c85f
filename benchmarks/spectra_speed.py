"""Singular values of a low-rank update: genbound's factor path against a dense SVD of dW.

    python benchmarks/spectra_speed.py [--n 4096] [--rank 16] [--links 1 3] [--dtype float64 float32] [--out DIR]

For each setting: dW = B A with B (n x K), A (K x n), K = links * rank. Dense: form dW and take
torch.linalg.svdvals (what a tool without the factors does). Low rank: genbound.spectra.lowrank_singular_values
(two thin QRs and a K x K SVD). Times are CUDA-event medians after warm-up (wall-clock on CPU), both paths in
the same run; the result is written as JSON and a markdown table (commit them under reports/performance/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchlib import median_seconds

from genbound.layers import LowRank
from genbound.spectra import lowrank_singular_values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--links", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="reports/performance")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for links in args.links:
            k = links * args.rank
            g = torch.Generator(device=device).manual_seed(0)
            B = torch.randn(args.n, k, generator=g, device=device, dtype=dtype)
            A = torch.randn(k, args.n, generator=g, device=device, dtype=dtype)
            factors = LowRank(B, A, None)
            dense_s = median_seconds(lambda B=B, A=A: torch.linalg.svdvals(B @ A), device, args.repeats)
            low_s = median_seconds(lambda f=factors: lowrank_singular_values(f), device, args.repeats)
            ref = torch.linalg.svdvals((B @ A).double())[:k]
            err = float(((lowrank_singular_values(factors)[:k] - ref).abs() / ref[0]).max())
            rows.append({"n": args.n, "m": args.n, "rank": args.rank, "links": links, "K": k, "dtype": dtype_name,
                         "dense_median_s": dense_s, "lowrank_median_s": low_s, "speedup": dense_s / low_s,
                         "max_rel_error_vs_float64_dense": err, "repeats": args.repeats})
            print(json.dumps(rows[-1]))
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "note": "low-rank path computes in float64 whatever the input dtype", "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spectra_speed.json").write_text(json.dumps(info, indent=1))
    lines = [f"# Singular values of dW = B A, {info['device']}, torch {info['torch']}", "",
             "| n x m | K = links x r | input dtype | dense SVD of dW (s) | from factors (s) | speed-up "
             "| max rel. error |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} x {r['m']} | {r['K']} = {r['links']} x {r['rank']} | {r['dtype']} | "
              f"{r['dense_median_s']:.4g} | {r['lowrank_median_s']:.4g} | {r['speedup']:.0f}x | "
              f"{r['max_rel_error_vs_float64_dense']:.1e} |"
              for r in rows]
    (out / "spectra_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

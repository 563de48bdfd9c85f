"""Markdown tables of the bounds reports from the JSON that `genbound compute` wrote.

    python analysis/bounds_tables.py reports/bounds-mlp lora cola cla rcla c3la paca head full
"""

import json
import sys
from pathlib import Path


def mlp_table(folder: Path, methods: list[str]) -> str:
    lines = ["| method | k | D paper | D full | train err | test err | gap 0-1 | gap CE | "
             "MI term 0-1 (q=32) paper / full | Phi_dW | Phi_W0 | Theorem-1 bound, smoothed CE | "
             "code: bits (per number), scheme | quantized train / test err | Occam bound on test err |",
             "|" + "---|" * 15]
    for m in methods:
        a = json.loads((folder / f"{m}-01.json").read_text())
        b = json.loads((folder / f"{m}-ce.json").read_text())
        c = a["compress"]
        lines.append(
            f"| {m} | {a['chain_k']} | {a['params_paper']:,} | {a['params_full']:,} | {a['train_err']:.4f} | "
            f"{a['test_err']:.4f} | {a['gap_01']:+.4f} | {a['gap_ce']:+.4f} | {a['mi_term_paper']:.3g} / "
            f"{a['mi_term_full']:.3g} | {a['phi_dw']:.3g} | {a['phi_w0']:.3g} | {b['theorem1_bound']:.3g} | "
            f"{c['code_bits']:,.0f} ({c['code_bits'] / c['numbers']:.2f}), {c['scheme']} {c['bits']}-bit | "
            f"{c['train_err_q']:.4f} / {c['test_err_q']:.4f} | **{c['occam_bound']:.3f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mlp_table(Path(sys.argv[1]), sys.argv[2:]))

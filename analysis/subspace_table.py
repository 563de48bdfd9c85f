"""The markdown table of reports/subspace-mlp from the JSON that `genbound compute` wrote there.

    python analysis/subspace_table.py reports/subspace-mlp
"""

import json
import sys
from pathlib import Path

RUNS = ["lora-lr3e-3", "lora-lr1e-2", "lora-d250", "lora-d1000", "lora-d4000",
        "cla-lr3e-3", "cla-lr1e-2", "cla-d250", "cla-d1000", "cla-d3000"]


def table(folder: Path) -> str:
    lines = ["| run | lr | D (coded numbers) | trained numbers P | train err | test err | "
             "code: bits (per number), scheme | extra bits | quantized train / test err | Occam bound on test err |",
             "|" + "---|" * 10]
    for name in RUNS:
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        a = json.loads(path.read_text())
        c = a["compress"]
        sub = a.get("params_subspace")
        lr = "1e-2" if "lr1e-2" in name or sub else "3e-3"
        lines.append(
            f"| {name} | {lr} | {sub if sub else '-'} ({c['numbers']:,}) | {a['params_full']:,} | "
            f"{a['train_err']:.4f} | {a['test_err']:.4f} | "
            f"{c['code_bits']:,.0f} ({c['code_bits'] / c['numbers']:.2f}), "
            f"{c['scheme']} {c['bits']}-bit | {c['extra_bits']:.0f} | {c['train_err_q']:.4f} / {c['test_err_q']:.4f} | "
            f"**{c['occam_bound']:.3f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))

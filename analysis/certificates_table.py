"""The MLP section of reports/certificates/README.md from the JSON that analysis/certify-fashion.sh copied to
reports/certificates/mlp/ (`genbound compute` with the 0-1 loss and with the smoothed CE, `genbound certify`):
one row per checkpoint, written between the section's two marker lines (the rest of the README is kept).

    python analysis/certificates_table.py reports/certificates/mlp reports/certificates/README.md
"""

import json
import sys
from pathlib import Path

from genbound import pacbayes

METHODS = ["full", "head", "lora", "lora_plus", "asym", "cola", "rac", "cla", "rcla", "c3la", "rc3la", "paca"]
BEGIN = "<!-- mlp table: written by analysis/certificates_table.py -->"
END = "<!-- end of the mlp table -->"
TUNED = 16  # certify settings looked at on lora before the study (reports/certificates/mlp/tuning-lora.txt)
HEADER = ("| run | k | checkpoint test err | paper bound (0-1 gap, MI term) | Theorem 1 (smoothed-CE gap) | "
          "compression bound (test err) | **certificate** | stochastic test err | posterior mean test err | "
          "certificate / stochastic test err | certificate paying for the tuning | n used | KL |")


def runs(folder: Path) -> list[str]:
    """The runs that have a certificate, methods in METHODS order, then their seeds."""
    names = [p.name.removesuffix("-certify.json") for p in folder.glob("*-certify.json")]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(names, key=lambda n: (order.get(n.split("-s")[0], len(order)), n))


def row(folder: Path, name: str) -> str:
    read = lambda kind: json.loads((folder / f"{name}-{kind}.json").read_text())  # noqa: E731
    cert, c01, ce = read("certify"), read("compute"), read("compute-ce")
    theorem1 = ce.get("theorem1_bound")
    return (f"| {name} | {cert['chain_k']} | {c01['test_err']:.4f} | {c01['mi_term_paper']:.2f} | "
            f"{'-' if theorem1 is None else f'{theorem1:.3g}'} | {c01['compress']['occam_bound']:.3f} | "
            f"**{cert['certificate']:.4f}** | {cert['stochastic_test_err']:.4f} | {cert['mean_test_err']:.4f} | "
            f"{cert['certificate'] / cert['stochastic_test_err']:.2f} | {tuned(cert):.4f} | {cert['n']:,} | "
            f"{cert['kl']:.2f} |")


def tuned(cert: dict) -> float:
    """The certificate with a union bound over the TUNED settings tried as well: delta and delta' of each prior
    scale divided by TUNED, recomputed from the JSON's own numbers (the smallest over the prior scales)."""
    return min(pacbayes.certificate(t["stochastic_train_err"], cert["sample_units"], t["kl"], cert["n"],
                                    cert["delta_each"] / TUNED, cert["delta_prime_each"] / TUNED,
                                    cert["draw_fill"])["certificate"] for t in cert["tried"])


def table(folder: Path) -> str:
    return "\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|",
                      *(row(folder, name) for name in runs(folder))])


def write_section(readme: Path, text: str) -> None:
    """Replace what lies between BEGIN and END (or append the section when the README has none)."""
    old = readme.read_text() if readme.is_file() else "# Certificates\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(new)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    if len(sys.argv) > 2:
        write_section(Path(sys.argv[2]), table(folder))
    else:
        print(table(folder))

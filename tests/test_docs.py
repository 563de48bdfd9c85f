"""The documents are the contract: every command's JSON against the schema tables of docs/design.md section 6
(every key listed is there with its type, no key is unlisted), the code cites only documents in the repository,
and `genbound --help` starts without torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from genbound.cli import main

ROOT = Path(__file__).resolve().parents[1]
TYPES = {
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict),
}


def schema_tables() -> dict[str, dict[str, tuple[str, bool]]]:
    """heading -> {key: (type, optional)} from the `| key | type | meaning |` tables of section 6."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## 6. JSON output"):text.index("## 7.")]
    tables, heading = {}, None
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            tables[heading] = {}
        m = re.match(r"\| `(\w+)` \| ([a-z ]+) \| (.*)\|$", line)
        if heading and m:
            tables[heading][m[1]] = (m[2].strip(), m[3].strip().startswith("(only with"))
    return tables


def check(obj: dict, table: dict[str, tuple[str, bool]], kind: str) -> None:
    unlisted = sorted(set(obj) - set(table))
    assert not unlisted, f"{kind}: keys not in docs/design.md: {unlisted}"
    for key, (kind_of, optional) in table.items():
        if key not in obj:
            assert optional, f"{kind}: documented key {key} is missing"
            continue
        value, allowed = obj[key], kind_of.split(" or ")
        ok = any(TYPES[t](value) for t in allowed if t != "null") or ("null" in allowed and value is None)
        assert ok, f"{kind}: {key} = {json.dumps(value)[:60]} is not {kind_of}"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The JSON of every command on a tiny checkpoint, by schema heading (several per kind where options add keys)."""
    w = tmp_path_factory.mktemp("docs")
    ck = str(w / "ck")
    run = lambda *args: main([*args, "--quiet"]) == 0 or pytest.fail(f"genbound {args} failed")  # noqa: E731
    run("train", "--model", "mlp", "--data", "digits", "--hidden", "16", "16", "--steps", "20", "--method", "lora",
        "--rank", "2", "--out", ck, "--json", str(w / "train.json"))
    run("compute", "--ckpt", ck, "--compress", "--compress-bits", "2", "--json", str(w / "c1.json"))
    sub = str(w / "sub")  # a subspace checkpoint adds manifest and compute keys
    run("train", "--model", "mlp", "--data", "digits", "--hidden", "16", "16", "--steps", "10", "--method", "c3la",
        "--chain", "2", "--rank", "2", "--subspace", "20", "--out", sub, "--json", str(w / "train-sub.json"))
    run("compute", "--ckpt", sub, "--compress", "--compress-bits", "2", "--json", str(w / "c3.json"))
    run("compute", "--ckpt", ck, "--loss", "ce", "--smoothing", "0.1", "--no-base-gap", "--json", str(w / "c2.json"))
    run("spectrum", "--ckpt", ck, "--json", str(w / "s1.json"))
    run("spectrum", "--ckpt", ck, "--no-intruders", "--json", str(w / "s2.json"))
    run("hessian", "--ckpt", ck, "--top-k", "2", "--trace", "--density", "--samples", "64", "--lanczos-steps", "20",
        "--json", str(w / "h1.json"))
    run("hessian", "--ckpt", ck, "--top-k", "1", "--samples", "32", "--repeats", "2", "--timing", "--json",
        str(w / "h2.json"))
    run("landscape", "--ckpt", ck, "--grid", "3", "--samples", "32", "--out", str(w / "l1"),
        "--json", str(w / "l1.json"))
    run("landscape", "--ckpt", ck, "--grid", "3", "--samples", "32", "--dirs", "pca", "--out", str(w / "l2"),
        "--json", str(w / "l2.json"))
    run("certify", "--ckpt", ck, "--samples", "3", "--epochs", "1", "--sigma-prior", "0.01", "--json",
        str(w / "p1.json"))
    run("certify", "--ckpt", ck, "--samples", "3", "--epochs", "1", "--prior", "data", "--prior-epochs", "1",
        "--objective", "kl", "--json", str(w / "p2.json"))
    (Path(ck) / "analysis").mkdir(exist_ok=True)  # the analyses above stored theirs there already
    (Path(ck) / "analysis" / "certify.json").write_text((w / "p1.json").read_text())
    run("compare", ck, "--out", str(w / "report"), "--json", str(w / "cmp.json"))
    load = lambda name: json.loads((w / name).read_text())  # noqa: E731
    return {"manifest (genbound-checkpoint, format 2)": [load("train.json"), load("train-sub.json")],
            "genbound.compute/1": [load("c1.json"), load("c2.json"), load("c3.json")],
            "genbound.spectrum/1": [load("s1.json"), load("s2.json")],
            "genbound.hessian/1": [load("h1.json"), load("h2.json")],
            "genbound.landscape/1": [load("l1.json"), load("l2.json")],
            "genbound.certify/1": [load("p1.json"), load("p2.json")],
            "genbound.compare/1": [load("cmp.json"), json.loads((w / "report" / "results.json").read_text())]}


def test_every_json_output_matches_its_documented_schema(outputs):
    tables = schema_tables()
    assert set(outputs) <= set(tables), sorted(set(outputs) - set(tables))
    for kind, objs in outputs.items():
        assert tables[kind], f"no rows parsed for {kind}"
        for obj in objs:
            if kind.startswith("genbound."):
                assert obj["schema"] == kind
            check(obj, tables[kind], kind)


def test_the_schema_check_can_fail():
    table = {"a": ("number", False), "b": ("string or null", False), "c": ("list", True)}
    check({"a": 1.5, "b": None}, table, "t")
    for bad in ({"a": "x", "b": None}, {"a": 1, "b": 3}, {"b": None}, {"a": 1, "b": "s", "d": 0},
                {"a": True, "b": None}):
        with pytest.raises(AssertionError):
            check(bad, table, "t")


def test_the_code_cites_only_documents_in_the_repository():
    cited = set()
    for path in [*ROOT.glob("genbound/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"),
                 ROOT / "README.md"]:
        text = path.read_text()
        assert not any(old + ".md" in text for old in ("THEORY", "DESIGN")), path  # the team's notes, not shipped
        cited |= set(re.findall(r"docs/[\w.-]+\.md", text))
    assert cited and all((ROOT / c).is_file() for c in cited), cited
    sections = {int(m) for m in re.findall(r"^## (\d+)\.", (ROOT / "docs" / "theory.md").read_text(), re.M)}
    for path in ROOT.glob("genbound/**/*.py"):
        for number in re.findall(r"docs/theory\.md sections? (\d+)", path.read_text()):
            assert int(number) in sections, (path, number)


def test_help_starts_without_torch():
    code = ("import sys\nfrom genbound.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "compute" in proc.stdout and "landscape" in proc.stdout

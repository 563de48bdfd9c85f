"""Analyses run by hand are kept in the checkpoint's analysis/ folder, one per set of options, and compare shows
them without computing them again (issue #20, items 1 and 4)."""

import json
import os
from pathlib import Path

import pytest

from genbound.cli import main

COMMON = ["--model", "mlp", "--data", "digits", "--hidden", "16", "16", "--steps", "3", "--quiet"]
HESSIAN = ["--top-k", "2", "--trace", "--probes", "4", "--samples", "64", "--lanczos-steps", "10", "--quiet"]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two tiny checkpoints (lora, cla) of one base and task."""
    root = tmp_path_factory.mktemp("flow")
    for method in ("lora", "cla"):
        assert main(["train", *COMMON, "--method", method, "--rank", "2", "--out", str(root / method)]) == 0
    return root


def stamps(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted((folder / "analysis").iterdir())}


def counted(monkeypatch) -> list:
    """The analyses compare computes (study.execute), by name."""
    import genbound.study as study

    ran, real = [], study.execute
    monkeypatch.setattr(study, "execute", lambda loaded, name, *a, **k: ran.append(name) or real(loaded, name, *a,
                                                                                                  **k))
    return ran


def test_analyses_by_hand_are_stored_and_compare_shows_them_without_recomputing(two, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    dirs = [str(two / "lora"), str(two / "cla")]
    for d in dirs:
        assert main(["compute", "--ckpt", d, "--compress", "--compress-bits", "2", "--schemes", "uniform",
                     "--quiet"]) == 0
        assert main(["hessian", "--ckpt", d, *HESSIAN]) == 0
        assert main(["landscape", "--ckpt", d, "--grid", "3", "--samples", "20", "--quiet"]) == 0
    assert not list(tmp_path.iterdir())  # nothing written into the current folder
    for d in map(Path, dirs):
        assert {"compute.json", "hessian.json", "landscape.json", "landscape.png", "landscape.npz"} <= set(
            stamps(d))
    before = {d: stamps(Path(d)) for d in dirs}
    ran = counted(monkeypatch)
    capsys.readouterr()
    assert main(["compare", *dirs, "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert ran == ["spectrum", "spectrum"]  # the default analyses: compute is stored, the spectrum was missing
    for d in dirs:
        after = stamps(Path(d))
        assert {k: after[k] for k in before[d]} == before[d]  # nothing stored was written again
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    for row, d in zip(result["rows"], dirs):
        comp = json.loads((Path(d) / "analysis" / "compute.json").read_text())
        hess = json.loads((Path(d) / "analysis" / "hessian.json").read_text())
        land = json.loads((Path(d) / "analysis" / "landscape.json").read_text())
        assert row["compression_bound"] is not None and comp["options"]["compress"]
        assert row["hessian_top"] == hess["eigenvalues"][0] and row["hessian_trace"] is not None
        assert row["sharpness"] == land["sharpness"]["increase"]
        assert row["analyses"]["hessian"]["picked"] == "latest"
    text = (tmp_path / "r" / "README.md").read_text()
    assert "## Analyses shown" in text and "- hessian: top_k 2, trace on" in text and "compress on" in text


def test_a_second_hessian_keeps_both_and_compare_picks_the_one_asked(two, tmp_path, monkeypatch):
    d = two / "lora"
    assert main(["hessian", "--ckpt", str(d), *HESSIAN]) == 0
    first = json.loads((d / "analysis" / "hessian.json").read_text())
    assert main(["hessian", "--ckpt", str(d), *HESSIAN[:-1], "--top-k", "3", "--quiet"]) == 0
    latest = json.loads((d / "analysis" / "hessian.json").read_text())
    assert len(latest["eigenvalues"]) == 3
    kept = sorted((d / "analysis").glob("hessian-*.json"))
    assert [json.loads(p.read_text()) for p in kept] == [first]  # the first one, kept under its options
    ran = counted(monkeypatch)
    args = [str(d), str(two / "cla"), "--analyses", "hessian:top_k=2,trace=true,probes=4,samples=64,lanczos_steps=10",
            "--quiet"]
    assert main(["compare", *args, "--out", str(tmp_path / "r2")]) == 0
    assert ran == []  # both checkpoints hold a hessian with these options
    row = json.loads((tmp_path / "r2" / "results.json").read_text())["rows"][0]
    assert row["hessian_top"] == first["eigenvalues"][0] and row["analyses"]["hessian"]["picked"] == "options asked"
    assert row["analyses"]["hessian"]["file"] == str(kept[0])
    assert main(["compare", str(d), str(two / "cla"), "--analyses", "none", "--quiet",
                 "--out", str(tmp_path / "r3")]) == 0
    row = json.loads((tmp_path / "r3" / "results.json").read_text())["rows"][0]
    assert row["hessian_top"] == latest["eigenvalues"][0] and row["analyses"]["hessian"]["picked"] == "latest"
    # options no stored result has: computed and stored, the others kept
    assert main(["compare", str(d), "--analyses", "hessian:top_k=1,samples=64,lanczos_steps=10", "--quiet",
                 "--out", str(tmp_path / "r4")]) == 0
    assert ran == ["hessian"] and len(list((d / "analysis").glob("hessian-*.json"))) == 2
    assert len(json.loads((d / "analysis" / "hessian.json").read_text())["eigenvalues"]) == 1


def test_bad_analyses_options_are_one_line(two, tmp_path, capsys):
    d = str(two / "lora")
    for bad, words in (("hessian:top_k", "want NAME:OPTION=VALUE"), ("hessian:depth=3", "unknown option")):
        assert main(["compare", d, "--analyses", bad, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1


def test_a_read_only_checkpoint_folder_is_said_in_one_line(two, tmp_path, monkeypatch, capsys):
    import genbound.files as files

    d = two / "cla"
    before = {p.name: p.read_bytes() for p in (d / "analysis").iterdir()}
    os.chmod(d / "analysis", 0o555)
    if os.geteuid() == 0:  # root writes anyway: the folder refuses as a read-only one would
        real = files._atomic

        def refuse(path, write):
            if Path(path).parent == d / "analysis":
                raise PermissionError(13, "Permission denied", str(path))
            real(path, write)

        monkeypatch.setattr(files, "_atomic", refuse)
    try:
        capsys.readouterr()
        assert main(["hessian", "--ckpt", str(d), *HESSIAN[:-1], "--top-k", "4", "--quiet",
                     "--json", str(tmp_path / "h.json")]) == 0
    finally:
        os.chmod(d / "analysis", 0o755)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "not stored" in line] == [
        f"hessian of {d} not stored in its analysis/ folder (Permission denied)"]
    assert len(json.loads((tmp_path / "h.json").read_text())["eigenvalues"]) == 4
    assert {p.name: p.read_bytes() for p in (d / "analysis").iterdir()} == before  # nothing lost, nothing added


def test_landscape_defaults_into_each_checkpoint_and_out_still_wins(two, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = two / "lora", two / "cla"
    for d in (a, b):
        assert main(["landscape", "--ckpt", str(d), "--grid", "3", "--samples", "20", "--seed", "1", "--quiet"]) == 0
    pngs = [d / "analysis" / "landscape.png" for d in (a, b)]
    assert all(p.stat().st_size > 0 for p in pngs) and pngs[0].read_bytes() != pngs[1].read_bytes()
    for d in (a, b):
        npz = __import__("numpy").load(d / "analysis" / "landscape.npz")
        assert npz["losses"].tolist() == json.loads((d / "analysis" / "landscape.json").read_text())["losses"]
    assert main(["landscape", "--ckpt", str(a), "--ckpt", str(b), "--grid", "3", "--samples", "20", "--quiet"]) == 0
    assert not list(tmp_path.iterdir())
    assert main(["landscape", "--ckpt", str(a), "--grid", "3", "--samples", "20", "--out", "mine", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.npz", "mine.png"]


def test_a_study_reuses_its_own_results_beside_runs_by_hand_and_still_refuses_changed_options(tmp_path, capsys):
    settings = {"name": '"s"', "model": '"mlp"', "data": '"digits"', "methods": '["cla"]', "ranks": "[2]",
                "runs": f'"{tmp_path / "runs"}"', "report": f'"{tmp_path / "report"}"'}
    text = "".join(f"{k} = {v}\n" for k, v in settings.items())
    text += "[train]\nsteps = 5\nhidden = [16, 16]\n[analyses.compute]\nbits = 32\n"
    (path := tmp_path / "s.toml").write_text(text)
    assert main(["study", str(path), "--quiet"]) == 0
    run = tmp_path / "runs" / "cla-r2-s0"
    study_result = json.loads((run / "analysis" / "compute.json").read_text())
    assert main(["compute", "--ckpt", str(run), "--bits", "16", "--quiet"]) == 0  # by hand: now the latest
    capsys.readouterr()
    assert main(["study", str(path)]) == 0  # its own result is still there: no drift, nothing computed
    out = capsys.readouterr().out
    assert "cla-r2-s0: trained already" in out and "compute (" not in out
    row = json.loads((tmp_path / "report" / "results.json").read_text())["rows"][0]
    assert row["analyses"]["compute"]["picked"] == "options asked"
    assert row["paper_bound"] == study_result["mi_term_paper"] and row["analyses"]["compute"]["options"]["bits"] == 32
    path.write_text(text.replace("bits = 32", "bits = 8"))
    assert main(["study", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "changed since these were made" in err and "compute: bits 16.0 -> 8" in err

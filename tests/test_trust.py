"""Trust: genbound reports numbers only for the weights and data a checkpoint records, and every user mistake is
one line on stderr with exit 2, no traceback, and nothing already written changed."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from genbound import checkpoint
from genbound.cli import main
from genbound.train import TrainConfig, pretrain, train

MLP = dict(model="mlp", data="digits", hidden=[16, 16], rank=2, alpha=4, steps=12, eval_samples=50)
FLAGS = ["--model", "mlp", "--data", "digits", "--hidden", "16", "16", "--steps", "5", "--quiet"]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes: 'nothing written was changed' compares these."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def fails(args: list[str], capsys, words: str) -> str:
    """main(args) exits 2 with one line on stderr that contains ``words``."""
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert words in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "lora"
    train(TrainConfig(**MLP, method="lora"), out, progress=False)
    return out


@pytest.fixture
def copy(ck, tmp_path):
    def make(name="copy"):
        return Path(shutil.copytree(ck, tmp_path / name))
    return make


# ---- weights -------------------------------------------------------------------------------------------------
def flip_bytes(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 200, len(data) - 200 + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("command", [
    ["compute"], ["spectrum"], ["info"], ["hessian", "--top-k", "1", "--samples", "16"],
    ["landscape", "--grid", "3", "--samples", "16"], ["export-peft"],
])
def test_damaged_weights_are_refused_by_every_command(copy, tmp_path, capsys, command):
    bad = copy()
    flip_bytes(bad / checkpoint.ADAPTER)
    before = tree(tmp_path)
    extra = ["--out", str(tmp_path / "x")] if command[0] in ("landscape", "export-peft") else []
    fails([command[0], "--ckpt", str(bad), *command[1:], *extra], capsys, "changed or damaged after training")
    assert tree(tmp_path) == before


def test_a_damaged_trajectory_snapshot_is_refused(copy, capsys):
    bad = copy()
    snap = sorted((bad / checkpoint.TRAJECTORY).glob("*.safetensors"))[-1]
    flip_bytes(snap, 8)
    fails(["info", "--ckpt", str(bad)], capsys, "changed or damaged")
    fails(["landscape", "--ckpt", str(bad), "--dirs", "pca", "--grid", "3", "--samples", "16",
           "--out", str(bad.parent / "ls")], capsys, "changed or damaged")


def test_the_manifest_records_the_sha256_of_every_weight_file(ck):
    man = checkpoint.read_manifest(ck)
    assert man["format_version"] == 2
    files = sorted(p.relative_to(ck).as_posix() for p in ck.rglob("*.safetensors"))
    assert sorted(man["files"]) == files and len(files) > 2
    for name, digest in man["files"].items():
        assert digest == hashlib.sha256((ck / name).read_bytes()).hexdigest()


def test_a_reevaluation_that_differs_from_the_manifest_is_refused(copy, capsys):
    bad = copy()
    man = json.loads((bad / checkpoint.MANIFEST).read_text())
    man["metrics"]["test_loss"] += 0.5
    (bad / checkpoint.MANIFEST).write_text(json.dumps(man))
    fails(["compute", "--ckpt", str(bad)], capsys, "not the model that was trained")


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.pop("method"), "lacks 'method'"),
    (lambda m: m["method"].pop("rank"), "lacks 'method.rank'"),
    (lambda m: m["method"].__setitem__("rank", "two"), "'method.rank' is \"two\", not int"),
    (lambda m: m["config"].__setitem__("n_train", 1.5), "'config.n_train' is 1.5"),
    (lambda m: m["files"].pop(checkpoint.ADAPTER), "lacks 'files.adapter.safetensors'"),
    (lambda m: m["task"].pop("fingerprint"), "lacks 'task.fingerprint'"),
    (lambda m: m["metrics"].__setitem__("test_loss", None), "'metrics.test_loss' is null"),
])
@pytest.mark.parametrize("command", ["info", "compute", "spectrum"])
def test_a_manifest_with_a_missing_key_or_a_wrong_type_is_one_line(copy, capsys, edit, words, command):
    bad = copy()
    man = json.loads((bad / checkpoint.MANIFEST).read_text())
    edit(man)
    (bad / checkpoint.MANIFEST).write_text(json.dumps(man))
    fails([command, "--ckpt", str(bad)], capsys, words)


def test_a_format_1_checkpoint_loads_and_says_it_is_unverified(copy, capsys):
    old = copy()
    man = json.loads((old / checkpoint.MANIFEST).read_text())
    man["format_version"] = 1
    del man["files"], man["task"]["fingerprint"]
    (old / checkpoint.MANIFEST).write_text(json.dumps(man))
    assert main(["info", "--ckpt", str(old)]) == 0
    assert "cannot be verified" in capsys.readouterr().out
    assert main(["compute", "--ckpt", str(old), "--json", str(old / "c.json")]) == 0
    assert "not verified" in capsys.readouterr().out
    assert json.loads((old / "c.json").read_text())["data"]["verified"] is False


# ---- data ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    csv = root / "d.csv"
    csv.write_text("text,label\n" + "".join(f"text {i} about {w},{i % 3}\n"
                                            for i, w in enumerate(["cats", "dogs", "fish"] * 40)))
    out = root / "ck"
    train(TrainConfig(model="tiny-bert", data=str(csv), method="lora", rank=2, steps=4, eval_samples=10), out,
          progress=False)
    return out, csv


@pytest.mark.parametrize("edit", [
    lambda lines: lines[: len(lines) // 2],  # rows halved
    lambda lines: [lines[0]] + [f"{line.rsplit(',', 1)[0]},{(int(line.rsplit(',', 1)[1]) + 1) % 3}"
                                for line in lines[1:]],  # labels flipped
    lambda lines: [line.replace("about", "on") for line in lines],  # texts changed, labels kept
], ids=["rows-halved", "labels-flipped", "texts-changed"])
def test_changed_data_is_refused_unless_asked_for(text_ck, capsys, edit, tmp_path):
    out, csv = text_ck
    original = csv.read_text()
    try:
        csv.write_text("\n".join(edit(original.splitlines())) + "\n")
        fails(["compute", "--ckpt", str(out)], capsys, "changed since training")
        fails(["hessian", "--ckpt", str(out), "--top-k", "1"], capsys, "changed since training")
        # asked for explicitly: evaluated, and the output says it is other data
        assert main(["compute", "--ckpt", str(out), "--data", str(csv), "--json", str(tmp_path / "c.json")]) == 0
        assert "OTHER DATA" in capsys.readouterr().out
        data = json.loads((tmp_path / "c.json").read_text())["data"]
        assert data["other_data"] is True and data["trained_on"] == str(csv)
    finally:
        csv.write_text(original)
    assert main(["compute", "--ckpt", str(out), "--quiet"]) == 0


def test_other_data_with_another_number_of_classes_is_refused(ck, capsys):
    fails(["compute", "--ckpt", str(ck), "--data", "fashion-mnist@0-4"], capsys, "classes")


def test_split_fingerprints_see_every_change():
    import torch

    from genbound.data import Split

    texts, y = ["a b", "c", "d e f"], torch.tensor([0, 1, 2])
    base = Split(texts, y).fingerprint()
    assert Split(list(texts), y.clone()).fingerprint() == base
    assert Split(["a b", "c", "d e g"], y).fingerprint() != base
    assert Split(texts, torch.tensor([0, 1, 1])).fingerprint() != base
    assert Split(["a", "b c", "d e f"], y).fingerprint() != base  # same characters, other boundaries
    assert Split(texts[:2], y[:2]).fingerprint() != base
    x = torch.rand(3, 4)
    pixels = Split(x, y).fingerprint()
    x2 = x.clone()
    x2[1, 2] += 1e-6
    assert Split(x2, y).fingerprint() != pixels and Split(x.clone(), y).fingerprint() == pixels


def test_a_moved_base_says_to_pass_base(tmp_path, capsys):
    pretrain(TrainConfig(model="mlp", data="digits", hidden=[16, 16], steps=5), tmp_path / "base", progress=False)
    train(TrainConfig(**{**MLP, "model": str(tmp_path / "base")}, method="cla"), tmp_path / "ck", progress=False)
    (tmp_path / "base").rename(tmp_path / "moved")
    fails(["compute", "--ckpt", str(tmp_path / "ck")], capsys, "pass --base DIR")
    fails(["spectrum", "--ckpt", str(tmp_path / "ck")], capsys, "is not there (moved or deleted?)")
    assert main(["compute", "--ckpt", str(tmp_path / "ck"), "--base", str(tmp_path / "moved")]) == 0


# ---- resume --------------------------------------------------------------------------------------------------
def test_resume_refuses_a_changed_base_and_works_from_another_folder(tmp_path, monkeypatch, interrupt_training):
    from genbound.errors import TrainingError

    monkeypatch.chdir(tmp_path)
    for name, seed in (("base", 0), ("other", 1)):
        pretrain(TrainConfig(model="mlp", data="digits", hidden=[16, 16], steps=5, seed=seed), Path(name),
                 progress=False)
    undo = interrupt_training(6)
    with pytest.raises(TrainingError, match="--resume"):
        train(TrainConfig(**{**MLP, "model": "base"}, method="lora"), Path("run"), progress=False)
    undo()
    cfg = json.loads(Path("run/resume/config.json").read_text())
    assert cfg["model"] == str(tmp_path / "base")  # recorded absolute
    shutil.move("base", "base-kept")
    shutil.copytree("other", "base")
    before = tree(tmp_path / "run")
    with pytest.raises(TrainingError, match="the base model changed"):
        train(None, Path("run"), resume=True, progress=False)
    assert tree(tmp_path / "run") == before
    shutil.rmtree("base")
    shutil.move("base-kept", "base")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    man = train(None, tmp_path / "run", resume=True, progress=False)
    assert man["base"]["path"] == str(tmp_path / "base") and man["timing"]["steps"] == MLP["steps"]


def test_resume_of_a_folder_without_an_interrupted_run_is_one_line(ck, tmp_path, capsys):
    fails(["train", "--resume", str(ck)], capsys, "no interrupted run to continue there (it holds a finished")
    fails(["train", "--resume", str(tmp_path / "nothing")], capsys, "no interrupted run")


# ---- non-finite numbers --------------------------------------------------------------------------------------
def test_a_nan_stop_keeps_nothing_so_the_same_out_works_again(tmp_path, capsys):
    out = tmp_path / "run"
    fails(["train", *FLAGS, "--lr", "1e30", "--out", str(out)], capsys, "nothing was kept in")
    assert not out.exists()
    fails(["train", "--resume", str(out)], capsys, "no interrupted run")
    (tmp_path / "empty").mkdir()  # an empty folder the user made stays, emptied
    fails(["train", *FLAGS, "--lr", "1e30", "--out", str(tmp_path / "empty")], capsys, "nothing was kept")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    assert main(["train", *FLAGS, "--out", str(out)]) == 0


def test_an_infinite_final_loss_saves_no_checkpoint(tmp_path, monkeypatch, capsys):
    import genbound.train as train_mod

    real = train_mod.evaluate
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {**real(*a, **k), "loss": float("inf")})
    fails(["train", *FLAGS, "--out", str(tmp_path / "run")], capsys, "test_loss is inf")
    assert not (tmp_path / "run").exists()


def test_an_infinite_weight_saves_no_checkpoint(tmp_path, monkeypatch, capsys):
    import torch

    import genbound.train as train_mod

    real = train_mod._Run.train_step

    def poison(self):
        loss = real(self)
        if self.step == self.total:
            with torch.no_grad():
                next(p for n, p in self.built.model.named_parameters() if n.endswith("lora_B"))[0, 0] = float("inf")
        return loss

    monkeypatch.setattr(train_mod._Run, "train_step", poison)
    fails(["train", *FLAGS, "--method", "lora", "--rank", "2", "--out", str(tmp_path / "run")], capsys,
          "holds inf or nan")
    assert not (tmp_path / "run").exists()


def test_json_never_holds_inf_or_nan(tmp_path):
    from genbound.files import json_text

    text = json_text({"a": float("inf"), "b": [float("nan"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"JSON holds {c}")) == {
        "a": None, "b": [None, 1.5], "c": {"d": None}}


# ---- bad options ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--steps", "-3"], "--steps -3"),
    (["--steps", None, "--epochs", "0"], "--epochs 0.0: must be a positive number"),
    (["--alpha", "0"], "--alpha 0.0: must be a positive number"),
    (["--lr", "0"], "--lr 0.0: must be a positive number"),
    (["--lr", "-1"], "--lr -1.0"),
    (["--lr", "nan"], "--lr nan"),
    (["--warmup", "1.5"], "--warmup 1.5: is a fraction"),
    (["--warmup", "-0.1"], "--warmup -0.1"),
    (["--clip", "-1"], "--clip -1.0"),
    (["--eval-samples", "0"], "--eval-samples 0"),
    (["--lr-ratio", "0"], "--lr-ratio 0.0"),
    (["--hidden", "16", "0"], "--hidden 16 0"),
])
def test_meaningless_training_options_are_refused(tmp_path, capsys, args, words):
    flags = list(FLAGS)
    if None in args:  # drop --steps to test --epochs
        i = flags.index("--steps")
        del flags[i:i + 2]
        args = [a for a in args if a is not None][1:]
    fails(["train", *flags, *args, "--out", str(tmp_path / "x")], capsys, words)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, words", [
    (["--compress", "--compress-bits", "0"], "--compress-bits 0"),
    (["--compress", "--schemes", "huffman"], "--schemes huffman"),
    (["--qat-steps", "-1"], "--qat-steps -1"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--block-lipschitz", "0"], "--block-lipschitz 0.0"),
])
def test_meaningless_compute_options_are_refused(ck, capsys, args, words):
    fails(["compute", "--ckpt", str(ck), *args], capsys, words)


def test_a_single_class_dataset_is_refused(tmp_path, capsys):
    csv = tmp_path / "one.csv"
    csv.write_text("text,label\n" + "".join(f"text {i},a\n" for i in range(50)))
    fails(["train", "--model", "tiny-bert", "--data", str(csv), "--out", str(tmp_path / "x"), "--quiet"], capsys,
          "needs at least two classes")
    fails(["train", *FLAGS, "--n-train", "1", "--out", str(tmp_path / "y")], capsys, "holds only one class")


def test_flags_for_peft_folders_are_refused_on_a_checkpoint(ck, capsys):
    fails(["compute", "--ckpt", str(ck), "--method", "asym"], capsys, "apply to PEFT adapter folders only")
    fails(["landscape", "--ckpt", str(ck), "--peft-seed", "3", "--out", str(ck.parent / "l")], capsys,
          "--peft-seed apply to PEFT")


def test_a_peft_folder_is_imported_once_per_setting(ck, tmp_path, capsys):
    from genbound.peft_io import export_peft

    adapter = export_peft(ck, tmp_path / "peft")
    assert main(["compute", "--ckpt", str(adapter), "--data", "digits", "--json", str(tmp_path / "a.json")]) == 0
    assert main(["compute", "--ckpt", str(adapter), "--data", "digits", "--method", "asym",
                 "--json", str(tmp_path / "b.json")]) == 0
    imports = sorted((adapter / "genbound").glob("*/genbound.json"))
    assert [json.loads(p.read_text())["method"]["name"] for p in imports] == ["asym", "lora"]
    assert json.loads((tmp_path / "b.json").read_text())["method"] == "asym"
    assert main(["compute", "--ckpt", str(adapter), "--data", "digits", "--seed", "1"]) == 0  # another split
    assert len(list((adapter / "genbound").glob("*/genbound.json"))) == 3
    assert main(["compute", "--ckpt", str(adapter), "--method", "asym"]) == 0  # the one asym import: reused
    fails(["compute", "--ckpt", str(adapter)], capsys, "give --data")  # three fit: which one?
    # a changed adapter is a new import, never the old one
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    next(v for k, v in tensors.items() if k.endswith("lora_B.weight"))[0, 0] += 1.0
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    fails(["compute", "--ckpt", str(adapter), "--method", "asym"], capsys, "give --data")
    assert main(["compute", "--ckpt", str(adapter), "--data", "digits", "--method", "asym"]) == 0
    assert len(list((adapter / "genbound").glob("*/genbound.json"))) == 4


# ---- outputs -------------------------------------------------------------------------------------------------
def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write into: a read-only folder, or for root (who ignores modes) /sys."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    if Path("/sys").is_dir() and _cannot_write("/sys"):
        return Path("/sys")
    pytest.skip("no folder that root cannot write")


def _cannot_write(folder: str) -> bool:
    try:
        Path(folder, ".genbound-probe").touch()
    except OSError:
        return True
    Path(folder, ".genbound-probe").unlink()
    return False


def test_outputs_that_cannot_be_written_are_refused_before_any_work(ck, tmp_path, capsys, monkeypatch):
    import genbound.landscape as landscape_mod
    import genbound.train as train_mod

    ro = unwritable(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    monkeypatch.setattr(train_mod, "_train_loop", lambda *a, **k: pytest.fail("trained before checking --out"))
    monkeypatch.setattr(landscape_mod, "landscape_analysis", lambda *a, **k: pytest.fail("computed first"))
    for target in (ro / "x", afile, afile / "x"):
        fails(["train", *FLAGS, "--out", str(target)], capsys, "--out")
        fails(["pretrain", *FLAGS, "--out", str(target)], capsys, "--out")
        fails(["landscape", "--ckpt", str(ck), "--out", str(target / "ls")], capsys, "--out")
        fails(["compare", str(ck), "--out", str(target), "--analyses", "none"], capsys, "--out")
        fails(["export-peft", "--ckpt", str(ck), "--out", str(target)], capsys, "--out")
        fails(["compute", "--ckpt", str(ck), "--json", str(target / "c.json")], capsys, "--json")
        fails(["spectrum", "--ckpt", str(ck), "--plot", str(target / "s.png")], capsys, "--plot")
    fails(["compute", "--ckpt", str(ck), "--json", str(tmp_path)], capsys, "is a folder")
    assert afile.read_text() == "keep me"


def modes(root: Path) -> set[tuple[str, str]]:
    return {("dir" if p.is_dir() else "file", oct(p.stat().st_mode & 0o777)) for p in root.rglob("*")
            if not p.name.startswith(".") and "__pycache__" not in p.parts}


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, "0o644", "0o755"), (0o077, "0o600", "0o700")])
def test_every_command_respects_the_umask(tmp_path, monkeypatch, umask, file_mode, dir_mode):
    from peft import __version__  # noqa: F401  (export/import need peft)

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    old = os.umask(umask)
    try:
        w = tmp_path / "w"
        assert main(["pretrain", *FLAGS, "--out", str(w / "base")]) == 0
        assert main(["train", *FLAGS, "--model", str(w / "base"), "--method", "lora", "--rank", "2",
                     "--out", str(w / "ck"), "--json", str(w / "train.json")]) == 0
        ck = str(w / "ck")
        assert main(["info", "--ckpt", ck, "--json", str(w / "info.json")]) == 0
        assert main(["compute", "--ckpt", ck, "--compress", "--compress-bits", "2", "--json", str(w / "c.json")]) == 0
        assert main(["spectrum", "--ckpt", ck, "--intruders", "--plot", str(w / "s.png"),
                     "--json", str(w / "s.json")]) == 0
        assert main(["hessian", "--ckpt", ck, "--top-k", "1", "--density", "--samples", "32", "--lanczos-steps",
                     "8", "--plot", str(w / "h.png"), "--json", str(w / "h.json"), "--quiet"]) == 0
        assert main(["landscape", "--ckpt", ck, "--grid", "3", "--samples", "16", "--out", str(w / "ls")]) == 0
        assert main(["compare", ck, "--out", str(w / "report")]) == 0
        assert main(["export-peft", "--ckpt", ck, "--out", str(w / "peft")]) == 0
        assert main(["import-peft", "--adapter", str(w / "peft"), "--data", "digits", "--model", str(w / "base"),
                     "--out", str(w / "imported")]) == 0
        study = tmp_path / "s.toml"
        study.write_text(f'name = "s"\nmodel = "mlp"\ndata = "digits"\nmethods = ["cla"]\nranks = [2]\n'
                         f'runs = "{w / "study-runs"}"\nreport = "{w / "study-report"}"\n'
                         '[train]\nsteps = 5\nhidden = [16, 16]\n[analyses.compute]\n')
        assert main(["study", str(study), "--quiet"]) == 0
    finally:
        os.umask(old)
    found = modes(w)
    assert found == {("file", file_mode), ("dir", dir_mode)}, found
    for part in ("ck/genbound.json", "ck/adapter.safetensors", "base/model.safetensors", "report/README.md",
                 "study-runs/cla-r2-s0/analysis/compute.json", "ls.png", "ls.npz", "c.json"):
        assert (w / part).is_file(), part


# ---- study drift ---------------------------------------------------------------------------------------------
def test_a_study_whose_file_changed_names_the_runs_that_no_longer_match(tmp_path, capsys):
    path = tmp_path / "s.toml"
    text = (f'name = "s"\nmodel = "mlp"\ndata = "digits"\nmethods = ["cla", "lora"]\nranks = [2]\n'
            f'runs = "{tmp_path / "runs"}"\nreport = "{tmp_path / "report"}"\n'
            '[train]\nsteps = 5\nhidden = [16, 16]\nlr = 1e-3\n[analyses.compute]\nbits = 32\n')
    path.write_text(text)
    assert main(["study", str(path), "--quiet"]) == 0
    before = tree(tmp_path / "runs")
    path.write_text(text.replace("lr = 1e-3", "lr = 2e-3"))
    line = fails(["study", str(path), "--quiet"], capsys, "changed since these were made")
    assert "cla-r2-s0 (lr 0.001 -> 0.002)" in line and "lora-r2-s0 (lr 0.001 -> 0.002)" in line
    path.write_text(text.replace("bits = 32", "bits = 16"))
    fails(["study", str(path), "--quiet"], capsys, "compute: bits 32 -> 16")
    path.write_text(text.replace("[train]\n", '[train]\nwarmup = 0.5\n'))
    fails(["study", str(path), "--quiet"], capsys, "warmup 0.06 -> 0.5")
    assert tree(tmp_path / "runs") == before
    path.write_text(text.replace('"cla", "lora"', '"cla", "lora", "rcla"'))  # a new run is not drift
    capsys.readouterr()
    assert main(["study", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cla-r2-s0: trained already" in out and "rcla-r2-s0: trained (" in out and "rcla-r2-s0: compute (" in out


# ---- the command line ----------------------------------------------------------------------------------------
def run_cli(args, cwd, env=None, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "genbound", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_json_to_stdout_is_json_alone(ck, tmp_path):
    rc, out, err = run_cli(["compute", "--ckpt", str(ck), "--json", "-", "--quiet"], tmp_path)
    assert rc == 0 and json.loads(out)["schema"] == "genbound.compute/1"
    assert "paper bound" in err  # the table went to stderr
    rc, out, err = run_cli(["info", "--ckpt", str(ck), "--json", "-"], tmp_path)
    assert rc == 0 and json.loads(out)["format"] == "genbound-checkpoint"


def test_a_mistyped_model_fails_fast_without_network(tmp_path):
    import time

    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": ""}
    start = time.perf_counter()
    rc, _, err = run_cli(["train", "--model", "minlm", "--data", "digits", "--out", "x", "--quiet"], tmp_path, env)
    assert time.perf_counter() - start < 30
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "hub cannot be reached" in lines[0] and "did you mean 'minilm'" in lines[0]
    rc, _, err = run_cli(["train", "--model", "./bases/mlpp", "--data", "digits", "--out", "x"], tmp_path, env)
    assert rc == 2 and "not there" in err and len(err.strip().splitlines()) == 1


def test_help_is_for_users():
    from genbound.cli import build_parser

    parser = build_parser()
    top = parser.format_help()
    assert "Parsing only" not in top and "subcommands as a table" not in top and "measure how" in top
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        text = p.format_help()
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
        for block in text.split("\n  -")[1:]:  # one option's help each
            assert block.replace("(default options)", "").count("default") <= 1, f"{name}: doubled default in {block!r}"
            assert "default: None" not in block and "default: False" not in block, f"{name}: {block!r}"


def test_full_and_head_runs_show_no_rank(tmp_path, capsys):
    for method in ("full", "head"):
        assert main(["train", *FLAGS, "--method", method, "--out", str(tmp_path / method)]) == 0
        line = capsys.readouterr().out
        assert line.startswith(method) and " r=" not in line
    assert main(["train", *FLAGS, "--method", "c3la", "--rank", "2", "--chain", "2", "--out", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.startswith("c3la r=2 k=2")


def test_compute_without_compress_needs_no_coder(ck, tmp_path):
    """The range coder (constriction) is needed only with --compress (a GPU machine may lack it)."""
    code = ("import sys; sys.modules['constriction'] = None; from genbound.cli import main; "
            f"sys.exit(main(['compute', '--ckpt', {str(ck)!r}, '--quiet']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr

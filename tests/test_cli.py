"""The command line: user mistakes give one line on stderr and exit 2, never a traceback."""

import subprocess
import sys

import pytest

from genbound.cli import main


def run_cli(args, tmp_path, env=None):
    import os

    proc = subprocess.run([sys.executable, "-m", "genbound", *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **(env or {})}, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


COMMON = ["--model", "mlp", "--data", "digits", "--hidden", "16", "16", "--steps", "3", "--quiet"]


@pytest.mark.parametrize("args, words", [
    (["--method", "qlora"], "unknown method 'qlora'"),
    (["--method", "cla", "--rank", "65"], "only 64 input columns"),
    (["--method", "lora", "--rank", "17"], "exceeds min(n, m)"),
    (["--method", "c3la", "--rank", "8", "--chain", "9"], "8 x chain 9"),
    (["--method", "cla", "--chain", "2"], "has no chain"),
    (["--method", "lora", "--rank", "0"], "--rank must be >= 1"),
])
def test_bad_method_options(args, words, tmp_path):
    rc, _, err = run_cli(["train", *COMMON, *args, "--out", "x"], tmp_path)
    assert rc == 2 and words in one_error_line(err)
    assert not (tmp_path / "x" / "genbound.json").exists()


def test_missing_data_package_names_the_install_command(tmp_path):
    rc, _, err = run_cli(["train", "--model", "minilm", "--data", "wordnet", "--out", "x", "--quiet"], tmp_path,
                         env={"GENBOUND_WORDNET_DIR": str(tmp_path / "empty")})
    assert rc == 2 and "apt-get install wordnet-base" in one_error_line(err)


def test_minilm_folder_from_the_environment(tmp_path, monkeypatch):
    """GENBOUND_MINILM_DIR (a GPU machine's carried copy) replaces the PyPI package's folder; the same files give
    the same base sha256; a folder that is no saved model is refused in one line."""
    from genbound.data import Task
    from genbound.models import load_backbone, minilm_folder, resolve_ref

    task = Task(name="t", kind="text", num_classes=3, train=None, test=None, class_names=["a", "b", "c"])
    default = load_backbone(resolve_ref("minilm"), task, 0).sha256
    (tmp_path / "copy").symlink_to(minilm_folder(), target_is_directory=True)
    monkeypatch.setenv("GENBOUND_MINILM_DIR", str(tmp_path / "copy"))
    assert minilm_folder() == str(tmp_path / "copy")
    assert load_backbone(resolve_ref("minilm"), task, 0).sha256 == default
    rc, _, err = run_cli(["train", "--model", "tiny-bert", "--data", "wordnet", "--out", "x", "--quiet"], tmp_path,
                         env={"GENBOUND_MINILM_DIR": str(tmp_path)})
    assert rc == 2 and "GENBOUND_MINILM_DIR" in one_error_line(err)


def test_unknown_data_and_missing_checkpoint(tmp_path):
    rc, _, err = run_cli(["train", *COMMON[:2], "--data", "cifar-1000", "--out", "x"], tmp_path)
    assert rc == 2 and "cifar-1000" in one_error_line(err)
    rc, _, err = run_cli(["info", "--ckpt", "nowhere"], tmp_path)
    assert rc == 2 and "not a genbound checkpoint" in one_error_line(err)


def test_train_then_info_round_trip(tmp_path, capsys):
    assert main(["train", *COMMON, "--method", "cla", "--rank", "4", "--out", str(tmp_path / "c")]) == 0
    assert "cla" in capsys.readouterr().out
    assert main(["train", *COMMON, "--method", "cla", "--rank", "4", "--out", str(tmp_path / "c")]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["info", "--ckpt", str(tmp_path / "c")]) == 0
    assert "test loss" in capsys.readouterr().out


def test_hessian_and_landscape_commands_write_their_files(tmp_path, capsys):
    import json

    for method in ("cla", "lora"):
        assert main(["train", *COMMON, "--method", method, "--rank", "2", "--out", str(tmp_path / method)]) == 0
    ckpts = ["--ckpt", str(tmp_path / "cla"), "--ckpt", str(tmp_path / "lora")]
    assert main(["hessian", *ckpts, "--top-k", "2", "--trace", "--probes", "6", "--density", "--samples", "64",
                 "--lanczos-steps", "20", "--plot", str(tmp_path / "h.png"), "--json", str(tmp_path / "h.json"),
                 "--quiet"]) == 0
    h = json.loads((tmp_path / "h.json").read_text())
    assert [r["method"] for r in h["results"]] == ["cla", "lora"] and (tmp_path / "h.png").stat().st_size > 0
    assert all(len(r["eigenvalues"]) == 2 and r["eigenvalues"][0] >= r["eigenvalues"][1] for r in h["results"])
    assert main(["landscape", *ckpts, "--grid", "5", "--samples", "50", "--out", str(tmp_path / "ls"),
                 "--json", str(tmp_path / "ls.json")]) == 0
    assert (tmp_path / "ls.png").is_file() and (tmp_path / "ls-cla.npz").is_file()
    assert len(json.loads((tmp_path / "ls.json").read_text())["results"][1]["losses"]) == 5
    assert main(["landscape", *ckpts[:2], "--grid", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "grid" in capsys.readouterr().err


def test_out_of_gpu_memory_is_one_line(monkeypatch, capsys):
    import torch

    import genbound.cli as cli

    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "cmd_info", oom)
    assert main(["info", "--ckpt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of GPU memory" in err

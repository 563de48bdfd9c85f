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
    (["--method", "dora"], "unknown method 'dora'"),
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

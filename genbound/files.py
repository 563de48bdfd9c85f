"""Files on disk: atomic writes with the user's umask, JSON without inf or nan, sha256 of files, locks between
processes, and the check that an output location can be written before any work starts.

Checkpoints, manifests, analysis results, reports and caches are written here: to a temporary name in the same
folder, then renamed, so an interrupted write leaves the previous file (or none), with the mode the umask asks
for (0644 under umask 022), not the temporary file's 0600. Figures and landscape arrays (plots.save, numpy's
savez) are written directly by their libraries, which also follow the umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import GenboundError


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process umask applied (what ``open`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_dir() -> Path:
    """Where genbound keeps what it can recompute (SVDs of base weights, tokenized splits): GENBOUND_CACHE, else
    ~/.cache/genbound. Deleting it loses nothing but time."""
    return Path(os.environ.get("GENBOUND_CACHE") or Path.home() / ".cache" / "genbound")


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_copy(src: Path, path: Path) -> None:
    """A copy of file ``src`` at ``path``, with its modification time (the date it was written)."""
    import shutil

    _atomic(path, lambda tmp: shutil.copy2(src, tmp))


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json_text(row, indent=None) + "\n")


def finite_json(obj: Any) -> Any:
    """A copy with every nan or inf float replaced by None (JSON has no such numbers); arrays become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return finite_json(obj.tolist())
    return obj


def json_text(obj: Any, indent: int | None = 1) -> str:
    """JSON as genbound writes it everywhere: never inf or nan (null instead), arrays as lists."""
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


@contextlib.contextmanager
def lock(path: Path, wait: bool = True, waiting: Callable[[], None] | None = None):
    """Hold an exclusive flock on ``path`` (created, with its folder) while the block runs; yields whether it is
    held. When another process holds it: ``wait`` blocks until it is free (calling ``waiting()`` first), else the
    block runs at once with False. The OS drops the lock of a process that dies, so a killed holder frees it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if waiting is not None:
                waiting()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def _probe(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the only test that also holds for root and read-only mounts."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".genbound-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise GenboundError(f"{what}: cannot write in {folder} ({err.strerror or err})") from None


def check_folder_writable(path: str | Path, what: str, given: str | Path | None = None) -> None:
    """``path`` is (or can become) a folder genbound may write into; else one line naming ``what`` (the flag)
    and ``given`` (what the user wrote, default ``path``)."""
    path = Path(path)
    label = f"{what} {given if given is not None else path}"
    if path.exists() and not path.is_dir():
        raise GenboundError(f"{label}: {path} is a file in the way (want a folder)")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise GenboundError(f"{label}: {base} is a file, not a folder")
    _probe(base, label)


def check_file_writable(path: str | Path, what: str) -> None:
    """``path`` can be written as a file (its folder exists or can be made, and is writable)."""
    path = Path(path)
    if path.is_dir():
        raise GenboundError(f"{what} {path}: is a folder (want a file name)")
    check_folder_writable(path.parent, what, given=path)

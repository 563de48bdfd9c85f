"""The checkpoint directory (DESIGN.md): genbound.json + adapter.safetensors + trajectory/ + metrics.jsonl.

Every file is written atomically (temp file in the same folder, then rename), the manifest last, so an
interrupted write leaves the previous good state. A checkpoint never copies the base model; ``load``
rebuilds it from the manifest's reference and refuses a base whose sha256 differs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .build import Built, adapter_state, assign_state, build
from .data import Task, load_task
from .errors import CheckpointError, TrainingError

MANIFEST, ADAPTER, METRICS, TRAJECTORY = "genbound.json", "adapter.safetensors", "metrics.jsonl", "trajectory"
FORMAT_VERSION = 1


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        raise CheckpointError(f"{path} not found") from None


def check_fresh(out: Path) -> None:
    """Refuse to train into a folder that holds a checkpoint, an interrupted run, or anything else."""
    if (out / MANIFEST).exists():
        raise TrainingError(f"{out} already holds a checkpoint; choose another --out (nothing was changed)")
    if (out / "resume" / "state.pt").exists():
        raise TrainingError(f"{out} holds an interrupted run: continue it with --resume {out}, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out} is not empty and holds no checkpoint; remove it or choose another --out")


def save_snapshot(out: Path, step: int, link: int, tensors: dict[str, torch.Tensor]) -> None:
    atomic_save_tensors(tensors, out / TRAJECTORY / f"step_{step:07d}.safetensors",
                        {"step": str(step), "link": str(link)})


def save(out: Path, *, cfg: dict, built: Built, task: Task, ref: dict, metrics: dict, timing: dict,
         counts: dict) -> dict:
    """Write adapter.safetensors, then the manifest (last: its presence marks a finished checkpoint)."""
    atomic_save_tensors(adapter_state(built.model), out / ADAPTER)
    layers = built.layers
    manifest = {
        "format": "genbound-checkpoint", "format_version": FORMAT_VERSION, "genbound_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": {**ref, "sha256": built.backbone.sha256, "head": built.backbone.head},
        "task": {"name": task.name, "kind": task.kind, "num_classes": task.num_classes, **task.info},
        "seed": cfg["seed"],
        "method": {"name": built.method.name, "title": built.method.title, "scope": built.method.scope,
                   "rank": built.rank, "alpha": built.alpha, "chain_k": built.chain,
                   "scale": next(iter(layers.values())).scale if layers else None,
                   "link": built.method.link, "train_a": built.method.train_a, "targets": built.targets,
                   "selectors": "stored in adapter.safetensors as <target>.idx / .frozen_idx"},
        "matrices": [{"name": n, "n": la.out_features, "m": la.in_features} for n, la in layers.items()],
        "dtype": str(next(built.model.parameters()).dtype).replace("torch.", ""),
        "params": counts, "config": cfg, "metrics": metrics, "timing": timing,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(ckpt: str | Path) -> dict:
    path = Path(ckpt) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{ckpt} is not a genbound checkpoint ({MANIFEST} missing)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if manifest.get("format") != "genbound-checkpoint":
        raise CheckpointError(f"{path} is not a genbound manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {manifest['format_version']}; this genbound reads <= {FORMAT_VERSION}")
    return manifest


@dataclass
class Loaded:
    model: torch.nn.Module
    manifest: dict
    task: Task
    built: Built
    device: torch.device
    base: str | None = None
    _initial: Built | None = field(default=None, repr=False)

    def initial(self) -> Built:
        """The same model before fine-tuning (fresh head and links from the seed), built once, eval mode."""
        if self._initial is None:
            self._initial = build_from_manifest(self.manifest, self.task, self.base)
            self._initial.model.to(self.device).eval()
        return self._initial


def build_from_manifest(man: dict, task: Task, base: str | None = None) -> Built:
    """The model of a manifest as it was at step 0 (fresh head and links from the seed), base checked."""
    from .models import resolve_ref

    cfg, meth = man["config"], man["method"]
    ref = {k: v for k, v in man["base"].items() if k not in ("sha256", "head")}
    if base is not None:
        ref = {**{k: v for k, v in ref.items() if k not in ("kind", "name", "path")}, **resolve_ref(base)}
    built = build(ref, task, meth["name"], meth["rank"], meth["alpha"], meth["chain_k"], man["seed"],
                  cfg["targets"])
    if built.backbone.sha256 != man["base"]["sha256"]:
        raise CheckpointError(f"the checkpoint was trained on a different base model (sha256 "
                              f"{man['base']['sha256'][:12]}..., this base has {built.backbone.sha256[:12]}...)")
    return built


def load(ckpt: str | Path, device: str | torch.device = "cpu", base: str | None = None) -> Loaded:
    """Rebuild the fine-tuned model of a checkpoint (eval mode, on ``device``) with its task's data.

    ``base`` points at the base model when it has moved (its sha256 must still match)."""
    ckpt = Path(ckpt)
    man = read_manifest(ckpt)
    cfg = man["config"]
    task = load_task(cfg["data"], seed=cfg["seed"], n_train=cfg["n_train"], n_test=cfg["n_test"])
    built = build_from_manifest(man, task, base)
    try:
        tensors = load_file(str(ckpt / ADAPTER))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{ckpt / ADAPTER} is missing or corrupt ({str(err).splitlines()[0]})") from None
    assign_state(built.model, tensors, str(ckpt / ADAPTER))
    dev = torch.device(device)
    built.model.to(dev).eval()
    return Loaded(built.model, man, task, built, dev, base)

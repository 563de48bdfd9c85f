"""The checkpoint directory: genbound.json + adapter.safetensors + trajectory/ + metrics.jsonl.

Every file is written atomically (files.py), the manifest last, so an interrupted write leaves the previous
good state. The manifest records the sha256 of every weight file and a fingerprint of both data splits. A
checkpoint never copies the base model; ``load`` rebuilds it from the manifest's reference and refuses,
in one line, a base whose sha256 differs, a weight file whose sha256 differs, data whose fingerprint
differs (unless other data is asked for explicitly), and a manifest that lacks a key or has a wrong type.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import __version__, timing
from .build import Built, adapter_state, assign_state, build
from .data import Split, Task, load_task
from .errors import CheckpointError, GenboundError, NonFinite, TrainingError
from .files import atomic_save_tensors, atomic_write_text, check_folder_writable, json_text, sha256_file

MANIFEST, ADAPTER, TRAJECTORY, SUBSPACE = "genbound.json", "adapter.safetensors", "trajectory", "subspace.safetensors"
FORMAT_VERSION = 2  # 2: sha256 of every weight file ("files") and the splits' fingerprints (task.fingerprint)

NUMBER = (int, float)
# every manifest key genbound reads, with its type: a manifest without one of them, or with another type, is
# refused in one line when read (a hand edit or a damaged file), never met later as a KeyError
SCHEMA: dict[str, tuple] = {
    "format_version": (int,), "seed": (int,), "created": (str,),
    "base": (dict,), "base.kind": (str,), "base.sha256": (str,), "base.head": (list,),
    "task": (dict,), "task.name": (str,), "task.kind": (str,), "task.num_classes": (int,),
    "method": (dict,), "method.name": (str,), "method.scope": (str,), "method.rank": (int,),
    "method.alpha": NUMBER, "method.chain_k": (int,), "method.targets": (list,),
    "matrices": (list,), "params": (dict,), "params.paper": (int,), "params.full": (int,),
    "config": (dict,), "config.data": (str,), "config.model": (str,), "config.seed": (int,),
    "config.n_train": (int, type(None)), "config.n_test": (int, type(None)), "config.targets": (list, type(None)),
    "metrics": (dict,), "metrics.train_loss": NUMBER, "metrics.train_acc": NUMBER, "metrics.test_loss": NUMBER,
    "metrics.test_acc": NUMBER, "timing": (dict,), "timing.train_seconds": NUMBER,
}
SCHEMA_V2: dict[str, tuple] = {"files": (dict,), "files." + ADAPTER: (str,), "task.fingerprint": (dict,),
                               "task.fingerprint.train": (str,), "task.fingerprint.test": (str,)}


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        raise CheckpointError(f"{path} not found") from None


def check_fresh(out: Path) -> None:
    """Refuse to train into a folder that holds a checkpoint, an interrupted run, or anything else, or that
    cannot be written."""
    check_folder_writable(out, "--out")
    if (out / MANIFEST).exists():
        raise TrainingError(f"{out} already holds a checkpoint; choose another --out (nothing was changed)")
    if (out / "resume" / "state.pt").exists():
        raise TrainingError(f"{out} holds an interrupted run: continue it with --resume {out}, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out} is not empty and holds no checkpoint; remove it or choose another --out")


def save_snapshot(out: Path, step: int, link: int, tensors: dict[str, torch.Tensor]) -> None:
    atomic_save_tensors(tensors, out / TRAJECTORY / f"step_{step:07d}.safetensors",
                        {"step": str(step), "link": str(link)})


def weight_files(out: Path) -> dict[str, str]:
    """sha256 of every weight file of a checkpoint folder (adapter + trajectory snapshots), by relative path."""
    paths = [out / ADAPTER, out / SUBSPACE, *sorted((out / TRAJECTORY).glob("*.safetensors"))]
    return {p.relative_to(out).as_posix(): sha256_file(p) for p in paths if p.is_file()}


def verify_file(ckpt: Path, manifest: dict, name: str) -> None:
    """Refuse a weight file whose sha256 differs from the manifest's record (format 2 and later)."""
    files = manifest.get("files")
    if files is None:
        return
    path = ckpt / name
    if name not in files:
        raise CheckpointError(f"{path}: the manifest records no sha256 for it (a file added after training)")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if sha256_file(path) != files[name]:
        raise CheckpointError(f"{path} was changed or damaged after training (its sha256 differs from the one "
                              "the manifest records); nothing was computed")


def verify_files(ckpt: Path, manifest: dict) -> None:
    """Every weight file the manifest records is there with the same sha256."""
    for name in (manifest.get("files") or {}):
        verify_file(ckpt, manifest, name)


def finite_metrics(metrics: dict) -> None:
    """Refuse to save a model whose final loss or accuracy is not a finite number."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFinite(f"the final model's {', '.join(f'{k} is {v}' for k, v in bad.items())}: its logits "
                        "overflow (try a lower --lr)")


def save(out: Path, *, cfg: dict, built: Built, task: Task, ref: dict, metrics: dict, timing: dict,
         counts: dict, subspace=None) -> dict:
    """Write adapter.safetensors (and with a ``subspace``, subspace.safetensors: every link's z), then the manifest
    (last: its presence marks a finished checkpoint) with the sha256 of every weight file and the fingerprints of
    the task's splits."""
    from .subspace import manifest_entry

    finite_metrics(metrics)
    atomic_save_tensors(adapter_state(built.model), out / ADAPTER)
    extra = {}
    if subspace is not None:
        coords = subspace.coordinates()
        if not bool(torch.isfinite(coords).all()):
            raise NonFinite("the subspace coordinates z hold inf or nan values (try a lower --lr)")
        atomic_save_tensors({"z": coords}, out / SUBSPACE)
        extra["subspace"] = manifest_entry(subspace, cfg["subspace_seed"])
        counts = {**counts, "subspace": coords.numel()}
    layers, layout = built.layers, built.method.layout
    # the fused path where the layout has one and training asked for it, else the reference path
    fused = layout.fused_path and cfg.get("fused", True)
    training_path = ("fused (genbound/fused.py)" if fused else "reference") if layers else "plain (no adapter layer)"
    manifest = {
        "format": "genbound-checkpoint", "format_version": FORMAT_VERSION, "genbound_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": {**ref, "sha256": built.backbone.sha256, "head": built.backbone.head},
        "task": {"name": task.name, "kind": task.kind, "num_classes": task.num_classes, **task.info,
                 "problem": task.problem, "metrics": list(task.metrics), "fingerprint": task.fingerprint()},
        "seed": cfg["seed"],
        "method": {"name": built.method.name, "title": built.method.title, "scope": built.method.scope,
                   "rank": built.rank, "alpha": built.alpha, "chain_k": built.chain,
                   "scale": next(iter(layers.values())).scale if layers else None,
                   "link": layout.kind, "targets": built.targets, "trainable": list(getattr(layout, "trainable", ())),
                   "stored": list(getattr(layout, "stored", ())), "training_path": training_path},
        "matrices": [{"name": n, "n": la.out_features, "m": la.in_features,
                      **({"fan_in_fan_out": True} if la.fan_in_fan_out else {})} for n, la in layers.items()],
        "dtype": str(next(built.model.parameters()).dtype).replace("torch.", ""),
        "params": counts, "config": cfg, "metrics": metrics, "timing": timing, "files": weight_files(out),
        "environment": environment(), **extra,
    }
    atomic_write_text(out / MANIFEST, json_text(manifest))
    return manifest


def environment() -> dict:
    """What the bits of a run depend on besides its settings: the same settings on the same machine, library
    versions and thread count give the same bits; another CPU, thread count or GPU gives close numbers."""
    import platform

    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
    return env


def read_manifest(ckpt: str | Path) -> dict:
    path = Path(ckpt) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{ckpt} is not a genbound checkpoint ({MANIFEST} missing)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "genbound-checkpoint":
        raise CheckpointError(f"{path} is not a genbound manifest")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this genbound reads <= {FORMAT_VERSION}")
    schema = SCHEMA if version == 1 else {**SCHEMA, **SCHEMA_V2}
    if problem_of(manifest) == "regression":  # no accuracy: the MSE is the loss
        schema = {k: v for k, v in schema.items() if k not in ("metrics.train_acc", "metrics.test_acc")}
    check_schema(manifest, schema, path)
    return manifest


def problem_of(manifest: dict) -> str:
    """The task's problem as the manifest records it; checkpoints written before tasks had one: classification."""
    task = manifest.get("task")
    return task.get("problem", "classification") if isinstance(task, dict) else "classification"


def metrics_of(manifest: dict) -> list[str]:
    """The task's metric names as the manifest records them (before they were recorded: accuracy)."""
    names = manifest["task"].get("metrics")
    return list(names) if isinstance(names, list) else ["accuracy"]


def check_schema(obj: dict, schema: dict[str, tuple], where: Path | str) -> None:
    """Every dotted key of ``schema`` is present in ``obj`` with one of its types (bool is not an int here)."""
    for key, types in schema.items():
        value, parts = obj, key.split(".")
        for i, part in enumerate(parts):
            # a key may hold dots itself (a file name): try the rest of the path as one key first
            rest = ".".join(parts[i:])
            if isinstance(value, dict) and rest in value:
                value = value[rest]
                break
            if not isinstance(value, dict) or part not in value:
                raise CheckpointError(f"{where}: the manifest lacks {key!r} (edited or damaged; genbound writes it)")
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise CheckpointError(f"{where}: {key!r} is {json.dumps(value)[:40]}, not {names} (edited or damaged)")


def unverified_note(manifest: dict) -> str | None:
    """A line for checkpoints written before weights and data were recorded (format 1), else None."""
    if manifest.get("files") is None:
        return ("written by an older genbound (format 1): its weight files and data carry no checksums, so they "
                "cannot be verified")
    return None


@dataclass
class Loaded:
    """A checkpoint rebuilt for analysis: the fine-tuned model (eval mode) on ``device``, its manifest and task.

    ``data`` says what the task is: the checkpoint's own data, verified against its fingerprints, or other
    data the user asked for explicitly (``other_data`` True: the gap is then not the model's generalization gap
    on its own training split)."""

    model: torch.nn.Module
    manifest: dict
    task: Task
    built: Built
    device: torch.device
    base: str | None = None
    path: Path | None = None
    data: dict = field(default_factory=dict)
    _initial: Built | None = field(default=None, repr=False)
    _step0: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the trained tensors at step 0

    @property
    def other_data(self) -> bool:
        return bool(self.data.get("other_data"))

    def initial(self) -> Built:
        """The same model before fine-tuning (fresh head and links from the seed), made once, eval mode: a copy
        of the loaded model with the step-0 values of its trained tensors put back (kept by ``load`` before
        the checkpoint's were assigned), so the base is not read again; rebuilt from the manifest otherwise."""
        if self._initial is None:
            with timing.phase("initial_model"):
                if self._step0 is None:
                    self._initial = build_from_manifest(self.manifest, self.task, self.base)
                    self._initial.model.to(self.device).eval()
                else:
                    model = copy.deepcopy(self.model).eval()
                    assign_state(model, self._step0, "the step-0 values")
                    self._initial = replace(self.built, model=model,
                                            backbone=replace(self.built.backbone, model=model))
        return self._initial


def build_from_manifest(man: dict, task: Task, base: str | None = None) -> Built:
    """The model of a manifest as it was at step 0 (fresh head and links from the seed), base checked."""
    from .models import BaseMissing, resolve_ref

    cfg, meth = man["config"], man["method"]
    ref = {k: v for k, v in man["base"].items() if k not in ("sha256", "head")}
    if base is not None:
        ref = {**{k: v for k, v in ref.items() if k not in ("kind", "name", "path")}, **resolve_ref(base)}
    try:
        built = build(ref, task, meth["name"], meth["rank"], meth["alpha"], meth["chain_k"], man["seed"],
                      cfg["targets"])
    except BaseMissing as err:
        hint = "" if base is not None else "; pass --base DIR where it is now (its sha256 must match)"
        raise CheckpointError(f"{err}{hint}") from None
    if built.backbone.sha256 != man["base"]["sha256"]:
        raise CheckpointError(f"the checkpoint was trained on a different base model (sha256 "
                              f"{man['base']['sha256'][:12]}..., this base has {built.backbone.sha256[:12]}...)")
    return built


def checked_task(man: dict, where: Path) -> Task:
    """The checkpoint's task as its manifest describes it, refused when the data no longer give the splits it
    was trained and tested on (format 2 records both splits' fingerprints)."""
    cfg = man["config"]
    task = load_task(cfg["data"], seed=cfg["seed"], n_train=cfg["n_train"], n_test=cfg["n_test"],
                     columns=cfg.get("columns"))  # normally folded into data ("DATA#text=...") by config.normalized
    recorded = man["task"].get("fingerprint")
    if recorded is not None:
        now = task.fingerprint()
        changed = [s for s in ("train", "test") if now[s] != recorded[s]]
        if changed:
            sizes = ", ".join(f"{s} split {len(getattr(task, s))} examples now, {man['task'].get('n_' + s)} "
                              "recorded" for s in changed)
            raise CheckpointError(f"{where}: the data {cfg['data']} changed since training ({sizes}; examples or "
                                  f"labels differ); pass --data {cfg['data']} to evaluate on it as it is now")
    return task


def task_without_examples(man: dict) -> Task | None:
    """The checkpoint's task as its manifest records it (name, kind, classes, problem, metrics) with empty splits,
    for an analysis that reads the weights alone: the model is built from it as from the task itself. None where
    building the model needs the examples' shape (an image model's pixel count)."""
    entry, base = man["task"], man["base"]
    if entry["kind"] == "text":
        x = []
    elif base["kind"] == "mlp" and isinstance(base.get("sizes"), list) and base["sizes"]:
        x = torch.zeros(0, int(base["sizes"][0]))
    else:
        return None
    problem = problem_of(man)
    empty = Split(x, torch.zeros(0, dtype=torch.float32 if problem == "regression" else torch.int64))
    info = {k: v for k, v in entry.items() if k not in ("name", "kind", "num_classes", "problem", "metrics")}
    return Task(entry["name"], entry["kind"], entry["num_classes"], empty, empty, [], info, problem,
                tuple(metrics_of(man)))


def other_task(man: dict, data: str) -> Task:
    """Task ``data`` (split with the checkpoint's seed, its default sizes) for evaluating on other data on
    purpose; it must have the checkpoint's number of classes."""
    task = load_task(data, seed=man["config"]["seed"])
    if task.problem != problem_of(man):
        raise GenboundError(f"--data {data} is a {task.problem} task; the checkpoint was trained on a "
                            f"{problem_of(man)} task")
    if task.num_classes != man["task"]["num_classes"]:
        raise GenboundError(f"--data {data} has {task.num_classes} classes; the checkpoint's head has "
                            f"{man['task']['num_classes']}")
    return task


def subspace_coordinates(ckpt: Path, man: dict) -> torch.Tensor:
    """Every link's z of a subspace checkpoint (links x D), its file's sha256 and shape checked."""
    entry = man["subspace"]
    check_schema(man, {"subspace.dim": (int,), "subspace.links": (int,), "subspace.projection_seed": (int,),
                       "subspace.kind": (str,)}, ckpt / MANIFEST)
    verify_file(ckpt, man, SUBSPACE)
    try:
        z = load_file(str(ckpt / SUBSPACE))["z"]
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{ckpt / SUBSPACE} is missing or corrupt ({str(err).splitlines()[0]})") from None
    if tuple(z.shape) != (entry["links"], entry["dim"]) or not bool(torch.isfinite(z).all()):
        raise CheckpointError(f"{ckpt / SUBSPACE}: z must be {entry['links']} x {entry['dim']} finite numbers")
    return z


def check_subspace(ckpt: Path, man: dict, tensors: dict[str, torch.Tensor], task: Task, base: str | None) -> None:
    """The stored tensors of a subspace checkpoint are exactly theta_0 + P z: every tensor is rebuilt from z and
    a step-0 model (``subspace.replay``) and must equal the stored one bit for bit."""
    from .subspace import KIND, replay

    entry = man["subspace"]
    z = subspace_coordinates(ckpt, man)
    if entry["kind"] != KIND:
        raise CheckpointError(f"{ckpt / MANIFEST}: subspace kind {entry['kind']!r}; this genbound knows {KIND!r}")
    fresh = build_from_manifest(man, task, base)
    replay(fresh.model, z, man["seed"], entry["projection_seed"])
    rebuilt = adapter_state(fresh.model)
    bad = [k for k, t in tensors.items() if k not in rebuilt or rebuilt[k].shape != t.shape
           or not torch.equal(rebuilt[k].to(t.dtype), t)]
    if bad:
        raise CheckpointError(f"{ckpt / ADAPTER}: tensor {bad[0]} is not theta_0 + P z rebuilt from "
                              f"{SUBSPACE} (edited, or written by another genbound)")


def load(ckpt: str | Path, device: str | torch.device = "cpu", base: str | None = None,
         data: str | None = None, examples: bool = True, keep_initial: bool = True) -> Loaded:
    """Rebuild the fine-tuned model of a checkpoint (eval mode, on ``device``) with its task's data.

    Verifies adapter.safetensors against the manifest's sha256 and the data against its fingerprints.
    ``base`` points at the base model when it has moved (its sha256 must still match); ``data`` evaluates on
    another task on purpose (recorded in ``Loaded.data``). ``examples`` False (an analysis that reads only the
    weights): the task's examples are not loaded where the manifest says enough to build the model
    (``task_without_examples``; ``Loaded.data["loaded"]`` is then False); the weights are verified all the same.
    ``keep_initial`` (for an analysis that asks for ``Loaded.initial()``): a CPU copy of the trained tensors'
    step-0 values is kept, so the model before training is made without reading the base again; without it
    (the whole model's size for full fine-tuning) ``initial()`` rebuilds from the manifest."""
    ckpt = Path(ckpt)
    man = read_manifest(ckpt)
    verify_file(ckpt, man, ADAPTER)
    shell = task_without_examples(man) if data is None and not examples else None
    with timing.phase("data"):
        if shell is not None:
            task = shell
            info = {"name": man["config"]["data"], "other_data": False, "verified": False, "loaded": False}
        elif data is None:
            task = checked_task(man, ckpt)
            info = {"name": man["config"]["data"], "other_data": False,
                    "verified": man["task"].get("fingerprint") is not None}
        else:
            task = other_task(man, data)
            same = task.fingerprint() == man["task"].get("fingerprint")
            info = {"name": data, "other_data": not same, "verified": same, "trained_on": man["config"]["data"]}
    with timing.phase("model"):
        built = build_from_manifest(man, task, base)
        try:
            tensors = load_file(str(ckpt / ADAPTER))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{ckpt / ADAPTER} is missing or corrupt ({str(err).splitlines()[0]})") from None
        step0 = {k: v.clone() for k, v in adapter_state(built.model).items()} if keep_initial else None
        assign_state(built.model, tensors, str(ckpt / ADAPTER))
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{ckpt / ADAPTER}: tensor {name} holds inf or nan values")
        if "subspace" in man:
            check_subspace(ckpt, man, tensors, task, base)
        dev = torch.device(device)
        built.model.to(dev).eval()
    return Loaded(built.model, man, task, built, dev, base, ckpt, info, _step0=step0)

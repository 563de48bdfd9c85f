"""PEFT interchange: a genbound checkpoint <-> a PEFT adapter folder, for every method whose layout has a PEFT form.

The folder side is here: adapter_config.json (peft_type, r, target_modules as exact module names,
modules_to_save = the head, task_type None for the MLP, a custom module that PEFT adapts through
target_modules, and for image classifiers (which take pixel_values), "SEQ_CLS" for HF text models;
fan_in_fan_out when the targets are transformers Conv1D layers, GPT-2's c_attn) and adapter_model.safetensors
with PEFT's keys (``get_peft_model_state_dict`` drops the adapter name, and a modules_to_save wrapper's
``modules_to_save.<adapter>.`` part, from every key):

    base_model.model.<target>.<what the layout maps>    per adapted module (layout.to_peft / from_peft)
    base_model.<shared>                                  tensors PEFT keeps once per model (VeRA's projections)
    base_model.model.<head>.<param>                      the classification head

The tensor side belongs to each method's layout (genbound/methods/): LoRA-shaped layouts map to
lora_A.weight / lora_B.weight (selectors as one-hot rows), DoRA adds lora_magnitude_vector, VeRA maps to
vera_lambda_d / vera_lambda_b with the shared vera_A / vera_B. Both sides scale by lora_alpha / r, so r and
alpha carry over as they are. The safetensors metadata keeps genbound's base reference (MLP hidden sizes,
max_length), which PEFT ignores. PEFT cannot record how A was trained, so ``import_peft`` takes the method
(lora_plus and asymmetric training look like plain LoRA).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from . import checkpoint, files
from .build import adapter_state, assign_state, build, parameter_counts
from .data import load_task
from .errors import CheckpointError
from .files import sha256_file
from .methods import AdapterLayout, get_method, is_head, method_names
from .runtime import evaluate, pick_device
from .config import TrainConfig, model_ref, normalized

CONFIG, WEIGHTS, PREFIX, SHARED = "adapter_config.json", "adapter_model.safetensors", "base_model.model.", "base_model."


def exportable() -> list[str]:
    """The methods whose layout has a PEFT form."""
    return [n for n in method_names() if getattr(get_method(n).layout, "peft_type", None)]


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; CheckpointError naming the path when unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None


def import_key(adapter: Path, *, method: str, data: str, seed: int, model: str | None) -> str:
    """The folder name of one import of a PEFT adapter: the settings it was imported with and a hash of them and
    of the adapter's own files, so another --data, --method, seed or base, or a changed adapter, is a new import."""
    h = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        path = adapter / name
        h.update(sha256_file(path).encode() if path.is_file() else b"missing")
    data_id = str(Path(data).expanduser().resolve()) if Path(data).suffix.lower() in (".csv", ".jsonl") else data
    h.update(json.dumps([method, data_id, seed, model]).encode())
    slug = re.sub(r"[^A-Za-z0-9@.-]+", "-", Path(data).stem if "/" in data else data)[:40]
    return f"{method}-{slug}-s{seed}-{h.hexdigest()[:12]}"


def imports_of(adapter: Path) -> list[dict]:
    """The earlier imports of ``adapter`` (under DIR/genbound/) made from its files as they are now:
    [{"path", "method", "data", "seed"}]."""
    now = {name: sha256_file(adapter / name) for name in (CONFIG, WEIGHTS) if (adapter / name).is_file()}
    found = []
    for manifest in sorted((adapter / "genbound").glob(f"*/{checkpoint.MANIFEST}")):
        try:
            man = json.loads(manifest.read_text())
            if man["timing"].get("imported_sha256") == now:
                found.append({"path": str(manifest.parent), "method": man["method"]["name"],
                              "data": man["config"]["data"], "seed": man["seed"]})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _layout(method: str, where: str) -> AdapterLayout:
    layout = get_method(method).layout
    if getattr(layout, "peft_type", None) is None:
        raise CheckpointError(f"{where}: method {method} has no PEFT form; these export and import: "
                              f"{', '.join(exportable())}")
    return layout


def export_peft(ckpt: str | Path, out: str | Path) -> Path:
    """Write checkpoint ``ckpt`` as a PEFT adapter folder ``out`` (its layout maps the tensors).

    ``PeftModel.from_pretrained(base, out)`` on the same base model then gives the same logits. Reads
    only the manifest and adapter.safetensors (the base model and data are not loaded)."""
    ckpt, out = Path(ckpt), Path(out)
    man = checkpoint.read_manifest(ckpt)
    checkpoint.verify_file(ckpt, man, checkpoint.ADAPTER)
    meth = man["method"]
    layout = _layout(meth["name"], str(ckpt))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not an empty folder; choose another --out")
    tensors, _ = _read_tensors(ckpt / checkpoint.ADAPTER)
    head, r = man["base"]["head"], meth["rank"]
    per_layer: dict[str, dict[str, torch.Tensor]] = {mat["name"]: {} for mat in man["matrices"]}
    peft: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        owner, _, leaf = key.rpartition(".")
        if owner in per_layer and leaf in layout.stored:
            per_layer[owner][leaf] = t
        elif is_head(key, head):
            peft[PREFIX + key] = t
        else:
            raise CheckpointError(f"{ckpt / checkpoint.ADAPTER}: tensor {key} has no place in a PEFT adapter")
    for mat in man["matrices"]:
        for suffix, t in layout.to_peft(per_layer[mat["name"]], mat["n"], mat["m"], r, str(ckpt)).items():
            peft[f"{PREFIX}{mat['name']}.{suffix}"] = t
    peft.update({SHARED + k: t for k, t in layout.peft_shared(per_layer).items()})
    base = {k: v for k, v in man["base"].items() if k not in ("sha256", "head")}
    text = base["kind"] != "mlp" and man["task"]["kind"] == "text"  # an image classifier takes pixel_values
    config = {
        "peft_type": layout.peft_type, "task_type": "SEQ_CLS" if text else None,
        "base_model_name_or_path": base.get("path", "mlp") if base["kind"] == "mlp" else base["name"],
        "r": r, "target_modules": meth["targets"], "modules_to_save": head, "inference_mode": True,
        **layout.peft_config(meth["alpha"], man["seed"]),
    }
    if any(mat.get("fan_in_fan_out") for mat in man["matrices"]):  # Conv1D targets (GPT-2): weight stored in x out
        config["fan_in_fan_out"] = True
    meta = {"format": "pt", "genbound_base": json.dumps(base), "genbound_method": meth["name"],
            "genbound_checkpoint": str(ckpt.resolve())}
    files.atomic_save_tensors(peft, out / WEIGHTS, meta)  # weights first, the config marks completion
    files.atomic_write_text(out / CONFIG, json.dumps(config, indent=2))
    return out


def read_adapter_config(adapter: Path, layout: AdapterLayout, method: str) -> dict:
    """adapter_config.json, refusing another PEFT type and features the method's layout does not compute."""
    path = adapter / CONFIG
    try:
        cfg = json.loads(checkpoint.read_text(path))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != layout.peft_type:
        kind = cfg.get("peft_type") if isinstance(cfg, dict) else None
        fits = [n for n in exportable() if get_method(n).layout.peft_type == kind]
        raise CheckpointError(f"{path}: a PEFT {kind} adapter does not import as method {method}"
                              + (f" (it imports as {', '.join(fits)})" if fits else " (genbound reads none)"))
    bad = layout.peft_refuse(cfg)
    if bad:
        raise CheckpointError(f"{path}: unsupported PEFT feature(s) for method {method}: {', '.join(bad)}")
    if not isinstance(cfg.get("r"), int) or isinstance(cfg.get("r"), bool):
        raise CheckpointError(f"{path}: r is missing or not an integer")
    return cfg


def _mlp_hidden(tensors: dict[str, torch.Tensor], out_key: str, head: str = "head") -> list[int]:
    """Hidden sizes of an MLP from the adapted modules' output sizes when every hidden.i is adapted (adapters
    without genbound's metadata)."""
    rows = {int(m[1]): t.shape[0] for k, t in tensors.items()
            if (m := re.fullmatch(rf"{PREFIX}hidden\.(\d+)\.{re.escape(out_key)}", k))}
    last = tensors.get(f"{PREFIX}{head}.weight")
    if not rows or sorted(rows) != list(range(len(rows))) or last is None or last.shape[1] != rows[len(rows) - 1]:
        raise CheckpointError("cannot tell the MLP's hidden sizes from this adapter; pass the base as --model")
    return [rows[i] for i in range(len(rows))]


def import_peft(adapter: str | Path, out: str | Path, *, method: str = "lora", data: str, seed: int = 0,
                model: str | None = None) -> dict:
    """Turn PEFT adapter folder ``adapter`` into genbound checkpoint ``out`` (steps 0); return the manifest.

    The model is built for task ``data`` on ``model`` (default: base_model_name_or_path), the layout of
    ``method`` maps each adapted module's tensors (selectors become idx), the head comes from modules_to_save,
    and train/test metrics are evaluated on the full splits, as at the end of training."""
    adapter, out = Path(adapter), Path(out)
    layout = _layout(method, str(adapter))
    cfg_json = read_adapter_config(adapter, layout, method)
    tensors, meta = _read_tensors(adapter / WEIGHTS)
    checkpoint.check_fresh(out)
    base = model or cfg_json.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{adapter / CONFIG} names no base_model_name_or_path; pass the base as --model")
    opts = json.loads(meta.get("genbound_base", "{}"))
    key = "." + layout.peft_out_key
    names = sorted(k[len(PREFIX):-len(key)] for k in tensors if k.startswith(PREFIX) and k.endswith(key))
    if not names or any(not k.startswith(SHARED) for k in tensors):
        raise CheckpointError(f"{adapter / WEIGHTS}: expected tensors named {PREFIX}<module>{key}")
    hidden = opts.get("hidden") or (_mlp_hidden(tensors, layout.peft_out_key) if base == "mlp"
                                    else TrainConfig().hidden)
    r, alpha = cfg_json["r"], layout.peft_alpha(cfg_json)
    cfg = normalized(TrainConfig(model=base, data=data, method=method, rank=r, alpha=alpha, seed=seed, steps=0,
                                 targets=[f"^{re.escape(n)}$" for n in names], hidden=hidden,
                                 max_length=opts.get("max_length", TrainConfig.max_length)))
    start = time.perf_counter()
    task = load_task(cfg.data, seed=seed)
    ref = model_ref(cfg)
    built = build(ref, task, method, r, alpha, 1, seed, cfg.targets)
    if len(built.targets) != len(names):
        missing = sorted(set(names) - set(built.targets))
        raise CheckpointError(f"{adapter / WEIGHTS}: modules {missing[:3]} are not nn.Linear (or Conv1D) modules of "
                              f"{base}")
    state = adapter_state(built.model)
    shared = {k[len(SHARED):]: t for k, t in tensors.items() if not k.startswith(PREFIX)}
    used = {SHARED + k for k in shared}
    for name, layer in built.layers.items():
        mine = {k[len(PREFIX) + len(name) + 1:]: t for k, t in tensors.items() if k.startswith(f"{PREFIX}{name}.")}
        used |= {f"{PREFIX}{name}.{k}" for k in mine}
        found = layout.from_peft(mine, shared, layer.out_features, layer.in_features, r, method,
                                 f"{adapter / WEIGHTS}: {PREFIX}{name}")
        state.update({f"{name}.{leaf}": t for leaf, t in found.items()})
    for key in [k for k in state if is_head(k, built.backbone.head)]:
        if PREFIX + key not in tensors:
            raise CheckpointError(f"{adapter / WEIGHTS}: head tensor {PREFIX + key} is missing "
                                  "(the classification head must be in modules_to_save)")
        state[key] = tensors[PREFIX + key].float()
        used.add(PREFIX + key)
    if set(tensors) - used:
        raise CheckpointError(f"{adapter / WEIGHTS}: tensors {sorted(set(tensors) - used)[:3]} do not fit {base}")
    assign_state(built.model, state, str(adapter / WEIGHTS))
    device = pick_device(cfg.device)
    built.model.to(device)
    metrics = {}
    for split_name, split in (("train", task.train), ("test", task.test)):
        inputs = {k: v.to(device) for k, v in built.backbone.encode(split).items()}
        for k, value in evaluate(built.model, inputs, split.y.to(device)).items():
            metrics[f"{split_name}_{k}"] = value
    timing = {"train_seconds": 0.0, "wall_seconds_this_session": time.perf_counter() - start,
              "peak_gpu_memory_bytes": None, "device": str(device), "steps": 0, "steps_per_link": [],
              "imported_from": str(adapter.resolve()), "imported_sha256": {
                  name: sha256_file(adapter / name) for name in (CONFIG, WEIGHTS)}}
    return checkpoint.save(out, cfg=dataclasses.asdict(cfg), built=built, task=task, ref=ref, metrics=metrics,
                           timing=timing, counts=parameter_counts(built))

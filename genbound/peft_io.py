"""PEFT interchange: a LoRA-shaped genbound checkpoint <-> a PEFT LoRA adapter folder.

The mapping (PEFT 0.21, ``get_peft_model_state_dict`` drops the adapter name, and a modules_to_save
wrapper's ``modules_to_save.<adapter>.`` part, from every key):

    genbound adapter.safetensors            PEFT adapter_model.safetensors
    <target>.lora_A   (r x m, dense)        base_model.model.<target>.lora_A.weight   (r x m)
    <target>.idx      (r, selector)         base_model.model.<target>.lora_A.weight = I_m[idx]  (one-hot rows)
    <target>.lora_B   (n x r)               base_model.model.<target>.lora_B.weight   (n x r)
    <head>.<param>    (classification head) base_model.model.<head>.<param>   (head in modules_to_save)

Both sides compute y = x W0^T + b + (alpha / r) B A x: genbound keeps B unscaled and multiplies by
s = alpha / r, PEFT by ``scaling = lora_alpha / r`` (use_rslora off), so r and alpha carry over as they
are. adapter_config.json records r, lora_alpha, target_modules (exact module names), modules_to_save
(the head) and task_type (None for the MLP, a custom module that PEFT adapts through target_modules;
"SEQ_CLS" for HF models). The safetensors metadata keeps genbound's base reference (MLP hidden sizes,
max_length), which PEFT ignores. PEFT cannot record how A was trained, so ``import_peft`` takes the
method: lora / lora_plus (A trained), asym (A kept frozen), cla / rcla (A must be a selector).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from . import checkpoint
from .build import adapter_state, assign_state, build, parameter_counts
from .data import load_task
from .errors import CheckpointError
from .files import sha256_file
from .methods import DENSE, get_method
from .runtime import evaluate, pick_device
from .train import TrainConfig, model_ref, normalized

EXPORTABLE = ("lora", "lora_plus", "asym", "cla", "rcla")
CONFIG, WEIGHTS, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
INIT_OK = (True, False, "gaussian", "eva", "orthogonal")  # other inits change W0 (PiSSA, OLoRA, ...) or the forward
VARIANTS = ("use_dora", "use_rslora", "use_qalora", "use_bdlora", "lora_bias", "layer_replication",
            "trainable_token_indices", "target_parameters", "alora_invocation_tokens", "arrow_config",
            "kasa_config", "velora_config", "monteclora_config")


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; CheckpointError naming the path when unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None


def selector_matrix(idx: torch.Tensor, m: int) -> torch.Tensor:
    """The dense selector A (r x m) with A[i, idx[i]] = 1: rows idx of the m x m identity."""
    return F.one_hot(idx.long(), m).float()


def selector_indices(a: torch.Tensor, method: str, where: str) -> torch.Tensor:
    """idx with A = I_m[idx], checking A is a selector of distinct columns (cla: exactly columns 0..r-1)."""
    ones = a == 1
    if not bool((ones | (a == 0)).all() and (ones.sum(1) == 1).all()):
        raise CheckpointError(f"{where}: lora_A is not a column selector (each row one 1, zeros elsewhere), "
                              f"so it cannot be imported as {method}; use method lora or asym")
    idx = ones.int().argmax(1)
    if len(set(idx.tolist())) != len(idx):
        raise CheckpointError(f"{where}: lora_A selects a column twice; {method} needs distinct columns")
    if method == "cla" and not torch.equal(idx, torch.arange(len(idx))):
        raise CheckpointError(f"{where}: lora_A selects columns {idx.tolist()}, not the first r; use method rcla")
    return idx


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


def export_peft(ckpt: str | Path, out: str | Path) -> Path:
    """Write checkpoint ``ckpt`` (lora, lora_plus, asym, cla or rcla) as a PEFT LoRA folder ``out``.

    ``PeftModel.from_pretrained(base, out)`` on the same base model then gives the same logits. Reads
    only the manifest and adapter.safetensors (the base model and data are not loaded)."""
    ckpt, out = Path(ckpt), Path(out)
    man = checkpoint.read_manifest(ckpt)
    checkpoint.verify_file(ckpt, man, checkpoint.ADAPTER)
    meth = man["method"]
    if meth["name"] not in EXPORTABLE or meth["chain_k"] != 1:
        raise CheckpointError(f"{ckpt}: method {meth['name']} (chain {meth['chain_k']}) has no PEFT LoRA form; "
                              f"only {', '.join(EXPORTABLE)} with chain 1 export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not an empty folder; choose another --out")
    tensors, _ = _read_tensors(ckpt / checkpoint.ADAPTER)
    head, widths = man["base"]["head"], {mat["name"]: mat["m"] for mat in man["matrices"]}
    peft: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        owner, _, leaf = key.rpartition(".")
        if leaf in ("lora_A", "lora_B"):
            peft[f"{PREFIX}{owner}.{leaf}.weight"] = t.float()
        elif leaf == "idx":
            peft[f"{PREFIX}{owner}.lora_A.weight"] = selector_matrix(t, widths[owner])
        elif leaf.startswith("frozen_") and t.numel() == 0:
            continue  # a chain's finished links: empty when k = 1
        elif any(key.startswith(h + ".") for h in head):
            peft[PREFIX + key] = t
        else:
            raise CheckpointError(f"{ckpt / checkpoint.ADAPTER}: tensor {key} has no place in a PEFT LoRA adapter")
    base = {k: v for k, v in man["base"].items() if k not in ("sha256", "head")}
    alpha = meth["alpha"]
    config = {
        "peft_type": "LORA", "task_type": None if base["kind"] == "mlp" else "SEQ_CLS",
        "base_model_name_or_path": base.get("path", "mlp") if base["kind"] == "mlp" else base["name"],
        "r": meth["rank"], "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": meth["targets"], "modules_to_save": head, "lora_dropout": 0.0, "bias": "none",
        "use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "init_lora_weights": True,
        "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
    }
    meta = {"format": "pt", "genbound_base": json.dumps(base), "genbound_method": meth["name"],
            "genbound_checkpoint": str(ckpt.resolve())}
    checkpoint.atomic_save_tensors(peft, out / WEIGHTS, meta)  # weights first, the config marks completion
    checkpoint.atomic_write_text(out / CONFIG, json.dumps(config, indent=2))
    return out


def read_adapter_config(adapter: Path) -> dict:
    """adapter_config.json, refusing PEFT features that genbound's AdapterLinear does not compute."""
    path = adapter / CONFIG
    try:
        cfg = json.loads(checkpoint.read_text(path))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    bad = [k for k in VARIANTS if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        bad.append(f"bias={cfg['bias']!r}")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        bad.append("per-module rank_pattern/alpha_pattern")
    if cfg.get("init_lora_weights", True) not in INIT_OK:
        bad.append(f"init_lora_weights={cfg['init_lora_weights']!r}")
    if bad:
        raise CheckpointError(f"{path}: unsupported PEFT feature(s): {', '.join(bad)}")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)):
            raise CheckpointError(f"{path}: {key} is missing or not a number")
    return cfg


def _mlp_hidden(tensors: dict[str, torch.Tensor], head: str = "head") -> list[int]:
    """Hidden sizes of an MLP from B's rows when every hidden.i is adapted (adapters without metadata)."""
    rows = {int(m[1]): t.shape[0] for k, t in tensors.items()
            if (m := re.fullmatch(rf"{PREFIX}hidden\.(\d+)\.lora_B\.weight", k))}
    last = tensors.get(f"{PREFIX}{head}.weight")
    if not rows or sorted(rows) != list(range(len(rows))) or last is None or last.shape[1] != rows[len(rows) - 1]:
        raise CheckpointError("cannot tell the MLP's hidden sizes from this adapter; pass the base as --model")
    return [rows[i] for i in range(len(rows))]


def import_peft(adapter: str | Path, out: str | Path, *, method: str = "lora", data: str, seed: int = 0,
                model: str | None = None) -> dict:
    """Turn PEFT LoRA folder ``adapter`` into genbound checkpoint ``out`` (steps 0); return the manifest.

    The model is built for task ``data`` on ``model`` (default: base_model_name_or_path), A and B go into
    every adapted layer (selectors become idx), the head comes from modules_to_save, and train/test
    metrics are evaluated on the full splits, as at the end of training."""
    adapter, out = Path(adapter), Path(out)
    cfg_json = read_adapter_config(adapter)
    tensors, meta = _read_tensors(adapter / WEIGHTS)
    spec = get_method(method)
    if method not in EXPORTABLE:
        raise CheckpointError(f"a PEFT LoRA adapter imports as {', '.join(EXPORTABLE)}, not as {method}")
    checkpoint.check_fresh(out)
    base = model or cfg_json.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{adapter / CONFIG} names no base_model_name_or_path; pass the base as --model")
    opts = json.loads(meta.get("genbound_base", "{}"))
    names = sorted(k[len(PREFIX):-len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight"))
    if not names or any(not k.startswith(PREFIX) for k in tensors):
        raise CheckpointError(f"{adapter / WEIGHTS}: expected LoRA tensors named {PREFIX}<module>.lora_A.weight")
    hidden = opts.get("hidden") or (_mlp_hidden(tensors) if base == "mlp" else TrainConfig().hidden)
    r, alpha = int(cfg_json["r"]), float(cfg_json["lora_alpha"])
    cfg = TrainConfig(model=base, data=data, method=method, rank=r, alpha=alpha, seed=seed, steps=0,
                      targets=[f"^{re.escape(n)}$" for n in names], hidden=hidden,
                      max_length=opts.get("max_length", TrainConfig.max_length))
    cfg = normalized(cfg)
    start = time.perf_counter()
    task = load_task(cfg.data, seed=seed)
    ref = model_ref(cfg)
    built = build(ref, task, method, r, alpha, 1, seed, cfg.targets)
    if len(built.targets) != len(names):
        missing = sorted(set(names) - set(built.targets))
        raise CheckpointError(f"{adapter / WEIGHTS}: modules {missing[:3]} are not nn.Linear modules of {base}")
    state, used = adapter_state(built.model), set()
    for name, layer in built.layers.items():
        a_key, b_key = f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight"
        if b_key not in tensors:
            raise CheckpointError(f"{adapter / WEIGHTS}: {b_key} is missing")
        a, used = tensors[a_key].float(), used | {a_key, b_key}
        if a.shape != (r, layer.in_features):
            raise CheckpointError(f"{adapter / WEIGHTS}: {a_key} has shape {tuple(a.shape)}, "
                                  f"the model needs {(r, layer.in_features)}")
        if spec.link == DENSE:
            state[f"{name}.lora_A"] = a
        else:
            state[f"{name}.idx"] = selector_indices(a, method, a_key)
        state[f"{name}.lora_B"] = tensors[b_key].float()
    for key in [k for k in state if any(k.startswith(h + ".") for h in built.backbone.head)]:
        if PREFIX + key not in tensors:
            raise CheckpointError(f"{adapter / WEIGHTS}: head tensor {PREFIX + key} is missing "
                                  "(the classification head must be in modules_to_save)")
        state[key], used = tensors[PREFIX + key].float(), used | {PREFIX + key}
    if set(tensors) - used:
        raise CheckpointError(f"{adapter / WEIGHTS}: tensors {sorted(set(tensors) - used)[:3]} do not fit {base}")
    assign_state(built.model, state, str(adapter / WEIGHTS))
    device = pick_device(cfg.device)
    built.model.to(device)
    metrics = {}
    for split_name, split in (("train", task.train), ("test", task.test)):
        inputs = {k: v.to(device) for k, v in built.backbone.encode(split).items()}
        for key, value in evaluate(built.model, inputs, split.y.to(device)).items():
            metrics[f"{split_name}_{key}"] = value
    timing = {"train_seconds": 0.0, "wall_seconds_this_session": time.perf_counter() - start,
              "peak_gpu_memory_bytes": None, "device": str(device), "steps": 0, "steps_per_link": [],
              "imported_from": str(adapter.resolve()), "imported_sha256": {
                  name: sha256_file(adapter / name) for name in (CONFIG, WEIGHTS)}}
    return checkpoint.save(out, cfg=dataclasses.asdict(cfg), built=built, task=task, ref=ref, metrics=metrics,
                           timing=timing, counts=parameter_counts(built))

"""Build the model a run trains: backbone + adapters + trainable flags, and its adapter state.

Used by training and by ``checkpoint.load``, so a checkpoint rebuilds exactly the model that was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Task
from .errors import CheckpointError, MethodError
from .layers import AdapterLinear, adapter_layers, attach, match_targets, set_trainable, stored_tensors
from .methods import ADAPTER, Method, get_method
from .models import Backbone, load_backbone


@dataclass
class Built:
    model: nn.Module
    backbone: Backbone
    method: Method
    targets: list[str]
    rank: int
    alpha: float
    chain: int

    @property
    def layers(self) -> dict[str, AdapterLinear]:
        return adapter_layers(self.model)


ALL_LINEAR = "all-linear"


def build(ref: dict, task: Task, method: str, rank: int, alpha: float, chain: int, seed: int,
          targets: list[str] | None = None) -> Built:
    """Backbone for the task with the method's adapters on ``targets`` (regexes; None = the defaults;
    ["all-linear"] = every Linear or Conv1D module outside the head)."""
    spec = get_method(method)
    if spec.scope != ADAPTER and chain != 1:
        raise MethodError(f"method {method} has no chain: use --chain 1")
    backbone = load_backbone(ref, task, seed)
    model = backbone.model
    if targets == [ALL_LINEAR]:  # every Linear (or Conv1D) outside the classification head
        names = [n for n in match_targets(model, [""]) if not any(n == h or n.startswith(h + ".")
                                                                    for h in backbone.head)]
    else:
        names = backbone.targets if targets is None else match_targets(model, targets)
    if spec.scope == ADAPTER:
        if not names:
            raise MethodError(f"--targets {targets} match no nn.Linear module of the model")
        attach(model, spec, names, rank, alpha, chain, seed)
    set_trainable(model, spec, backbone.head)
    return Built(model, backbone, spec, names if spec.scope == ADAPTER else [], rank, alpha, chain)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trained tensor, plus the adapters' frozen parts that a base model cannot rebuild
    (frozen random A, selector indices, finished chain links). Never the frozen base weights."""
    out = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out.update(stored_tensors(model))
    return {k: v.detach().contiguous() for k, v in out.items()}


def assign_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Put saved tensors into a freshly built model: parameters are copied (shapes must agree), adapter
    buffers replaced (a chain's frozen links grow). Missing or unknown names raise CheckpointError."""
    expected = adapter_state(model)
    missing = sorted(set(expected) - set(tensors))
    unknown = sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise CheckpointError(f"{source} does not fit this model: missing {missing[:3]}, unknown {unknown[:3]}")
    mods = dict(model.named_modules())
    for name, t in tensors.items():
        owner, _, leaf = name.rpartition(".")
        mod = mods[owner] if owner else model
        if leaf in mod._buffers:
            mod._buffers[leaf] = t.to(mod._buffers[leaf].device, mod._buffers[leaf].dtype)
            continue
        p = mod._parameters[leaf]
        if p.shape != t.shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(t.shape)}, the model needs {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(t)
    for name, layer in adapter_layers(model).items():
        try:
            layer.refresh()
        except ValueError as err:
            raise CheckpointError(f"{source}: {name}: {err}") from None


def parameter_counts(built: Built) -> dict[str, int]:
    """docs/theory.md section 3: ``paper`` = adapter numbers only (k links counted), ``full`` = every number
    that training changed (adapters over all links, the head, and for full fine-tuning every weight)."""
    return built.method.layout.counts(built.model, built.backbone.head, built.layers, built.rank,
                                      built.method.links(built.chain))

"""AdapterLinear: a frozen pretrained Linear plus the update of one method, W = W0 + dW.

The layer is a shell. W0 and b are the pretrained layer's own tensors (shared, never copied, never trained);
a transformers ``Conv1D`` (GPT-2's fused qkv ``c_attn``, ...), which stores its weight as in x out and computes
x W + b, is adapted as the Linear it is: W0 = its weight transposed (a view of the same storage), so every
layout's n x m update and merge hold unchanged (PEFT's ``fan_in_fan_out``; the layer records it);
everything else (the method's tensors, the reference forward, the fused fast path, the update, chain links)
belongs to the method's layout (genbound/methods/base.py), which the layer asks. With ``fused`` on (training
does this, see use_fused), forward takes the layout's fused path where it has one: one product with the
merged weight, the same math with less work and memory.
"""

from __future__ import annotations

import copy
import itertools
import re
from contextlib import contextmanager

import torch
from torch import nn

from .methods import Method
from .update import Update


def is_conv1d(mod: nn.Module) -> bool:
    """A transformers Conv1D (GPT-2 family): weight in x out, y = x W + b."""
    return type(mod).__name__ == "Conv1D" and type(mod).__module__.startswith("transformers.")


def is_linear(mod: nn.Module) -> bool:
    """A matrix layer an adapter can replace: nn.Linear or a transformers Conv1D."""
    return isinstance(mod, nn.Linear) or is_conv1d(mod)


def weight_matrix(mod: nn.Module) -> torch.Tensor:
    """The layer's weight as the n x m (out x in) matrix W of y = x W^T + b, whatever its storage (Conv1D's is
    in x out)."""
    return mod.weight.t() if is_conv1d(mod) else mod.weight


class AdapterLinear(nn.Module):
    """A frozen nn.Linear with the update of one method; its layout (``method.layout``) owns the tensors and the
    math (see the module docstring). ``name`` and ``seed`` seed the layout's draws; ``chain`` is k."""

    def __init__(self, base: nn.Module, method: Method, r: int, alpha: float, name: str, seed: int,
                 chain: int = 1, shared: dict | None = None):
        super().__init__()
        self.fan_in_fan_out = is_conv1d(base)  # PEFT's name for a weight stored in x out
        # a Conv1D's W0 is its weight transposed: the same storage, seen as the n x m matrix every layout uses
        weight = nn.Parameter(base.weight.detach().t(), requires_grad=base.weight.requires_grad) \
            if self.fan_in_fan_out else base.weight
        n, m = weight.shape
        self.method, self.layout, self.r, self.alpha = method, method.layout, r, alpha
        self.name, self.seed, self.chain = name, seed, chain
        self.in_features, self.out_features = m, n
        self.scale = 1.0 if self.layout.unit_scale else alpha / r
        self.weight = weight
        self.bias = base.bias
        self.fused = False
        self.layout.setup(self, shared or {})

    @property
    def n_links(self) -> int:
        """Finished (frozen) links plus the trainable one."""
        return self.layout.n_links(self)

    def link_B(self) -> torch.Tensor:
        """The trainable link's output-side factor (PaCA: its column update)."""
        return self.layout.current_B(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and self.layout.fused_path and not self.weight.requires_grad:  # fused: W0 gets no gradient
            return self.layout.fused(self, x)
        return self.layout.forward(self, x)

    def update(self) -> Update:
        """dW over every link, as the layout holds it (factors, columns or dense)."""
        return self.layout.update(self)

    def delta_weight(self) -> torch.Tensor:
        """dW (n x m, in the layer's dtype), from the layout's update without a forward pass."""
        return self.update().to_dense()

    def start_link(self, link: int) -> None:
        """Chain boundary: merge the trainable link into the frozen part and start link ``link``."""
        self.layout.start_link(self, link)

    @torch.no_grad()
    def refresh(self) -> None:
        """After tensors were loaded: check they fit this layer (ValueError) and re-derive what is derived."""
        self.layout.refresh(self)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear with weight W0 + dW, merged by the one rounding rule (genbound.update.merged), for
        export, the dW-space analyses and the merged-equals-unmerged check."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out = out.to(self.weight.device, self.weight.dtype)
        out.weight.copy_(self.update().merged(self.weight))
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, method={self.method.name}, r={self.r}, "
                f"scale={self.scale:g}, links={self.n_links}")


def shallow_clone(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with ``model``."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def merged_model(model: nn.Module) -> nn.Module:
    """A clone of ``model`` sharing its tensors, with each AdapterLinear replaced by its ``merged()`` nn.Linear
    (a fresh weight W0 + dW): the model in dW space, where W = W0 + dW is one tensor whatever the layout.
    ``clone.merged_layers`` lists the replaced names."""
    clone = shallow_clone(model)
    names = list(adapter_layers(clone))
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(clone.get_submodule(parent) if parent else clone, leaf, clone.get_submodule(name).merged())
    clone.merged_layers = names
    return clone


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, AdapterLinear)}


@contextmanager
def use_fused(model: nn.Module, on: bool = True):
    """Within the block, every AdapterLinear of ``model`` runs its fused path (``on``) or the reference one."""
    layers = adapter_layers(model).values()
    before = [layer.fused for layer in layers]
    for layer in layers:
        layer.fused = on
    try:
        yield model
    finally:
        for layer, b in zip(layers, before):
            layer.fused = b


def match_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of nn.Linear (or Conv1D) modules whose full name matches one of the regular expressions (re.search)."""
    rx = [re.compile(p) for p in patterns]
    return [n for n, mod in model.named_modules()
            if is_linear(mod) and any(r.search(n) for r in rx)]


def attach(model: nn.Module, method: Method, targets: list[str], r: int, alpha: float, k: int,
           seed: int) -> dict[str, AdapterLinear]:
    """Replace each target nn.Linear (or Conv1D) of ``model`` by an AdapterLinear (in place); check ranks first."""
    mods = dict(model.named_modules())
    shapes = {name: tuple(weight_matrix(mods[name]).shape) for name in targets}
    for name, (n, m) in shapes.items():
        method.check(n, m, r, k, name)
    shared = method.layout.shared(shapes, r, seed)
    for name in targets:
        layer = AdapterLinear(mods[name], method, r, alpha, name, seed, k, shared)
        parent, _, leaf = name.rpartition(".")
        setattr(mods[parent] if parent else model, leaf, layer)
    return adapter_layers(model)


def next_link(model: nn.Module, link: int) -> None:
    """Start link ``link`` (1..k-1) in every adapter layer of the model."""
    for layer in adapter_layers(model).values():
        layer.start_link(link)


def set_trainable(model: nn.Module, method: Method, head: list[str]) -> None:
    """requires_grad: what the layout trains (every weight for full, the head, the adapters' link tensors)."""
    layers = adapter_layers(model)
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if method.layout.trains(name, head):  # every weight for full, the head for every method
            p.requires_grad_(True)
        else:
            p.requires_grad_(owner in layers and leaf in layers[owner].layout.trainable)


def link_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter layers' trainable link tensors, by full name (what the Hessian's ``adapters`` set holds)."""
    return {f"{name}.{leaf}": getattr(layer, leaf) for name, layer in adapter_layers(model).items()
            for leaf in layer.layout.trainable}


def stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the adapter layers store in a checkpoint (trained and frozen), by full name."""
    return {f"{name}.{leaf}": getattr(layer, leaf) for name, layer in adapter_layers(model).items()
            for leaf in layer.layout.stored if getattr(layer, leaf, None) is not None}

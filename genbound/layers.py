"""AdapterLinear: a frozen pretrained Linear plus a chain of low-rank links, one of them trainable.

    y = x W0^T + b + s * sum_{t < now} B_t (A_t x) + s * B (A x)

W0 and b are the pretrained layer's own tensors (shared, never copied, never trained). Finished links
of a chain are kept as stacked factors (frozen_B: n x K with frozen_A: K x m, or frozen_idx: K) so the
update stays visible to spectra and bounds; the trainable link is (lora_A, lora_B) for dense links,
(idx, lora_B) for selectors, and (idx, columns) for PaCA, whose update is columns - W0[:, idx] at scale 1.
Selectors gather ``x.index_select(-1, idx)``: nothing dense is multiplied and autograd keeps only the
r gathered columns for B's gradient. Departure from loralib: no dropout on the adapter path.
With ``fused`` on (training does this, see use_fused), forward goes through fused.py instead: one
product with the merged weight, the same math with less work and memory.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .fused import fused_linear
from .methods import COLUMNS, DENSE, FULL, HEAD, Method
from .runtime import generator


class LowRank(NamedTuple):
    """dW = B @ A (dense) or dW[:, idx] = B (selector; repeated columns add up). B includes the scale s."""

    B: torch.Tensor
    A: torch.Tensor | None
    idx: torch.Tensor | None

    def dense(self, m: int) -> torch.Tensor:
        if self.A is not None:
            return self.B @ self.A
        out = self.B.new_zeros(self.B.shape[0], m)
        return out.index_add_(1, self.idx, self.B)


class AdapterLinear(nn.Module):
    """A frozen nn.Linear with the update of one method; see the module docstring for the math."""

    def __init__(self, base: nn.Linear, method: Method, r: int, alpha: float,
                 a: torch.Tensor | None = None, idx: torch.Tensor | None = None):
        super().__init__()
        n, m = base.weight.shape
        self.method, self.r, self.alpha = method, r, alpha
        self.in_features, self.out_features = m, n
        self.scale = 1.0 if method.unit_scale else alpha / r
        self.weight = base.weight
        self.bias = base.bias
        w, dev = base.weight, base.weight.device
        if method.link == DENSE:
            self.lora_A = nn.Parameter(a.to(dev, torch.float32), requires_grad=method.train_a)
            self.register_buffer("frozen_A", torch.zeros(0, m, device=dev))
        else:
            self.register_buffer("idx", idx.to(dev, torch.long))
            self.register_buffer("frozen_idx", torch.zeros(0, dtype=torch.long, device=dev))
        if method.link == COLUMNS:
            self.register_buffer("w0_cols", w.detach()[:, self.idx].float().clone())
            self.columns = nn.Parameter(self.w0_cols.clone())
        else:
            self.lora_B = nn.Parameter(torch.zeros(n, r, device=dev))
        self.register_buffer("frozen_B", torch.zeros(n, 0, device=dev))
        self.fused = False

    @property
    def dense_link(self) -> bool:
        return self.method.link == DENSE

    @property
    def n_links(self) -> int:
        """Finished (frozen) links plus the trainable one."""
        return self.frozen_B.shape[1] // self.r + 1

    def link_B(self) -> torch.Tensor:
        """B of the trainable link (PaCA: its column update)."""
        return self.columns - self.w0_cols if self.method.link == COLUMNS else self.lora_B

    def _project(self, x: torch.Tensor, a_or_idx: torch.Tensor) -> torch.Tensor:
        return F.linear(x, a_or_idx) if self.dense_link else x.index_select(-1, a_or_idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and not self.weight.requires_grad:  # the fused path gives W0 no gradient
            return fused_linear(self, x)
        y = F.linear(x, self.weight, self.bias)
        if self.frozen_B.shape[1]:
            frozen = self.frozen_A if self.dense_link else self.frozen_idx
            y = y + self.scale * F.linear(self._project(x, frozen), self.frozen_B)
        current = self.lora_A if self.dense_link else self.idx
        return y + self.scale * F.linear(self._project(x, current), self.link_B())

    def factors(self) -> LowRank:
        """Every link stacked: dW = s * sum_t B_t A_t as one LowRank (B scaled by s)."""
        B = self.scale * torch.cat([self.frozen_B, self.link_B()], 1)
        if self.dense_link:
            return LowRank(B, torch.cat([self.frozen_A, self.lora_A], 0), None)
        return LowRank(B, None, torch.cat([self.frozen_idx, self.idx]))

    def delta_weight(self) -> torch.Tensor:
        """dW = s * sum_t B_t A_t (n x m, float32), computed from the factors without a forward pass."""
        return self.factors().dense(self.in_features)

    @torch.no_grad()
    def start_link(self, a: torch.Tensor | None = None, idx: torch.Tensor | None = None) -> None:
        """Chain boundary: merge the trainable link into the frozen factors and restart it (B = 0)."""
        self.frozen_B = torch.cat([self.frozen_B, self.lora_B.detach().clone()], 1)
        if self.dense_link:
            self.frozen_A = torch.cat([self.frozen_A, self.lora_A.detach().clone()], 0)
            self.lora_A.copy_(a)
        else:
            self.frozen_idx = torch.cat([self.frozen_idx, self.idx])
            self.idx = idx.to(self.idx.device, torch.long)
        self.lora_B.zero_()

    @torch.no_grad()
    def refresh(self) -> None:
        """After tensors were loaded: check the link tensors fit this layer (ValueError otherwise) and
        re-derive PaCA's W0 columns from the loaded idx (never from a re-drawn selector)."""
        n, m, r = self.out_features, self.in_features, self.r
        K = self.frozen_B.shape[1]
        if self.frozen_B.shape[0] != n or K % r:
            raise ValueError(f"frozen_B has shape {tuple(self.frozen_B.shape)}, expected ({n}, a multiple of {r})")
        if self.dense_link:
            if tuple(self.frozen_A.shape) != (K, m):
                raise ValueError(f"frozen_A has shape {tuple(self.frozen_A.shape)}, expected ({K}, {m})")
            return
        for key, size in (("idx", r), ("frozen_idx", K)):
            t = getattr(self, key)
            if t.shape != (size,) or (size and not 0 <= int(t.min()) <= int(t.max()) < m):
                raise ValueError(f"{key} must hold {size} column indices in [0, {m})")
        if self.method.link == COLUMNS:
            self.w0_cols = self.weight.detach()[:, self.idx].to(self.w0_cols.dtype).clone()

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear with weight W0 + dW (for export and for the merged-equals-unmerged check)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out = out.to(self.weight.device, self.weight.dtype)
        out.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, method={self.method.name}, r={self.r}, "
                f"scale={self.scale:g}, links={self.n_links}")


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
    """Names of nn.Linear modules whose full name matches one of the regular expressions (re.search)."""
    rx = [re.compile(p) for p in patterns]
    return [n for n, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and any(r.search(n) for r in rx)]


def link_init(method: Method, name: str, n: int, m: int, r: int, k: int, link: int, seed: int) -> dict:
    """Keyword arguments (a= or idx=) that start link ``link`` of matrix ``name``."""
    if method.link == DENSE:
        return {"a": method.init_a(r, m, generator(seed, name, link))}
    return {"idx": method.select(m, r, k, link, generator(seed, name))}


def attach(model: nn.Module, method: Method, targets: list[str], r: int, alpha: float, k: int,
           seed: int) -> dict[str, AdapterLinear]:
    """Replace each target nn.Linear of ``model`` by an AdapterLinear (in place); check ranks first."""
    mods = dict(model.named_modules())
    for name in targets:
        n, m = mods[name].weight.shape
        method.check(n, m, r, k, name)
    for name in targets:
        base = mods[name]
        n, m = base.weight.shape
        layer = AdapterLinear(base, method, r, alpha, **link_init(method, name, n, m, r, k, 0, seed))
        parent, _, leaf = name.rpartition(".")
        setattr(mods[parent] if parent else model, leaf, layer)
    return adapter_layers(model)


def next_link(model: nn.Module, link: int, k: int, seed: int) -> None:
    """Start link ``link`` (1..k-1) in every adapter layer of the model."""
    for name, layer in adapter_layers(model).items():
        n, m = layer.out_features, layer.in_features
        layer.start_link(**link_init(layer.method, name, n, m, layer.r, k, link, seed))


def set_trainable(model: nn.Module, method: Method, head: list[str]) -> None:
    """requires_grad: every weight for full, the head for head-only, head + link tensors for adapters."""
    for name, p in model.named_parameters():
        if method.scope == FULL:
            p.requires_grad_(True)
        elif any(name == h or name.startswith(h + ".") for h in head):
            p.requires_grad_(True)
        else:
            p.requires_grad_(method.scope != HEAD and is_link_tensor(name, method))


def is_link_tensor(name: str, method: Method) -> bool:
    """A tensor of the trainable link (by its name): B, PaCA's columns, and A where the method trains it."""
    leaf = name.rpartition(".")[2]
    return leaf in ("lora_B", "columns") or (leaf == "lora_A" and method.train_a)

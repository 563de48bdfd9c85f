"""What a method is: a registered name with a layout, the object that owns how its numbers sit on a model.

A ``Layout`` owns everything that depends on which tensors a method has: their names, which of them train,
their seeded initialisation, the update dW they make (``genbound.update.Update``), the paper and full
parameter counts (docs/theory.md section 3), what a decoder knows before reading any bits (the compression
bound, section 5), how a chain link merges and restarts, the fused fast path where there is one, and the
PEFT form. The layer (``genbound.layers.AdapterLinear``) is a shell that asks its layout, and no other module
names a method's tensors. Adding a method = one module that defines (or reuses) a layout and registers it.

Scopes: an ``adapter`` layout puts an AdapterLinear on each target matrix; ``full`` trains every weight and
``head`` only the classification head (no adapter layer). The head trains with every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import MethodError
from ..registry import Registry

if TYPE_CHECKING:
    from ..layers import AdapterLinear
    from ..update import Update

ADAPTER, FULL, HEAD = "adapter", "full", "head"


# ---- seeded initialisations (docs/theory.md section 10) ---------------------------------------------------------
def kaiming_a(r: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """LoRA's A: Kaiming-uniform with a = sqrt(5) (bound 1/sqrt(m)), as PEFT and loralib do."""
    bound = 1.0 / math.sqrt(m)
    return (torch.rand(r, m, generator=gen) * 2 - 1) * bound


def gaussian_a(r: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """Frozen random A for asymmetric LoRA and RAC: N(0, 1/m), so each row has norm ~1 like a selector row."""
    return torch.randn(r, m, generator=gen) / math.sqrt(m)


def first_columns(m: int, r: int, k: int, link: int, gen: torch.Generator) -> torch.Tensor:
    """cLA: A = [I_r 0] (columns 0..r-1)."""
    return torch.arange(r)


def random_columns(m: int, r: int, k: int, link: int, gen: torch.Generator) -> torch.Tensor:
    """random-cLA / PaCA: r distinct columns drawn with the run seed (per matrix), sorted."""
    return torch.randperm(m, generator=gen)[:r].sort().values


def window(m: int, r: int, k: int, link: int, gen: torch.Generator) -> torch.Tensor:
    """c3LA: link t selects columns [t*r, (t+1)*r); the k windows are disjoint and cover [0, k*r)."""
    return torch.arange(link * r, (link + 1) * r)


def random_window(m: int, r: int, k: int, link: int, gen: torch.Generator) -> torch.Tensor:
    """random-c3LA: the m // r windows in a seeded random order, without replacement; link t takes the t-th."""
    order = torch.randperm(m // r, generator=gen)
    w = int(order[link])
    return torch.arange(w * r, (w + 1) * r)


def is_head(name: str, head: list[str]) -> bool:
    """Whether parameter ``name`` belongs to one of the head modules."""
    return any(name == h or name.startswith(h + ".") for h in head)


# ---- layouts -----------------------------------------------------------------------------------------------
class Layout:
    """The parent of every layout: the scope and the two counts of a model (see the module docstring)."""

    scope: str = ADAPTER
    kind: str = ""  # recorded in manifests (the old "link" key)
    fused_path: bool = False  # whether training can take fused.py's one-product path
    unit_scale: bool = False  # s = 1 instead of alpha / r

    def trains(self, name: str, head: list[str]) -> bool:
        """Whether parameter ``name`` of a model that is not an adapter layer's trains (the head does)."""
        return is_head(name, head)

    def counts(self, model: nn.Module, head: list[str], layers: dict[str, AdapterLinear], r: int,
               links: int) -> dict[str, int]:
        """docs/theory.md section 3: ``paper`` = adapter numbers only, ``full`` = every number training changed."""
        n_head = sum(p.numel() for n, p in model.named_parameters() if is_head(n, head))
        paper = sum(self.paper_count(la.out_features, la.in_features, r, links) for la in layers.values())
        return {"paper": paper, "full": paper + n_head, "head": n_head}

    def paper_count(self, n: int, m: int, r: int, links: int) -> int:
        return 0

    def check(self, n: int, m: int, r: int, links: int, name: str) -> None:
        """Raise MethodError when rank r with ``links`` links cannot be placed on an n x m matrix."""


class AdapterLayout(Layout):
    """A layout that adds an AdapterLinear to each target matrix. Subclasses name their tensors as class
    attributes and implement the methods below; ``layer`` is always the AdapterLinear being served."""

    stored: tuple[str, ...] = ()  # every tensor a checkpoint keeps for one layer (trained and frozen)
    trainable: tuple[str, ...] = ()  # the leaves that train
    fast: tuple[str, ...] = ()  # the leaves that get lr * lr_ratio (LoRA+: B)

    # construction and links
    def shared(self, shapes: dict[str, tuple[int, int]], r: int, seed: int) -> dict:
        """Tensors every layer of the model draws from (VeRA's shared projections); {} by default."""
        return {}

    def setup(self, layer: AdapterLinear, shared: dict) -> None:
        """Create the layer's tensors for link 0 (parameters with the right requires_grad, buffers)."""
        raise NotImplementedError

    def start_link(self, layer: AdapterLinear, link: int) -> None:
        """Chain boundary: merge the trainable link into the frozen part and start link ``link`` afresh."""
        raise MethodError(f"method {layer.method.name} has no chain")

    def refresh(self, layer: AdapterLinear) -> None:
        """After tensors were loaded: check they fit the layer (ValueError) and re-derive what is derived."""

    def n_links(self, layer: AdapterLinear) -> int:
        return 1

    # the update
    def forward(self, layer: AdapterLinear, x: torch.Tensor) -> torch.Tensor:
        """The reference path: y = x W^T + b with W = W0 + dW, computed without forming dW where possible."""
        raise NotImplementedError

    def fused(self, layer: AdapterLinear, x: torch.Tensor) -> torch.Tensor:
        """The fast path (only where ``fused_path``): the same y in one product with the merged weight."""
        raise NotImplementedError

    def update(self, layer: AdapterLinear) -> Update:
        """dW over every link."""
        raise NotImplementedError

    def update_from(self, layer: AdapterLinear, tensors: dict[str, torch.Tensor], link: int) -> Update:
        """dW when link ``link`` held ``tensors`` (a trajectory snapshot's trainable tensors, by leaf): the links
        before it are taken from the layer's final frozen part."""
        raise NotImplementedError

    def current_B(self, layer: AdapterLinear) -> torch.Tensor:
        """The trainable link's output-side factor (what moves from zero)."""
        raise NotImplementedError

    # what a decoder knows before reading any bits (the compression bound)
    def decoder_start(self, layer: AdapterLinear, leaf: str) -> torch.Tensor | None:
        """The value of stored tensor ``leaf`` before training, which a decoder can rebuild from the seed and
        the base alone; None when the tensor is not coded at all (frozen, or fixed by the seed)."""
        raise NotImplementedError

    # PEFT (genbound.peft_io writes and reads the folder; the layout maps the tensors, without a model)
    peft_type: str | None = None  # None: no PEFT form
    peft_out_key: str = ""  # the PEFT tensor every adapted module has, first dimension n (finds the modules)

    def peft_config(self, alpha: float, seed: int) -> dict:
        """adapter_config.json keys beyond the common ones (peft_type, r, targets, head)."""
        return {}

    def peft_refuse(self, cfg: dict) -> list[str]:
        """The features of a PEFT config that this layout does not compute (empty: it imports)."""
        return []

    def peft_alpha(self, cfg: dict) -> float:
        """genbound's alpha for a PEFT config."""
        return float(cfg["r"])

    def to_peft(self, tensors: dict[str, torch.Tensor], n: int, m: int, r: int, where: str) -> dict[str, torch.Tensor]:
        """One layer's stored tensors (by leaf) in PEFT's names relative to the module (e.g. "lora_A.weight");
        CheckpointError naming ``where`` when they have no PEFT form (a chain's finished links)."""
        raise NotImplementedError

    def peft_shared(self, per_layer: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Tensors PEFT stores once for the whole model (VeRA's projections), by key after ``base_model.``."""
        return {}

    def from_peft(self, tensors: dict[str, torch.Tensor], shared: dict[str, torch.Tensor], n: int, m: int, r: int,
                  method: str, where: str) -> dict[str, torch.Tensor]:
        """One layer's stored tensors (by leaf) from PEFT's tensors of its module (relative names) and the shared
        ones; CheckpointError naming ``where`` when they do not fit."""
        raise NotImplementedError


class FullLayout(Layout):
    """Full fine-tuning: every weight trains; both counts are the model's size."""

    scope, kind = FULL, "full"

    def trains(self, name: str, head: list[str]) -> bool:
        return True

    def counts(self, model, head, layers, r, links):
        n_head = sum(p.numel() for n, p in model.named_parameters() if is_head(n, head))
        total = sum(p.numel() for p in model.parameters())
        return {"paper": total, "full": total, "head": n_head}


class HeadLayout(Layout):
    """Head-only training: the classification head alone trains; both counts are its size."""

    scope, kind = HEAD, "head"

    def counts(self, model, head, layers, r, links):
        n_head = sum(p.numel() for n, p in model.named_parameters() if is_head(n, head))
        return {"paper": n_head, "full": n_head, "head": n_head}


# ---- methods -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One fine-tuning method: a name, a layout, whether it chains links, its default lr_B / lr_A."""

    name: str
    title: str
    layout: Layout
    chain: bool = False
    lr_ratio: float = 1.0  # default lr_B / lr_A (LoRA+)
    notes: str = field(default="", compare=False)

    @property
    def scope(self) -> str:
        return self.layout.scope

    def links(self, k: int) -> int:
        """How many links a run with chain length k trains (1 without a chain)."""
        return k if self.chain else 1

    def check(self, n: int, m: int, r: int, k: int, name: str = "matrix") -> None:
        """Raise MethodError when rank r or chain length k is impossible for an n x m matrix."""
        if r < 1:
            raise MethodError(f"--rank must be >= 1, got {r}")
        if k < 1:
            raise MethodError(f"--chain must be >= 1, got {k}")
        if k > 1 and not self.chain:
            chains = ", ".join(m.name for m in _REGISTRY.values() if m.chain)
            raise MethodError(f"method {self.name} has no chain: use --chain 1 (chains: {chains})")
        try:
            self.layout.check(n, m, r, self.links(k), name)
        except MethodError as err:
            raise MethodError(f"{self.name}: {err}") from None

    def paper_count(self, n: int, m: int, r: int, k: int) -> int:
        """Trainable numbers of one adapted n x m matrix over all links (paper count)."""
        return self.layout.paper_count(n, m, r, self.links(k))


_REGISTRY: Registry[Method] = Registry("method", MethodError)
register, get_method = _REGISTRY.add, _REGISTRY.find


def method_names() -> list[str]:
    return list(_REGISTRY)

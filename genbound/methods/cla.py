"""Column-selector adapters: cLA, random-cLA and their chains c3LA and random-c3LA.

A is a selector, rows idx of the identity: dW = s * B A puts s B on the columns idx, A x = x[..., idx] is
gathered and never multiplied as a dense matrix, and autograd keeps only the r gathered columns for B's
gradient. Only B (n x r) trains. Finished links are kept as frozen_B (n x K) with frozen_idx (K).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, MethodError
from ..fused import fused_lowrank
from ..runtime import generator
from ..update import Update
from .base import AdapterLayout, Method, first_columns, random_columns, random_window, register, window
from .lora import LoraPeft, freeze_B, frozen_columns, one_link, peft_pair

Select = Callable[[int, int, int, int, torch.Generator], torch.Tensor]


class Selector(LoraPeft, AdapterLayout):
    """dW[:, idx_t] += s B_t over the links; idx from ``select(m, r, k, link, generator(seed, matrix name))``
    (one stream per matrix, so all links of a chain draw from the same permutation)."""

    kind = "select"
    fused_path = True
    IDX, B, FROZEN_IDX, FROZEN_B = "idx", "lora_B", "frozen_idx", "frozen_B"
    stored = (B, IDX, FROZEN_B, FROZEN_IDX)
    trainable = (B,)
    fast = (B,)

    def __init__(self, select: Select):
        self.select = select

    def paper_count(self, n: int, m: int, r: int, links: int) -> int:
        return links * r * n

    def check(self, n: int, m: int, r: int, links: int, name: str) -> None:
        if r * links > m:
            raise MethodError(f"rank {r} x chain {links} = {r * links} columns, but {name} has only {m} input columns")

    def draw_idx(self, layer, link: int) -> torch.Tensor:
        return self.select(layer.in_features, layer.r, layer.chain, link, generator(layer.seed, layer.name))

    def setup(self, layer, shared: dict) -> None:
        n, dev = layer.out_features, layer.weight.device
        layer.register_buffer(self.IDX, self.draw_idx(layer, 0).to(dev, torch.long))
        layer.register_buffer(self.FROZEN_IDX, torch.zeros(0, dtype=torch.long, device=dev))
        self.setup_B(layer)
        layer.register_buffer(self.FROZEN_B, torch.zeros(n, 0, device=dev))

    def setup_B(self, layer) -> None:
        layer.lora_B = nn.Parameter(torch.zeros(layer.out_features, layer.r, device=layer.weight.device))

    def n_links(self, layer) -> int:
        return layer.frozen_B.shape[1] // layer.r + 1

    @torch.no_grad()
    def start_link(self, layer, link: int) -> None:
        layer.frozen_idx = torch.cat([layer.frozen_idx, layer.idx])
        layer.idx = self.draw_idx(layer, link).to(layer.idx.device, torch.long)
        freeze_B(layer)

    def refresh(self, layer) -> None:
        m, r, K = layer.in_features, layer.r, frozen_columns(layer)
        for key, size in ((self.IDX, r), (self.FROZEN_IDX, K)):
            t = getattr(layer, key)
            if t.shape != (size,) or (size and not 0 <= int(t.min()) <= int(t.max()) < m):
                raise ValueError(f"{key} must hold {size} column indices in [0, {m})")

    def current_B(self, layer) -> torch.Tensor:
        return layer.lora_B

    def frozen(self, layer) -> Update:
        return Update.columns(layer.frozen_B, layer.frozen_idx, layer.in_features, layer.scale)

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, layer.weight, layer.bias)
        if layer.frozen_B.shape[1]:
            y = y + layer.scale * F.linear(x.index_select(-1, layer.frozen_idx), layer.frozen_B)
        return y + layer.scale * F.linear(x.index_select(-1, layer.idx), self.current_B(layer))

    def fused(self, layer, x: torch.Tensor) -> torch.Tensor:
        return fused_lowrank(x, layer.weight, layer.bias, self.current_B(layer), None, layer.idx,
                             self.frozen(layer), layer.scale)

    def update(self, layer) -> Update:
        return Update.columns(torch.cat([layer.frozen_B, self.current_B(layer)], 1),
                              torch.cat([layer.frozen_idx, layer.idx]), layer.in_features, layer.scale)

    def update_from(self, layer, tensors: dict[str, torch.Tensor], link: int) -> Update:
        r, last, dev = layer.r, self.n_links(layer) - 1, layer.frozen_B.device
        if link > last:
            raise CheckpointError(f"a snapshot of link {link}, but {layer.name} has {last + 1} links")
        idx = layer.idx if link == last else layer.frozen_idx[link * r:(link + 1) * r]
        return Update.columns(torch.cat([layer.frozen_B[:, :link * r], tensors[self.B].to(dev)], 1),
                              torch.cat([layer.frozen_idx[:link * r], idx]), layer.in_features, layer.scale)

    def decoder_start(self, layer, leaf: str) -> torch.Tensor | None:
        if leaf in (self.B, self.FROZEN_B):
            return torch.zeros_like(getattr(layer, leaf))
        return None  # the columns are fixed by the seed

    # PEFT: lora_A.weight = the one-hot rows I_m[idx]; lora_B.weight = B
    def to_peft(self, tensors, n, m, r, where):
        one_link(tensors, self.FROZEN_B, where)
        return {"lora_A.weight": F.one_hot(tensors[self.IDX].long(), m).float(),
                "lora_B.weight": tensors[self.B].float()}

    def from_peft(self, tensors, shared, n, m, r, method, where):
        a, b = peft_pair(tensors, n, m, r, where)
        return {self.IDX: selector_indices(a, method, f"{where}.lora_A.weight", first=self.select is first_columns),
                self.B: b}


def selector_indices(a: torch.Tensor, method: str, where: str, first: bool = False) -> torch.Tensor:
    """idx with A = I_m[idx], checking A is a selector of distinct columns (``first``: exactly 0..r-1)."""
    ones = a == 1
    if not bool((ones | (a == 0)).all() and (ones.sum(1) == 1).all()):
        raise CheckpointError(f"{where}: lora_A is not a column selector (each row one 1, zeros elsewhere), "
                              f"so it cannot be imported as {method}; use method lora or asym")
    idx = ones.int().argmax(1)
    if len(set(idx.tolist())) != len(idx):
        raise CheckpointError(f"{where}: lora_A selects a column twice; {method} needs distinct columns")
    if first and not torch.equal(idx, torch.arange(len(idx))):
        raise CheckpointError(f"{where}: lora_A selects columns {idx.tolist()}, not the first r; use method rcla")
    return idx


CLA = register(Method("cla", "cLA", Selector(first_columns)))
RCLA = register(
    Method("rcla", "random-cLA", Selector(random_columns),
           notes="columns drawn from the run seed, per matrix, and stored in the checkpoint.")
)
C3LA = register(
    Method("c3la", "c3LA", Selector(window), chain=True,
           notes="link t: columns [t r, (t+1) r); at each boundary B is merged, frozen and a new B = 0 starts.")
)
RC3LA = register(Method("rc3la", "random-c3LA", Selector(random_window), chain=True))

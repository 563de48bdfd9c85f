"""What a method is: which tensors train, how each link starts, and how many numbers it stores.

Every adapter method is one ``Method`` record; the layer (``genbound.layers.AdapterLinear``) is shared.
A link is one low-rank term ``s * B_t A_t`` of the update; a chain of k links trains them in turn,
merging each into the frozen part before the next starts (THEORY.md section 3, DESIGN.md methods table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable

import torch

from ..errors import MethodError
from ..runtime import generator  # noqa: F401  (methods draw their tensors from it)

# link kinds
DENSE = "dense"  # A is a dense r x m matrix (trainable or frozen)
SELECT = "select"  # A is a column selector: x[..., idx]
COLUMNS = "columns"  # PaCA: r columns of W itself are the trainable numbers

# scopes
ADAPTER, FULL, HEAD = "adapter", "full", "head"


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


@dataclass(frozen=True)
class Method:
    """One fine-tuning method (DESIGN.md methods table).

    ``init_a(r, m, gen)`` gives A for dense links; ``select(m, r, k, link, gen)`` gives the column indices
    of selector and PaCA links. The generator is ``generator(seed, matrix_name)`` for selectors (one
    stream per matrix, so all links of a chain draw from the same permutation) and
    ``generator(seed, matrix_name, link)`` for dense A.
    """

    name: str
    scope: str
    title: str
    link: str | None = None
    train_a: bool = False
    chain: bool = False
    lr_ratio: float = 1.0  # default lr_B / lr_A (LoRA+)
    init_a: Callable[[int, int, torch.Generator], torch.Tensor] | None = None
    select: Callable[[int, int, int, int, torch.Generator], torch.Tensor] | None = None
    unit_scale: bool = False  # PaCA trains the weights themselves: s = 1
    notes: str = field(default="", compare=False)

    def stored_per_matrix(self, n: int, m: int, r: int, k: int) -> int:
        """Trainable scalars of one adapted n x m matrix over all k links (THEORY.md section 3, paper count)."""
        per_link = r * (m + n) if self.train_a else r * n
        return (k if self.chain else 1) * per_link

    def check(self, n: int, m: int, r: int, k: int, name: str = "matrix") -> None:
        """Raise MethodError when rank r or chain length k is impossible for an n x m matrix."""
        if r < 1:
            raise MethodError(f"--rank must be >= 1, got {r}")
        if k < 1:
            raise MethodError(f"--chain must be >= 1, got {k}")
        if k > 1 and not self.chain:
            raise MethodError(f"method {self.name} has no chain: use --chain 1 (chains: cola, rac, c3la, rc3la)")
        if self.link in (SELECT, COLUMNS):
            need = r * k if self.chain else r
            if need > m:
                raise MethodError(
                    f"{self.name}: rank {r} x chain {k} = {need} columns, but {name} has only {m} input columns"
                )
        elif self.link == DENSE and r > min(n, m):
            raise MethodError(f"{self.name}: rank {r} exceeds min(n, m) = {min(n, m)} of {name} ({n} x {m})")


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name} registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The method registered under ``name``; MethodError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}") from None


def method_names() -> list[str]:
    return list(_REGISTRY)

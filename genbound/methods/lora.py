"""LoRA (Hu et al. 2021), LoRA+ (Hayou et al. 2024) and CoLA, the chain of LoRA links (Xia et al. 2024), on the
dense low-rank layout, which asymmetric LoRA and RAC (asym.py) and DoRA (dora.py) share.

    y = x W0^T + b + s * sum_{t < now} B_t (A_t x) + s * B (A x),     s = alpha / r

The trainable link is (lora_A: r x m, lora_B: n x r); finished links of a chain are kept as stacked frozen
factors (frozen_B: n x K, frozen_A: K x m) so spectra and bounds see every link. Departure from loralib: no
dropout on the adapter path.
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
from .base import AdapterLayout, Method, kaiming_a, register


LORA_VARIANTS = ("use_dora", "use_rslora", "use_qalora", "use_bdlora", "lora_bias", "layer_replication",
                 "trainable_token_indices", "target_parameters", "alora_invocation_tokens", "arrow_config",
                 "kasa_config", "velora_config", "monteclora_config")
INIT_OK = (True, False, "gaussian", "eva", "orthogonal")  # other inits change W0 (PiSSA, OLoRA, ...) or the forward


class LoraPeft:
    """The PEFT LoRA config of the LoRA-shaped layouts (use_dora says whether DoRA's magnitude is on)."""

    peft_type, peft_out_key, use_dora = "LORA", "lora_B.weight", False

    def peft_config(self, alpha: float, seed: int) -> dict:
        return {"lora_alpha": int(alpha) if float(alpha).is_integer() else alpha, "lora_dropout": 0.0,
                "bias": "none", "use_dora": self.use_dora, "use_rslora": False, "fan_in_fan_out": False,
                "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {}}

    def peft_refuse(self, cfg: dict) -> list[str]:
        bad = [f"{k}={cfg.get(k)!r}" for k in LORA_VARIANTS if k != "use_dora" and cfg.get(k)]
        if bool(cfg.get("use_dora")) != self.use_dora:
            bad.append(f"use_dora={bool(cfg.get('use_dora'))} (method dora {'is' if self.use_dora else 'reads'} it)")
        if cfg.get("bias", "none") != "none":
            bad.append(f"bias={cfg['bias']!r}")
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            bad.append("per-module rank_pattern/alpha_pattern")
        if cfg.get("init_lora_weights", True) not in INIT_OK:
            bad.append(f"init_lora_weights={cfg['init_lora_weights']!r}")
        if not isinstance(cfg.get("lora_alpha"), (int, float)):
            bad.append("lora_alpha missing or not a number")
        return bad

    def peft_alpha(self, cfg: dict) -> float:
        return float(cfg["lora_alpha"])


class LowRank(LoraPeft, AdapterLayout):
    """dW = s sum_t B_t A_t with a dense A: trained (LoRA) or frozen random (asymmetric LoRA)."""

    kind = "dense"
    fused_path = True
    A, B, FROZEN_A, FROZEN_B = "lora_A", "lora_B", "frozen_A", "frozen_B"
    stored = (A, B, FROZEN_A, FROZEN_B)
    fast = (B,)

    def __init__(self, init_a: Callable[[int, int, torch.Generator], torch.Tensor], train_a: bool):
        self.init_a, self.train_a = init_a, train_a
        self.trainable = (self.A, self.B) if train_a else (self.B,)

    def paper_count(self, n: int, m: int, r: int, links: int) -> int:
        return links * (r * (m + n) if self.train_a else r * n)

    def check(self, n: int, m: int, r: int, links: int, name: str) -> None:
        if r > min(n, m):
            raise MethodError(f"rank {r} exceeds min(n, m) = {min(n, m)} of {name} ({n} x {m})")

    def draw_a(self, layer, link: int) -> torch.Tensor:
        """A of link ``link``: drawn from generator(seed, matrix name, link)."""
        return self.init_a(layer.r, layer.in_features, generator(layer.seed, layer.name, link))

    def setup(self, layer, shared: dict) -> None:
        n, m, dev = layer.out_features, layer.in_features, layer.weight.device
        layer.lora_A = nn.Parameter(self.draw_a(layer, 0).to(dev, torch.float32), requires_grad=self.train_a)
        layer.lora_B = nn.Parameter(torch.zeros(n, layer.r, device=dev))
        layer.register_buffer(self.FROZEN_A, torch.zeros(0, m, device=dev))
        layer.register_buffer(self.FROZEN_B, torch.zeros(n, 0, device=dev))

    def n_links(self, layer) -> int:
        return layer.frozen_B.shape[1] // layer.r + 1

    @torch.no_grad()
    def start_link(self, layer, link: int) -> None:
        layer.frozen_A = torch.cat([layer.frozen_A, layer.lora_A.detach().clone()], 0)
        layer.lora_A.copy_(self.draw_a(layer, link))
        freeze_B(layer)

    def refresh(self, layer) -> None:
        m, K = layer.in_features, frozen_columns(layer)
        if tuple(layer.frozen_A.shape) != (K, m):
            raise ValueError(f"frozen_A has shape {tuple(layer.frozen_A.shape)}, expected ({K}, {m})")

    def current_B(self, layer) -> torch.Tensor:
        return layer.lora_B

    def frozen(self, layer) -> Update:
        return Update.factors(layer.frozen_B, layer.frozen_A, layer.scale)

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, layer.weight, layer.bias)
        if layer.frozen_B.shape[1]:
            y = y + layer.scale * F.linear(F.linear(x, layer.frozen_A), layer.frozen_B)
        return y + layer.scale * F.linear(F.linear(x, layer.lora_A), layer.lora_B)

    def fused(self, layer, x: torch.Tensor) -> torch.Tensor:
        return fused_lowrank(x, layer.weight, layer.bias, layer.lora_B, layer.lora_A, None, self.frozen(layer),
                             layer.scale)

    def update(self, layer) -> Update:
        return Update.factors(torch.cat([layer.frozen_B, layer.lora_B], 1),
                              torch.cat([layer.frozen_A, layer.lora_A], 0), layer.scale)

    def update_from(self, layer, tensors: dict[str, torch.Tensor], link: int) -> Update:
        r, last, dev = layer.r, self.n_links(layer) - 1, layer.frozen_B.device
        if link > last:
            raise CheckpointError(f"a snapshot of link {link}, but {layer.name} has {last + 1} links")
        a = tensors.get(self.A)  # stored only where A trains
        if a is None:
            a = layer.lora_A if link == last else layer.frozen_A[link * r:(link + 1) * r]
        return Update.factors(torch.cat([layer.frozen_B[:, :link * r], tensors[self.B].to(dev)], 1),
                              torch.cat([layer.frozen_A[:link * r], a.detach().to(dev)]), layer.scale)

    def decoder_start(self, layer, leaf: str) -> torch.Tensor | None:
        if leaf in (self.B, self.FROZEN_B):
            return torch.zeros_like(getattr(layer, leaf))
        if not self.train_a:
            return None  # a frozen random A is fixed by the seed
        last = self.n_links(layer) - 1
        links = range(last, last + 1) if leaf == self.A else range(last)
        draws = [self.draw_a(layer, t) for t in links]
        return torch.cat(draws, 0) if draws else torch.zeros_like(getattr(layer, leaf))

    # PEFT: lora_A.weight (r x m) and lora_B.weight (n x r); both sides scale by alpha / r
    def to_peft(self, tensors, n, m, r, where):
        one_link(tensors, self.FROZEN_B, where)
        return {"lora_A.weight": tensors[self.A].float(), "lora_B.weight": tensors[self.B].float()}

    def from_peft(self, tensors, shared, n, m, r, method, where):
        a, b = peft_pair(tensors, n, m, r, where)
        return {self.A: a, self.B: b}


@torch.no_grad()
def freeze_B(layer) -> None:
    """Chain boundary, the output side: the link's B joins the frozen B and a fresh B = 0 starts."""
    layer.frozen_B = torch.cat([layer.frozen_B, layer.lora_B.detach().clone()], 1)
    layer.lora_B.zero_()


def frozen_columns(layer) -> int:
    """K, the frozen links' width, after checking frozen_B is n x (a multiple of r) (ValueError otherwise)."""
    n, r, K = layer.out_features, layer.r, layer.frozen_B.shape[1]
    if layer.frozen_B.shape[0] != n or K % r:
        raise ValueError(f"frozen_B has shape {tuple(layer.frozen_B.shape)}, expected ({n}, a multiple of {r})")
    return K


def one_link(tensors: dict[str, torch.Tensor], frozen: str, where: str) -> None:
    """PEFT has no form for a chain's finished links."""
    if tensors[frozen].numel():
        raise CheckpointError(f"{where}: a chain of links has no PEFT form (only chain 1 exports)")


def peft_pair(tensors: dict[str, torch.Tensor], n: int, m: int, r: int, where: str) -> tuple[torch.Tensor, ...]:
    """PEFT's (lora_A, lora_B) of one module, shapes checked."""
    for key in ("lora_A.weight", "lora_B.weight"):
        if key not in tensors:
            raise CheckpointError(f"{where}.{key} is missing")
    a, b = tensors["lora_A.weight"].float(), tensors["lora_B.weight"].float()
    for key, t, want in (("lora_A.weight", a, (r, m)), ("lora_B.weight", b, (n, r))):
        if tuple(t.shape) != want:
            raise CheckpointError(f"{where}.{key} has shape {tuple(t.shape)}, the model needs {want}")
    return a, b


LORA = register(Method("lora", "LoRA", LowRank(kaiming_a, train_a=True)))
LORA_PLUS = register(
    Method("lora_plus", "LoRA+", LowRank(kaiming_a, train_a=True), lr_ratio=16.0,
           notes="B gets lr_ratio times A's learning rate (lambda = 16 by default; --lr-ratio).")
)
COLA = register(
    Method("cola", "CoLA", LowRank(kaiming_a, train_a=True), chain=True,
           notes="each link: fresh Kaiming A (own seed), B = 0; the finished link is merged and frozen.")
)

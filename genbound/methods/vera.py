"""VeRA (Kopiczko et al. 2024): vector-based random matrix adaptation, as PEFT computes it (VeraConfig).

    y = x W0^T + b + lambda_b * (B (lambda_d * (A x))),   i.e.   dW = diag(b) B diag(d) A

A (r x m) and B (n x r) are frozen random matrices sliced from ONE shared pair for the whole model, vera_A
(r x max m) and vera_B (max n x r) over the adapted matrices: layers of one shape share them exactly. They are
drawn as PEFT draws them (Kaiming-uniform with gain sqrt(2), A then B, from torch.Generator seeded with the run
seed, which is PEFT's projection_prng_key), and stored per layer. Only the scaling vectors train: d (r numbers,
starting at 0.1) and b (n numbers, starting at 0, so W = W0 at step 0); there is no alpha scaling. The update
is low-rank with factors diag(b) B diag(d) (n x r) and A. Training takes the reference path. Counts: r + n
per matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..update import Update
from .base import AdapterLayout, Method, register

D_INITIAL = 0.1


def kaiming_uniform(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """U(-b, b) with b = sqrt(3) sqrt(2) / sqrt(fan_in), fan_in = shape[1] (PEFT's VeRA initialisation)."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


class Vera(AdapterLayout):
    kind = "vera"
    unit_scale = True
    A, B, D, BVEC = "vera_A", "vera_B", "vera_d", "vera_b"
    stored = (D, BVEC, A, B)
    trainable = (D, BVEC)
    peft_type, peft_out_key = "VERA", "vera_lambda_b"

    def paper_count(self, n: int, m: int, r: int, links: int) -> int:
        return links * (r + n)

    def check(self, n: int, m: int, r: int, links: int, name: str) -> None:
        pass  # any rank: A and B are sliced from matrices of rank r

    def shared(self, shapes: dict[str, tuple[int, int]], r: int, seed: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        max_n, max_m = max(n for n, _ in shapes.values()), max(m for _, m in shapes.values())
        vera_a = kaiming_uniform((r, max_m), gen)
        return {"A": vera_a, "B": kaiming_uniform((max_n, r), gen)}

    def setup(self, layer, shared: dict) -> None:
        n, m, r, dev = layer.out_features, layer.in_features, layer.r, layer.weight.device
        layer.vera_d = nn.Parameter(torch.full((r,), D_INITIAL, device=dev))
        layer.vera_b = nn.Parameter(torch.zeros(n, device=dev))
        layer.register_buffer(self.A, shared["A"][:, :m].clone().to(dev))
        layer.register_buffer(self.B, shared["B"][:n, :].clone().to(dev))

    def refresh(self, layer) -> None:
        n, m, r = layer.out_features, layer.in_features, layer.r
        for key, want in ((self.A, (r, m)), (self.B, (n, r)), (self.D, (r,)), (self.BVEC, (n,))):
            if tuple(getattr(layer, key).shape) != want:
                raise ValueError(f"{key} has shape {tuple(getattr(layer, key).shape)}, expected {want}")

    def current_B(self, layer) -> torch.Tensor:
        return layer.vera_b[:, None] * layer.vera_B * layer.vera_d[None, :]

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, layer.weight, layer.bias)
        return y + layer.vera_b * F.linear(layer.vera_d * F.linear(x, layer.vera_A), layer.vera_B)

    def _factors(self, layer, d: torch.Tensor, b: torch.Tensor) -> Update:
        return Update.factors(b[:, None] * layer.vera_B * d[None, :], layer.vera_A)

    def update(self, layer) -> Update:
        return self._factors(layer, layer.vera_d, layer.vera_b)

    def update_from(self, layer, tensors: dict[str, torch.Tensor], link: int) -> Update:
        if link:
            raise CheckpointError(f"a snapshot of link {link}, but {layer.name} has 1 link")
        dev = layer.vera_A.device
        return self._factors(layer, tensors[self.D].to(dev), tensors[self.BVEC].to(dev))

    def decoder_start(self, layer, leaf: str) -> torch.Tensor | None:
        if leaf == self.D:
            return torch.full_like(layer.vera_d, D_INITIAL)
        if leaf == self.BVEC:
            return torch.zeros_like(layer.vera_b)
        return None  # A and B are fixed by the seed

    # PEFT: vera_lambda_d, vera_lambda_b per module; vera_A, vera_B once (save_projection)
    def peft_config(self, alpha: float, seed: int) -> dict:
        return {"projection_prng_key": seed, "save_projection": True, "vera_dropout": 0.0, "d_initial": D_INITIAL,
                "fan_in_fan_out": False, "bias": "none", "init_weights": True}

    def peft_refuse(self, cfg: dict) -> list[str]:
        bad = []
        if not cfg.get("save_projection", True):
            bad.append("save_projection=False (the adapter does not hold vera_A and vera_B)")
        if cfg.get("bias", "none") != "none":
            bad.append(f"bias={cfg['bias']!r}")
        return bad

    def to_peft(self, tensors, n, m, r, where):
        return {"vera_lambda_d": tensors[self.D].float(), "vera_lambda_b": tensors[self.BVEC].float()}

    def peft_shared(self, per_layer):
        widest = max(per_layer.values(), key=lambda t: t[self.A].shape[1])
        tallest = max(per_layer.values(), key=lambda t: t[self.B].shape[0])
        return {"vera_A": widest[self.A].float(), "vera_B": tallest[self.B].float()}

    def from_peft(self, tensors, shared, n, m, r, method, where):
        for key, want in (("vera_lambda_d", (r,)), ("vera_lambda_b", (n,))):
            if key not in tensors or tuple(tensors[key].shape) != want:
                raise CheckpointError(f"{where}.{key} is missing or not of shape {want}")
        a, b = shared.get("vera_A"), shared.get("vera_B")
        if a is None or b is None or a.shape[0] != r or a.shape[1] < m or b.shape[0] < n or b.shape[1] != r:
            raise CheckpointError(f"{where}: the shared vera_A / vera_B are missing or do not cover an {n} x {m} "
                                  f"matrix at rank {r}")
        return {self.D: tensors["vera_lambda_d"].float(), self.BVEC: tensors["vera_lambda_b"].float(),
                self.A: a[:, :m].float().clone(), self.B: b[:n, :].float().clone()}  # each layer its own copy


VERA = register(Method("vera", "VeRA", Vera(),
                       notes="shared frozen random A, B (sliced per layer, as PEFT); trained vectors d and b."))

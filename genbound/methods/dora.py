"""DoRA (Liu et al. 2024): weight-decomposed low-rank adaptation, as PEFT computes it (LoraConfig(use_dora=True)).

    W = m * (W0 + s B A) / ||W0 + s B A||_row,      s = alpha / r

The direction W0 + s B A is LoRA's (A Kaiming-uniform, B = 0); the magnitude m (n numbers, one per output row)
starts at the row norms of W0, so W = W0 at step 0. As in PEFT (and the paper's section 4.3), the norm is
treated as a constant in backward (detached): it follows the update but passes no gradient. The update
W - W0 = (m / norm - 1) W0 + (m / norm) s B A is not low-rank: its spectrum is a dense SVD. Training takes
the reference path (no fused one). Counts: r (m + n) + n per matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..update import Update
from .base import Method, kaiming_a, register
from .lora import LowRank


class Dora(LowRank):
    kind = "dora"
    fused_path = False
    use_dora = True
    MAGNITUDE = "magnitude"
    stored = (*LowRank.stored, MAGNITUDE)

    def __init__(self):
        super().__init__(kaiming_a, train_a=True)
        self.trainable = (self.A, self.B, self.MAGNITUDE)

    def paper_count(self, n: int, m: int, r: int, links: int) -> int:
        return super().paper_count(n, m, r, links) + links * n

    def setup(self, layer, shared: dict) -> None:
        super().setup(layer, shared)
        layer.magnitude = nn.Parameter(self.row_norms(layer.weight))

    @staticmethod
    def row_norms(w: torch.Tensor) -> torch.Tensor:
        """||w||_row in float32 (float64 for a float64 w)."""
        return torch.linalg.norm(w.detach().to(torch.promote_types(w.dtype, torch.float32)), dim=1)

    def _scale(self, layer, A: torch.Tensor, B: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        """m / ||W0 + s B A||_row, the norm detached (n numbers)."""
        acc = torch.promote_types(layer.weight.dtype, torch.float32)
        direction = Update.factors(B.detach(), A.detach(), layer.scale).merged(layer.weight, acc)
        return magnitude / self.row_norms(direction)

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        scale = self._scale(layer, layer.lora_A, layer.lora_B, layer.magnitude).to(x.dtype)
        y = F.linear(x, layer.weight) + layer.scale * F.linear(F.linear(x, layer.lora_A), layer.lora_B)
        y = scale * y
        return y if layer.bias is None else y + layer.bias

    def _dense(self, layer, A: torch.Tensor, B: torch.Tensor, magnitude: torch.Tensor) -> Update:
        acc = torch.promote_types(layer.weight.dtype, torch.float32)
        w0 = layer.weight.to(acc)
        direction = w0 + Update.factors(B, A, layer.scale).to_dense(acc)  # W0 + s B A, once
        return Update.dense((magnitude / self.row_norms(direction))[:, None] * direction - w0)

    def update(self, layer) -> Update:
        return self._dense(layer, layer.lora_A, layer.lora_B, layer.magnitude)

    def update_from(self, layer, tensors: dict[str, torch.Tensor], link: int) -> Update:
        if link:
            raise CheckpointError(f"a snapshot of link {link}, but {layer.name} has 1 link")
        dev = layer.weight.device
        return self._dense(layer, tensors[self.A].to(dev), tensors[self.B].to(dev), tensors[self.MAGNITUDE].to(dev))

    def decoder_start(self, layer, leaf: str) -> torch.Tensor | None:
        if leaf == self.MAGNITUDE:
            return self.row_norms(layer.weight)  # the decoder knows W0
        return super().decoder_start(layer, leaf)

    # PEFT: LoRA's two tensors and lora_magnitude_vector
    def to_peft(self, tensors, n, m, r, where):
        return {**super().to_peft(tensors, n, m, r, where), "lora_magnitude_vector": tensors[self.MAGNITUDE].float()}

    def from_peft(self, tensors, shared, n, m, r, method, where):
        mag = tensors.get("lora_magnitude_vector")
        if mag is None or tuple(mag.shape) != (n,):
            raise CheckpointError(f"{where}.lora_magnitude_vector is missing or not of shape ({n},)")
        return {**super().from_peft(tensors, shared, n, m, r, method, where), self.MAGNITUDE: mag.float()}


DORA = register(Method("dora", "DoRA", Dora(),
                       notes="magnitude m and LoRA's A, B; the row norm is detached in backward, as in PEFT."))

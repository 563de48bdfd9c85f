"""PaCA (Woo et al. 2025): fine-tune r randomly chosen columns of W itself.

Stored as the trainable column block P (n x r), initialised to W0[:, idx]; the update is
dW[:, idx] = P - W0[:, idx] with scale 1. With the first r columns and alpha = r this follows
the same trajectory as cLA under Adam without weight decay.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from ..update import Update
from .base import Method, random_columns, register
from .cla import Selector


class OwnColumns(Selector):
    """The selector layout with W's own columns as the trainable numbers: B = P - W0[:, idx], s = 1. The
    pretrained columns (w0_cols) are derived from W0 and the stored idx, never stored or re-drawn."""

    kind = "columns"
    unit_scale = True
    COLUMNS, W0_COLS = "columns", "w0_cols"
    stored = (COLUMNS, Selector.IDX, Selector.FROZEN_B, Selector.FROZEN_IDX)
    trainable = (COLUMNS,)
    fast = (COLUMNS,)
    peft_type = None

    def setup_B(self, layer) -> None:
        layer.register_buffer(self.W0_COLS, layer.weight.detach()[:, layer.idx].float().clone())
        layer.columns = nn.Parameter(layer.w0_cols.clone())

    def refresh(self, layer) -> None:
        super().refresh(layer)
        layer.w0_cols = layer.weight.detach()[:, layer.idx].to(layer.w0_cols.dtype).clone()

    def current_B(self, layer) -> torch.Tensor:
        return layer.columns - layer.w0_cols

    def update_from(self, layer, tensors: dict[str, torch.Tensor], link: int) -> Update:
        if link:
            raise CheckpointError(f"a snapshot of link {link}, but {layer.name} has 1 link")
        dev = layer.w0_cols.device
        return Update.columns(tensors[self.COLUMNS].to(dev) - layer.w0_cols, layer.idx, layer.in_features,
                              layer.scale)

    def decoder_start(self, layer, leaf: str) -> torch.Tensor | None:
        if leaf == self.COLUMNS:
            return layer.w0_cols
        return super().decoder_start(layer, leaf)


PACA = register(Method("paca", "PaCA", OwnColumns(random_columns)))

"""The training fast path of the low-rank and column layouts: one matrix product with the merged weight.

    y = x (W0 + dW)^T + b,    dW = s * sum_t B_t A_t    (selectors: dW[:, idx_t] += s * B_t)

Forward builds W0 + dW in float32 (one exact sum of the frozen links and the trainable one), rounds it
once to the compute dtype (the autocast dtype, else x's) and makes one product, as a frozen layer does.
For d x (one product too) the merged weight is kept when W0 is stored in another dtype, where a frozen
layer under autocast keeps its cast copy as well, and rebuilt in backward when W0 is already in the
compute dtype (bf16 or fp16 bases), where keeping it would cost a weight-sized copy per layer that the
frozen layer does not pay. Autograd keeps only what the link's gradient needs besides: the r gathered
columns x[..., idx] (selectors, PaCA) or x A^T (dense links with a frozen A), and x itself only when A
is trained (LoRA, LoRA+, CoLA).

Not supported here, and served by the reference path (AdapterLinear.forward, fused off): torch.func
transforms and double backward (the Hessian and landscape analyses). Tests check that both paths give
the same outputs and gradients for every method, across chain boundaries and after reload.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .update import Update, merged


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a plain nn.Linear would compute in here: autocast's when it is on for x's device."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class FusedLowRank(torch.autograd.Function):
    """(x, W0, b, B, A | None, idx | None, frozen: Update, s, dtype) -> y = x (W0 + frozen + s B A)^T + b
    (selectors: s B on the columns idx); see the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, B, A, idx, frozen, scale, dtype):
        current = Update.factors(B, A, scale) if A is not None else Update.columns(B, idx, weight.shape[1], scale)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(dtype)
            W = merged(weight, [frozen, current], dtype)
            y = F.linear(xc, W, None if bias is None else bias.to(dtype))
            need_b, need_a = ctx.needs_input_grad[3], A is not None and ctx.needs_input_grad[4]
            proj = None
            if need_b:
                proj = xc.index_select(-1, idx) if A is None else F.linear(xc, A.detach().to(dtype))
        keep = ctx.needs_input_grad[0] and weight.dtype != dtype  # see the module docstring
        ctx.scale, ctx.dtype, ctx.x_dtype, ctx.has_bias, ctx.frozen = scale, dtype, x.dtype, bias is not None, frozen
        ctx.save_for_backward(xc if need_a else None, proj, W if keep else None, weight, B, A, idx)
        return y

    @staticmethod
    def backward(ctx, gy):
        xc, proj, W, weight, B, A, idx = ctx.saved_tensors
        s, dtype = ctx.scale, ctx.dtype
        grads = [None] * 9
        with torch.autocast(gy.device.type, enabled=False):
            gy = gy.to(dtype)
            if ctx.needs_input_grad[0]:
                if W is None:
                    current = Update.factors(B, A, s) if A is not None else Update.columns(B, idx, weight.shape[1], s)
                    W = merged(weight, [ctx.frozen, current], dtype)
                grads[0] = (gy @ W).to(ctx.x_dtype)
            g2 = gy.reshape(-1, gy.shape[-1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grads[2] = g2.float().sum(0)
            if proj is not None:
                grads[3] = (s * (g2.t() @ proj.reshape(-1, proj.shape[-1]))).to(B.dtype)
            if xc is not None:
                gb = g2 @ B.detach().to(dtype)
                grads[4] = (s * (gb.t() @ xc.reshape(-1, xc.shape[-1]))).to(A.dtype)
        return tuple(grads)


def fused_lowrank(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, B: torch.Tensor,
                  A: torch.Tensor | None, idx: torch.Tensor | None, frozen: Update, scale: float) -> torch.Tensor:
    """y = x (W0 + frozen + s B A)^T + b through FusedLowRank (the same math as the layouts' reference paths);
    A is None for a column update on ``idx``."""
    return FusedLowRank.apply(x, weight, bias, B, A, idx, frozen, scale, compute_dtype(x))

"""One training run over the processes torchrun starts (docs/design.md section 8b).

Data parallelism: every rank sees the same global batch indices (same seed, same order) and takes its
contiguous share of them (``distributed.share``); its loss is its share's mean weighted by share / batch, so
the weighted losses and their gradients sum over ranks to those of one process on the whole batch, unequal
shares included. After backward the trainable gradients (and the weighted loss) are summed over ranks in one
flat bucket, before clipping, so clipping sees the full gradient and every rank makes the same AdamW step.
That explicit all-reduce stands in for DistributedDataParallel: a chain boundary replaces the link tensors
DDP would have registered, a subspace run trains z, whose gradient is formed after backward (DDP would sum
theta's far larger gradients instead), and ``logits`` reads the bare model of every family.

``--fsdp`` (full fine-tuning only): torch's ``fully_shard`` (FSDP2) shards the weights, gradients and AdamW
moments over the ranks, each repeated block (every member of an ``nn.ModuleList``) and then the root; FSDP
reduce-scatters the gradients itself, averaging over ranks, so the loss weight is multiplied by the world.
Every forward then needs every rank, so under FSDP all ranks evaluate (the same numbers) where otherwise
rank 0 alone does; whole tensors (snapshots, resume state, the checkpoint) are gathered to rank 0.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import Context, all_reduce_sum, share


class Ranks:
    """How one run is spread over processes: ``ctx`` (a world of one: a single process) and ``fsdp``."""

    def __init__(self, ctx: Context, fsdp: bool = False):
        self.ctx, self.fsdp = ctx, fsdp

    @property
    def active(self) -> bool:
        return self.ctx.active

    def split(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's share of the global batch ``idx`` and its loss weight (share / batch). An empty share
        (a batch smaller than the world) runs the batch's first example at weight 0, so every rank still
        takes part in the step's collectives."""
        if not self.active:
            return idx, 1.0
        part = share(len(idx), self.ctx)
        if len(part) == 0:
            return idx[:1], 0.0
        return idx[part.start:part.stop], len(part) / len(idx)

    def backward_scale(self, weight: float) -> float:
        """The factor on this rank's mean loss before backward: FSDP averages gradients over ranks."""
        return weight * self.ctx.world if self.fsdp else weight

    def reduce(self, params: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        """Sum the gradients of ``params`` (none under FSDP, which reduced them) and the weighted ``loss`` over
        ranks in one flat float32 bucket; returns the summed loss (the global batch's mean loss)."""
        loss = loss.detach().float().reshape(1)
        if not self.active:
            return loss[0]
        grads = [] if self.fsdp else [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss])
        all_reduce_sum(flat)
        at = 0
        for p, g in zip(params, grads):  # none under FSDP
            p.grad = flat[at:at + g.numel()].view_as(g).to(g.dtype)
            at += g.numel()
        return flat[-1]


def shard(model: nn.Module, device: torch.device) -> None:
    """FSDP2 over every rank: each repeated block, then the root (the weights move to ``device`` as shards)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for blocks in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)  # also after an evaluation (no backward follows),
    # so that the parameters are the optimizer's sharded ones whenever the state is read


def whole(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Sharded tensors (DTensors) gathered one at a time; every rank takes part, ``keep`` ranks (rank 0) get
    the CPU copies, the others an empty dict. Plain tensors pass through."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, t in tensors.items():
        t = t.full_tensor() if isinstance(t, DTensor) else t
        if keep:
            out[name] = t.detach().cpu()
    return out

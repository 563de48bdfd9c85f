"""torch.distributed as genbound uses it (docs/design.md section 8): one process per GPU, started by torchrun
(or SLURM through torchrun); nothing here schedules processes.

A process learns its place from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). With a world of
one (a plain `genbound ...`, or torchrun with one process) every function below is a no-op and the code paths
are those of a single process. The process group is NCCL when the process's device is a GPU, else gloo (the
CPU tests use gloo); studies and barriers that wait on other ranks' long runs use a gloo group with a long
timeout, so a rank that finishes early does not time out while the others train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import GenboundError

LONG_WAIT = timedelta(days=7)  # a barrier at the end of a study waits for the slowest rank's runs


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes, its GPU index on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that writes shared files (rank 0)."""
        return self.rank == 0


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise GenboundError(f"the environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def context() -> Context:
    """The context torchrun's environment describes (rank 0 of 1 without it)."""
    ctx = Context(_int_env("RANK", 0), _int_env("WORLD_SIZE", 1), _int_env("LOCAL_RANK", 0))
    if not 0 <= ctx.rank < ctx.world:
        raise GenboundError(f"RANK={ctx.rank} is outside WORLD_SIZE={ctx.world}")
    return ctx


def device_of(ctx: Context, name: str = "auto") -> torch.device:
    """This rank's device: its LOCAL_RANK GPU under ``auto`` or ``cuda`` when CUDA is present, else the CPU."""
    from .runtime import pick_device

    dev = pick_device(name)
    if dev.type == "cuda" and dev.index is None:
        if ctx.local_rank >= torch.cuda.device_count():
            raise GenboundError(f"LOCAL_RANK={ctx.local_rank}, but this node has {torch.cuda.device_count()} GPUs: "
                                "start at most one process per GPU (torchrun --nproc-per-node)")
        dev = torch.device("cuda", ctx.local_rank)
    return dev


def init(device: torch.device | None = None, timeout: timedelta = timedelta(minutes=30)) -> Context:
    """Join the process group torchrun describes (once per process; a no-op for a world of one). NCCL for a GPU
    device, gloo otherwise. Returns the context."""
    ctx = context()
    if not ctx.active or dist.is_initialized():
        return ctx
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout,
                            **({"device_id": device} if cuda else {}))
    return ctx


_WAIT_GROUP = None


def _joined() -> bool:
    """This process is in a process group of more than one."""
    return dist.is_initialized() and dist.get_world_size() > 1


def _wait_group():
    """A gloo group with a long timeout, for barriers that wait on whole runs (created on first use)."""
    global _WAIT_GROUP
    if _WAIT_GROUP is None:
        _WAIT_GROUP = dist.new_group(backend="gloo", timeout=LONG_WAIT)
    return _WAIT_GROUP


def barrier(long: bool = False) -> None:
    """Wait for every rank (``long``: over the gloo group that tolerates days between arrivals)."""
    if _joined():
        dist.barrier(group=_wait_group() if long else None)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (and return it); unchanged for a world of one."""
    if _joined():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for a world of one."""
    if not _joined():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Every rank's tensors ``parts`` (through the CPU), in rank order then in their order, on ``device``;
    ``parts`` itself for a world of one. Ranks may hold different counts (none too)."""
    if not _joined():
        return parts
    return [t.to(device) for ranks in all_gather_objects([t.detach().cpu() for t in parts]) for t in ranks]


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not _joined():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def share(n: int, ctx: Context) -> range:
    """This rank's contiguous share of ``n`` items (the first ``n % world`` ranks take one more)."""
    base, extra = divmod(n, ctx.world)
    lo = ctx.rank * base + min(ctx.rank, extra)
    return range(lo, lo + base + (1 if ctx.rank < extra else 0))


def spread(ranks: Context | None) -> bool:
    """``ranks`` asks a computation to split over several processes (None or a world of one: it runs whole)."""
    return ranks is not None and ranks.active


def mine(seq, ranks: Context | None):
    """This rank's contiguous share of ``seq`` (a range, list or tensor; ``share``), or all of it when the
    computation is not spread over processes."""
    if not spread(ranks):
        return seq
    part = share(len(seq), ranks)
    return seq[part.start:part.stop]


def finish() -> None:
    """Leave the process group (at the end of a command)."""
    global _WAIT_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _WAIT_GROUP = None

"""Run a function on N local processes joined by the gloo backend, as torchrun would start them (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in each process's environment); the distributed tests use it."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, folder: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from genbound import distributed

    try:
        out = fn(*args)
    finally:
        distributed.finish()
    Path(folder, f"{rank}.pkl").write_bytes(pickle.dumps(out))


def run_ranks(fn, world: int, *args) -> list:
    """``fn(*args)`` on ``world`` processes (a module-level function: spawn pickles it); its return values in
    rank order. A failing rank fails the call."""
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_child, args=(world, free_port(), folder, fn, args), nprocs=world, join=True,
                           start_method="spawn")
        return [pickle.loads(Path(folder, f"{r}.pkl").read_bytes()) for r in range(world)]

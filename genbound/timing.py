"""Where a command's wall time goes: named phases (import, data, model, initial_model, work) measured with
``time.perf_counter``, CUDA synchronized around each phase when CUDA is in use. The command line records them
(cli.py) and puts them in each result's JSON as "phases"; ``GENBOUND_TIMING=1`` also prints them to stderr.

Bottom layer: no torch import here (torch is synchronized only when something else has imported it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

START = time.perf_counter()  # the first import of genbound.timing: cli.py imports it before anything heavy
_seconds: dict[str, float] = {}


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent in the block to phase ``name`` (phases may nest; each counts its own block)."""
    _sync()
    start = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        add(name, time.perf_counter() - start)


def add(name: str, seconds: float) -> None:
    _seconds[name] = _seconds.get(name, 0.0) + seconds


def reset() -> None:
    """Forget every phase (a command starts with none; the Python API may have run phases before)."""
    _seconds.clear()


def seconds(name: str) -> float:
    return _seconds.get(name, 0.0)


def take(*names: str) -> dict[str, float]:
    """The named phases' seconds so far (0 for one never entered), then cleared."""
    return {n: round(_seconds.pop(n, 0.0), 4) for n in names}


def since_start() -> float:
    return time.perf_counter() - START


def report(command: str, phases: dict[str, float]) -> None:
    """With GENBOUND_TIMING=1, one line on stderr: the command's phases."""
    if os.environ.get("GENBOUND_TIMING") == "1":
        text = "  ".join(f"{k} {v:.2f}s" for k, v in phases.items())
        print(f"genbound {command} timing: {text}", file=sys.stderr)


def reset_gpu_peak(device) -> None:
    """Start counting the peak GPU memory of ``device`` afresh (nothing on the CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and getattr(device, "type", str(device)) == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak(device) -> int | None:
    """Bytes of GPU memory the tensors on ``device`` held at most since ``reset_gpu_peak`` (None on the CPU)."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(device, "type", str(device)) != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))

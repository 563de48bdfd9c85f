"""The training step as one CUDA graph: forward, loss, backward, clipping and AdamW captured once and
replayed, so a step costs its kernels and not the Python that launches them (small adapters on a small
model are launch-bound: MiniLM's eager step is several times its graphed one).

Used by train.py on CUDA for full batches of a fixed shape (token batches keep their padded length); the
first WARMUP steps of every link run eagerly on a side stream (lazy state such as AdamW's moments is made
there), the next one is captured, and a chain boundary starts over, since it replaces the link's tensors.
The optimizer must be capturable with tensor learning rates, so the schedule reaches the replayed step.
If capture fails (a model that syncs with the host in its forward), training goes on eagerly and the
manifest says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WARMUP = 2  # eager steps before each capture
_SIDE: dict[int, torch.cuda.Stream] = {}


def side_stream() -> torch.cuda.Stream:
    """One side stream per device for the process: each new stream gets its own cuBLAS workspace, which
    is never freed, so a study training many runs in one process would otherwise grow by one per run."""
    device = torch.cuda.current_device()
    if device not in _SIDE:
        _SIDE[device] = torch.cuda.Stream()
    return _SIDE[device]


class GraphedStep:
    """One captured step over static inputs; see the module docstring."""

    def __init__(self) -> None:
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.warm = 0
        self.side = side_stream()

    def reset(self) -> None:
        """The link's tensors changed: warm up and capture again."""
        self.graph, self.static, self.loss, self.warm = None, {}, None, 0

    def run(self, body: Callable[[dict], torch.Tensor], inputs: dict[str, torch.Tensor],
            zero_grad: Callable[[], None]) -> torch.Tensor:
        """One step on ``inputs``: warm-up, capture + replay, or replay. Raises what capture raised."""
        if self.graph is not None:
            for key, value in inputs.items():
                self.static[key].copy_(value)
            self.graph.replay()
            return self.loss.clone()
        zero_grad()
        if self.warm < WARMUP:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                loss = body(inputs)
            torch.cuda.current_stream().wait_stream(self.side)
            self.warm += 1
            return loss
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records only: the replay below makes the step
            loss = body(inputs)
        self.graph, self.static, self.loss = graph, inputs, loss
        graph.replay()
        return loss.clone()

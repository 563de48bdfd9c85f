"""PyHessian 0.1 (Yao, Gholami, Keutzer & Mahoney 2020) as a cross-check backend, on exactly the model,
data subsample and parameter set that genbound's operator uses.

PyHessian takes the Hessian over every parameter with requires_grad, calls ``model(inputs)`` with one
tensor and weights each batch by ``inputs.size(0)``; so requires_grad is switched on for exactly the chosen
set (and restored afterwards), and the model is wrapped so that its input is the tensor of subsample row
numbers of a batch. Its criterion is the batch mean of the task loss (CE or squared error), averaged
over batches by size: the same mean loss L. Its eigenvalues() is power iteration with deflation (largest
magnitude first), stopped when two
successive estimates differ by < tol relatively; its trace() is Hutchinson with Rademacher probes, stopped
when the running mean changes by < tol relatively. Its density() calls the removed torch.eig: never called.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import GenboundError
from ..runtime import logits, task_loss
from .operator import Batch, HessianOperator, math_attention


class RowsModel(nn.Module):
    """forward(rows) = logits of the batch whose subsample rows are ``rows`` (PyHessian passes one tensor)."""

    def __init__(self, model: nn.Module, batches: list[Batch]):
        super().__init__()
        self.model = model
        self.starts, lo = {}, 0
        for b in batches:
            self.starts[lo] = b
            lo += len(b)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        batch = self.starts[int(rows[0])]
        if len(batch) != rows.shape[0]:
            raise ValueError("rows do not match a batch of the subsample")
        return logits(self.model, batch.inputs)

    def loader(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, labels) per batch, as PyHessian's dataloader."""
        return [(torch.arange(lo, lo + len(b)), b.y) for lo, b in self.starts.items()]


class TaskLoss(nn.Module):
    """PyHessian's criterion: the batch mean of the task's loss (``runtime.task_loss``), CE or squared error."""

    def __init__(self, problem: str):
        super().__init__()
        self.problem = problem

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(out, y, self.problem)


@contextlib.contextmanager
def only_requires_grad(model: nn.Module, names: list[str]) -> Iterator[None]:
    """requires_grad on exactly ``names`` inside the block; the flags are restored and .grad cleared after."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
            p.grad = None


def _counting(fn, counter: list[int], per_call: int = 1):
    def wrapped(*args, **kwargs):
        counter[0] += per_call
        return fn(*args, **kwargs)
    return wrapped


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PyHessianRun:
    """One PyHessian ``hessian`` object on the operator's model, data and parameters, counting its HVPs.
    One batch: PyHessian's single-batch mode (one gradient graph reused by every HVP); more: its dataloader
    mode (forward + backward with create_graph per batch per HVP)."""

    def __init__(self, op: HessianOperator, seed: int = 0):
        self.op, self.seed = op, seed
        self.n_hvp = [0]

    @contextlib.contextmanager
    def session(self) -> Iterator[object]:
        try:  # the module (the package's __init__ shadows it with the class of the same name)
            ph = importlib.import_module("pyhessian.hessian")
        except ImportError:
            raise GenboundError("--backend pyhessian needs the PyPI package pyhessian: pip install pyhessian") from None
        op = self.op
        wrapper = RowsModel(op.model, op.batches)
        loader = wrapper.loader()
        cuda = op.device.type == "cuda"
        devices = [op.device] if cuda else []
        original = ph.hessian_vector_product
        with only_requires_grad(op.model, op.names), math_attention(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            if len(loader) == 1:
                hess = ph.hessian(wrapper, TaskLoss(op.problem), data=loader[0], cuda=cuda)
                ph.hessian_vector_product = _counting(original, self.n_hvp)
            else:
                hess = ph.hessian(wrapper, TaskLoss(op.problem), dataloader=loader, cuda=cuda)
                hess.dataloader_hv_product = _counting(hess.dataloader_hv_product, self.n_hvp)
            names = [n for n, p in op.model.named_parameters() if p.requires_grad]
            if names != op.names:
                raise RuntimeError("PyHessian's parameter order differs from the operator's")
            try:
                yield hess
            finally:
                ph.hessian_vector_product = original
                del hess

    def flat(self, vectors: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([self.op.flatten([t.to(self.op.dtype) for t in v]) for v in vectors])

    def eigenvalues(self, top_n: int, tol: float, max_iter: int) -> dict:
        """PyHessian's top_n power-iteration eigenvalues, with the HVPs and seconds they took."""
        start = self.n_hvp[0]
        _sync(self.op.device)
        t0 = time.perf_counter()  # the constructor's gradient graph (single-batch mode) is part of the cost
        with self.session() as hess:
            values, vectors = hess.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
            _sync(self.op.device)
        seconds = time.perf_counter() - t0
        return {"eigenvalues": [float(v) for v in values], "vectors": self.flat(vectors),
                "n_hvp": self.n_hvp[0] - start, "seconds": seconds}

    def trace(self, max_iter: int, tol: float) -> dict:
        """PyHessian's Hutchinson trace; stderr = std of its v^T H v values / sqrt(their number)."""
        start = self.n_hvp[0]
        _sync(self.op.device)
        t0 = time.perf_counter()
        with self.session() as hess:
            vhv = hess.trace(maxIter=max_iter, tol=tol)
            _sync(self.op.device)
        seconds = time.perf_counter() - t0
        m = len(vhv)
        std = float(torch.tensor(vhv, dtype=torch.float64).std(correction=1)) if m > 1 else float("nan")
        return {"trace": float(sum(vhv) / m), "stderr": std / math.sqrt(m) if m > 1 else None, "probes": m,
                "n_hvp": self.n_hvp[0] - start, "seconds": seconds}

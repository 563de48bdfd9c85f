"""The Hessian of the mean training loss as a linear operator on a flat parameter vector (docs/theory.md section 8).

For a parameter set theta (an ordered dict of tensors, flattened and concatenated in that order to a
vector of dimension n) and a fixed subsample S = {(x_i, y_i)} of N training examples,

    L(theta) = (1/N) sum_{i in S} CE(f(x_i; theta, rest), y_i),        H = d^2 L / d theta^2  (n x n)

where ``rest`` are every other parameter and buffer of the model, held fixed (detached); for a regression
task (float targets) CE is the squared error (f - y)^2 of the one output (``runtime.task_loss``). The model runs
in eval mode (no dropout). ``HessianOperator.matmat(V)`` returns H v for each row v of V without forming
H, one pass over the subsample's batches per group of ``probe_batch`` vectors:

- forward-over-reverse: H v = d/dt grad L(theta + t v) at t = 0, i.e.
  ``torch.func.jvp(torch.func.grad(L), (theta,), (v,))``, vectorized over the probes with ``torch.func.vmap``
  (the primal forward/backward is shared, only the tangents are batched);
- double backward (Pearlmutter 1994): H v = grad_theta <grad_theta L, v>, from one gradient graph per
  batch that is reused for every probe of the group; with ``cache_graphs`` the graphs of every batch are
  kept for the operator's lifetime (memory: the activations of the whole subsample), so an HVP is then one
  backward pass through the gradient graph and no forward pass;
- auto (default): double backward for a single vector (Lanczos), forward-over-reverse for a group of
  probes (double backward there too if forward-over-reverse raises for an op of the model, recorded in
  ``fallback_reason``; with ``cache_graphs`` always double backward). Measured on CPU (one thread): for one
  vector, torch.func's jvp-of-grad costs 3-10 gradients (its transforms run Python decompositions of the
  backward ops) and double backward ~2 (cached graphs ~1.2); for a vmapped group of 8 probes the
  forward-over-reverse cost is ~1.2-1.7 gradients per probe. benchmarks/hessian_speed.py measures all of
  them on the GPU.

Both run the attention kernels in PyTorch's composite "math" form: the fused SDPA kernels have neither
forward-mode derivatives nor second derivatives. Like curvlinops, the operator is over a parameter dict;
unlike PyHessian it does no work in its constructor.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..build import Built
from ..checkpoint import Loaded
from ..distributed import all_gather_objects, all_reduce_sum, mine, spread
from ..errors import GenboundError
from ..layers import link_tensors, merged_model
from ..runtime import batch_of, generator, length_order, logits_with, problem_of_targets, task_loss

PARAM_SETS = ("trainable", "adapters", "all", "dw")
HVP_MODES = ("auto", "forward-over-reverse", "double-backward")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---- which parameters ----------------------------------------------------------------------------------
def select_params(model: nn.Module, built: Built | None, which: str) -> dict[str, torch.Tensor]:
    """The parameter set the Hessian is taken over, in ``model.named_parameters()`` order.

    trainable: every floating parameter with requires_grad (the link tensors and the head);
    adapters:  only the AdapterLinear link tensors that train (lora_A when the method trains A, lora_B, columns);
    all:       every floating parameter of the model, frozen or not;
    dw:        the dW-space counterpart of ``trainable``, on the model ``space_model(model, "dw")`` gives: the
               weight W = W0 + dW of every adapted layer, merged into one tensor (its Hessian is the Hessian
               with respect to dW, whatever the layout: DoRA's W0 does not enter additively), plus the
               trainable tensors that are not adapter links (the head). Invariant to LoRA's rescaling
               A -> A / c, B -> c B, which changes the factor-space Hessian.
    """
    if which not in PARAM_SETS:
        raise GenboundError(f"--params must be one of {', '.join(PARAM_SETS)}; got {which!r}")
    named = dict(model.named_parameters())
    links = set(link_tensors(model))
    merged = getattr(model, "merged_layers", None)
    if which == "dw" and merged is None:
        raise ValueError("--params dw takes the model of space_model(model, 'dw')")
    if which == "trainable":
        keep = {n for n, p in named.items() if p.requires_grad}
    elif which == "adapters":
        keep = links
    elif which == "all":
        keep = set(named)
    else:
        layers = set(merged)
        keep = {f"{name}.weight" for name in layers}
        keep |= {n for n, p in named.items() if p.requires_grad and n.rpartition(".")[0] not in layers}
        if not layers:
            keep = set()
    out = {n: p for n, p in named.items() if n in keep and p.is_floating_point()}
    if not out:
        method = built.method.name if built is not None else "this model"
        what = {"adapters": "adapter link tensors that train", "dw": "adapted matrices"}.get(which, "parameters")
        raise GenboundError(f"--params {which}: the model (method {method}) has no {what}; the parameter set is empty")
    return out


def space_model(model: nn.Module, which: str) -> nn.Module:
    """The model whose parameters ``select_params(., which)`` picks: ``model`` itself, or for dw a clone with every
    adapter layer merged into a plain Linear of weight W0 + dW (``genbound.layers.merged_model``)."""
    return merged_model(model) if which == "dw" else model


# ---- the model and the data it is evaluated on ---------------------------------------------------------
def working_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` itself when every floating tensor already has ``dtype``, else an eval-mode copy cast to it
    (a bf16/fp16 model is evaluated in float32; float64 for oracles). The caller's model is never changed."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return model
    return copy.deepcopy(model).to(dtype).eval()


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def subsample_indices(n_train: int, samples: int, seed: int, repeat: int = 0) -> torch.Tensor:
    """``min(samples, n_train)`` distinct training indices, a seeded permutation's prefix (one per repeat)."""
    if n_train == 0:
        raise GenboundError("the checkpoint's task has no training examples to take the Hessian on")
    if samples <= 0:
        raise GenboundError(f"--samples must be a positive number of training examples; got {samples}")
    perm = torch.randperm(n_train, generator=generator(seed, "hessian-subsample", repeat))
    return perm[:min(samples, n_train)].sort().values


def training_batches(loaded: Loaded, samples: int, batch: int, seed: int, dtype: torch.dtype,
                     repeat: int = 0, ranks=None) -> list[Batch]:
    """The seeded subsample of the training split as batches of ``batch`` examples on the model's device.
    Texts are tokenized once, ordered by length and each batch cut to its longest sequence; float inputs are
    cast to dtype.
    With ``ranks`` (several processes): this rank's contiguous share of the subsample, in such batches."""
    if batch <= 0:
        raise GenboundError(f"--batch must be a positive number of examples; got {batch}")
    train = loaded.task.train
    idx = subsample_indices(len(train), samples, seed, repeat)
    idx = mine(idx, ranks)
    enc = loaded.built.backbone.encode(train.take(idx))
    y = train.y[idx]
    order = length_order(enc)  # texts in batches of similar length: the mean over the sample is the same
    if order is not None:
        enc, y = {k: v[order] for k, v in enc.items()}, y[order]
    enc = {k: (v.to(dtype) if v.is_floating_point() else v).to(loaded.device) for k, v in enc.items()}
    y = y.to(loaded.device)
    out = []
    for lo in range(0, len(idx), batch):
        rows = torch.arange(lo, min(lo + batch, len(idx)), device=loaded.device)
        out.append(Batch(batch_of(enc, rows), y[rows]))
    return out


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Composite (math) scaled-dot-product attention: the fused kernels lack forward-mode and second derivatives."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


# ---- the operator --------------------------------------------------------------------------------------
class HessianOperator:
    """H = d^2 L / d theta^2 of the mean task loss (CE, or squared error for regression) over ``batches``
    (see the module docstring), as a symmetric linear operator on R^n; vectors are flat tensors in the
    parameters' dtype and device.

    ``autocast``: the HVPs (not the loss or gradient) run under bf16 autocast, products summed in the operator's
    dtype: relative HVP error ~4e-2 and top eigenvalues ~5e-3 off on the test MLP (docs/theory.md section 8).

    ``n_hvp`` counts Hessian-vector products (one probe vector times one pass over every batch),
    ``n_passes`` the data passes (a pass serves up to ``probe_batch`` probes).

    With ``ranks`` (a ``distributed.Context`` of several processes) ``batches`` are this rank's share of the
    subsample: each batch's loss is still divided by the whole subsample's N, and every product, loss and gradient
    is summed over the ranks by one all-reduce, so every rank holds the mean over the whole subsample."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], batches: list[Batch],
                 hvp: str = "auto", probe_batch: int = 8, cache_graphs: bool = False, ranks=None,
                 autocast: bool = False):
        if hvp not in HVP_MODES:
            raise GenboundError(f"--hvp must be one of {', '.join(HVP_MODES)}; got {hvp!r}")
        self.ranks = ranks if spread(ranks) else None
        counts = [(sum(len(b) for b in batches), problem_of_targets(batches[0].y) if batches else None)]
        if self.ranks is not None:  # a rank may hold no example (fewer examples than ranks)
            counts = all_gather_objects(counts[0])
        if sum(c for c, _ in counts) == 0:
            raise GenboundError("no training examples to take the Hessian on (empty subsample)")
        if probe_batch <= 0:
            raise GenboundError(f"--probe-batch must be positive; got {probe_batch}")
        self.model, self.batches, self.hvp, self.probe_batch = model, batches, hvp, probe_batch
        self.cache_graphs, self.autocast = cache_graphs, autocast
        self._graphs: list | None = None
        self.fallback_reason: str | None = None
        self.params = {n: p.detach() for n, p in params.items()}
        self.names = list(self.params)
        self.shapes = [p.shape for p in self.params.values()]
        self.numels = [p.numel() for p in self.params.values()]
        self.dim = sum(self.numels)
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self.rest = {n: t.detach() for n, t in state.items() if n not in self.params}
        self.n_examples = sum(c for c, _ in counts)  # the whole subsample's N, over every rank
        self.problem = next(p for c, p in counts if c)  # float targets: a regression task's squared error
        self.n_hvp = self.n_passes = 0
        self.on_pass: Callable[[], None] | None = None  # progress callback, once per data pass

    # -- flat <-> dict
    def flatten(self, tensors: dict[str, torch.Tensor] | list[torch.Tensor], lead: int = 0) -> torch.Tensor:
        """Concatenate per-tensor values (with ``lead`` leading batch dims) into vectors of length n."""
        values = tensors.values() if isinstance(tensors, dict) else tensors
        return torch.cat([t.reshape(*t.shape[:lead], -1) for t in values], dim=-1)

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split vectors (..., n) into a dict of tensors shaped (..., *param.shape)."""
        lead = vec.shape[:-1]
        parts = torch.split(vec, self.numels, dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, parts, self.shapes)}

    # -- the loss
    def _logits(self, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return logits_with(self.model, {**self.rest, **params}, batch.inputs)

    def batch_loss(self, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """This batch's share of L: sum_i l_i / N (so the batch losses add up to the mean over S); l is the
        task's loss (``runtime.task_loss``: CE, or the squared error of a regression task)."""
        return task_loss(self._logits(params, batch), batch.y, self.problem, "sum") / self.n_examples

    def _summed(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's part summed over the ranks (one all-reduce; ``t`` itself for one process)."""
        return all_reduce_sum(t) if self.ranks is not None else t

    @torch.no_grad()
    def loss(self) -> float:
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        with math_attention():
            return float(self._summed(sum((self.batch_loss(self.params, b) for b in self.batches), zero)))

    def gradient(self, math_kernels: bool = True) -> torch.Tensor:
        """grad L (flat): one forward and backward pass over the subsample (the cost unit of an HVP)."""
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        ctx = math_attention() if math_kernels else contextlib.nullcontext()
        with ctx, torch.enable_grad():
            for b in self.batches:
                p = {n: t.clone().requires_grad_() for n, t in self.params.items()}
                g = torch.autograd.grad(self.batch_loss(p, b), list(p.values()), materialize_grads=True)
                total += self.flatten(g)
        return self._summed(total)

    # -- Hessian-vector products
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[None])[0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H v for every row v of V (P x n), ``probe_batch`` rows per pass over the data."""
        if V.shape[-1] != self.dim:
            raise ValueError(f"vectors have length {V.shape[-1]}, the operator's dimension is {self.dim}")
        V = V.to(self.device, self.dtype)
        out = [self._hvp_chunk(V[lo:lo + self.probe_batch]) for lo in range(0, V.shape[0], self.probe_batch)]
        return torch.cat(out) if out else V.clone()

    def mode_for(self, count: int) -> str:
        """The HVP implementation used for a group of ``count`` probes (resolves "auto")."""
        if self.hvp != "auto":
            return self.hvp
        if count == 1 or self.cache_graphs or self.fallback_reason is not None:
            return "double-backward"
        return "forward-over-reverse"

    def _hvp_chunk(self, V: torch.Tensor) -> torch.Tensor:
        tangents = self.unflatten(V)
        mode = self.mode_for(V.shape[0])
        zero = torch.zeros_like(V)  # the sum of a rank without examples
        with math_attention(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            try:
                total = sum((self._forward_over_reverse(tangents, b, V.shape[0]) if mode == "forward-over-reverse"
                             else self._double_backward(tangents, i, V.shape[0]) for i, b in enumerate(self.batches)),
                            zero)
            except torch.OutOfMemoryError:
                raise  # too large a --probe-batch: say so, not a silent switch to double backward
            except (NotImplementedError, RuntimeError) as err:
                if self.hvp != "auto" or mode != "forward-over-reverse":
                    raise
                # auto: an op of this model without a forward-mode or batching rule; use double backward from
                # now on and say so in the result (fallback_reason)
                self.fallback_reason = f"forward-over-reverse failed ({str(err).splitlines()[0][:200]})"
                total = sum((self._double_backward(tangents, i, V.shape[0]) for i in range(len(self.batches))), zero)
        total = self._summed(total)
        self.n_hvp += V.shape[0]
        self.n_passes += 1
        if self.on_pass is not None:
            self.on_pass()
        return total

    def _forward_over_reverse(self, tangents: dict[str, torch.Tensor], batch: Batch, count: int) -> torch.Tensor:
        grad = torch.func.grad(lambda p: self.batch_loss(p, batch))
        hvp = lambda u: torch.func.jvp(grad, (self.params,), (u,))[1]
        if count == 1:
            hv = hvp({n: t[0] for n, t in tangents.items()})
            return self.flatten(hv)[None]
        return self.flatten(torch.func.vmap(hvp)(tangents), lead=1)

    def _gradient_graph(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Leaves theta and the gradient of batch i's loss share built with create_graph (only the entries
        that depend on theta: a gradient entry constant in theta has H v = 0 there)."""
        if self._graphs is not None and self._graphs[i] is not None:
            return self._graphs[i]
        with torch.enable_grad():
            leaves = [t.clone().requires_grad_() for t in self.params.values()]
            loss = self.batch_loss(dict(zip(self.names, leaves)), self.batches[i])
            grads = torch.autograd.grad(loss, leaves, create_graph=True, materialize_grads=True)
        graph = (leaves, [(j, g) for j, g in enumerate(grads) if g.requires_grad])
        if self.cache_graphs:
            if self._graphs is None:
                self._graphs = [None] * len(self.batches)
            self._graphs[i] = graph
        return graph

    def _double_backward(self, tangents: dict[str, torch.Tensor], i: int, count: int) -> torch.Tensor:
        out = torch.zeros(count, self.dim, dtype=self.dtype, device=self.device)
        leaves, live = self._gradient_graph(i)
        if not live:
            return out
        with torch.enable_grad():
            for j in range(count):
                hv = torch.autograd.grad([g for _, g in live], leaves, [tangents[self.names[k]][j] for k, _ in live],
                                         retain_graph=self.cache_graphs or j < count - 1, materialize_grads=True)
                out[j] = self.flatten(list(hv))
        return out

    def dense(self) -> torch.Tensor:
        """The n x n Hessian from n HVPs with the basis vectors (small problems and tests only)."""
        return self.matmat(torch.eye(self.dim, dtype=self.dtype, device=self.device))


class MatrixOperator:
    """A dense symmetric matrix as an operator (tests and oracles): matmat(V) = V A."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype, self.device = matrix.dtype, matrix.device
        self.n_hvp = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[None])[0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.n_hvp += V.shape[0]
        return V.to(self.dtype) @ self.matrix

    def dense(self) -> torch.Tensor:
        return self.matrix

"""What training and every analysis share to run a model: the device, seeded generators, batches of an
encoded split, and the logits of any model family, plain or with substituted tensors (functional_call).

A new model family is taught here once: ``logits`` is the only place that turns a model's output into
logits (an MLP returns a tensor, an HF sequence classifier an object with ``.logits``).
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .distributed import all_gather_rows, mine, spread
from .errors import TrainingError
from .metrics import FUNCTIONS
from .progress import tick


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded by the run seed and a stable hash of ``keys`` (e.g. matrix name, link)."""
    tag = ":".join(str(k) for k in (seed, *keys)).encode()
    return torch.Generator().manual_seed(zlib.crc32(tag))


def device_generator(device: torch.device, seed: int, *keys: object) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, keys) (CPU and CUDA draw different, both seeded, streams)."""
    start = int(torch.randint(2**62, (1,), generator=generator(seed, *keys)))
    return torch.Generator(device=device).manual_seed(start)


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; one line when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda, but no CUDA device is available here")
    return torch.device(name)


def batch_of(inputs: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of every input; token batches are cut to their longest sequence."""
    out = {k: v[idx] for k, v in inputs.items()}
    if "attention_mask" in out:
        length = int(out["attention_mask"].sum(1).max())
        out = {k: v[:, :length] for k, v in out.items()}
    return out


def _logits_of_output(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of an MLP (batch {"x"}) or an HF sequence classifier (a token batch)."""
    return _logits_of_output(model(**batch))


def logits_with(model: nn.Module, tensors: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                strict: bool = False) -> torch.Tensor:
    """Logits of ``model`` with some of its parameters and buffers replaced by ``tensors`` (by name), through
    ``torch.func.functional_call``: the model itself is not changed, and vmap/grad/jvp may wrap the call."""
    return _logits_of_output(functional_call(model, tensors, args=(), kwargs=batch, strict=strict))


def length_order(inputs: dict, n: int | None = None) -> torch.Tensor | None:
    """The first ``n`` rows (all by default) in a stable order of their token counts, on the inputs' device, so
    that batches of neighbours in it pad little (WordNet glosses under a batch of 256 in data order: 3.7 times
    the real tokens; sorted: 1.07); None for inputs without an attention mask (images, vectors)."""
    mask = inputs.get("attention_mask")
    return None if mask is None else torch.sort(mask[:n].sum(1), stable=True).indices


@torch.no_grad()
def predict(model: nn.Module, inputs: dict, n: int, batch_size: int = 256, ranks=None) -> torch.Tensor:
    """Float32 logits of the first ``n`` examples, in eval mode (the model's mode is restored); texts run in
    batches of similar length (``length_order``) and come back in their own order. With ``ranks`` (a
    ``distributed.Context`` of several processes) each rank runs its share of the same batches one process runs,
    and every rank gets all the logits, in order: the numbers of one process, exactly."""
    was_training = model.training
    model.eval()
    device = next(iter(inputs.values())).device
    order = length_order(inputs, n)
    rows = torch.arange(n, device=device) if order is None else order
    starts = mine(range(0, n, batch_size), ranks)
    out = []
    for lo in starts:
        out.append(logits(model, batch_of(inputs, rows[lo:lo + batch_size])).float())
        tick()
    model.train(was_training)
    out = torch.cat(all_gather_rows(out, device) if spread(ranks) else out)
    if order is None:
        return out
    back = torch.empty_like(out)
    back[order] = out
    return back


def task_loss(logits: torch.Tensor, y: torch.Tensor, problem: str = "classification",
              reduction: str = "mean") -> torch.Tensor:
    """The training loss of a task: cross-entropy of (N, K) logits against class ids, or, for a regression task,
    the squared error of the one output (N, 1) against float targets (mean: MSE). Every loss genbound trains on
    or analyses (training, the Hessian, the landscape, QAT) is formed here."""
    if problem == "regression":
        return F.mse_loss(logits[..., 0], y.to(logits.dtype), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def problem_of_targets(y: torch.Tensor) -> str:
    """"regression" for float targets, else "classification" (the Task contract: regression targets are float32)."""
    return "regression" if y.is_floating_point() else "classification"


def evaluate(model: nn.Module, inputs: dict, y: torch.Tensor, batch_size: int = 256,
             limit: int | None = None, problem: str | None = None, metrics=()) -> dict[str, float | None]:
    """In eval mode, float32, over the first ``limit`` examples: classification gives the mean cross-entropy
    ``loss`` and accuracy ``acc``; regression (``problem``, or float ``y`` when None) the MSE as ``loss`` and
    ``mse``. Each name in ``metrics`` but accuracy (``genbound.metrics``) is added under its own name."""
    n = len(y) if limit is None else min(limit, len(y))
    problem = problem or problem_of_targets(y)
    out = predict(model, inputs, n, batch_size)
    loss = task_loss(out, y[:n], problem).item()
    m: dict[str, float | None] = ({"loss": loss, "mse": loss} if problem == "regression" else
                                  {"loss": loss, "acc": int((out.argmax(-1) == y[:n]).sum()) / n})
    m.update({name: FUNCTIONS[name](out, y[:n]) for name in metrics if name != "accuracy"})
    return m


def losses(logits: torch.Tensor, y: torch.Tensor, smoothing: float | None, clip: float | None) -> dict[str, float]:
    """Mean CE, 0-1 error, and the bounded CE (smoothed or clipped) the CE bounds speak of."""
    ce = F.cross_entropy(logits, y, reduction="none")
    if smoothing is not None:
        p = (1 - smoothing) * logits.softmax(-1) + smoothing / logits.shape[-1]
        bounded = -p.gather(1, y[:, None]).squeeze(1).log()
    elif clip is not None:
        bounded = ce.clamp(max=clip)
    else:
        bounded = ce
    return {"ce": ce.mean().item(), "err": (logits.argmax(-1) != y).double().mean().item(),
            "ce_bounded": bounded.mean().item()}


def regression_losses(out: torch.Tensor, y: torch.Tensor, clip: float | None,
                      span: tuple[float, float]) -> dict[str, float]:
    """MSE of the one output and the bounded squared error the regression bounds speak of: clipped at ``clip``
    (min((f - y)^2, M)), or without a clip the squared error of the prediction clipped into the target range
    ``span`` = (lo, hi) ((clamp(f, lo, hi) - y)^2, in [0, (hi - lo)^2] for targets in the range). Float64."""
    f, t = out[..., 0].double(), y.double()
    se = (f - t) ** 2
    bounded = se.clamp(max=clip) if clip is not None else (f.clamp(*span) - t) ** 2
    return {"mse": se.mean().item(), "mse_bounded": bounded.mean().item()}

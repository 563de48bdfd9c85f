"""The compression (Occam) bound of a checkpoint (docs/theory.md section 5a).

The trained numbers are coded as deltas from values the decoder knows before training (B = 0, A and the
head from the run seed, W0 from the base), quantized and range coded by ``genbound.compress``; the bound
is evaluated on the QUANTIZED model, whose train error enters kl(err_train || err) <= (K ln2 + ln(1/delta))/N.
An optional quantization-aware fine-tune (straight-through estimator, on the training split only) may run
before coding: the hypothesis is still chosen from the training data, so the bound stays valid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import bounds, compress
from .build import Built, adapter_state, assign_state
from .checkpoint import Loaded
from .compress import encode, quantize
from .distributed import broadcast_object, spread
from .layers import next_link
from .progress import tick
from .subspace import Subspace, replay
from .runtime import batch_of, logits_with, losses, predict, task_loss


def trained_deltas(loaded: Loaded, init: Built) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (final value, value before training) for every number training changed. The decoder knows the
    initial values: what each adapter layout says (B = 0, A from the seed, PaCA's columns from W0, ...), and the
    initial model's tensors elsewhere (the head from the seed, W0 from the base)."""
    layers = loaded.built.layers
    init_state = init.model.state_dict()
    out = {}
    for name, final in adapter_state(loaded.model).items():
        owner, _, leaf = name.rpartition(".")
        if owner in layers and leaf in layers[owner].layout.stored:
            start = layers[owner].layout.decoder_start(layers[owner], leaf)
            if start is None:
                continue  # fixed by the seed: costs nothing but the seed's bits
        else:
            start = init_state[name]
        out[name] = (final.detach().float().cpu().clone(), start.detach().float().cpu().clone())  # no aliasing
    return out


def _assign(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in values.items():
            owner, _, leaf = name.rpartition(".")
            t = getattr(model.get_submodule(owner) if owner else model, leaf)
            t.copy_(value.to(t.device, t.dtype))


LEVELS_EVERY = 10  # QAT steps between refits of the k-means levels (a numpy Lloyd fit on the CPU)


def quantized_like(x: torch.Tensor, bits: int, scheme: str, levels: torch.Tensor | None = None) -> torch.Tensor:
    """levels[symbols] of ``compress.quantize(x, bits, scheme)``, computed on x's device: the uniform grid
    exactly as quantize makes it (float32 step from float64 min/max, symbols by float64 rint); k-means as
    the nearest of the given sorted ``levels`` (ties up; None: fitted now by quantize). 1-bit uniform goes
    through quantize itself."""
    if x.numel() == 0:
        return x.detach().clone()
    if scheme == "uniform" and bits >= 2:
        h = 2 ** (bits - 1) - 1
        xd = x.detach().float().double()
        a, b = xd.max().clamp(min=0), (-xd.min()).clamp(min=0)
        up, down = torch.maximum(a / (h + 1), b / h), torch.maximum(b / (h + 1), a / h)
        step = torch.where(up <= down, up, -down).float().double()
        safe = torch.where(step == 0, torch.ones_like(step), step)
        symbols = torch.clamp(torch.round(xd / safe), -h, h + 1)
        return torch.where(step == 0, torch.zeros_like(xd), (symbols * step).float().double()).to(x.dtype)
    if scheme == "uniform" or levels is None:
        lv, sym = quantize(x.detach(), bits, scheme)
        return torch.as_tensor(lv[sym], dtype=x.dtype, device=x.device).reshape(x.shape)
    lv = levels.to(x.device, torch.float64)
    idx = torch.searchsorted((lv[:-1] + lv[1:]) / 2, x.detach().float().double().contiguous(), right=True)
    return lv[idx].to(x.dtype)


def kmeans_levels(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The sorted float16 k-means levels quantize would store for x (as float64), without coding x."""
    flat = x.detach().to("cpu", torch.float32).reshape(-1).numpy()
    return torch.as_tensor(compress.kmeans_levels(flat, bits).astype("float64"))


def fake_quant(x: torch.Tensor, bits: int, scheme: str, levels: torch.Tensor | None = None) -> torch.Tensor:
    """x quantized as ``compress.quantize`` does, with the straight-through gradient of the identity."""
    return x + (quantized_like(x, bits, scheme, levels) - x).detach()


def quantization_aware(model: nn.Module, pairs: dict, deltas: dict[str, torch.Tensor], bits: int, scheme: str,
                       inputs: dict, y: torch.Tensor, steps: int, lr: float, batch_size: int = 64,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """``steps`` Adam steps on the deltas with the quantizer in the forward pass (training split only).
    The uniform grid follows the numbers every step, on their device; k-means levels are refitted every
    LEVELS_EVERY steps (the final code is quantized afresh by compress.encode either way)."""
    starts = {k: s.to(y.device) for k, (_, s) in pairs.items()}
    return _fine_tune(model, deltas, lambda q: {k: starts[k] + v for k, v in q.items()}, bits, scheme, inputs, y,
                      steps, lr, batch_size, seed)


def _fine_tune(model: nn.Module, deltas: dict[str, torch.Tensor], values_of, bits: int, scheme: str, inputs: dict,
               y: torch.Tensor, steps: int, lr: float, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The QAT loop: Adam on ``deltas`` (by name); ``values_of`` maps their fake-quantized values to the model's
    tensors (by name) for ``logits_with``."""
    device = y.device
    params = {k: d.detach().clone().to(device).requires_grad_(True) for k, d in deltas.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    levels: dict[str, torch.Tensor | None] = dict.fromkeys(params)
    for step in range(steps):
        if scheme == "kmeans" and step % LEVELS_EVERY == 0:
            levels = {k: kmeans_levels(p, bits) if p.numel() else None for k, p in params.items()}
        idx = torch.randint(len(y), (batch_size,), generator=gen).to(device)
        values = values_of({k: fake_quant(p, bits, scheme, levels[k]) for k, p in params.items()})
        loss = task_loss(logits_with(model, values, batch_of(inputs, idx)).float(), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        tick()
    return {k: p.detach().cpu() for k, p in params.items()}


class Direct:
    """What is coded without a subspace: every trained number, as a delta from its decoder-known start."""

    def __init__(self, loaded: Loaded, init: Built):
        self.model, self.seed = loaded.model, loaded.manifest["seed"]
        self.pairs = trained_deltas(loaded, init)
        self.deltas = {k: f - s for k, (f, s) in self.pairs.items()}

    def fine_tune(self, bits: int, scheme: str, inputs: dict, y: torch.Tensor, opts) -> dict[str, torch.Tensor]:
        return quantization_aware(self.model, self.pairs, self.deltas, bits, scheme, inputs, y, opts.qat_steps,
                                  opts.qat_lr, seed=self.seed)

    def install(self, quantized: dict[str, torch.Tensor]) -> None:
        _assign(self.model, {k: self.pairs[k][1] + q for k, q in quantized.items()})

    def restore(self) -> None:
        _assign(self.model, {k: f for k, (f, _) in self.pairs.items()})


class InSubspace:
    """What is coded for a subspace checkpoint (docs/theory.md section 5e): every link's z, one tensor per link
    (``subspace.z.T``, its own levels), as deltas from 0; the model is rebuilt from them by ``subspace.replay``
    on the step-0 tensors, as a decoder would."""

    def __init__(self, loaded: Loaded, init: Built):
        from .checkpoint import subspace_coordinates

        man = loaded.manifest
        self.model, self.seed, self.pseed = loaded.model, man["seed"], man["subspace"]["projection_seed"]
        z = subspace_coordinates(loaded.path, man)
        self.deltas = {self.name(t): z[t].clone() for t in range(z.shape[0])}
        self.final = {k: v.clone() for k, v in adapter_state(loaded.model).items()}
        self.start = {k: v.clone() for k, v in adapter_state(init.model).items()}

    @staticmethod
    def name(t: int) -> str:
        return f"subspace.z.{t}"

    def _rebuild(self, coords: list[torch.Tensor]) -> Subspace:
        """The model from its step-0 tensors and the given links' z (see subspace.replay)."""
        assign_state(self.model, {k: v.clone() for k, v in self.start.items()}, "the step-0 tensors")
        dev = next(self.model.parameters()).device
        z = torch.stack(coords).to(dev) if coords else torch.zeros(0, len(self.deltas[self.name(0)]), device=dev)
        return replay(self.model, z, self.seed, self.pseed)

    def install(self, quantized: dict[str, torch.Tensor]) -> None:
        self._rebuild([quantized[self.name(t)] for t in range(len(self.deltas))])

    def restore(self) -> None:
        assign_state(self.model, {k: v.clone() for k, v in self.final.items()}, "the trained tensors")

    def fine_tune(self, bits: int, scheme: str, inputs: dict, y: torch.Tensor, opts) -> dict[str, torch.Tensor]:
        """QAT of the last link's z; the finished links stay at their quantized values (each link has its own
        levels, so compress.encode quantizes them to exactly those again)."""
        k = len(self.deltas)
        done = []
        for t in range(k - 1):
            levels, symbols = quantize(self.deltas[self.name(t)], bits, scheme)
            done.append(torch.as_tensor(levels[symbols], dtype=torch.float32))
        sub = self._rebuild(done)
        if k > 1:
            next_link(self.model, k - 1)
            sub.start_link()
        names, shapes = sub.names, [p.shape for p in sub.params]

        def values_of(q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            flat = sub.theta0 + sub.proj.apply(q[self.name(k - 1)])
            return dict(zip(names, (t.view(shape) for t, shape in
                                    zip(flat.split([math.prod(s) for s in shapes]), shapes))))

        last = _fine_tune(self.model, {self.name(k - 1): self.deltas[self.name(k - 1)]}, values_of, bits, scheme,
                          inputs, y, opts.qat_steps, opts.qat_lr, 64, self.seed)
        return {**self.deltas, **last}


VACUOUS = 1.0 - 1e-9  # an Occam bound this high says nothing about the test error
LOWEST_BOUND = "the lowest bound"  # compress["choice"] when some bound says something


def choose(tried: list[dict]) -> tuple[dict, str]:
    """The candidate code to report and why: the lowest bound (ties to the lower quantized train error); when
    every bound is vacuous, the lowest quantized TRAIN error (ties to the shorter code), since a tie of bounds
    at 1 says nothing and the test split must not choose. Either way the header pays for the choice."""
    if all(r["occam_bound"] >= VACUOUS for r in tried):
        return (min(tried, key=lambda r: (r["train_err_q"], r["code_bits"])),
                "every bound is vacuous: the lowest quantized train error")
    return min(tried, key=lambda r: (r["occam_bound"], r["train_err_q"])), LOWEST_BOUND


def compression(loaded: Loaded, init: Built, inputs: dict, ys: dict, opts, ranks=None) -> dict:
    """For each grid point (bits x scheme): optionally a quantization-aware fine-tune, then quantize, code
    and decode the trained numbers (a subspace checkpoint: its z), evaluate the QUANTIZED model, and keep the
    candidate ``choose`` picks. The code's header records the scheme and bit width (genbound.compress), so the choice is
    paid for in the code; a subspace checkpoint also pays log2(projection seeds tried).

    With ``ranks`` (several processes) the quantized models' evaluations split over them by batches; the QAT
    fine-tune runs on every rank (same seed, same batches) and rank 0's numbers are broadcast, so that no
    nondeterministic kernel can make two ranks code different models."""
    coded = InSubspace(loaded, init) if "subspace" in loaded.manifest else Direct(loaded, init)
    n_train = len(ys["train"])
    grid = [(b, s) for s in opts.schemes for b in opts.compress_bits]
    extra = opts.seed_bits + math.log2(opts.hyper_settings) + math.log2(opts.projection_seeds)
    tried = []
    loaded.model.eval()
    try:
        for bits, scheme in grid:
            start = coded.deltas
            if opts.qat_steps:
                start = coded.fine_tune(bits, scheme, inputs["train"], ys["train"], opts)
                if spread(ranks):
                    start = broadcast_object(start)
            code = encode(start, bits, scheme)
            coded.install(code.quantized)
            errs = {s: losses(predict(loaded.model, inputs[s], len(ys[s]), opts.batch_size, ranks), ys[s], None,
                              None)["err"] for s in ("train", "test")}
            total = code.bits + extra
            row = {"bits": bits, "scheme": scheme, "qat_steps": opts.qat_steps, "code_bits": total,
                   "payload_bits": code.payload_bits,
                   "header_bits": code.header_bits, "train_err_q": errs["train"], "test_err_q": errs["test"],
                   "occam_bound": bounds.occam_bound(errs["train"], n_train, total, opts.delta)}
            tried.append(row)
    finally:
        coded.restore()
    best, choice = choose(tried)
    return {**best, "choice": choice, "delta": opts.delta, "numbers": sum(d.numel() for d in coded.deltas.values()),
            "extra_bits": extra, "mi_estimate_01": bounds.mi_estimate_from_code(best["code_bits"], n_train, 0.5),
            "coded": "subspace" if isinstance(coded, InSubspace) else "trained numbers", "tried": tried}

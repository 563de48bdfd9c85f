"""`genbound compute`: measured gaps, the paper's bound, Theorem 1's terms and a compression bound for one
checkpoint (docs/theory.md sections 2-5). ``compute(loaded, options)`` returns a JSON-able dict; ``render`` prints it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import bounds, result
from .build import Built, parameter_counts
from .checkpoint import Loaded, problem_of
from .distributed import all_gather_objects, mine, spread
from .errors import CheckpointError, GenboundError
from .options import opt
from .progress import work
from .layers import AdapterLinear, weight_matrix
from .update import spectral_norm
from .metrics import task_metrics
from .runtime import losses, predict, regression_losses

SCHEMA = "genbound.compute/1"


def parse_sigma(text: str) -> float | None:
    """--sigma: auto (from the loss) or a number."""
    return None if text == "auto" else float(text)


@dataclass
class ComputeOptions:
    loss: str = opt("01", '01 or ce (ce needs --smoothing or --clip to be bounded); mse for a regression task')
    bits: float = opt(32.0, 'q, bits per stored number')
    sigma: float | None = opt(None, 'sub-Gaussian parameter: auto (from the loss) or a value', parse=parse_sigma)
    smoothing: float | None = opt(None, 'prediction smoothing a')
    clip: float | None = opt(None, 'clip the cross-entropy (regression: the squared error) at M')
    delta: float = opt(0.05, 'confidence 1 - delta of the Occam bound')
    block_lipschitz: float = opt(1.0, 'transformers: assumed Lipschitz constant of each block (Theorem 1)')
    compress: bool = opt(False, 'quantize + entropy-code the trained numbers and report the Occam bound')
    compress_bits: list[int] = opt([1, 2, 3, 4, 6, 8], 'quantization bits tried')
    schemes: list[str] = opt(["uniform", "kmeans"], 'uniform and/or kmeans')
    qat_steps: int = opt(0, 'quantization-aware fine-tune steps per (scheme, bits) tried (0 = quantize as trained)')
    qat_lr: float = opt(1e-3, 'learning rate of the quantization-aware fine-tune')
    hyper_settings: int = opt(1, 'training configurations tried (log2 is charged to the code)')
    seed_bits: int = opt(32, 'bits charged for the run seed')
    projection_seeds: int = opt(1, 'subspace checkpoints: projections tried (--subspace-seed 0..S-1; log2 S is '
                                   'charged to the code)')
    base_gap: bool = opt(True, 'also measure the gap before fine-tuning')
    batch_size: int = opt(256, 'evaluation batch size')


def check_options(opts: ComputeOptions) -> None:
    """One line naming the flag for options that cannot give a number (the bounds check the rest)."""
    if opts.compress:  # the coder (constriction) is needed only then
        from .compress import MAX_BITS, SCHEMES

        bad = [b for b in opts.compress_bits if not 1 <= b <= MAX_BITS]
        if bad:
            raise GenboundError(f"--compress-bits {bad[0]}: quantization takes 1 to {MAX_BITS} bits")
        unknown = [s for s in opts.schemes if s not in SCHEMES]
        if unknown or not opts.schemes:
            raise GenboundError(f"--schemes {' '.join(opts.schemes)}: choose from {', '.join(SCHEMES)}")
    for flag, value, low in (("--qat-steps", opts.qat_steps, 0), ("--hyper-settings", opts.hyper_settings, 1),
                             ("--seed-bits", opts.seed_bits, 0), ("--batch-size", opts.batch_size, 1),
                             ("--projection-seeds", opts.projection_seeds, 1)):
        if value < low:
            raise GenboundError(f"{flag} {value}: must be at least {low}")
    for flag, value in (("--qat-lr", opts.qat_lr), ("--block-lipschitz", opts.block_lipschitz)):
        if not (math.isfinite(value) and value > 0):
            raise GenboundError(f"{flag} {value}: must be a positive number")


def check_task_options(task, opts: ComputeOptions) -> None:
    """One line for an option that does not fit the checkpoint's task: the 0-1 loss, CE, smoothing and the
    Occam bound (a bound on a 0-1 error) are classification's; the squared error is regression's."""
    if task.regression:
        if opts.loss != "mse":
            raise GenboundError(f"--loss {opts.loss}: a regression task has no 0-1 error or cross-entropy; use "
                                "--loss mse (the squared error, bounded by --clip M or by clipping predictions into "
                                "the target range)")
        if opts.smoothing is not None:
            raise GenboundError("--smoothing smooths class probabilities; a regression task has none (use --clip M)")
        if opts.compress:
            raise GenboundError("--compress: the Occam bound bounds a 0-1 error (docs/theory.md 5a); a regression "
                                "task has none")
    elif opts.loss == "mse":
        raise GenboundError(f"--loss mse is for regression tasks; {task.name} is a classification task (use 01 or ce)")


def defaults_for(manifest: dict) -> dict:
    """Options that differ from the defaults for a checkpoint's task (``study.fill_missing``): a regression
    task is measured with the squared error."""
    return {"loss": "mse"} if problem_of(manifest) == "regression" else {}


def target_range(task) -> tuple[float, float]:
    """[lo, hi] of a regression task's targets over both splits: the range its bounded loss assumes."""
    y = torch.cat([task.train.y, task.test.y]).double()
    return float(y.min()), float(y.max())


def mean_predictor_mse(y_train: torch.Tensor, y_test: torch.Tensor) -> float:
    """Test MSE of always predicting the mean training target: the trivial regressor."""
    return float(((y_test.double() - y_train.double().mean()) ** 2).mean())


# ---- measured (section 2) -------------------------------------------------------------------------------
def majority_error(y_train: torch.Tensor, y_test: torch.Tensor) -> float:
    """Test error of always predicting the most frequent training class: a bound on the test error above this
    says less than the trivial classifier does (vacuous)."""
    majority = int(torch.bincount(y_train).argmax())
    return float((y_test != majority).double().mean())


# ---- Theorem 1 inputs (section 4) ------------------------------------------------------------------------
def _linear_names(built: Built) -> list[str]:
    """The composition's matrices in order: the adapted (or, for full/head, the default target) matrices,
    then the head's Linear layers."""
    model = built.model
    inner = built.targets or built.backbone.targets
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and any(n == h or n.startswith(h + ".") for h in built.backbone.head)]
    return [*inner, *head]


def _augment(w: torch.Tensor, b: torch.Tensor | None, last: bool) -> torch.Tensor:
    """[[W b], [0 1]] (or [W b] for the last layer): an affine ReLU layer as a linear one on [x; 1]."""
    w = w.detach().double()
    if b is None:
        return w
    top = torch.cat([w, b.detach().double()[:, None]], 1)
    if last:
        return top
    bottom = torch.zeros(1, top.shape[1], dtype=top.dtype, device=top.device)
    bottom[0, -1] = 1.0
    return torch.cat([top, bottom], 0)


def matrix_norms(loaded: Loaded, init: Built) -> list[dict]:
    """Per matrix of the composition: n, m, ||W0||_2 and ||dW||_2 (exact; from the factors for adapters).
    W0 is the weight before fine-tuning (the pretrained matrix or the fresh head). On the MLP, biases are
    folded in exactly as [[W b], [0 1]]; on transformers they are not (part of the stated assumptions)."""
    mlp = loaded.built.backbone.kind == "mlp"
    names = _linear_names(loaded.built)
    out = []
    for i, name in enumerate(names):
        mod, start = loaded.model.get_submodule(name), init.model.get_submodule(name)
        last, use_b = i == len(names) - 1, mlp
        if isinstance(mod, AdapterLinear):
            w0 = _augment(mod.weight, mod.bias if use_b else None, last)
            norm_dw = float(mod.update().singular_values()[0]) if mod.r else 0.0
        else:
            w, w_start = weight_matrix(mod), weight_matrix(start)  # n x m (a Conv1D stores W^T)
            w0 = _augment(w_start, start.bias if use_b else None, last)
            dw = _augment(w - w_start.to(w.device),
                          (mod.bias - start.bias.to(mod.bias.device)) if use_b and mod.bias is not None else None,
                          True)
            norm_dw = spectral_norm(dw)
        out.append({"name": name, "n": weight_matrix(mod).shape[0], "m": weight_matrix(mod).shape[1],
                    "norm_w0": spectral_norm(w0), "norm_dw": norm_dw})
    return out


@contextmanager
def token_norm_probe(model: nn.Module):
    """While active, records the largest token norm of a transformer's embedding output (C of Theorem 1)
    seen in any forward pass; yields a one-element list holding it."""
    base = model.base_model  # BERT, ViT: an embeddings module; GPT-2: its dropout after token + position embeddings
    emb = getattr(base, "embeddings", None) or getattr(base, "drop", None) or model.get_input_embeddings()
    best = [0.0]
    hook = emb.register_forward_hook(lambda m, i, o: best.__setitem__(0, max(best[0], float(o.norm(dim=-1).max()))))
    try:
        yield best
    finally:
        hook.remove()


def mlp_input_radius(inputs: dict) -> float:
    """C for the MLP: max ||[x; 1]||_2 over train and test inputs."""
    x = torch.cat([inputs["train"]["x"], inputs["test"]["x"]]).double()
    return math.sqrt(float(x.norm(dim=1).max()) ** 2 + 1)


def theorem1(loaded: Loaded, init: Built, C: float, c_source: str, opts: ComputeOptions,
             l_loss: float = bounds.SQRT2, loss_words: str = "L_loss = sqrt(2) for CE w.r.t. logits") -> dict:
    """Phi_dW and Phi_W0 of Theorem 1 with the matrices' norms; ``C`` bounds the composition's input norm,
    ``l_loss`` is the loss's Lipschitz constant in the network output (``loss_words`` says which)."""
    mats = matrix_norms(loaded, init)
    a, d = [m["norm_w0"] for m in mats], [m["norm_dw"] for m in mats]
    L = len(mats)
    if loaded.built.backbone.kind == "mlp":
        lips, assumptions = [1.0] * L, ("exact: ReLU MLP (L_l = 1, c_l = 0, last layer identity), biases folded in "
                                       f"as [[W b],[0 1]], {loss_words}, C = {c_source}")
    else:
        lips = [opts.block_lipschitz] * L
        family = getattr(getattr(loaded.model, "config", None), "model_type", "transformer")
        norms = "RMSNorm" if family in ("llama", "mistral", "qwen2", "gemma") else "LayerNorm"
        decoder = family in ("llama", "mistral", "qwen2", "gemma", "gpt2")
        assumptions = (f"UNDER ASSUMPTIONS ({family}): the network is treated as the composition of its {L} "
                       f"adapted/head matrices in order, each block between them {opts.block_lipschitz:g}-Lipschitz "
                       f"(--block-lipschitz) with c_l = 0, biases and {norms} parameters inside the blocks (attention, "
                       f"residuals{', the causal mask and the last-token pooling' if decoder else ''} "
                       f"assumed within that constant); {loss_words}; C = {c_source}")
    zeros = [0.0] * (L - 1)
    log_dw = bounds.log10_phi(a, d, C, lips, zeros, l_loss)
    log_w0 = bounds.log10_phi(d, a, C, lips, zeros, l_loss)
    return {"matrices": mats, "C": C, "log10_phi_dw": log_dw, "log10_phi_w0": log_w0,
            "phi_dw": bounds.finite_or_none(log_dw), "phi_w0": bounds.finite_or_none(log_w0),
            "theorem1_assumptions": assumptions}


# ---- the analysis ----------------------------------------------------------------------------------------
def compute(loaded: Loaded, opts: ComputeOptions, ranks=None) -> dict:
    """Every number of `genbound compute` for one loaded checkpoint. With ``ranks`` (a ``distributed.Context`` of
    several processes: torchrun) every evaluation pass is split over them by batches and the logits gathered, so
    every rank holds one process's numbers exactly (docs/design.md section 8c)."""
    check_options(opts)
    task, man, model, dev = loaded.task, loaded.manifest, loaded.model, loaded.device
    if len(task.test) == 0 or len(task.train) == 0:
        raise GenboundError("the checkpoint's task has no train or test examples to measure the gap on")
    check_task_options(task, opts)
    reg = task.regression
    span = target_range(task) if reg else None
    sigma, sigma_source = bounds.sigma_of(opts.loss, task.num_classes, opts.smoothing, opts.clip, opts.sigma, span)
    enc = loaded.built.backbone.encode
    inputs = {s: {k: v.to(dev) for k, v in enc(getattr(task, s)).items()} for s in ("train", "test")}
    ys = {s: getattr(task, s).y.to(dev) for s in ("train", "test")}
    mlp = loaded.built.backbone.kind == "mlp"

    def measured(net, s: str) -> tuple[dict, torch.Tensor]:
        """The losses of ``net`` on split ``s``, and its outputs."""
        out = predict(net, inputs[s], len(ys[s]), opts.batch_size, ranks)
        return (regression_losses(out, ys[s], opts.clip, span) if reg else
                losses(out, ys[s], opts.smoothing, opts.clip)), out

    m, outs = {}, {}
    with nullcontext([0.0]) if mlp else token_norm_probe(model) as token_norm:  # C, seen in the train pass
        m["train"], outs["train"] = measured(model, "train")
    m["test"], outs["test"] = measured(model, "test")
    scores = {s: task_metrics(task, outs[s], ys[s]) for s in ("train", "test")}
    C, c_source = ((mlp_input_radius(inputs), "max ||[x; 1]||_2 over train and test inputs") if mlp else
                   (max(all_gather_objects(token_norm[0]) if spread(ranks) else token_norm),
                    "max token norm of the embedding output over the training split"))
    agrees = matches_manifest(m["test"], scores["test"], man["metrics"], reg, len(task.test))
    if not agrees and not loaded.other_data:
        saved = man["metrics"]
        now = (f"test MSE {m['test']['mse']:.6g}" if reg else
               f"test loss {m['test']['ce']:.6g} and accuracy {1 - m['test']['err']:.4f}")
        then = (f"{saved['test_loss']:.6g}" if reg else f"{saved['test_loss']:.6g} and {saved['test_acc']:.4f}")
        raise CheckpointError(f"re-evaluated, the model gives {now}, but the manifest records {then} (or other task "
                              "metrics): this is not the model that was trained; nothing is reported")
    sub = man.get("subspace")
    if opts.compress and sub is not None and sub["projection_seed"] >= opts.projection_seeds:
        raise GenboundError(f"--projection-seeds {opts.projection_seeds}: the checkpoint uses projection "
                            f"{sub['projection_seed']}, so at least {sub['projection_seed'] + 1} were tried")
    n_train = len(task.train)
    counts = parameter_counts(loaded.built)
    meth = man["method"]
    init = loaded.initial()
    out = {
        "schema": SCHEMA, "method": meth["name"], "rank": meth["rank"],
        "alpha": meth["alpha"], "chain_k": meth["chain_k"], "n_train": n_train, "n_test": len(task.test),
        "loss": opts.loss, "bits": opts.bits, "sigma": sigma, "sigma_source": sigma_source,
        "params_paper": counts["paper"], "params_full": counts["full"],
        "mi_term_paper": bounds.mi_term(counts["paper"], n_train, opts.bits, sigma),
        "mi_term_full": bounds.mi_term(counts["full"], n_train, opts.bits, sigma),
        "problem": task.problem, "metrics": list(task.metrics),
    }
    if sub is not None:
        out.update({"params_subspace": sub["coordinates"],
                    "mi_term_subspace": bounds.mi_term(sub["coordinates"], n_train, opts.bits, sigma)})
    if reg:
        out.update({"train_loss": m["train"]["mse"], "test_loss": m["test"]["mse"],
                    "train_mse": m["train"]["mse"], "test_mse": m["test"]["mse"],
                    "gap_mse": m["test"]["mse"] - m["train"]["mse"],
                    "gap_mse_bounded": m["test"]["mse_bounded"] - m["train"]["mse_bounded"],
                    "mean_mse": mean_predictor_mse(ys["train"], ys["test"]), "target_range": list(span)})
    else:
        out.update({"train_loss": m["train"]["ce"], "test_loss": m["test"]["ce"],
                    "train_err": m["train"]["err"], "test_err": m["test"]["err"],
                    "gap_ce": m["test"]["ce"] - m["train"]["ce"], "gap_01": m["test"]["err"] - m["train"]["err"],
                    "gap_ce_bounded": m["test"]["ce_bounded"] - m["train"]["ce_bounded"],
                    "majority_err": majority_error(ys["train"], ys["test"])})
    for s in ("train", "test"):
        out.update({f"{s}_{k}": v for k, v in scores[s].items() if k != "accuracy"})
    out.update({"matches_manifest": None if loaded.other_data else agrees, "data": loaded.data,
                "options": asdict(opts)})
    if reg:
        l_loss = bounds.squared_error_lipschitz(opts.clip, span)
        words = (f"L_loss = 2 sqrt(M) = {l_loss:.4g} for the squared error clipped at M" if opts.clip is not None else
                 f"L_loss = 2 (hi - lo) = {l_loss:.4g} for the squared error of predictions clipped into the "
                 "target range")
        out.update(theorem1(loaded, init, C, c_source, opts, l_loss, words))
    else:
        out.update(theorem1(loaded, init, C, c_source, opts))
    if opts.base_gap:
        base_m = {s: measured(init.model, s)[0] for s in ("train", "test")}
        if reg:
            out["gap_mse_base"] = base_m["test"]["mse"] - base_m["train"]["mse"]
        else:
            out["gap_ce_base"] = base_m["test"]["ce"] - base_m["train"]["ce"]
            out["gap_01_base"] = base_m["test"]["err"] - base_m["train"]["err"]
    if opts.loss in ("ce", "mse"):
        # G(W0) <= MI bound with I(S; W0) = 0 (W0 is fixed before S is drawn); G(dW) <= the full-count MI term.
        log_a = out["log10_phi_dw"]
        log_b = bounds.log10_sum([math.log10(out["mi_term_full"]), out["log10_phi_w0"]])
        out["log10_theorem1_bound"] = min(log_a, log_b)
        out["theorem1_bound"] = bounds.finite_or_none(out["log10_theorem1_bound"])
    else:
        out["log10_theorem1_bound"], out["theorem1_bound"] = None, None
        out["theorem1_note"] = "the 0-1 loss is not Lipschitz: Theorem 1's total needs --loss ce; Phi is for CE"
    if opts.compress:
        from .occam import compression

        out["compress"] = compression(loaded, init, inputs, ys, opts, ranks)
    return out


def matches_manifest(test: dict, scores: dict, saved: dict, regression: bool, n_test: int) -> bool:
    """Whether re-evaluated test numbers equal the manifest's. The same weights on the same data give the
    recorded numbers up to float32 noise (another device or BLAS may flip the argmax of a near-tie: up to 3
    test examples); anything else means the model is not the one trained. Loss: relative 1e-3; accuracy:
    3 examples; F1 and Matthews (which 3 flips move by more): 24 / n_test; correlations: 1e-3. Metrics the
    manifest does not record (written before they were) are not compared."""
    loss = test["mse"] if regression else test["ce"]
    ok = abs(loss - saved["test_loss"]) <= 1e-3 * max(1.0, saved["test_loss"])
    if not regression:
        ok = ok and abs((1 - test["err"]) - saved["test_acc"]) <= max(1e-3, 3 / n_test)
    for name, value in scores.items():
        key = f"test_{name}"
        if name == "accuracy" or key not in saved:
            continue
        if value is None or saved[key] is None:
            ok = ok and value is None and saved[key] is None
        else:
            ok = ok and abs(value - saved[key]) <= (1e-3 if regression else max(1e-3, 24 / n_test))
    return ok


def _num(x: float | None, log10: float | None = None) -> str:
    if x is None:
        return f"10^{log10:.1f}" if log10 is not None else "n/a"
    return f"{x:.4g}"


def render(r: dict) -> str:
    """The readable table of one compute result."""
    lines = [
        f"{r['method']}  r={r['rank']} alpha={r['alpha']:g} k={r['chain_k']}   N={r['n_train']} train / "
        f"{r['n_test']} test",
        "measured (eval mode, full splits)",
    ]
    if "gap_mse" in r:  # a regression task
        lines += [f"  train MSE {r['train_mse']:.4f} | test MSE {r['test_mse']:.4f} | gap MSE {r['gap_mse']:.4f}  "
                  f"gap of the bounded loss {r['gap_mse_bounded']:.4f}",
                  f"  always predicting the mean training target: test MSE {r['mean_mse']:.4f}"]
    else:
        lines += [f"  train CE {r['train_loss']:.4f}  err {r['train_err']:.4f} | test CE {r['test_loss']:.4f}  "
                  f"err {r['test_err']:.4f} | gap CE {r['gap_ce']:.4f}  gap 0-1 {r['gap_01']:.4f}",
                  f"  always predicting the majority training class: test err {r['majority_err']:.4f}"]
    names = [k for k in r.get("metrics", []) if k != "accuracy"]
    if names:
        lines.append("  " + "   ".join(f"{k}: train {_num(r.get('train_' + k))} test {_num(r.get('test_' + k))}"
                                       for k in names)
                     + ("  (n/a: undefined, a constant side)" if any(
                         r.get(f"{s}_{k}") is None for s in ("train", "test") for k in names) else ""))
    data = r.get("data") or {}
    if data.get("other_data"):
        lines.insert(1, f"OTHER DATA: evaluated on {data['name']}, not on the data the checkpoint was trained on "
                        f"({data['trained_on']}): the 'gap' below is not its generalization gap")
    elif data and not data.get("verified"):
        lines.insert(1, "note: a format-1 checkpoint: its data and weights carry no checksums and are not verified")
    if "gap_ce_base" in r:
        lines.append(f"  before fine-tuning: gap CE {r['gap_ce_base']:.4f}  gap 0-1 {r['gap_01_base']:.4f}")
    if "gap_mse_base" in r:
        lines.append(f"  before fine-tuning: gap MSE {r['gap_mse_base']:.4f}")
    lines += [
        f"paper bound, loss {r['loss']}: sqrt(2 q sigma^2 ln2 D / N), q={r['bits']:g}, sigma={r['sigma']:.4g} "
        f"({r['sigma_source']})",
        f"  D paper {r['params_paper']:,} -> {r['mi_term_paper']:.4g}   D full {r['params_full']:,} -> "
        f"{r['mi_term_full']:.4g}" + (f"   D subspace {r['params_subspace']:,} -> {r['mi_term_subspace']:.4g}"
                                       if "params_subspace" in r else ""),
        f"Theorem 1 (C = {r['C']:.4g}); {r['theorem1_assumptions']}",
        f"  {'matrix':<44}{'n x m':>12}{'||W0||_2':>12}{'||dW||_2':>12}",
    ]
    lines += [f"  {m['name']:<44}{str(m['n']) + ' x ' + str(m['m']):>12}{m['norm_w0']:>12.4g}{m['norm_dw']:>12.4g}"
              for m in r["matrices"]]
    lines.append(f"  Phi_dW {_num(r['phi_dw'], r['log10_phi_dw'])} (log10 {r['log10_phi_dw']:.2f})   Phi_W0 "
                 f"{_num(r['phi_w0'], r['log10_phi_w0'])} (log10 {r['log10_phi_w0']:.2f})")
    if r["log10_theorem1_bound"] is not None:
        lines.append(f"  bound min(G(W0) + Phi_dW, G(dW) + Phi_W0) = "
                     f"{_num(r['theorem1_bound'], r['log10_theorem1_bound'])}")
    else:
        lines.append(f"  {r['theorem1_note']}")
    if "compress" in r:
        c = r["compress"]
        what = " (the subspace coordinates z)" if c.get("coded") == "subspace" else ""
        from .occam import LOWEST_BOUND

        picked = ("best" if c.get("choice", LOWEST_BOUND) == LOWEST_BOUND
                  else "every bound vacuous, so the lowest quantized train error:")
        lines += [f"compression (Occam, delta={c['delta']}): {picked} {c['scheme']} {c['bits']}-bit code of "
                  f"{c['numbers']:,} numbers{what} = "
                  f"{c['code_bits']:,.0f} bits ({c['code_bits'] / c['numbers']:.3f}/number)",
                  f"  quantized: train err {c['train_err_q']:.4f}  test err {c['test_err_q']:.4f}  ->  "
                  f"bound on test error {c['occam_bound']:.4f}   (MI form, an estimate: {c['mi_estimate_01']:.4g})"]
    return "\n".join(lines)


# ---- the analysis contract (genbound/analyses.py) -------------------------------------------------------
Options = ComputeOptions


class Result(result.Result):
    SCHEMA = SCHEMA
    MEASURES = {
        "paper_bound": (lambda a: a["mi_term_paper"], "the paper's MI term, paper count"),
        "paper_bound_full": (lambda a: a["mi_term_full"], "the MI term, every trained number"),
        "log10_phi_dw": (lambda a: a["log10_phi_dw"], "log10 of Theorem 1's Phi_dW"),
        "log10_theorem1": (lambda a: a["log10_theorem1_bound"],
                           "log10 of Theorem 1's bound (computes with a Lipschitz loss, --loss ce, only)"),
        "compression_bound": (lambda a: (a.get("compress") or {}).get("occam_bound"),
                              "Occam bound of the quantized model"),
    }

    def render(self) -> str:
        return render(self.data)


def across_ranks(options: ComputeOptions) -> bool:
    """Under torchrun the evaluation passes split over the processes (``run`` takes ``ranks``)."""
    return True


def work_units(loaded: Loaded, opts: ComputeOptions, ranks=None) -> int:
    """The evaluation batches and quantization-aware steps ``compute`` will run on this rank (its progress)."""
    per = lambda n: len(mine(range(0, n, opts.batch_size), ranks))  # noqa: E731
    passes = per(len(loaded.task.train)) + per(len(loaded.task.test))
    total = passes * (2 if opts.base_gap else 1)
    if opts.compress:
        total += len(opts.compress_bits) * len(opts.schemes) * (opts.qat_steps + passes)
    return total


def run(loaded: Loaded, options: ComputeOptions, progress: bool = False, ranks=None) -> Result:
    with work(work_units(loaded, options, ranks), "compute", "batch", progress):
        return Result(compute(loaded, options, ranks))

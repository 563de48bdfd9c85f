"""`genbound hessian`: top eigenvalues, trace and spectral density of the training-loss Hessian of one
checkpoint (docs/theory.md section 8). ``hessian_analysis(loaded, options)`` returns a JSON-able dict; ``render``
prints it. Every estimate carries its uncertainty: Ritz residuals for eigenvalues, standard errors for
traces, and with ``repeats`` > 1 the spread over independent data subsamples.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from .. import result
from ..checkpoint import Loaded
from ..errors import GenboundError
from ..options import opt
from ..runtime import device_generator, generator
from .estimators import STOPS, WHICH, check_block, hutchinson, hutchpp, lanczos_block_top, lanczos_top, slq_density
from .operator import (DTYPES, HVP_MODES, PARAM_SETS, HessianOperator, select_params, space_model,
                       training_batches, working_model)

SCHEMA = "genbound.hessian/1"
BACKENDS = ("genbound", "pyhessian")


@dataclass
class HessianOptions:
    params: str = opt("trainable", 'trainable | adapters | all | dw')
    top_k: int = opt(5, 'top eigenvalues (Lanczos)')
    which: str = opt("largest", 'largest (algebraic) | magnitude (what power iteration and PyHessian find)')
    trace: bool = opt(False, 'Hutchinson and Hutch++')
    density: bool = opt(False, 'spectral density by stochastic Lanczos quadrature')
    samples: int = opt(512, 'training examples in the loss')
    batch: int = opt(128, 'examples per forward pass')
    seed: int = opt(0, 'data subsample and probes')
    backend: str = opt("genbound", 'genbound | pyhessian (cross-check)')
    repeats: int = opt(1, 'independent data subsamples (their mean and std)')
    probes: int = opt(30, 'HVPs per trace estimator')
    lanczos_steps: int = opt(100, 'Lanczos steps (blocks with --block > 1)')
    block: int = opt(1, 'block Lanczos: start vectors per block, one data pass each step when <= --probe-batch '
                        '(1: single-vector Lanczos)')
    tol: float = opt(1e-3, 'relative residual tolerance')
    stop: str = opt(
        "residual", 'Lanczos stopping rule: residual (rigorous) | gap (r^2 / Ritz gap: fewer HVPs, an estimate)')
    hvp: str = opt("auto", 'auto | forward-over-reverse | double-backward')
    cache_graphs: bool = opt(False, "keep every batch's gradient graph: HVPs without forward passes (needs memory)")
    dtype: str = opt("float32", 'float32 | float64')
    autocast: bool = opt(False, 'HVPs under bf16 autocast (--dtype float32; eigenvalues ~5e-3 off: docs/theory.md)')
    probe_batch: int = opt(8, 'probe vectors per data pass (memory against speed)')
    density_probes: int = opt(5, 'SLQ probe vectors')
    density_sigma: float | None = opt(None, 'Gaussian broadening of the density (default: 1%% of the Ritz-value range)')
    density_grid: int = opt(1000, "points of the density's grid")
    max_iter: int = opt(1000, 'pyhessian: power iterations per eigenvalue')
    timing: bool = opt(False, 'also measure what one gradient and one HVP cost (a few extra passes)')


def check_options(opts: HessianOptions) -> None:
    choices = {"params": PARAM_SETS, "backend": BACKENDS, "hvp": HVP_MODES, "dtype": tuple(DTYPES), "which": WHICH,
               "stop": STOPS}
    for key, allowed in choices.items():
        if getattr(opts, key) not in allowed:
            raise GenboundError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}; got "
                                f"{getattr(opts, key)!r}")
    positive = ("samples", "batch", "repeats", "lanczos_steps", "probe_batch", "density_grid", "max_iter", "block")
    for key in positive:
        if getattr(opts, key) < 1:
            raise GenboundError(f"--{key.replace('_', '-')} must be at least 1; got {getattr(opts, key)}")
    if opts.top_k < 0:
        raise GenboundError(f"--top-k must be >= 0; got {opts.top_k}")
    if not opts.tol > 0:
        raise GenboundError(f"--tol must be positive; got {opts.tol}")
    if opts.trace and opts.probes < (1 if opts.backend == "pyhessian" else 3):
        raise GenboundError(f"--probes must be at least 3 for the traces (Hutch++ uses thirds); got {opts.probes}")
    if opts.density and opts.backend == "pyhessian":
        raise GenboundError("--density is not available with --backend pyhessian (its density() calls the removed "
                            "torch.eig); use --backend genbound")
    if opts.density and opts.density_probes < 1:
        raise GenboundError(f"--density-probes must be at least 1; got {opts.density_probes}")
    if opts.autocast and (opts.dtype != "float32" or opts.backend != "genbound"):
        raise GenboundError("--autocast (bf16 HVPs) needs --dtype float32 and --backend genbound")
    if opts.top_k == 0 and not opts.trace and not opts.density:
        raise GenboundError("nothing to compute: ask for --top-k >= 1, --trace or --density")


def _repeat_seed(seed: int, repeat: int) -> int:
    return seed if repeat == 0 else int(torch.randint(2**31, (1,), generator=generator(seed, "hessian-repeat", repeat)))


def _timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``fn`` after one warm-up call, synchronized on CUDA."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure_costs(op: HessianOperator, seed: int = 0) -> dict:
    """Seconds of one gradient and one HVP over the whole subsample, and of a batched HVP per probe.
    The gradient is timed with the same (math) attention kernels as the HVPs and with the default ones."""
    gen = device_generator(op.device, seed, "timing")
    v = torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
    V = torch.randn(op.probe_batch, op.dim, generator=gen, device=op.device, dtype=op.dtype)
    counts = (op.n_hvp, op.n_passes)
    grad = _timed(op.gradient, op.device)
    grad_default = _timed(lambda: op.gradient(math_kernels=False), op.device)
    hvp = _timed(lambda: op.matvec(v), op.device)
    batched = _timed(lambda: op.matmat(V), op.device, repeats=1) / op.probe_batch
    op.n_hvp, op.n_passes = counts
    return {"grad_seconds_per_call": grad, "grad_seconds_per_call_default_kernels": grad_default,
            "hvp_seconds_per_call": hvp, "hvp_seconds_per_probe_batched": batched,
            "probe_batch": op.probe_batch, "hvp_over_grad": hvp / grad, "hvp_batched_over_grad": batched / grad,
            "hvp_single": op.mode_for(1), "hvp_batched": op.mode_for(op.probe_batch), "cached_graphs": op.cache_graphs,
            "device": str(op.device),
            "note": "one call = one pass over the whole subsample; median of 3 after a warm-up"}


def genbound_estimates(op: HessianOperator, opts: HessianOptions, seed: int, density: bool) -> dict:
    """Lanczos top-k, Hutchinson + Hutch++ traces and the SLQ density on one operator."""
    out: dict = {"eigenvalues": [], "residuals": [], "n_hvp_by_stage": {}, "n_passes_by_stage": {}}
    passes = op.n_passes
    if opts.top_k:
        eig = top_eigen(op, opts, seed)
        order = "largest algebraic" if opts.which == "largest" else "largest in magnitude"
        how = "Lanczos" if opts.block == 1 else f"block Lanczos (blocks of {opts.block})"
        out.update(eigenvalues=eig.eigenvalues, residuals=eig.residuals, residual_estimates=eig.residual_estimates,
                   eigen_steps=eig.steps, eigen_converged=eig.converged, eigen_block=opts.block,
                   eigen_method=f"{how} with full reorthogonalization ({order} eigenvalues)")
        out["n_hvp_by_stage"]["eigenvalues"] = eig.n_hvp
        out["n_passes_by_stage"]["eigenvalues"], passes = op.n_passes - passes, op.n_passes
    if opts.trace:
        h, hpp = hutchinson(op, opts.probes, seed), hutchpp(op, opts.probes, seed)
        out.update(trace=hpp["trace"], trace_stderr=hpp["stderr"], trace_estimator="hutch++", hutchinson=h,
                   hutchpp=hpp)
        out["n_hvp_by_stage"]["trace"] = h["n_hvp"] + hpp["n_hvp"]
        out["n_passes_by_stage"]["trace"], passes = op.n_passes - passes, op.n_passes
    if density:
        d = slq_density(op, opts.density_probes, opts.lanczos_steps, seed, opts.density_sigma, opts.density_grid)
        out["density"] = d
        out["n_hvp_by_stage"]["density"] = d["n_hvp"]
        out["n_passes_by_stage"]["density"] = op.n_passes - passes
    out["n_hvp"] = sum(out["n_hvp_by_stage"].values())
    out["n_passes"] = sum(out["n_passes_by_stage"].values())
    return out


def top_eigen(op: HessianOperator, opts: HessianOptions, seed: int):
    """Lanczos top-k (``opts.block`` 1) or block Lanczos top-k (``opts.block`` > 1) with the options' rules."""
    common = dict(max_steps=opts.lanczos_steps, tol=opts.tol, seed=seed, which=opts.which, stop=opts.stop)
    if opts.block == 1:
        return lanczos_top(op, opts.top_k, **common)
    return lanczos_block_top(op, opts.top_k, opts.block, **common)


def pyhessian_estimates(op: HessianOperator, opts: HessianOptions, seed: int) -> dict:
    """PyHessian's eigenvalues() and trace() on the operator's model, data and parameters; the residuals of
    its eigenvectors are measured with genbound's HVP (k more HVPs, not counted in its n_hvp)."""
    from .pyhessian_backend import PyHessianRun

    run = PyHessianRun(op, seed)
    out: dict = {"eigenvalues": [], "residuals": [], "n_hvp_by_stage": {}}
    if opts.top_k:
        e = run.eigenvalues(opts.top_k, opts.tol, opts.max_iter)
        Y = e["vectors"] / e["vectors"].norm(dim=1, keepdim=True)
        lam = torch.tensor(e["eigenvalues"], dtype=op.dtype, device=op.device)
        res = (op.matmat(Y) - lam[:, None] * Y).norm(dim=1)
        out.update(eigenvalues=e["eigenvalues"], residuals=res.double().cpu().tolist(),
                   eigen_method="power iteration with deflation (pyhessian 0.1, largest magnitude, stops when "
                                "successive estimates change by < tol)", eigen_seconds=e["seconds"],
                   seconds_per_hvp=e["seconds"] / max(1, e["n_hvp"]))
        out["n_hvp_by_stage"]["eigenvalues"] = e["n_hvp"]
    if opts.trace:
        t = run.trace(opts.probes, opts.tol)
        out.update(trace=t["trace"], trace_stderr=t["stderr"], hutchinson=t,
                   trace_estimator="hutchinson (pyhessian 0.1, stops when the running mean changes by < tol)")
        out["n_hvp_by_stage"]["trace"] = t["n_hvp"]
    out["n_hvp"] = sum(out["n_hvp_by_stage"].values())
    return out


def _spread(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize_repeats(runs: list[dict]) -> dict:
    """Mean and std (n - 1) over the data subsamples of every eigenvalue and trace estimate."""
    out: dict = {"count": len(runs), "per_repeat": [
        {k: r.get(k) for k in ("eigenvalues", "trace", "trace_stderr", "samples_seed")} for r in runs]}
    k = min(len(r["eigenvalues"]) for r in runs)
    if k:
        cols = [[r["eigenvalues"][i] for r in runs] for i in range(k)]
        out["eigenvalues_mean"] = [_spread(c)[0] for c in cols]
        out["eigenvalues_std"] = [_spread(c)[1] for c in cols]
    if runs[0].get("trace") is not None:
        out["trace_mean"], out["trace_std"] = _spread([r["trace"] for r in runs])
        out["trace_hutchinson_mean"], out["trace_hutchinson_std"] = _spread([r["hutchinson"]["trace"] for r in runs])
    out["note"] = ("std over independent training subsamples (and fresh probes): the data-subsample variance plus "
                   "the estimators' own noise; the density is computed on the first subsample only")
    return out


def pass_bound(opts: HessianOptions) -> int | None:
    """At most how many data passes the estimators make (Lanczos may stop early): the progress bar's total;
    None for the PyHessian cross-check, whose power iterations have no useful bound."""
    if opts.backend != "genbound":
        return None
    per = lambda vectors: -(-vectors // opts.probe_batch)  # noqa: E731  passes of one matmat
    total = 0
    if opts.top_k:
        total += opts.lanczos_steps * per(opts.block) + per(opts.top_k)
    if opts.trace:
        s = opts.probes // 3
        total += per(opts.probes) + 2 * per(s) + per(opts.probes - 2 * s)
    if opts.density:
        total += opts.density_probes * opts.lanczos_steps
    return opts.repeats * total + 1  # + the loss at the end


def hessian_analysis(loaded: Loaded, opts: HessianOptions, progress: bool = False, ranks=None) -> dict:
    """Every number of `genbound hessian` for one loaded checkpoint (see the module docstring). With ``ranks``
    (several processes) each rank takes its share of every subsample and the HVPs are summed over the ranks; the
    estimators run identically on every rank, from the same seeds (docs/design.md section 8c). The PyHessian
    cross-check runs in one process (the command line runs it on rank 0 alone): ``ranks`` is ignored there."""
    start = time.perf_counter()
    check_options(opts)
    if opts.backend != "genbound":
        ranks = None
    dtype = DTYPES[opts.dtype]
    model = working_model(loaded.model, dtype)
    was_training = model.training
    model.eval()
    bar = tqdm(desc=f"hessian ({opts.backend}, at most)", unit="pass", disable=None if progress else True,
               dynamic_ncols=True, total=pass_bound(opts), leave=False)  # None: drawn on a terminal only
    runs, costs = [], None
    try:
        model = space_model(model, opts.params)
        params = select_params(model, loaded.built, opts.params)
        n = sum(p.numel() for p in params.values())
        if opts.top_k > n:
            raise GenboundError(f"--top-k {opts.top_k} is larger than the dimension of the parameter set "
                                f"--params {opts.params} ({n})")
        if opts.top_k and opts.backend == "genbound":
            check_block(opts.block, opts.top_k, n)
        for r in range(opts.repeats):
            seed = _repeat_seed(opts.seed, r)
            batches = training_batches(loaded, opts.samples, opts.batch, opts.seed, dtype, repeat=r, ranks=ranks)
            op = HessianOperator(model, params, batches, opts.hvp, opts.probe_batch, opts.cache_graphs, ranks,
                                 opts.autocast)
            op.on_pass = lambda: bar.update(1)
            if opts.backend == "genbound":
                est = genbound_estimates(op, opts, seed, density=opts.density and r == 0)
            else:
                est = pyhessian_estimates(op, opts, seed)
            est.update(samples_seed=r, loss=op.loss(), samples=op.n_examples, hvp_single=op.mode_for(1),
                       hvp_batched=op.mode_for(opts.probe_batch), hvp_fallback=op.fallback_reason)
            runs.append(est)
            if r == 0 and opts.timing and opts.backend == "genbound":
                costs = measure_costs(op, opts.seed)
    finally:
        bar.close()
        model.train(was_training)
    man = loaded.manifest
    out = {"schema": SCHEMA, "method": man["method"]["name"],
           "rank": man["method"]["rank"], "chain_k": man["method"]["chain_k"], "backend": opts.backend,
           "params": opts.params, "param_tensors": [{"name": k, "shape": list(v.shape)} for k, v in params.items()],
           "n_params": n, "n_train": len(loaded.task.train), "samples_requested": opts.samples, "batch": opts.batch,
           "seed": opts.seed, "dtype": opts.dtype,
           "model_dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
           "hvp": opts.hvp, "top_k": opts.top_k, "which": opts.which, "trace": None, "trace_stderr": None,
           "loss_kind": "mse" if loaded.task.regression else "ce", **runs[0]}
    out.pop("samples_seed")
    if opts.repeats > 1:
        out["repeats"] = summarize_repeats(runs)
        if opts.samples >= len(loaded.task.train):
            out["repeats"]["note"] += ("; --samples covers the whole training split, so every repeat uses the same "
                                       "data and the std is the estimators' noise only")
        out["n_hvp_all_repeats"] = sum(r["n_hvp"] for r in runs)
    if costs is not None:
        out["timing"] = costs
    out["wall_seconds"] = time.perf_counter() - start
    out["options"] = asdict(opts)
    return out


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def render(r: dict) -> str:
    """The readable summary of one hessian result."""
    what = "MSE" if r.get("loss_kind") == "mse" else "CE"
    lines = [f"{r['method']} r={r['rank']} k={r['chain_k']}  Hessian of the mean training {what} over "
             f"{r['samples']} examples (of {r['n_train']}), --params {r['params']}: n = {r['n_params']:,}, "
             f"{r['dtype']}, backend {r['backend']}, loss {r['loss']:.5g}"]
    if r["eigenvalues"]:
        lines.append(f"top {len(r['eigenvalues'])} eigenvalues ({r['eigen_method']}):")
        for i, (lam, res) in enumerate(zip(r["eigenvalues"], r["residuals"]), 1):
            lines.append(f"  {i:>3}  {lam:>14.6g}   residual ||Hv - lambda v|| {res:.2e}")
    if r["trace"] is not None:
        lines.append(f"trace ({r['trace_estimator']}): {_g(r['trace'])} +- {_g(r['trace_stderr'])}")
        if "hutchpp" in r:
            h = r["hutchinson"]
            lines.append(f"  Hutchinson ({h['probes']} probes): {_g(h['trace'])} +- {_g(h['stderr'])}")
    if "density" in r:
        d = r["density"]
        lines.append(f"density: SLQ, {d['probes']} probes x {d['steps']} steps, sigma {d['sigma']:.3g}, "
                     f"{len(d['grid'])} grid points, integral {d['integral']:.6f}")
    if "repeats" in r:
        rep = r["repeats"]
        lines.append(f"over {rep['count']} data subsamples (mean +- std):")
        for i, (mu, sd) in enumerate(zip(rep.get("eigenvalues_mean", []), rep.get("eigenvalues_std", [])), 1):
            lines.append(f"  lambda_{i}: {mu:.6g} +- {_g(sd)}")
        if "trace_mean" in rep:
            lines.append(f"  trace: {rep['trace_mean']:.6g} +- {_g(rep['trace_std'])}")
    t = r.get("timing")
    cost = (f"; one HVP = {t['hvp_over_grad']:.2f} gradients ({t['hvp_batched_over_grad']:.2f} batched x"
            f"{t['probe_batch']})" if t else "")
    if "seconds_per_hvp" in r:
        cost = f"; {r['seconds_per_hvp']:.3g} s per pyhessian HVP"
    passes = f" in {r['n_passes']} data passes" if "n_passes" in r else ""
    lines.append(f"{r['n_hvp']} HVPs{passes}, {r['wall_seconds']:.1f} s{cost}")
    return "\n".join(lines)


# ---- the analysis contract (genbound/analyses.py) -------------------------------------------------------
Options = HessianOptions


class Result(result.Result):
    SCHEMA = SCHEMA
    MEASURES = {"hessian_top": (lambda a: a["eigenvalues"][0], "largest Hessian eigenvalue"),
                "hessian_trace": (lambda a: a.get("trace"), "Hessian trace")}

    def render(self) -> str:
        return render(self.data)


def across_ranks(options: HessianOptions) -> bool:
    """Under torchrun genbound's HVPs split over the processes; the PyHessian cross-check runs on rank 0 alone."""
    return options.backend == "genbound"


def run(loaded: Loaded, options: HessianOptions, progress: bool = False, ranks=None) -> Result:
    return Result(hessian_analysis(loaded, options, progress=progress, ranks=ranks))


USES_INITIAL = False  # never asks for the model before training: its load keeps no step-0 copy
OUTPUTS = [("plot", "--plot", "file")]


def add_arguments(parser) -> None:
    parser.add_argument("--plot", metavar="FILE.png", help="the spectral density (with --density)")


def write_outputs(results: dict[str, Result], args) -> None:
    if args.plot:
        from .. import plots

        plots.save(plots.hessian_figure({k: r.data for k, r in results.items()}), args.plot)

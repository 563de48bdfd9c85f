"""The command line: subcommands as a table, options from typed dataclasses. Parsing only; no logic.

A GenboundError (a user mistake) prints one line and exits 2, as does an unwritable output (checked before any
work starts); Ctrl-C exits 130. With ``--json -`` the JSON alone goes to stdout and the table to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from collections.abc import Callable

from .errors import GenboundError

DESCRIPTION = ("Train LoRA-family adapters and measure how each generalizes: the measured gap, the paper's bound, "
               "Theorem 1's terms, a compression bound, update spectra, Hessian spectra and loss landscapes.")
EPILOG = "Run 'genbound COMMAND --help' for the options of one command."
_stdout = sys.stdout  # where --json - writes (the table goes to stderr then)

TRAIN_HELP = {
    "model": "mlp | minilm | tiny-bert | DIR from `genbound pretrain` | HF model name or folder",
    "data": "wordnet | fashion-mnist | mnist-5k | digits | FILE.csv | FILE.jsonl",
    "method": "full head lora lora_plus asym cola rac cla rcla c3la rc3la paca",
    "rank": "adapter rank r", "alpha": "scaling s = alpha / r", "chain": "chain links k (cola, rac, c3la, rc3la)",
    "steps": "optimizer steps (overrides --epochs)", "epochs": "passes over the training split",
    "lr_ratio": "lr_B / lr_A (default: the method's, 16 for lora_plus, 1 otherwise)",
    "warmup": "warm-up fraction of the steps", "clip": "gradient-norm clipping (0 = off)",
    "eval_every": "steps between evaluations (0 = about 10 per run)",
    "eval_samples": "test examples used by periodic evaluations",
    "snapshot_every": "steps between trajectory snapshots (0 = about 20 per run)",
    "save_every": "steps between resume states (0 = at each evaluation)",
    "targets": "regexes over module names to adapt (default: query/value of each layer; every hidden Linear of an MLP)",
    "n_train": "training examples (default: the task's)", "n_test": "test examples (default: the task's)",
    "max_length": "token limit for text", "hidden": "hidden sizes of a random-init MLP",
    "device": "auto | cpu | cuda", "amp": "bf16 autocast on CUDA", "batch_size": "examples per step",
    "fused": "train adapters through the fused path (merged weight; --no-fused: the reference path)",
    "graphs": "on CUDA, replay each full-batch step as a CUDA graph (--no-graphs: eager steps)",
    "lr": "AdamW learning rate (A, head; B gets lr * lr_ratio)", "weight_decay": "AdamW weight decay",
    "seed": "run seed: head init, random A, random selectors, data order, splits",
}


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, help_: dict[str, str],
                          types_: dict[str, Callable] | None = None, flags: dict[str, str] | None = None) -> None:
    """One --option per dataclass field, typed from its annotation (or ``types_[name]``); ``flags`` renames."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = (flags or {}).get(f.name) or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
        common = {"dest": f.name, "default": default, "help": help_.get(f.name)}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, nargs="+", type=typing.get_args(base)[0], **common)
        else:
            parser.add_argument(flag, type=(types_ or {}).get(f.name, base), metavar=f.name.upper(), **common)


def config_from(args: argparse.Namespace, cls: type):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    if args.resume:
        man = train(None, args.resume, resume=True, progress=not args.quiet)
    else:
        if not args.out:
            raise GenboundError("train needs --out DIR (or --resume DIR)")
        man = train(config_from(args, TrainConfig), args.out, progress=not args.quiet)
    print_metrics(man)
    write_json(args.json, man)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .train import TrainConfig, pretrain

    meta = pretrain(config_from(args, TrainConfig), args.out, progress=not args.quiet)
    m = meta["metrics"]
    print(f"pretrained MLP {meta['sizes']} -> {args.out}: train acc {m['train_acc']:.4f}, test acc {m['test_acc']:.4f}")


def cmd_info(args: argparse.Namespace) -> None:
    from .checkpoint import read_manifest, unverified_note, verify_files

    man = read_manifest(args.ckpt)
    verify_files(Path(args.ckpt), man)
    print_metrics(man)
    note = unverified_note(man)
    print(f"  note: {note}" if note else f"  weight files: {len(man['files'])}, sha256 as recorded")
    write_json(args.json, man)


def write_json(path: str | None, obj: dict) -> None:
    """--json FILE: the command's result as JSON ('-' = stdout), never holding inf or nan (null instead)."""
    from .files import json_text, write_json as write_file

    if path == "-":
        _stdout.write(json_text(obj) + "\n")
        _stdout.flush()
    elif path:
        write_file(Path(path), obj)


def print_metrics(man: dict) -> None:
    m, meth, p = man["metrics"], man["method"], man["params"]
    label = meth["name"]
    if meth["scope"] == "adapter":
        label += f" r={meth['rank']}" + (f" k={meth['chain_k']}" if meth["chain_k"] > 1 else "")
    print(f"{label:<14} params paper={p['paper']:,} full={p['full']:,}  "
          f"train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f} | test loss {m['test_loss']:.4f} "
          f"acc {m['test_acc']:.4f} | {man['timing']['train_seconds']:.1f}s")


COMPUTE_HELP = {
    "loss": "01 or ce (ce needs --smoothing or --clip to be bounded)", "bits": "q, bits per stored number",
    "sigma": "sub-Gaussian parameter: auto (from the loss) or a value", "smoothing": "prediction smoothing a",
    "clip": "clip the cross-entropy at M", "delta": "confidence 1 - delta of the Occam bound",
    "block_lipschitz": "transformers: assumed Lipschitz constant of each block (Theorem 1)",
    "compress": "quantize + entropy-code the trained numbers and report the Occam bound",
    "compress_bits": "quantization bits tried", "schemes": "uniform and/or kmeans",
    "hyper_settings": "training configurations tried (log2 is charged to the code)",
    "seed_bits": "bits charged for the run seed", "base_gap": "also measure the gap before fine-tuning",
    "batch_size": "evaluation batch size",
    "qat_steps": "quantization-aware fine-tune steps per (scheme, bits) tried (0 = quantize as trained)",
    "qat_lr": "learning rate of the quantization-aware fine-tune",
}


def _sigma(text: str) -> float | None:
    return None if text == "auto" else float(text)


def cmd_compute(args: argparse.Namespace) -> None:
    from .compute import ComputeOptions, check_options, compute, render

    opts = config_from(args, ComputeOptions)
    check_options(opts)
    loaded = load_for_analysis(args.ckpt, args)
    result = compute(loaded, opts)
    print(render(result))
    write_json(args.json, result)


def load_for_analysis(ckpt: str, args: argparse.Namespace):
    """The checkpoint (or PEFT folder, imported) loaded for an analysis, with --base and --data applied."""
    from .checkpoint import load
    from .runtime import pick_device

    path, is_peft = resolve_ckpt(ckpt, args)
    return load(path, device=pick_device(args.device), base=args.base, data=None if is_peft else args.data)


def resolve_ckpt(ckpt: str, args: argparse.Namespace) -> tuple[str, bool]:
    """(checkpoint folder, whether it came from a PEFT folder). A PEFT adapter folder is imported once per
    setting (method, data, split seed, base, and the adapter's own bytes) into DIR/genbound/<setting>; a genbound
    checkpoint takes no --method, --model or --peft-seed (those say what a PEFT folder cannot)."""
    folder = Path(ckpt)
    if (folder / "genbound.json").is_file() or not (folder / "adapter_config.json").is_file():
        given = [flag for flag, value in (("--method", args.method), ("--model", args.model),
                                          (args.peft_seed_flag, args.peft_seed)) if value is not None]
        if given and (folder / "genbound.json").is_file():
            raise GenboundError(f"{folder} is a genbound checkpoint: {', '.join(given)} apply to PEFT adapter folders "
                                "only (its manifest says them; --base moves the base, --data evaluates other data)")
        return ckpt, False
    from .peft_io import import_key, import_peft, imports_of

    method, seed = args.method or "lora", args.peft_seed or 0
    if not args.data:  # the one earlier import of this adapter (as it is now) that fits what was given
        fits = [d for d in imports_of(folder) if (args.method is None or d["method"] == args.method)
                and (args.peft_seed is None or d["seed"] == args.peft_seed)]
        if len(fits) == 1:
            return fits[0]["path"], True
        raise GenboundError(f"{folder} is a PEFT adapter folder: give --data (and --method) to evaluate it"
                            + (f" ({len(fits)} earlier imports fit)" if fits else ""))
    target = folder / "genbound" / import_key(folder, method=method, data=args.data, seed=seed, model=args.model)
    if not (target / "genbound.json").is_file():
        import_peft(folder, target, method=method, data=args.data, seed=seed, model=args.model)
    return str(target), True


def analysis_options(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    """Options every analysis of a checkpoint takes (one checkpoint may also be a PEFT adapter folder)."""
    if multiple:
        p.add_argument("--ckpt", required=True, action="append", metavar="DIR",
                       help="checkpoint directory or PEFT adapter folder (with --data); repeat for several")
    else:
        p.add_argument("--ckpt", required=True, metavar="DIR",
                       help="checkpoint directory (or a PEFT adapter folder with --data)")
    p.add_argument("--data", help="PEFT folders: the task to evaluate on; checkpoints: evaluate on other data on "
                                  "purpose (the output says so; by default the data must be what it was trained on)")
    p.add_argument("--method", help="PEFT folders: what PEFT cannot record, e.g. lora_plus or asym (default lora)")
    p.add_argument("--model", help="PEFT folders: the base model (default: the adapter's base_model_name_or_path)")
    # the analyses' own --seed is theirs; the split seed of a PEFT folder is --peft-seed there
    seed_flag = "--peft-seed" if multiple else "--seed"
    p.add_argument(seed_flag, dest="peft_seed", type=int, metavar="SEED",
                   help="PEFT folders: the seed of the train/test split (default 0)")
    p.set_defaults(peft_seed_flag=seed_flag)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--base", help="where the base model is now, when it has moved (its sha256 must match)")


def cmd_spectrum(args: argparse.Namespace) -> None:
    from .spectra import checkpoint_spectrum

    results = analyse_each(args, lambda loaded, path: checkpoint_spectrum(loaded, args.intruders, args.top_k),
                           render_spectrum)
    if args.plot:
        from . import plots

        first_label, first = next(iter(results.items()))
        plots.save(plots.spectra_figure(first, first_label), args.plot)
        if args.intruders:
            stem = Path(args.plot)
            plots.save(plots.intruder_figure(results), str(stem.with_name(stem.stem + "-intruders" + stem.suffix)))
    write_results(args.json, results, "spectrum")


def analyse_each(args: argparse.Namespace, analysis: Callable, render: Callable[[dict], str]) -> dict[str, dict]:
    """Run ``analysis(loaded, path)`` on every --ckpt; results keyed by a label (folder, with the method when
    the folder name does not say it), each printed with ``render``."""
    results = {}
    for ckpt in args.ckpt:
        loaded = load_for_analysis(ckpt, args)
        path = str(loaded.path)
        try:
            r = analysis(loaded, path)
        except GenboundError as err:
            raise GenboundError(f"{path}: {err}") from None
        r["checkpoint"] = path
        if loaded.other_data or args.data:
            r["data"] = loaded.data
        if loaded.other_data:
            print(f"OTHER DATA: {path} evaluated on {loaded.data['name']}, not on the data it was trained on "
                  f"({loaded.data['trained_on']})")
        folder, method = Path(path).name, r["method"]
        results[folder if method in folder else f"{method} ({folder})"] = r
        print(render(r))
    return results


def write_results(path: str | None, results: dict[str, dict], kind: str) -> None:
    """--json: one result as it is, several under "results"."""
    if len(results) == 1:
        write_json(path, next(iter(results.values())))
    else:
        write_json(path, {"schema": f"genbound.{kind}-set/1", "results": list(results.values())})


def render_spectrum(r: dict) -> str:
    lines = [f"{r['method']} r={r['rank']} k={r['chain_k']}  ({r['checkpoint']})",
             f"  {'matrix':<44}{'n x m':>12}{'||dW||_2':>11}{'||dW||_F':>11}{'stable':>8}{'effective':>10}"]
    for m in r["matrices"]:
        lines.append(f"  {m['name']:<44}{str(m['n']) + ' x ' + str(m['m']):>12}{m['norm_2']:>11.4g}"
                     f"{m['norm_fro']:>11.4g}{m['stable_rank']:>8.2f}{m['effective_rank']:>10.2f}")
    if "intruders" in r:
        it = r["intruders"]
        pick = [i for i, e in enumerate(it["eps"]) if e in (0.3, 0.5, 0.7, 0.9)]
        head = "  ".join(f"eps={it['eps'][i]:.1f}: {it['mean_counts'][i]:.2f} / {it['mean_counts_all'][i]:.1f}"
                         for i in pick)
        lines.append(f"  intruders, mean per matrix (top {it['top_k']} / all): {head}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> None:
    from .report import write_comparison
    from .study import compare, fill_missing

    fill_missing(args.dirs, [a for a in args.analyses if a != "none"], args.device,
                 log=(lambda *a: None) if args.quiet else print)
    write_comparison(compare(args.dirs), Path(args.out), args.title or Path(args.out).name)


def cmd_study(args: argparse.Namespace) -> None:
    from .report import write_comparison
    from .study import compare, load_study, run_study

    from .files import check_folder_writable

    study = load_study(args.study)
    if args.report:
        study.report = args.report
    check_folder_writable(study.runs, f"{args.study}: runs folder")
    check_folder_writable(study.report, f"{args.study}: report folder")
    shard = None
    if args.shard:
        try:
            i, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise GenboundError(f"--shard takes I/N (e.g. 0/4), got {args.shard!r}") from None
        shard = (i, n)
    runs = run_study(study, device=args.device, progress=not args.quiet, shard=shard, source=args.study)
    if shard is None:
        write_comparison(compare(runs), Path(study.report), study.name)
    else:
        print(f"shard {args.shard}: {len(runs)} runs done; run the study without --shard for the report")


HESSIAN_HELP = {
    "params": "trainable | adapters | all | dw", "top_k": "top eigenvalues (Lanczos)",
    "trace": "Hutchinson and Hutch++",
    "density": "spectral density by stochastic Lanczos quadrature", "samples": "training examples in the loss",
    "batch": "examples per forward pass", "seed": "data subsample and probes",
    "backend": "genbound | pyhessian (cross-check)", "repeats": "independent data subsamples (their mean and std)",
    "probes": "HVPs per trace estimator", "lanczos_steps": "Lanczos steps", "tol": "relative residual tolerance",
    "stop": "Lanczos stopping rule: residual (rigorous) | gap (r^2 / Ritz gap: fewer HVPs, an estimate)",
    "hvp": "auto | forward-over-reverse | double-backward", "dtype": "float32 | float64",
    "which": "largest (algebraic) | magnitude (what power iteration and PyHessian find)",
    "cache_graphs": "keep every batch's gradient graph: HVPs without forward passes (needs memory)",
    "probe_batch": "probe vectors per data pass (memory against speed)", "density_probes": "SLQ probe vectors",
    "density_sigma": "Gaussian broadening of the density (default: 1%% of the Ritz-value range)",
    "density_grid": "points of the density's grid", "max_iter": "pyhessian: power iterations per eigenvalue",
    "timing": "also measure what one gradient and one HVP cost (a few extra passes)",
}


def cmd_hessian(args: argparse.Namespace) -> None:
    from . import plots
    from .hessian import HessianOptions, hessian_analysis, render
    from .hessian.analysis import check_options

    opts = config_from(args, HessianOptions)
    check_options(opts)
    results = analyse_each(args, lambda loaded, path: hessian_analysis(loaded, opts, progress=not args.quiet), render)
    if args.plot:
        plots.save(plots.hessian_figure(results), args.plot)
    write_results(args.json, results, "hessian")


LANDSCAPE_HELP = {
    "dirs": "random (filter-normalized Gaussian) | pca (top-2 directions of the saved trajectory)",
    "space": "trainable | delta (dW of each adapted matrix) | all", "grid": "points per axis (odd)",
    "range": "the grid spans [-range, range]", "one_d": "a 1-D slice along d1", "samples": "evaluation examples",
    "split": "train | test", "seed": "directions and the evaluation subset",
    "include_1d": "random directions also move biases and LayerNorm", "chunk": "grid points per forward pass",
    "batch_size": "examples per forward pass", "rho": "sharpness radius (grid units; default range/4)",
    "attention": "HF attention while evaluating: auto | model",
}


def cmd_landscape(args: argparse.Namespace) -> None:
    import numpy as np

    from . import plots
    from .landscape import LandscapeOptions, check_options, landscape_arrays, landscape_analysis, render

    opts = config_from(args, LandscapeOptions)
    check_options(opts)
    results = analyse_each(args, lambda loaded, path: landscape_analysis(loaded, opts, ckpt=path), render)
    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = [Path(r["checkpoint"]).name for r in results.values()]
    for i, r in enumerate(results.values()):
        tag = names[i] if names.count(names[i]) == 1 else f"{i}-{names[i]}"  # equal folder names in two places
        name = prefix.name if len(results) == 1 else f"{prefix.name}-{tag}"
        np.savez(prefix.with_name(name + ".npz"), **landscape_arrays(r))
    plots.save(plots.landscape_figure(results, surface=args.surface), str(prefix.with_name(prefix.name + ".png")))
    print(f"wrote {prefix}.png and {len(results)} .npz file(s)")
    write_results(args.json, results, "landscape")


def cmd_export_peft(args: argparse.Namespace) -> None:
    from .peft_io import export_peft

    export_peft(args.ckpt, args.out)
    print(f"wrote PEFT adapter folder {args.out}")


def cmd_import_peft(args: argparse.Namespace) -> None:
    from .peft_io import import_peft

    import_peft(args.adapter, args.out, method=args.method, data=args.data, seed=args.seed, model=args.model)
    print(f"wrote genbound checkpoint {args.out}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown once: not where the help text already says it, nor for unset (None) or off flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default is argparse.SUPPRESS
                or default == [] or not action.option_strings):
            return text
        if isinstance(default, bool):  # --x / --no-x flags that are on by default
            return f"{text} (default: on)"
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


# outputs each command writes, checked before any work starts: (attribute, flag, "folder" | "file" | "prefix")
OUTPUTS = {
    "train": [("out", "--out", "folder")], "pretrain": [("out", "--out", "folder")],
    "compare": [("out", "--out", "folder")], "export-peft": [("out", "--out", "folder")],
    "import-peft": [("out", "--out", "folder")], "landscape": [("out", "--out", "prefix")],
    "spectrum": [("plot", "--plot", "file")], "hessian": [("plot", "--plot", "file")],
    "study": [("report", "--report", "folder")],
}


def check_outputs(args: argparse.Namespace) -> None:
    """Every output location of the command can be written, before anything is computed."""
    from .files import check_file_writable, check_folder_writable

    for attr, flag, kind in [*OUTPUTS.get(args.command, []), ("json", "--json", "file")]:
        value = getattr(args, attr, None)
        if not value or value == "-":
            continue
        if kind == "folder":
            check_folder_writable(value, flag)
        else:
            check_file_writable(value + ".png" if kind == "prefix" else value, flag)


def build_parser() -> argparse.ArgumentParser:
    from .compute import ComputeOptions
    from .hessian import HessianOptions
    from .landscape import LandscapeOptions
    from .train import TrainConfig

    parser = argparse.ArgumentParser(prog="genbound", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable, Callable[[argparse.ArgumentParser], None]]] = [
        ("train", "fine-tune a model with one method into a checkpoint directory", cmd_train,
         lambda p: (add_dataclass_options(p, TrainConfig, TRAIN_HELP),
                    p.add_argument("--out", metavar="DIR", help="checkpoint directory (new or empty)"),
                    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run"))),
        ("pretrain", "self-pretrain an MLP base (full training) into DIR", cmd_pretrain,
         lambda p: (add_dataclass_options(p, TrainConfig, TRAIN_HELP),
                    p.add_argument("--out", metavar="DIR", required=True,
                                   help="base folder to write (then used as --model DIR)"))),
        ("info", "print a checkpoint's manifest summary and verify its weight files", cmd_info,
         lambda p: p.add_argument("--ckpt", metavar="DIR", required=True, help="checkpoint directory")),
        ("compute", "generalization gap, the paper's bound, Theorem 1's terms and a compression bound", cmd_compute,
         lambda p: (analysis_options(p), add_dataclass_options(p, ComputeOptions, COMPUTE_HELP, {"sigma": _sigma}))),
        ("spectrum", "singular values of the learned updates and intruder dimensions", cmd_spectrum,
         lambda p: (analysis_options(p, multiple=True),
                    p.add_argument("--intruders", action="store_true", help="count intruder dimensions"),
                    p.add_argument("--top-k", type=int, default=10, help="intruders among the top-k vectors"),
                    p.add_argument("--plot", metavar="FILE.png", help="spectra plot (and FILE-intruders.png)"))),
        ("compare", "rank measures against the measured gap over checkpoints; write a report folder", cmd_compare,
         lambda p: (p.add_argument("dirs", nargs="+", metavar="DIR", help="checkpoint directories"),
                    p.add_argument("--out", metavar="DIR", required=True, help="report folder, e.g. reports/NAME"),
                    p.add_argument("--title", help="report title (default: the folder name)"),
                    p.add_argument("--analyses", nargs="+", default=["compute", "spectrum"], metavar="NAME",
                                   help="run these (default options) where their JSON is missing first: compute "
                                        "spectrum hessian landscape, or none (default: compute spectrum)"),
                    p.add_argument("--device", default="auto", help="auto | cpu | cuda (for --analyses)"))),
        ("study", "run a study file: train the grid, analyse every checkpoint, compare", cmd_study,
         lambda p: (p.add_argument("study", metavar="FILE.toml", help="a study file, e.g. analysis/demo.toml"),
                    p.add_argument("--device", default="auto", help="auto | cpu | cuda"),
                    p.add_argument("--report", metavar="DIR", help="write the report here (default: the file's "
                                                                   "report, reports/NAME)"),
                    p.add_argument("--shard", metavar="I/N",
                                   help="train and analyse only share I of N (parallel processes); no report"))),
        ("hessian", "top eigenvalues, trace and spectral density of the training loss's Hessian", cmd_hessian,
         lambda p: (analysis_options(p, multiple=True), add_dataclass_options(p, HessianOptions, HESSIAN_HELP),
                    p.add_argument("--plot", metavar="FILE.png", help="the spectral density (with --density)"))),
        ("landscape", "1-D and 2-D loss slices with random or trajectory-PCA directions, batched", cmd_landscape,
         lambda p: (analysis_options(p, multiple=True),
                    add_dataclass_options(p, LandscapeOptions, LANDSCAPE_HELP, flags={"one_d": "--1d"}),
                    p.add_argument("--surface", action="store_true", help="a 3-D surface view instead of contours"),
                    p.add_argument("--out", metavar="PREFIX", default="landscape",
                                   help="writes PREFIX.png and PREFIX.npz (default: landscape)"))),
        ("export-peft", "write a LoRA-shaped checkpoint as a PEFT adapter folder", cmd_export_peft,
         lambda p: (p.add_argument("--ckpt", metavar="DIR", required=True, help="checkpoint directory"),
                    p.add_argument("--out", metavar="DIR", required=True, help="PEFT adapter folder to write"))),
        ("import-peft", "turn a PEFT LoRA adapter folder into a genbound checkpoint", cmd_import_peft,
         lambda p: (p.add_argument("--adapter", metavar="DIR", required=True, help="PEFT adapter folder"),
                    p.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory to write"),
                    p.add_argument("--method", default="lora", help="what PEFT cannot record (lora_plus, asym, ...)"),
                    p.add_argument("--data", required=True, help="the task to evaluate the adapter on"),
                    p.add_argument("--seed", type=int, default=0, help="seed of the task's train/test split"),
                    p.add_argument("--model", help="the base (default: the adapter's base_model_name_or_path)"))),
    ]
    for name, help_, func, add in commands:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        add(p)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-' = stdout only the JSON)")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    import contextlib

    global _stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    _stdout = sys.stdout
    # with --json -, stdout carries the JSON alone (for jq and friends): the table goes to stderr
    table = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", None) == "-" else contextlib.nullcontext()
    try:
        with table:
            check_outputs(args)
            args.func(args)
    except GenboundError as err:
        print(f"genbound {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genbound {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head or less and closed early
        sys.stdout = open(os.devnull, "w")
    except OSError as err:
        if err.filename is None:
            raise
        # a file that could not be read or written (permissions, a full disk, a path that is a file)
        print(f"genbound {args.command}: error: {err.filename}: {err.strerror or err}", file=sys.stderr)
        return 2
    except Exception as err:  # torch is imported lazily here: the CLI starts without it
        import torch

        if not isinstance(err, torch.OutOfMemoryError):
            raise
        print(f"genbound {args.command}: error: out of GPU memory; use smaller batches (--batch, --chunk, "
              "--probe-batch, --batch-size) or fewer --samples", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line: the fixed commands in a table, one command per registered analysis (genbound/analyses.py),
options generated from typed dataclasses (genbound/options.py). Parsing and dispatch only; no logic.

Only the command being run is built, so ``genbound --help`` imports no torch. A GenboundError (a user mistake)
prints one line and exits 2, as does an unwritable output (checked before any work starts); Ctrl-C exits 130.
With ``--json -`` the JSON alone goes to stdout and the table to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import timing  # first: its clock starts the command's "import" phase
from .analyses import ANALYSES, execute, get_analysis
from .errors import GenboundError, Interrupted
from .options import add_options, options_from

DESCRIPTION = ("Train LoRA-family adapters and measure how each generalizes: the measured gap, the paper's bound, "
               "Theorem 1's terms, a compression bound, PAC-Bayes certificates, update spectra, Hessian spectra and "
               "loss landscapes.")
EPILOG = "Run 'genbound COMMAND --help' for the options of one command."
_stdout = sys.stdout  # where --json - writes (the table goes to stderr then)


# ---- output ------------------------------------------------------------------------------------------------
def write_json(path: str | None, obj: dict) -> None:
    """--json FILE: the command's result as JSON ('-' = stdout), never holding inf or nan (null instead)."""
    from .files import json_text, write_json as write_file

    if path == "-":
        _stdout.write(json_text(obj) + "\n")
        _stdout.flush()
    elif path:
        write_file(Path(path), obj)


def write_results(path: str | None, results: dict[str, dict], kind: str) -> None:
    """--json: one result as it is, several under "results"."""
    if len(results) == 1:
        write_json(path, next(iter(results.values())))
    else:
        write_json(path, {"schema": f"genbound.{kind}-set/1", "results": list(results.values())})


def print_metrics(man: dict) -> None:
    m, meth, p = man["metrics"], man["method"], man["params"]
    label = meth["name"]
    if meth["scope"] == "adapter":
        label += f" r={meth['rank']}" + (f" k={meth['chain_k']}" if meth["chain_k"] > 1 else "")
    extra = [k for k in man["task"].get("metrics", []) if k != "accuracy"]

    def side(split: str) -> str:
        text = f"{split} loss {m[split + '_loss']:.4f}"
        text += f" acc {m[split + '_acc']:.4f}" if split + "_acc" in m else " (MSE)"
        return text + "".join(f" {k} {'n/a' if m.get(f'{split}_{k}') is None else format(m[f'{split}_{k}'], '.4f')}"
                              for k in extra)

    print(f"{label:<14} params paper={p['paper']:,} full={p['full']:,}  {side('train')} | {side('test')} | "
          f"{man['timing']['train_seconds']:.1f}s")


# ---- training and checkpoints ----------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> None:
    """Under torchrun (``torchrun --nproc-per-node N -m genbound train ...``) the run is trained over every
    process; rank 0 prints and writes."""
    with timing.phase("import"):
        from . import distributed
        from .config import TrainConfig
        from .train import train

    if not args.resume and not args.out:
        raise GenboundError("train needs --out DIR (or --resume DIR)")
    try:
        with timing.phase("train"):
            if args.resume:
                man = train(None, args.resume, resume=True, progress=not args.quiet, data_parallel=True)
            else:
                man = train(options_from(args, TrainConfig), args.out, progress=not args.quiet, data_parallel=True)
    finally:
        distributed.finish()
    if distributed.context().main:
        print_metrics(man)
        phases = train_phases(man)
        timing.report(args.command, phases)
        write_json(args.json, {**man, "phases": phases})


def train_phases(man: dict) -> dict[str, float]:
    """Where train's wall time went: imports, the training steps (work: the manifest's train_seconds) and the
    rest of the train call (data, tokenisation, model, evaluation, saving)."""
    phases = timing.take("import", "train")
    work = man["timing"]["train_seconds"]
    return {"import": phases["import"], "work": round(work, 4), "setup": round(phases["train"] - work, 4),
            "wall": round(timing.since_start(), 4)}


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .train import pretrain

    meta = pretrain(options_from(args, TrainConfig), args.out, progress=not args.quiet)
    m = meta["metrics"]
    key, words = ("acc", "acc") if "train_acc" in m else ("loss", "MSE")
    what = f"MLP {meta['sizes']}" if meta["kind"] == "mlp" else f"ViT ({meta['model']})"
    print(f"pretrained {what} -> {args.out}: train {words} {m['train_' + key]:.4f}, "
          f"test {words} {m['test_' + key]:.4f}")
    write_json(args.json, meta)


def cmd_info(args: argparse.Namespace) -> None:
    from .checkpoint import read_manifest, unverified_note, verify_files

    man = read_manifest(args.ckpt)
    verify_files(Path(args.ckpt), man)
    print_metrics(man)
    note = unverified_note(man)
    print(f"  note: {note}" if note else f"  weight files: {len(man['files'])}, sha256 as recorded")
    write_json(args.json, man)


def cmd_export_peft(args: argparse.Namespace) -> None:
    from .peft_io import export_peft

    out = export_peft(args.ckpt, args.out)
    print(f"wrote PEFT adapter folder {args.out}")
    config = json.loads((out / "adapter_config.json").read_text())
    write_json(args.json, {"adapter": str(out), "adapter_config": config})


def cmd_import_peft(args: argparse.Namespace) -> None:
    from .peft_io import import_peft

    man = import_peft(args.adapter, args.out, method=args.method, data=args.data, seed=args.seed, model=args.model)
    print(f"wrote genbound checkpoint {args.out}")
    write_json(args.json, man)


# ---- analyses ----------------------------------------------------------------------------------------------
def load_for_analysis(ckpt: str, args: argparse.Namespace, ranks=None, examples: bool = True,
                      keep_initial: bool = True):
    """The checkpoint (or PEFT folder, imported) loaded for an analysis, with --base and --data applied, on this
    rank's device (its LOCAL_RANK GPU under torchrun). With ``ranks`` rank 0 alone resolves the folder (a PEFT
    folder is imported once) and tells the others, or raises its error on every rank."""
    from . import distributed
    from .checkpoint import load

    if distributed.spread(ranks):
        outcome = None
        if ranks.main:
            try:
                outcome = resolve_ckpt(ckpt, args)
            except Exception as err:  # every rank raises it, none waits for rank 0 in a collective
                outcome = err
        outcome = distributed.broadcast_object(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        path, is_peft = outcome
    else:
        path, is_peft = resolve_ckpt(ckpt, args)
    device = distributed.device_of(distributed.context(), args.device)
    return load(path, device=device, base=args.base, data=None if is_peft else args.data, examples=examples,
                keep_initial=keep_initial)


def resolve_ckpt(ckpt: str, args: argparse.Namespace) -> tuple[str, bool]:
    """(checkpoint folder, whether it came from a PEFT folder). A PEFT adapter folder is imported once per
    setting (method, data, split seed, base, and the adapter's own bytes) into DIR/genbound/<setting>; a genbound
    checkpoint takes no --method, --model or PEFT seed (those say what a PEFT folder cannot)."""
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


def analysis_arguments(p: argparse.ArgumentParser, options: type) -> None:
    """What every analysis of a checkpoint takes (a checkpoint may also be a PEFT adapter folder)."""
    p.add_argument("--ckpt", required=True, action="append", metavar="DIR",
                   help="checkpoint directory or PEFT adapter folder (with --data); repeat for several")
    p.add_argument("--data", help="PEFT folders: the task to evaluate on; checkpoints: evaluate on other data on "
                                  "purpose (the output says so; by default the data must be what it was trained on); "
                                  "a Hugging Face dataset's columns as a suffix: DATA#text=COL,label=COL")
    p.add_argument("--method", help="PEFT folders: what PEFT cannot record, e.g. lora_plus or asym (default lora)")
    p.add_argument("--model", help="PEFT folders: the base model (default: the adapter's base_model_name_or_path)")
    # an analysis with its own --seed takes the split seed of a PEFT folder as --peft-seed
    seed_flag = "--peft-seed" if "seed" in options.__dataclass_fields__ else "--seed"
    p.add_argument(seed_flag, dest="peft_seed", type=int, metavar="SEED",
                   help="PEFT folders: the seed of the train/test split (default 0)")
    p.set_defaults(peft_seed_flag=seed_flag)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--base", help="where the base model is now, when it has moved (its sha256 must match)")


def cmd_analysis(args: argparse.Namespace) -> None:
    """Any registered analysis: run it on every --ckpt, print each table, write its files and its JSON.

    Under torchrun (docs/design.md section 8c) an analysis with ``across_ranks`` splits its passes over the
    processes, each on its LOCAL_RANK GPU, and rank 0 alone prints and writes; any other runs on rank 0 alone."""
    from . import distributed

    mod = get_analysis(args.command).load()
    options = options_from(args, mod.Options)
    if hasattr(mod, "check_options"):
        mod.check_options(options)
    ctx = distributed.context()
    if ctx.active and not (hasattr(mod, "across_ranks") and mod.across_ranks(options)):
        if ctx.main:
            _analyse(mod, options, args, None)
        return
    joined = ctx.active and not distributed.dist.is_initialized()
    ranks = distributed.init(distributed.device_of(ctx, args.device)) if ctx.active else None
    try:
        _analyse(mod, options, args, ranks)
    finally:
        if joined:
            distributed.finish()


def _analyse(mod, options, args: argparse.Namespace, ranks) -> None:
    """cmd_analysis's work: with ``ranks`` every rank computes, rank 0 alone prints and writes."""
    quiet = ranks is not None and not ranks.main
    results = {}
    for ckpt in args.ckpt:
        with timing.phase("load"):  # checkpoint.load records its "data" and "model" phases within
            loaded = load_for_analysis(ckpt, args, ranks, examples=getattr(mod, "NEEDS_EXAMPLES", True),
                                       keep_initial=getattr(mod, "USES_INITIAL", True))
        path = str(loaded.path)
        try:
            timing.reset_gpu_peak(loaded.device)
            with timing.phase("work"):  # Loaded.initial() records its "initial_model" phase within
                result = execute(loaded, args.command, options, progress=not (args.quiet or quiet), ranks=ranks)
        except GenboundError as err:
            raise GenboundError(f"{path}: {err}") from None
        if quiet:
            continue  # the table, the files and the JSON are rank 0's
        result.data["phases"] = analysis_phases()
        result.data["peak_gpu_memory_bytes"] = timing.gpu_peak(loaded.device)  # the analysis's, not the load's
        timing.report(args.command, result.data["phases"])
        if loaded.other_data or args.data:
            result.data["data"] = loaded.data
        if loaded.other_data:
            print(f"OTHER DATA: {path} evaluated on {loaded.data['name']}, not on the data it was trained on "
                  f"({loaded.data['trained_on']})")
        folder, method = Path(path).name, result["method"]
        label = folder if method in folder else f"{method} ({folder})"
        results[label if label not in results else f"{label} #{len(results) + 1}"] = result  # equal names kept apart
        print(result.render())
        store_in_checkpoint(args.command, path, result, loaded.other_data)
    if quiet:
        return
    if hasattr(mod, "write_outputs"):
        mod.write_outputs(results, args)
    write_results(args.json, {k: r.to_json() for k, r in results.items()}, args.command)


def store_in_checkpoint(name: str, ckpt: str, result, other_data: bool) -> None:
    """Keep a command-line analysis in the checkpoint's analysis/ folder, as a study does (``store_result``: the
    latest as NAME.json, one with other options kept beside it), where compare finds it; or say in one line why
    it is not kept there (the printed table and --json still hold it)."""
    from .analyses import store_result

    if other_data:
        print(f"{name} of {ckpt} not stored in its analysis/ folder: evaluated on other data")
        return
    try:
        store_result(ckpt, name, result.to_json())
    except OSError as err:
        print(f"{name} of {ckpt} not stored in its analysis/ folder ({err.strerror or err})")


def analysis_phases() -> dict[str, float]:
    """Where one checkpoint's analysis went (seconds): import (the first checkpoint's), data (the task loaded and
    checked), model (the base built, the trained weights assigned), checkpoint (the rest of loading: manifest,
    sha256 checks), initial_model (the model before training, when the analysis asks for it), work (the analysis
    itself) and wall (since the command started)."""
    p = timing.take("import", "load", "data", "model", "initial_model", "work")
    load = p.pop("load")
    p["checkpoint"] = round(max(0.0, load - p["data"] - p["model"]), 4)
    p["work"] = round(max(0.0, p["work"] - p["initial_model"]), 4)
    return {**p, "wall": round(timing.since_start(), 4)}


# ---- comparisons and studies -----------------------------------------------------------------------------
def analyses_asked(words: list[str]) -> dict[str, dict | None]:
    """compare --analyses: NAME (any stored result; default options where none is) or NAME:OPT=VALUE,...
    (the stored result with those options; VALUE as in a study file: 5, 0.1, true, "text", [1, 2])."""
    import tomllib

    asked: dict[str, dict | None] = {}
    for word in words:
        if word == "none":
            continue
        name, _, text = word.partition(":")
        if not text:
            asked[name] = None
            continue
        try:
            raw = tomllib.loads("\n".join(_option_lines(text)))
        except tomllib.TOMLDecodeError:
            raw = None
        if not raw:
            raise GenboundError(f"--analyses {word}: want NAME:OPTION=VALUE,... (e.g. hessian:top_k=5,samples=512)")
        asked[name] = {k.replace("-", "_"): v for k, v in raw.items()}
    return asked


def _option_lines(text: str) -> list[str]:
    """'a=1,b=[1, 2],c=x' -> TOML lines (a bare word is a string), split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    lines = []
    for part in parts:
        key, eq, value = part.partition("=")
        value = value.strip()
        if not eq or not key.strip() or not value:
            return []
        if not (value[0] in "[\"'" or value in ("true", "false") or value.lstrip("+-")[:1].isdigit()):
            value = json.dumps(value)
        lines.append(f'"{key.strip()}" = {value}')
    return lines


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare
    from .report import write_comparison
    from .study import fill_missing

    asked = analyses_asked(args.analyses)
    fill_missing(args.dirs, asked, args.device, log=(lambda *a: None) if args.quiet else print)
    result = compare(args.dirs, options={k: v for k, v in asked.items() if v is not None})
    write_comparison(result, Path(args.out), args.title or Path(args.out).name)
    write_json(args.json, result)


def cmd_study(args: argparse.Namespace) -> None:
    from .files import check_folder_writable
    from .study import load_study, run_and_report

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
    result = run_and_report(study, device=args.device, progress=not args.quiet, shard=shard, source=args.study)
    if result is not None:
        write_json(args.json, result)


# ---- the parser --------------------------------------------------------------------------------------------
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


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from .config import TrainConfig

    add_options(p, TrainConfig)
    p.add_argument("--out", metavar="DIR", help="checkpoint directory (new or empty)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run")


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    from .config import TrainConfig

    add_options(p, TrainConfig)
    p.add_argument("--out", metavar="DIR", required=True, help="base folder to write (then used as --model DIR)")


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="checkpoint directories")
    p.add_argument("--out", metavar="DIR", required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--title", help="report title (default: the folder name)")
    p.add_argument("--analyses", nargs="+", default=["compute", "spectrum"], metavar="NAME[:OPT=VALUE,...]",
                   help=f"run these where no stored result is there first: {' '.join(ANALYSES)}, or none "
                        "(default: compute spectrum). NAME uses the latest stored result (default options where "
                        "there is none); NAME:OPT=VALUE,... the one stored with those options (e.g. "
                        "hessian:top_k=5,samples=512). The report says which options each shown analysis had")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (for --analyses)")


def _study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="FILE.toml", help="a study file, e.g. analysis/demo.toml")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--report", metavar="DIR", help="write the report here (default: the file's report, reports/NAME)")
    p.add_argument("--shard", metavar="I/N", help="train and analyse only share I of N (separate processes, e.g. a "
                   "job array; not under torchrun, whose ranks share the study already); no report")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", metavar="DIR", required=True, help="checkpoint directory")
    p.add_argument("--out", metavar="DIR", required=True, help="PEFT adapter folder to write")


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", metavar="DIR", required=True, help="PEFT adapter folder")
    p.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory to write")
    p.add_argument("--method", default="lora", help="what PEFT cannot record (lora_plus, asym, ...)")
    p.add_argument("--data", required=True, help="the task to evaluate the adapter on (a Hugging Face dataset's "
                                                 "columns as a suffix: DATA#text=COL,label=COL)")
    p.add_argument("--seed", type=int, default=0, help="seed of the task's train/test split")
    p.add_argument("--model", help="the base (default: the adapter's base_model_name_or_path)")


# name -> (summary, arguments, handler's name, outputs checked before work: (attribute, flag, folder|file|prefix))
Command = tuple[str, Callable[[argparse.ArgumentParser], None], str, list]
COMMANDS: dict[str, Command] = {
    "train": ("fine-tune a model with one method into a checkpoint directory", _train_arguments, "cmd_train",
              [("out", "--out", "folder")]),
    "pretrain": ("self-pretrain an MLP or ViT base (full training) into DIR", _pretrain_arguments, "cmd_pretrain",
                 [("out", "--out", "folder")]),
    "info": ("print a checkpoint's manifest summary and verify its weight files",
             lambda p: p.add_argument("--ckpt", metavar="DIR", required=True, help="checkpoint directory"),
             "cmd_info", []),
    "compare": ("rank measures against the measured gap over checkpoints; write a report folder",
                _compare_arguments, "cmd_compare", [("out", "--out", "folder")]),
    "study": ("run a study file: train the grid, analyse every checkpoint, compare", _study_arguments, "cmd_study",
              [("report", "--report", "folder")]),
    "export-peft": ("write a checkpoint as a PEFT adapter folder", _export_arguments, "cmd_export_peft",
                    [("out", "--out", "folder")]),
    "import-peft": ("turn a PEFT adapter folder into a genbound checkpoint", _import_arguments, "cmd_import_peft",
                    [("out", "--out", "folder")]),
}
ORDER = ["train", "pretrain", "info", *ANALYSES, "compare", "study", "export-peft", "import-peft"]


def _analysis_command(name: str) -> Command:
    def arguments(p: argparse.ArgumentParser) -> None:
        mod = get_analysis(name).load()
        analysis_arguments(p, mod.Options)
        add_options(p, mod.Options)
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)

    return ANALYSES[name].summary, arguments, "cmd_analysis", getattr(get_analysis(name).load(), "OUTPUTS", [])


def command(name: str) -> Command:
    return COMMANDS[name] if name in COMMANDS else _analysis_command(name)


def build_parser(only: str | None = None, full: bool = False) -> argparse.ArgumentParser:
    """The parser; the options of command ``only`` (of every command with ``full``) are added, the other
    commands are listed with their summary, so that listing them imports nothing heavy."""
    parser = argparse.ArgumentParser(prog="genbound", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ORDER:
        summary = COMMANDS[name][0] if name in COMMANDS else ANALYSES[name].summary
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        if full or name == only:
            _, arguments, handler, _ = command(name)
            arguments(p)
            p.add_argument("--quiet", action="store_true", help="no progress bars")
            p.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-' = stdout only the JSON)")
            p.set_defaults(func=lambda args, handler=handler: globals()[handler](args))
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """Every output location of the command can be written, before anything is computed."""
    from .files import check_file_writable, check_folder_writable

    for attr, flag, kind in [*command(args.command)[3], ("json", "--json", "file")]:
        value = getattr(args, attr, None)
        if not value or value == "-":
            continue
        if kind == "folder":
            check_folder_writable(value, flag)
        else:
            check_file_writable(value + ".png" if kind == "prefix" else value, flag)


def main(argv: list[str] | None = None) -> int:
    global _stdout
    argv = sys.argv[1:] if argv is None else list(argv)
    only = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only if only in ORDER else None)
    args = parser.parse_args(argv)
    timing.reset()
    timing.add("import", timing.since_start())  # an analysis's module (and torch) is imported by its parser
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
    except Interrupted as err:  # training saved its state on Ctrl-C and says how to resume
        print(f"genbound {args.command}: {err}", file=sys.stderr)
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

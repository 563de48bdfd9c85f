"""`genbound study` and `genbound compare`: run a grid of trainings and analyses, then rank measures
against the measured gap (docs/theory.md section 6) and write a report folder.

A study file (TOML) names one model and one data set, the grid (methods x seeds x ranks, chains for the
chain methods), the training options, and the analyses to run on every checkpoint. Finished checkpoints
and analysis results on disk are reused, so an interrupted study resumes where it stopped. Each analysis
of a checkpoint is stored as DIR/analysis/<name>.json (the latest; one computed with other options before it is
kept as <name>-KEY.json, ``analyses.store_result``); a stored result is reused when its options are the study's.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint, distributed
from .analyses import ANALYSES, execute, find_stored, get_analysis, options_differ, store_result
from .errors import GenboundError
from .files import lock



@dataclass
class Study:
    """A parsed, checked study file."""

    name: str
    model: str
    data: str
    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    ranks: list[int] = field(default_factory=lambda: [16])
    chain: int = 3  # k for cola, rac, c3la, rc3la
    alpha_ratio: float = 2.0  # alpha = alpha_ratio * r
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every run
    lr: dict[str, float] = field(default_factory=dict)  # per-method learning rates
    pretrain: dict[str, Any] | None = None  # TrainConfig fields of `genbound pretrain` when model is a folder to make
    analyses: dict[str, dict] = field(default_factory=dict)  # name -> options of that analysis
    runs: str = ""  # where checkpoints go (default runs/<name>)
    report: str = ""  # where the report goes (default reports/<name>)


def load_study(path: str | Path) -> Study:
    """Parse and check a study file; any unknown key, wrong type or unknown method/analysis is an error."""
    from .methods import get_method
    from .config import TrainConfig

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError:
        raise GenboundError(f"study file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise GenboundError(f"{path} is not valid TOML: {err}") from None
    known = {f.name for f in dataclasses.fields(Study)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GenboundError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [k for k in ("name", "model", "data", "methods") if k not in raw]
    if missing:
        raise GenboundError(f"{path}: missing key(s) {missing}")
    study = Study(**raw)
    for key, kind in (("methods", str), ("seeds", int), ("ranks", int)):
        values = getattr(study, key)
        if not isinstance(values, list) or not values or not all(isinstance(v, kind) for v in values):
            raise GenboundError(f"{path}: {key} must be a non-empty list of {kind.__name__}")
    for m in study.methods:
        get_method(m)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for section in ("train", "pretrain"):
        bad = sorted(set(getattr(study, section) or {}) - train_fields)
        if bad:
            raise GenboundError(f"{path}: [{section}] has unknown option(s) {bad}")
    reserved = {"model", "data", "method", "rank", "alpha", "chain", "seed"} & set(study.train)
    if reserved:
        raise GenboundError(f"{path}: [train] may not set {sorted(reserved)}: the grid sets them")
    bad = sorted(set(study.analyses) - set(ANALYSES))
    if bad:
        raise GenboundError(f"{path}: unknown analysis {bad}; known: {list(ANALYSES)}")
    for name, opts in study.analyses.items():
        if not isinstance(opts, dict):
            raise GenboundError(f"{path}: [analyses.{name}] must be a table of options")
    for name, opts in study.analyses.items():
        _options(name, opts, str(path))
    study.runs = study.runs or f"runs/{study.name}"
    study.report = study.report or f"reports/{study.name}"
    return study


def for_task(name: str, opts: dict, manifest: dict) -> dict:
    """``opts`` over what analysis ``name`` defaults to for the checkpoint's task (its module's optional
    ``defaults_for(manifest)``: compute measures a regression task with the squared error)."""
    defaults = getattr(ANALYSES[name].load(), "defaults_for", lambda manifest: {})(manifest)
    return {**defaults, **opts}


def _options(name: str, opts: dict, source: str):
    """The options object of analysis ``name`` from a study section (or {} for its defaults), checked."""
    from .options import options_of

    mod = get_analysis(name).load()
    options = options_of(mod.Options, opts, f"{source}: [analyses.{name}]")
    if hasattr(mod, "check_options"):
        mod.check_options(options)
    return options


def grid(study: Study) -> list[dict]:
    """One dict of TrainConfig fields per run, with its folder name."""
    from .methods import get_method

    runs = []
    for method in study.methods:
        spec = get_method(method)
        ranks = study.ranks if spec.scope == "adapter" else study.ranks[:1]
        k = study.chain if spec.chain else 1
        for rank in ranks:
            for seed in study.seeds:
                cfg = {**study.train, "model": study.model, "data": study.data, "method": method, "rank": rank,
                       "alpha": study.alpha_ratio * rank, "chain": k, "seed": seed}
                if method in study.lr:
                    cfg["lr"] = study.lr[method]
                tag = f"{method}-r{rank}-s{seed}" if spec.scope == "adapter" else f"{method}-s{seed}"
                runs.append({"name": tag, "config": cfg})
    return runs


def run_analysis(ckpt: Path, name: str, options: Any, device: str = "auto", loaded=None,
                 progress: bool = False) -> dict:
    """One analysis of one checkpoint: the stored result computed with these options (``analyses.find_stored``),
    else computed now and stored (ckpt/analysis/<name>.json, the latest; ``analyses.store_result``)."""
    found = find_stored(ckpt, name, options)
    if found is not None:
        return found[1]
    from .runtime import pick_device

    loaded = loaded or checkpoint.load(ckpt, device=pick_device(device))
    result = execute(loaded, name, options, progress).to_json()
    store_result(ckpt, name, result)
    return result


def fill_missing(dirs: list[str | Path], analyses, device: str = "auto", log=print) -> None:
    """Run each of ``analyses`` on every checkpoint that lacks it: a list of names (any stored result will do;
    default options for the checkpoint's task, ``for_task``, where none is stored) or a dict name -> options (a
    dict: a stored result with these options over the task's defaults is needed; None: any will do). Head-only
    checkpoints get no spectrum (no adapted matrix). What is computed is stored (``analyses.store_result``)."""
    from .runtime import pick_device

    asked = analyses if isinstance(analyses, dict) else dict.fromkeys(analyses)
    unknown = sorted(set(asked) - set(ANALYSES))
    if unknown:
        raise GenboundError(f"unknown analysis {unknown}; choose from {list(ANALYSES)}")
    for d in map(Path, dirs):
        manifest = checkpoint.read_manifest(d)
        scope = manifest["method"]["scope"]
        wanted = {a: _options(a, for_task(a, opts or {}, manifest), "compare") for a, opts in asked.items()
                  if applies(a, scope)}
        todo = [a for a, opts in wanted.items() if find_stored(d, a, None if asked[a] is None else opts) is None]
        if not todo:
            continue
        try:
            loaded = checkpoint.load(d, device=pick_device(device))
        except GenboundError as err:
            raise GenboundError(f"{err} (needed for its missing {', '.join(todo)}; --analyses none compares "
                                "only what is on disk)") from None
        for name in todo:
            start = time.perf_counter()
            run_analysis(d, name, wanted[name], device, loaded)
            log(f"{d.name}: {name} ({time.perf_counter() - start:.1f} s)")


def shard_of(runs: list[dict], shard: tuple[int, int], finished=lambda run: False) -> list[dict]:
    """Runs ``i`` of ``n`` shards take, seed by seed: the first seed of every method comes first. Runs for which
    ``finished`` holds are left out before the deal, so a resumed study spreads what is left over every shard."""
    i, n = shard
    if not 0 <= i < n:
        raise GenboundError(f"--shard {i}/{n}: need 0 <= i < n")
    order = sorted(runs, key=lambda r: r["config"]["seed"])  # stable: method order kept within a seed
    return [r for r in order if not finished(r)][i::n]


def applies(analysis: str, scope: str) -> bool:
    """Whether analysis ``analysis`` applies to a method scope (the spectrum needs an adapted matrix)."""
    return get_analysis(analysis).applies(scope)


def _analyses_of(study: Study, run: dict) -> list[str]:
    """The analyses of the study that apply to the run."""
    from .methods import get_method

    return [a for a in study.analyses if applies(a, get_method(run["config"]["method"]).scope)]


def finished(study: Study, run: dict) -> bool:
    """Trained and every analysis written."""
    out = Path(study.runs) / run["name"]
    if not (out / checkpoint.MANIFEST).is_file():
        return False
    manifest = checkpoint.read_manifest(out)
    return all(find_stored(out, a, _asked(study, a, manifest)) is not None for a in _analyses_of(study, run))


def _asked(study: Study, name: str, manifest: dict):
    """The options object the study asks analysis ``name`` to run with on a checkpoint of this manifest."""
    return _options(name, for_task(name, study.analyses[name], manifest), "study")


def _config_drift(expected: dict, recorded: dict) -> list[str]:
    """'key: recorded -> expected' for each training setting that differs (paths made absolute on both sides,
    the device and --fsdp left out: where and over how many GPUs a run trains does not change what it is)."""
    from .config import TrainConfig, normalized

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        a = dataclasses.asdict(normalized(TrainConfig(**{k: v for k, v in expected.items() if k in names})))
        b = dataclasses.asdict(normalized(TrainConfig(**{k: v for k, v in recorded.items() if k in names})))
    except TypeError as err:
        return [f"unreadable settings ({err})"]
    return [f"{k} {b[k]!r} -> {a[k]!r}" for k in sorted(names - {"device", "fsdp"}) if a[k] != b[k]]


def drift(study: Study, runs: list[dict]) -> list[str]:
    """Runs (and analyses, and the pretrained base) on disk that were made with other settings than the study
    file now asks for, one 'name (what changed)' each; empty when everything on disk matches."""
    from .config import TrainConfig

    found = []
    base = Path(study.model) / "genbound-base.json"
    base_state = None
    if study.pretrain is not None and base.is_file():
        made = json.loads(base.read_text()).get("config", {})
        base_state = json.loads(base.read_text()).get("state_sha256")
        asked = {**dataclasses.asdict(TrainConfig(**study.pretrain)), "method": "full", "chain": 1}
        changes = _config_drift(asked, made)
        if changes:
            found.append(f"the base {study.model} ({', '.join(changes)})")
    for run in runs:
        out = Path(study.runs) / run["name"]
        if (out / checkpoint.MANIFEST).is_file():
            recorded = checkpoint.read_manifest(out)["config"]
        elif (out / "resume" / "config.json").is_file():
            recorded = json.loads((out / "resume" / "config.json").read_text())
        else:
            continue
        changes = _config_drift(run["config"], recorded)
        manifest = checkpoint.read_manifest(out) if (out / checkpoint.MANIFEST).is_file() else {}
        if base_state and manifest and manifest["base"].get("sha256") != base_state:
            changes.append("trained from another base than the one now in " + study.model)
        for name in _analyses_of(study, run):  # stored with other options only (a result with these is kept too)
            latest = find_stored(out, name)
            if latest is None:
                continue
            asked = _asked(study, name, manifest)
            if find_stored(out, name, asked) is None:
                changes += [f"{name}: {c}" for c in options_differ(asked, latest[1])]
        if changes:
            found.append(f"{run['name']} ({', '.join(changes)})")
    return found


def check_drift(study: Study, runs: list[dict], source: str = "the study file") -> None:
    """Refuse, in one line, to reuse runs or analyses made with settings the study file no longer asks for."""
    found = drift(study, runs)
    if found:
        shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
        raise GenboundError(f"{source} changed since these were made in {study.runs}: {shown}. Move them away (or "
                            "set runs = \"a new folder\") to make them with the new settings; nothing was changed")


def _exclusive(folder: Path, log=print):
    """An exclusive lock on FOLDER.lock (next to the folder), held while the block runs: processes working on one
    study (torchrun ranks, --shard) make a shared thing, like the pretrained base, once."""
    return lock(folder.parent / f"{folder.name}.lock",
                waiting=lambda: log(f"waiting for another process to make {folder}"))


CLAIMS = ".claims"  # RUNS/.claims/NAME.lock: held by the process that trains and analyses run NAME


def claim(study: Study, run: dict, wait: bool = False, log=print):
    """The claim on one run (a context manager yielding whether this process holds it): an flock on
    RUNS/.claims/NAME.lock, held while the run trains and is analysed. The OS drops the claim of a process that
    dies, so a restarted study takes the run over (its resume state, if any, continues it)."""
    return lock(Path(study.runs) / CLAIMS / f"{run['name']}.lock", wait,
                waiting=lambda: log(f"{run['name']}: waiting for another process that works on it"))


def _make_base(study: Study, device: str, progress: bool, log) -> None:
    """Pretrain the study's base if it asks for one and it is not there yet (once, whoever comes first)."""
    from .config import TrainConfig
    from .train import pretrain

    base = Path(study.model) / "genbound-base.json"
    if study.pretrain is None or base.is_file():
        return
    with _exclusive(Path(study.model), log):  # processes started together pretrain once; the others wait for it
        if not base.is_file():
            log(f"pretraining the base into {study.model}")
            pretrain(TrainConfig(**{**study.pretrain, "device": device}), study.model, progress=progress)


def _train_run(study: Study, run: dict, device: str, progress: bool, log) -> None:
    """Train one run (resume it if it was interrupted) unless its checkpoint is there; its claim is held."""
    import shutil

    from .config import TrainConfig, run_label
    from .train import train

    out = Path(study.runs) / run["name"]
    start = time.perf_counter()
    if (out / checkpoint.MANIFEST).is_file():
        log(f"{run['name']}: trained already")
        return
    if (out / "resume" / "state.pt").is_file():
        log(f"{run['name']}: resuming")
        train(None, out, resume=True, progress=progress)
    else:
        if (out / "resume").is_dir():  # started, then killed before its first resume state: nothing to keep
            log(f"{run['name']}: starting again (it stopped before its first resume state)")
            shutil.rmtree(out)
        log(f"{run['name']}: training {run_label(TrainConfig(**run['config']))}")
        train(TrainConfig(**{**run["config"], "device": device}), out, progress=progress)
    log(f"{run['name']}: trained ({time.perf_counter() - start:.1f} s)")


def _analyse_run(study: Study, run: dict, device: str, progress: bool, log) -> None:
    """The study's analyses of one trained run that are not on disk yet."""
    from .runtime import pick_device

    out = Path(study.runs) / run["name"]
    loaded = None
    manifest = checkpoint.read_manifest(out)
    for name in _analyses_of(study, run):
        options = _asked(study, name, manifest)
        if find_stored(out, name, options) is not None:
            continue
        start = time.perf_counter()
        loaded = loaded or checkpoint.load(out, device=pick_device(device))
        run_analysis(out, name, options, device, loaded, progress=progress)
        log(f"{run['name']}: {name} ({time.perf_counter() - start:.1f} s)")


def run_study(study: Study, device: str = "auto", progress: bool = True, log=print,
              shard: tuple[int, int] | None = None, source: str = "the study file") -> list[Path]:
    """Pretrain (if asked), train every run not yet finished (resuming interrupted ones), run the analyses, one
    line per step with its time. Runs are walked seed by seed (``shard_of``'s order); a process works on a run
    only while it holds the run's claim (``claim``) and the run is still unfinished, so processes on one study
    (torchrun ranks, --shard) never do a run twice: a run another process holds is left to it, except by a
    single process without ``shard``, which waits for it. With ``shard`` = (i, n) only that share of the
    unfinished runs. Returns the folders of the walked runs that are finished, in grid order. Runs, analyses or
    a base made with other settings than the study now asks for are refused."""
    check_drift(study, grid(study), source)
    _make_base(study, device, progress, log)
    walk = shard_of(grid(study), shard or (0, 1), (lambda r: finished(study, r)) if shard else (lambda r: False))
    ctx = distributed.context()
    wait = shard is None and not ctx.active
    for run in walk:
        if finished(study, run):
            if ctx.main:  # said once, not by every rank
                log(f"{run['name']}: trained already")
            continue
        with claim(study, run, wait, log) as held:
            if not held:
                log(f"{run['name']}: left to the process that holds it")
            elif not finished(study, run):  # checked again with the claim held: another process may have done it
                _train_run(study, run, device, progress, log)
                _analyse_run(study, run, device, progress, log)
    names = {r["name"] for r in walk if finished(study, r)}
    return [Path(study.runs) / r["name"] for r in grid(study) if r["name"] in names]


def run_and_report(study: Study, device: str = "auto", progress: bool = True, shard: tuple[int, int] | None = None,
                   source: str = "the study file") -> dict | None:
    """`genbound study`, in one process or in each rank under torchrun: join the ranks (each on its LOCAL_RANK GPU
    or the CPU), run the study (the claims spread the runs over the ranks; each rank's lines start with
    ``[rank R]``, progress bars on rank 0 only), wait for every rank, then rank 0 alone compares the whole grid
    into the report and returns the comparison (None on the other ranks and with ``shard``)."""
    from .compare import compare
    from .report import write_comparison

    ctx = distributed.context()
    if shard is not None and ctx.active:
        raise GenboundError(f"--shard {shard[0]}/{shard[1]} splits a study over separate processes (a job array); "
                            f"under torchrun (WORLD_SIZE={ctx.world}) the ranks share it already: leave --shard out")
    distributed.init(distributed.device_of(ctx, device))
    try:
        distributed.barrier(long=True)  # the long-wait group, made while every rank is here
        log = (lambda line: print(f"[rank {ctx.rank}] {line}", flush=True)) if ctx.active else print
        done = run_study(study, device, progress and ctx.main, log, shard, source)
        if shard is not None:
            log(f"shard {shard[0]}/{shard[1]}: {len(done)} runs done; run the study without --shard for the report")
            return None
        distributed.barrier(long=True)  # every rank's runs are done
        if not ctx.main:
            return None
        runs = grid(study)
        left = [r["name"] for r in runs if not finished(study, r)]
        if left:
            raise GenboundError(f"{len(left)} runs are not finished ({', '.join(left[:3])}"
                                f"{', ...' if len(left) > 3 else ''}): another process holds them; run the study "
                                "again when it is done for the report")
        result = compare([Path(study.runs) / r["name"] for r in runs], options=study.analyses)
        write_comparison(result, Path(study.report), study.name)
        return result
    finally:
        distributed.finish()

"""The analyses of a checkpoint, one registration each; the command line and studies dispatch from here.

Each analysis is one module that defines:

    Options                     a dataclass whose fields carry their help (genbound.options.opt): the CLI
                                options and a study file's [analyses.NAME] section are generated from it
    check_options(options)      one line for options that cannot give a number (before any model is loaded)
    Result                      a genbound.result.Result subclass: SCHEMA, render(), MEASURES for compare
    run(loaded, options, progress=False) -> Result
    applies(scope) -> bool      whether it applies to a method scope (optional; default: always)
    OUTPUTS, add_arguments(parser), write_outputs(results, args)
                                optional: files it writes from the command line (plots), at the edge
    across_ranks(options) -> bool
                                optional: under torchrun its passes split over the processes and ``run`` takes
                                ``ranks`` (a distributed.Context); without it rank 0 runs the analysis whole

Adding an analysis = one module + one line below; cli.py and study.py need no edit. No torch here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .errors import GenboundError
from .registry import Registry


@dataclass(frozen=True)
class Analysis:
    name: str
    module: str  # the module that keeps the contract above
    summary: str  # one line for `genbound --help`

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def applies(self, scope: str) -> bool:
        mod = self.load()
        return mod.applies(scope) if hasattr(mod, "applies") else True


ANALYSES: Registry[Analysis] = Registry("analysis", GenboundError)
register, get_analysis = ANALYSES.add, ANALYSES.find


# registration order = the order compare lists their measures in
register(Analysis("compute", "genbound.compute",
                  "generalization gap, the paper's bound, Theorem 1's terms and a compression bound"))
register(Analysis("hessian", "genbound.hessian", "top eigenvalues, trace and spectral density of the training "
                                                 "loss's Hessian"))
register(Analysis("landscape", "genbound.landscape", "1-D and 2-D loss slices with random or trajectory-PCA "
                                                     "directions, batched"))
register(Analysis("spectrum", "genbound.spectra", "singular values of the learned updates and intruder dimensions"))
register(Analysis("certify", "genbound.certify", "PAC-Bayes certificate on the 0-1 error of a Gaussian posterior "
                                                 "over the trained numbers (centred at the checkpoint or, with a "
                                                 "data prior, at the prior's mean)"))


def execute(loaded, name: str, options, progress: bool = False, ranks=None):
    """Analysis ``name`` on a loaded checkpoint with an options object: its Result, whose JSON names the checkpoint
    folder (the command line, studies and ``analyse`` all run analyses through here). ``ranks``: the processes
    that share this analysis (an analysis with ``across_ranks``; None: this process alone)."""
    extra = {"ranks": ranks} if ranks is not None else {}
    result = get_analysis(name).load().run(loaded, options, progress=progress, **extra)
    if loaded.path is not None:
        result.data["checkpoint"] = str(loaded.path)
    return result


def analyse(loaded, name: str, progress: bool = False, **options):
    """Run analysis ``name`` on a loaded checkpoint with the given options (the fields of its Options; the rest
    at their defaults) and return its Result."""
    from .options import options_of

    mod = get_analysis(name).load()
    opts = options_of(mod.Options, options, f"analyse({name!r})")
    if hasattr(mod, "check_options"):
        mod.check_options(opts)
    return execute(loaded, name, opts, progress)


# ---- stored results ----------------------------------------------------------------------------------------
# DIR/analysis/NAME.json holds the latest result of analysis NAME (what studies and compare read by default);
# NAME-KEY.json keeps a result whose options another run's replaced in NAME.json (KEY: the first 8 hex digits
# of the sha256 of its options as canonical JSON), so results with other options are never lost.
def options_key(options: dict) -> str:
    """8 hex digits that name a set of options (canonical JSON: sorted keys, no inf or nan)."""
    from .files import finite_json

    def plain(v):  # 16 and 16.0 (a study file's and the command line's) are one option
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return [plain(x) for x in v] if isinstance(v, list) else v

    opts = {k: plain(v) for k, v in finite_json(options or {}).items()}
    text = json.dumps(opts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _read(path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stored_results(ckpt, name: str) -> Iterator[tuple]:
    """(path, result) of every stored result of analysis ``name`` in ckpt/analysis, the latest (NAME.json) first,
    then the kept ones newest first, one per set of options; read one at a time, so a search stops at its match."""
    folder = Path(ckpt) / "analysis"
    if not folder.is_dir():
        return
    kept = sorted(folder.glob(f"{name}-" + "[0-9a-f]" * 8 + ".json"), key=lambda p: -p.stat().st_mtime_ns)
    seen = set()
    for path in [folder / f"{name}.json", *kept]:
        data = _read(path) if path.is_file() else None
        key = options_key(data.get("options")) if data is not None else None
        if data is not None and key not in seen:
            seen.add(key)
            yield path, data


def comparable(value):
    """An option's value as compared: a list (JSON's) as a tuple (a dataclass default's), so they compare equal."""
    return tuple(value) if isinstance(value, list) else value


def options_differ(options, stored: dict) -> list[str]:
    """'option: stored -> asked' for each option (of an options object) that the stored result was computed with
    differently (an option the result does not record counts as its default)."""
    defaults = dataclasses.asdict(type(options)())
    asked = {k: comparable(v) for k, v in dataclasses.asdict(options).items()}
    recorded = stored.get("options") or {}
    have = {k: comparable(recorded.get(k, defaults[k])) for k in asked}
    return [f"{k} {have[k]!r} -> {asked[k]!r}" for k in asked if have[k] != asked[k]]


def find_stored(ckpt, name: str, options=None) -> tuple | None:
    """(path, result) of the stored result of ``name`` computed with ``options`` (an options object), or the
    latest with None; None when there is none."""
    for path, data in stored_results(ckpt, name):
        if options is None or not options_differ(options, data):
            return path, data
    return None


def store_result(ckpt, name: str, result: dict):
    """Store ``result`` (a Result's JSON) as ckpt/analysis/NAME.json, the latest; a result with other options
    already there is kept as NAME-KEY.json first (its file copied, date and all). Returns the path written.
    Raises OSError where the folder cannot be written."""
    from .files import atomic_copy, write_json

    folder = Path(ckpt) / "analysis"
    latest = folder / f"{name}.json"
    key = options_key(result.get("options"))
    old = _read(latest) if latest.is_file() else None
    if old is not None and options_key(old.get("options")) != key:
        kept = folder / f"{name}-{options_key(old.get('options'))}.json"
        if not kept.is_file():
            atomic_copy(latest, kept)
    write_json(latest, result)
    if (folder / f"{name}-{key}.json").is_file():  # an older result with these options: this one replaces it
        write_json(folder / f"{name}-{key}.json", result)
    return latest
